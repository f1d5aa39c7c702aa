"""A generator the lab's grade likes without drawing digits: the demonstration behind
docs/evaluation.md's warning that the simplified FID compares per-pixel statistics only.

    python tools/fake_samples.py --outputs outputs/Genwithlabel --save_dir /tmp/fake
    python grade.py --extended --Genwithlabel_output_dir /tmp/fake --result_path /tmp/fake/grade.json
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_utils import IMAGE_PIXELS, IMAGE_SHAPE, NUM_CLASSES, LabError, atomic_write_bytes, load_split, run_cli  # noqa: E402
from pictures import samples_picture  # noqa: E402
from tasks import TASK_RECORDS  # noqa: E402


def fake_samples(outputs: Path, save_dir: Path, kind: str = "pixel-shuffle", seed: int = 0) -> None:
    """Copy an inference output folder and replace its gen/ by a hand-made 'generator' built
    from the training split (never the graded one):
      pixel-shuffle   every pixel drawn on its own from that pixel's values over the training
                      images of the label: the per-pixel means and variances the simplified
                      FID compares are the real ones, but the images are not digits
      collapse        one training image of the label, repeated
    hyperparams.json (and so the model behind the likelihood) is copied unchanged."""
    from outputs import png_bytes
    outputs, save_dir = Path(outputs), Path(save_dir)
    info_path = outputs / "hyperparams.json"
    if not info_path.is_file():
        raise LabError(f"{outputs} holds no hyperparams.json: pass an inference.py output folder")
    task = json.loads(info_path.read_text())["task"]
    if save_dir.exists():
        raise LabError(f"{save_dir} exists: choose a new --save_dir")
    rng = np.random.default_rng(seed)
    images, labels = load_split("train")
    per_label = TASK_RECORDS[task].samples_per_label
    shutil.copytree(outputs, save_dir, ignore=shutil.ignore_patterns("gen", "samples.png"))
    rows = []
    for c in range(NUM_CLASSES):
        pool = images[labels == c].reshape(-1, IMAGE_PIXELS)
        if kind == "pixel-shuffle":
            fake = pool[rng.integers(0, len(pool), (per_label, IMAGE_PIXELS)), np.arange(IMAGE_PIXELS)]
        elif kind == "collapse":
            fake = np.repeat(pool[rng.integers(0, len(pool))][None], per_label, axis=0)
        else:
            raise LabError(f"--kind {kind}: choose pixel-shuffle or collapse")
        fake = fake.reshape(per_label, *IMAGE_SHAPE).astype(np.uint8)
        (save_dir / "gen" / str(c)).mkdir(parents=True)
        for i, pixels in enumerate(fake):
            (save_dir / "gen" / str(c) / f"{i}.png").write_bytes(png_bytes(pixels))
        rows.append(fake[:10])
    atomic_write_bytes(save_dir / "samples.png", samples_picture(np.stack(rows), conditional=True))
    print(f"wrote {save_dir}: {kind} samples ({per_label} per label) in gen/, the rest copied from {outputs}; "
          f"grade with: python grade.py --extended --{task}_output_dir {save_dir} --result_path {save_dir}/grade.json")


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", type=Path, required=True, help="an inference.py output folder")
    parser.add_argument("--save_dir", type=Path, required=True, help="the new folder")
    parser.add_argument("--kind", default="pixel-shuffle", choices=("pixel-shuffle", "collapse"),
                        help="pixel-shuffle: each pixel drawn from its own training values; collapse: one "
                             "training image repeated (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    args = parser.parse_args(argv)
    fake_samples(args.outputs, args.save_dir, args.kind, args.seed)


if __name__ == "__main__":
    run_cli(main)
