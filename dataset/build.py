"""Build dataset/{train,valid,test}.npz from the MNIST IDX files, or convert a split of the original
course, kept as a Hugging Face `datasets` arrow file, into the lab's .npz.

    python dataset/build.py [--mnist_dir ../shared/mnist]
    python dataset/build.py --from_arrow dataset/test/data.arrow --out private_test.npz

train (50,000) and valid (10,000) are a fixed-seed split of the official
60,000 training images, each kept in official order; test is the official
10,000 test images in official order. The output is byte-identical on every
rebuild (fixed zip timestamps, fixed compression), and its sha256 sums are
recorded in dataset/SHA256SUMS, which data_utils checks on every load.
"""
import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from data_utils import LabError, SPLIT_SIZES, SPLIT_SEED, atomic_write_bytes, run_cli  # noqa: E402

# sha256 of the uncompressed IDX payloads, from the MNIST README.
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def read_idx(mnist_dir: Path, name: str) -> np.ndarray:
    path = mnist_dir / f"{name}.gz"
    if not path.is_file():
        raise LabError(f"missing MNIST file {path}: pass --mnist_dir pointing at the folder with the four IDX .gz files")
    raw = gzip.decompress(path.read_bytes())
    if hashlib.sha256(raw).hexdigest() != IDX_SHA256[name]:
        raise LabError(f"{path} does not match the official MNIST sha256: re-copy the file")
    magic, ndim = int.from_bytes(raw[0:4], "big"), raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    assert magic in (0x801, 0x803), magic
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def npz_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A .npz that np.load reads, written with fixed metadata so it is reproducible."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in (("images", images), ("labels", labels)):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def read_arrow(path: Path):
    """(images uint8 [N,28,28], labels int64 [N]) of an arrow file as the original course's
    `datasets` wrote it: an `image` column of PNG bytes (a struct with `bytes`, or plain binary) and a
    `label` column. Pixels are decoded as they are: 28x28 grey images only. Needs pyarrow, an
    optional dependency used only here."""
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
    except ImportError:
        raise LabError("reading an .arrow file needs pyarrow, which the lab does not install: "
                       "python -m pip install pyarrow") from None
    from PIL import Image
    if not path.is_file():
        raise LabError(f"{path} not found: pass the data.arrow file of the split to convert")
    try:
        with pa.memory_map(str(path)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()  # what `datasets` writes
            except pa.ArrowInvalid:
                source.seek(0)
                table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise LabError(f"{path} is not an arrow file ({str(error).splitlines()[0][:120]})") from None
    missing = [name for name in ("image", "label") if name not in table.column_names]
    if missing:
        raise LabError(f"{path} has columns {table.column_names}, not 'image' and 'label'")
    images = []
    for row, value in enumerate(table.column("image").to_pylist()):
        raw = value.get("bytes") if isinstance(value, dict) else value
        try:
            with Image.open(io.BytesIO(raw)) as image:
                if image.mode != "L" or image.size != (28, 28):
                    raise ValueError(f"a {image.mode} image of {image.size[0]}x{image.size[1]}")
                images.append(np.asarray(image, dtype=np.uint8))
        except Exception as error:
            raise LabError(f"{path}: row {row}'s image is not a 28x28 grey PNG ({error})") from None
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    images = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise LabError(f"{path}: labels must lie in 0-9, found {labels.min()}..{labels.max()}")
    return images, labels


def build_splits(mnist_dir: Path) -> dict:
    train_images = read_idx(mnist_dir, "train-images-idx3-ubyte")
    train_labels = read_idx(mnist_dir, "train-labels-idx1-ubyte").astype(np.int64)
    test_images = read_idx(mnist_dir, "t10k-images-idx3-ubyte")
    test_labels = read_idx(mnist_dir, "t10k-labels-idx1-ubyte").astype(np.int64)

    order = np.random.default_rng(SPLIT_SEED).permutation(len(train_images))
    train_idx = np.sort(order[: SPLIT_SIZES["train"]])
    valid_idx = np.sort(order[SPLIT_SIZES["train"]:])
    return {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "valid": (train_images[valid_idx], train_labels[valid_idx]),
        "test": (test_images, test_labels),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist_dir", type=Path, default=HERE.parent.parent / "shared" / "mnist",
                        help="folder holding the four MNIST IDX .gz files (default: %(default)s)")
    parser.add_argument("--out_dir", type=Path, default=HERE, help="where to write the .npz files (default: %(default)s)")
    parser.add_argument("--from_arrow", type=Path, default=None,
                        help="convert this arrow file (the original course's format, e.g. dataset/test/data.arrow) "
                             "into --out instead of building the MNIST splits; needs pyarrow")
    parser.add_argument("--out", type=Path, default=None, help="with --from_arrow: the .npz to write")
    args = parser.parse_args(argv)

    if args.from_arrow is not None:
        if args.out is None or args.out.suffix != ".npz":
            raise LabError("--from_arrow needs --out SPLIT.npz, the file to write")
        images, labels = read_arrow(args.from_arrow)
        atomic_write_bytes(args.out, npz_bytes(images, labels))
        print(f"wrote {len(images)} images from {args.from_arrow} to {args.out} (label counts "
              f"{np.bincount(labels, minlength=10).tolist()}); grade on it with --data_path {args.out}")
        return

    sums = []
    for split, (images, labels) in build_splits(args.mnist_dir).items():
        assert len(images) == SPLIT_SIZES[split]
        data = npz_bytes(images, labels)
        atomic_write_bytes(args.out_dir / f"{split}.npz", data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {split}.npz\n")
        print(f"{split}: {len(images)} images, label counts {np.bincount(labels, minlength=10).tolist()}")
    atomic_write_bytes(args.out_dir / "SHA256SUMS", "".join(sums).encode())
    print(f"wrote {', '.join(f'{s}.npz' for s in SPLIT_SIZES)} and SHA256SUMS to {args.out_dir}")


if __name__ == "__main__":
    run_cli(main)
