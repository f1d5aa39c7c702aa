"""The committed splits: sizes, label counts, disjointness, checksums, reproducible build."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_utils import DATASET_DIR, SPLIT_SIZES, LabError, MNISTDataset, load_split

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "mnist"
# Official MNIST label counts (from the MNIST README shipped with the raw files).
OFFICIAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
OFFICIAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# The digests of the committed files: a change to the build shows up here.
EXPECTED_SHA256 = {
    "train": "5c067043e1d03dc7afe16b1fe3817eedbd72ea9c887c4b0f9a982a002832e9b8",
    "valid": "be4ea268845a1dc0ee38417ee902d2df659d6121216e6f3ee9e069e5cd77565c",
    "test": "2f5704c135faff21398385b44d49a6973b260a2addd85930b330201f1130cdad",
}


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_split_shapes_and_checksums(split):
    images, labels = load_split(split)
    assert images.shape == (SPLIT_SIZES[split], 28, 28) and images.dtype == np.uint8
    assert labels.shape == (SPLIT_SIZES[split],) and labels.min() == 0 and labels.max() == 9
    digest = hashlib.sha256((DATASET_DIR / f"{split}.npz").read_bytes()).hexdigest()
    assert digest == EXPECTED_SHA256[split]
    assert f"{digest}  {split}.npz" in (DATASET_DIR / "SHA256SUMS").read_text()


def test_label_counts_match_official_mnist():
    train = np.bincount(load_split("train")[1], minlength=10)
    valid = np.bincount(load_split("valid")[1], minlength=10)
    test = np.bincount(load_split("test")[1], minlength=10)
    assert (train + valid).tolist() == OFFICIAL_TRAIN_COUNTS
    assert test.tolist() == OFFICIAL_TEST_COUNTS
    assert load_split("test")[1][:5].tolist() == [7, 2, 1, 0, 4]  # official test order


def test_splits_are_disjoint():
    digests = {s: {hashlib.md5(img.tobytes()).digest() for img in load_split(s)[0]} for s in SPLIT_SIZES}
    assert all(len(digests[s]) == SPLIT_SIZES[s] for s in SPLIT_SIZES)
    assert not digests["train"] & digests["valid"]
    assert not digests["train"] & digests["test"]
    assert not digests["valid"] & digests["test"]


def test_dataset_items_and_batches():
    data = MNISTDataset("valid", limit=100)
    image, label = data[3]
    assert image.shape == (1, 28, 28) and image.dtype.is_floating_point and 0 <= image.min() <= image.max() <= 1
    assert label.dtype == __import__("torch").int64
    raw_images, raw_labels = load_split("valid")
    assert np.allclose(image.numpy()[0] * 255, raw_images[3]) and int(label) == raw_labels[3]
    batches = list(data.batches(32))
    assert [len(b[0]) for b in batches] == [32, 32, 32, 4]


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="needs the raw MNIST files in ../shared/mnist")
@pytest.mark.slow
def test_rebuild_is_byte_identical(tmp_path):
    subprocess.run([sys.executable, str(DATASET_DIR / "build.py"), "--mnist_dir", MNIST_DIR, "--out_dir", tmp_path],
                   check=True, capture_output=True)
    for split in SPLIT_SIZES:
        assert (tmp_path / f"{split}.npz").read_bytes() == (DATASET_DIR / f"{split}.npz").read_bytes()
    assert (tmp_path / "SHA256SUMS").read_text() == (DATASET_DIR / "SHA256SUMS").read_text()


def test_bad_data_files_are_clear_errors(tmp_path):
    with pytest.raises(LabError, match="not found"):
        load_split(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((3, 28, 28), np.uint8), labels=np.array([0, 1, 12]))
    with pytest.raises(LabError, match="0-9"):
        load_split(bad)
    np.savez(bad, images=np.zeros((3, 32, 32), np.uint8), labels=np.array([0, 1, 2]))
    with pytest.raises(LabError, match=r"\[N, 28, 28\]"):
        load_split(bad)


# ---------------------------------------------------------------- the original course's arrow files
def write_arrow(path: Path, images: np.ndarray, labels: np.ndarray, stream: bool = True) -> None:
    """An arrow file laid out as Hugging Face `datasets` writes MNIST: `image` a struct of PNG bytes and a path,
    `label` int64; an IPC stream (what `datasets` writes) or an IPC file."""
    import io
    import pyarrow as pa
    from PIL import Image
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        pngs.append({"bytes": buffer.getvalue(), "path": None})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(pngs, type=image_type), "label": pa.array(labels.tolist(), type=pa.int64())})
    with pa.OSFile(str(path), "wb") as sink:
        writer = pa.ipc.new_stream(sink, table.schema) if stream else pa.ipc.new_file(sink, table.schema)
        with writer:
            writer.write_table(table)


@pytest.mark.parametrize("stream", [True, False])
def test_an_arrow_split_of_the_original_course_converts_pixel_for_pixel(tmp_path, stream):
    pytest.importorskip("pyarrow", reason="pyarrow (optional, `pip install pyarrow`) is not installed")
    images, labels = load_split("test")
    images, labels = images[:50], labels[:50]
    (tmp_path / "test").mkdir()
    arrow = tmp_path / "test" / "data.arrow"
    write_arrow(arrow, images, labels, stream)
    from conftest import run
    out = tmp_path / "private_test.npz"
    result = run("dataset/build.py", "--from_arrow", arrow, "--out", out)
    assert f"wrote 50 images from {arrow} to {out}" in result.stdout
    converted_images, converted_labels = load_split(out)
    assert np.array_equal(converted_images, images) and np.array_equal(converted_labels, labels)
    # the arrow file itself, or its folder, as --data_path: one line that names the conversion
    for given in (arrow, tmp_path / "test"):
        with pytest.raises(LabError, match=r"is an arrow file of the original course: convert it first with "
                                           r"`python dataset/build.py --from_arrow .*data.arrow --out test.npz`"):
            load_split(given)


def test_without_pyarrow_the_conversion_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    sys.path.insert(0, str(ROOT / "dataset"))
    try:
        import build
    finally:
        sys.path.remove(str(ROOT / "dataset"))
    with pytest.raises(LabError, match=r"^reading an \.arrow file needs pyarrow, which the lab does not install: "
                                       r"python -m pip install pyarrow$"):
        build.read_arrow(tmp_path / "data.arrow")
