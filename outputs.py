"""The inference-output folder: its layout, the PNG codec, the writer and the readers.

inference.py writes a folder, grade.py and evaluation.py only read it:

    recon/recon_{i}.png     reconstruction of image i of the split (8-bit grey, value x255 rounded)
    gen/{label}/{k}.png     decode(z ~ N(0, I), label), k = 0 .. samples per label - 1
    hyperparams.json        the model's settings plus what inference read (split, checksum) and
                            "written_by": "inference.py", the mark that lets it replace the folder
    recon.png, samples.png, interpolation.png, latent_map.png, loss_curve.png   pictures to look at

A folder is replaced only when it is empty or holds an earlier output of inference.py and
nothing else: any other file (a checkpoint, a note) makes inference refuse, never delete.
"""
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_utils import IMAGE_SHAPE, NUM_CLASSES, LabError, atomic_write_json

INFO_FILE = "hyperparams.json"
WRITTEN_BY = "inference.py"
PICTURES = ("recon.png", "samples.png", "interpolation.png", "latent_map.png", "loss_curve.png")
ENTRIES = {"recon", "gen", INFO_FILE, *PICTURES}
# What grade.py reads from hyperparams.json (inference.py writes them all).
INFO_KEYS = ("task", "latent_dim", "data_path", "data_sha256", "num_images")


def recon_path(folder: Path, index: int) -> Path:
    return Path(folder) / "recon" / f"recon_{index}.png"


def gen_folder(folder: Path, label: int) -> Path:
    return Path(folder) / "gen" / str(label)


# ------------------------------------------------------------------ PNG
def png_bytes(pixels: np.ndarray, scale: int = 1, optimize: bool = False) -> bytes:
    """uint8 grey pixels as PNG bytes; scale > 1 draws each pixel as a scale x scale block; optimize spends
    more time for fewer bytes (the autograder's pages, which inline many pictures)."""
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L")
    if scale > 1:
        image = image.resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=optimize)
    return buffer.getvalue()


def read_png(path: Path) -> np.ndarray:
    """A 28x28 grey PNG as uint8 pixels, or a one-line LabError."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L") if image.mode != "L" else image)
    except FileNotFoundError:
        raise LabError(f"missing {path}: rerun inference.py for this split") from None
    except (UnidentifiedImageError, OSError) as error:
        raise LabError(f"cannot read {path} ({error}): rerun inference.py") from None
    if pixels.shape != IMAGE_SHAPE:
        raise LabError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, expected 28x28: rerun inference.py")
    return pixels


def tile(cells: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 [R, C, 28, 28] -> one image, cells separated by grey lines."""
    r, c, h, w = cells.shape
    canvas = np.full((r * (h + pad) + pad, c * (w + pad) + pad), 128, dtype=np.uint8)
    for i in range(r):
        for j in range(c):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top:top + h, left:left + w] = cells[i, j]
    return canvas


# ------------------------------------------------------------------ writing
def write(folder: Path, recon: np.ndarray, samples: np.ndarray, info: dict, progress=iter) -> None:
    """recon/, gen/ and hyperparams.json into a new folder (uint8 recon [N,28,28], samples [10,K,28,28])."""
    folder = Path(folder)
    (folder / "recon").mkdir(parents=True)
    for i, pixels in enumerate(progress(recon)):
        recon_path(folder, i).write_bytes(png_bytes(pixels))
    for label, row in enumerate(samples):
        gen_folder(folder, label).mkdir(parents=True)
        for k, pixels in enumerate(row):
            (gen_folder(folder, label) / f"{k}.png").write_bytes(png_bytes(pixels))
    atomic_write_json(folder / INFO_FILE, dict(info, written_by=WRITTEN_BY))


def check_replaceable(target: Path) -> None:
    """Refuse, in one line, a --save_dir that is not empty and not purely an earlier output."""
    target = Path(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise LabError(f"--save_dir {target} is a file: choose a folder")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    foreign = [name for name in entries if name not in ENTRIES]
    if foreign:
        raise LabError(f"--save_dir {target} holds {foreign[0]!r}" + (f" and {len(foreign) - 1} other file(s)"
                                                                      if len(foreign) > 1 else "")
                       + " that inference.py did not write: it replaces its folder whole, so choose a new or "
                         "empty --save_dir (nothing was changed)")
    try:
        written_by = json.loads((target / INFO_FILE).read_text()).get("written_by")
    except (OSError, ValueError, AttributeError):
        written_by = None
    if written_by != WRITTEN_BY:
        raise LabError(f"--save_dir {target} is not an output folder of inference.py (its {INFO_FILE} lacks "
                       f"\"written_by\": \"{WRITTEN_BY}\"): choose a new or empty --save_dir (nothing was changed)")


def replace_folder(new: Path, target: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only afterwards."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ reading
def read_info(folder: Path) -> dict:
    path = Path(folder) / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"{path} is missing, so the latent_dim for the bonus is unknown: "
                       f"write the outputs with inference.py") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LabError(f"{path} is not valid JSON ({error}): rerun inference.py") from None
    missing = [key for key in INFO_KEYS if not isinstance(info, dict) or key not in info]
    if missing:
        raise LabError(f"{path} lacks {', '.join(missing)}: it was not written by this inference.py; rerun it")
    return info


def count_samples(folder: Path, label: int) -> int:
    path = gen_folder(folder, label)
    return len(list(path.glob("*.png"))) if path.is_dir() else 0


def read_samples(folder: Path, per_label: int):
    """(uint8 images [M,28,28], the label of each one's folder [M]) of gen/{label}/*.png."""
    images, labels = [], []
    for label in range(NUM_CLASSES):
        files = sorted(gen_folder(folder, label).glob("*.png")) if gen_folder(folder, label).is_dir() else []
        if len(files) < per_label:
            raise LabError(f"{gen_folder(folder, label)} holds {len(files)} samples, expected {per_label}: "
                           f"rerun inference.py (it writes gen/0 .. gen/9)")
        images += [read_png(f) for f in files]
        labels += [label] * len(files)
    return np.stack(images), np.array(labels)


def read_recon(folder: Path, num: int, progress=iter) -> np.ndarray:
    return np.stack([read_png(recon_path(folder, i)) for i in progress(range(num))])
