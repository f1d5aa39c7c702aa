"""Data for the lab: the MNIST splits, a Dataset, batching, seeding, the simplified FID,
and the small file helpers every script shares (atomic writes, one-line CLI errors)."""
import argparse
import hashlib
import io
import json
import os
import random
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DATASET_DIR = ROOT / "dataset"
# The 5:1:1 split. train/valid come from the official training set, shuffled with SPLIT_SEED.
SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
SPLIT_SEED = 20240501
IMAGE_SHAPE = (28, 28)
IMAGE_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
NUM_CLASSES = 10


class LabError(Exception):
    """A mistake the user can fix; scripts print it as one line instead of a traceback."""


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: what a shell reports for a program that Ctrl-C stopped


def run_cli(main) -> None:
    """Run a script's main(): a LabError becomes `error: ...` and exit code 2, Ctrl-C exit code 130
    without a traceback.

    Ctrl-C is the user's choice, not an error. Outside training (whose own handler saves interrupted.pth
    and says so) the script stops once the cleanup it sets off is done (a temporary file, inference.py's
    partial folder) and says nothing more: under run.sh, run.sh says what is saved and how to go on. The
    entry scripts leave SIGINT to its default action until main() runs, so a Ctrl-C while torch is
    imported stops Python at once rather than with a traceback from inside torch."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except LabError as error:
        close_progress_bars()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        close_progress_bars()
        sys.exit(INTERRUPTED_EXIT_CODE)


def close_progress_bars() -> None:
    """An error raised inside a loop leaves its progress bar open, and the message would be glued to the
    end of the bar's line: close the bars first."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


PROGRESS_SECONDS = 10  # where the output is not a terminal: a progress line at most this often


class _LineStream:
    """A progress bar's stream where the output is not a terminal (a log, a pipe): each redraw becomes
    a line of its own, without the carriage returns and cursor moves a terminal would need."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = "".join(part for part in text.replace("\x1b[A", "").split("\r")).strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def progress(iterable=None, **options):
    """tqdm on a terminal; elsewhere a line every PROGRESS_SECONDS at most, never a bar redrawn in place
    (a redirected bash run.sh once wrote 561 KB of bars)."""
    from tqdm import tqdm
    stream = options.pop("file", None) or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, file=stream, **options)
    options.update(file=_LineStream(stream), mininterval=PROGRESS_SECONDS, ncols=100, dynamic_ncols=False)
    bar = tqdm(iterable, **options)
    set_postfix = bar.set_postfix
    bar.set_postfix = lambda *args, **kwargs: set_postfix(*args, **dict(kwargs, refresh=False))  # no forced redraw
    return bar


class BooleanFlag(argparse.Action):
    """A switch that reads both ways: --flag / --no-flag, and the handout's value style
    --flag True / --flag False (which argparse's type=bool would read as True either way)."""

    TRUE, FALSE = ("true", "1", "yes", "y", "on"), ("false", "0", "no", "n", "off")

    def __init__(self, option_strings, dest, default=None, required=False, help=None):
        negatives = [f"--no-{name[2:]}" for name in option_strings if name.startswith("--")]
        super().__init__([*option_strings, *negatives], dest, nargs="?", default=default, required=required,
                         help=help, metavar="True|False")

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string.startswith("--no-"):
            if value is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
        elif value is None or value.lower() in self.TRUE:
            setattr(namespace, self.dest, True)
        elif value.lower() in self.FALSE:
            setattr(namespace, self.dest, False)
        else:
            parser.error(f"{option_string} {value}: write {option_string} True or {option_string} False "
                         f"(or {option_string} alone)")


# ---------------------------------------------------------------- atomic writes
def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the
    new one, never half of one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise LabError(f"cannot write into {path.parent} ({why_unwritable(error)}): choose a writable folder") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs should be as readable as any other
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)  # whatever stopped us (disk full, Ctrl-C), `path` is untouched
        if isinstance(error, OSError):
            raise LabError(f"cannot write {path} ({error.strerror or error}): the previous version, if any, "
                           f"is unchanged; free some space or choose another folder") from None
        raise


def why_unwritable(error: OSError) -> str:
    # mkdir under a regular file fails with "File exists" or "Not a directory"; say what is wrong
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return "a file is in the way of the folder"
    return error.strerror or str(error)


def ensure_writable_folder(folder, flag: str) -> None:
    """Create `folder` if needed, or fail with a one-line error before any long work starts."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LabError(f"cannot write into {folder} ({why_unwritable(error)}): pass a writable {flag}") from None


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_torch_save(obj, path) -> None:
    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------- splits
def resolve_split(split) -> Path:
    """'train' / 'valid' / 'test' (or 'validation') name a committed split; anything else is a path."""
    name = {"validation": "valid", "val": "valid"}.get(str(split), str(split))
    if name in SPLIT_SIZES:
        return DATASET_DIR / f"{name}.npz"
    return Path(split)


def recorded_sha256(path: Path):
    """The checksum a SHA256SUMS file beside `path` records for it (dataset/SHA256SUMS for the
    committed splits; a copied split can carry its own), or None when none is recorded."""
    sums = path.resolve().parent / "SHA256SUMS"
    if not sums.is_file():
        return None
    for line in sums.read_text().splitlines():
        fields = line.split()
        # `sha256sum` writes "DIGEST  NAME", or "DIGEST *NAME" in binary mode
        if len(fields) == 2 and fields[1].lstrip("*") == path.name:
            return fields[0].lower()
    return None


def load_split(split):
    """Return (images uint8 [N,28,28], labels int64 [N]) as numpy arrays, checked."""
    path = resolve_split(split)
    arrow = path if path.suffix == ".arrow" else next(iter(sorted(path.glob("*.arrow"))), None) if path.is_dir() else None
    if arrow is not None:  # the original course kept its splits as Hugging Face `datasets` arrow files
        raise LabError(f"{arrow} is an arrow file of the original course: convert it first with `python dataset/build.py "
                       f"--from_arrow {arrow} --out {arrow.parent.name or 'split'}.npz` and pass that .npz")
    if path.is_dir():
        raise LabError(f"{path} is a folder: the lab reads a split as one .npz file (a name such as valid or "
                       f"test, or a path to an .npz with 'images' and 'labels'), not a folder of PNG files")
    if not path.is_file():
        raise LabError(f"data file {path} not found: use a split name (train, valid, test) or a path to an .npz "
                       f"with 'images' and 'labels' (rebuild the splits with `python dataset/build.py`)")
    raw = path.read_bytes()
    expected = recorded_sha256(path)
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        sums = path.resolve().parent / "SHA256SUMS"
        fix = (f"restore it with `git checkout -- dataset/{path.name}` or `python dataset/build.py`"
               if sums.parent == DATASET_DIR else "copy the file again from a good source")
        raise LabError(f"{path} is corrupt (its sha256 differs from the one {sums} records): {fix}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except Exception as error:
        raise LabError(f"{path} is not a readable .npz with arrays 'images' and 'labels' ({error})") from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise LabError(f"{path}: 'images' must be uint8 [N, 28, 28], got {images.dtype} {list(images.shape)}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise LabError(f"{path}: 'labels' must be {len(images)} integers, got {labels.dtype} {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise LabError(f"{path}: labels must lie in 0-9, found {labels.min()}..{labels.max()}")
    return images, labels.astype(np.int64)


class MNISTDataset:
    """A whole split held as one float tensor, so a batch is an index slice, not 1,000 PIL calls.

    Items are (image float32 [1,28,28] in [0,1], label int64); a DataLoader takes it as it is.
    torch is imported where it is used, not with this module: grade.py and tasks.py (run.sh reads the
    task names from it) need none of it and start in a fraction of a second instead of two or three."""

    def __init__(self, split="train", limit=None):
        import torch
        images, labels = load_split(split)
        if limit:
            images, labels = images[:limit], labels[:limit]
        self.path = resolve_split(split)
        self.images = torch.from_numpy(images).float().div_(255).unsqueeze(1)
        self.labels = torch.from_numpy(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def batches(self, batch_size, shuffle=False, generator=None):
        """Yield (images [B,1,28,28], labels [B]) for one pass over the split."""
        import torch
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            yield self.images[index], self.labels[index]


def set_random_seed(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def to_uint8(images) -> np.ndarray:
    """[0,1] floats -> uint8 pixels, clamped and rounded (not truncated)."""
    if hasattr(images, "detach"):  # a torch tensor, on whatever device
        images = images.detach().cpu().numpy()
    return np.rint(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def cal_fid(real, gen) -> float:
    """The lab's simplified FID between two image sets of one class, on the 0-1 scale:
    ||m_gen - m_real||^2 + sum over pixels of (v_gen + v_real - 2 sqrt(v_gen v_real)),
    with per-pixel means m and population variances v of the flattened images."""
    real = np.asarray(real, dtype=np.float64).reshape(len(real), -1)
    gen = np.asarray(gen, dtype=np.float64).reshape(len(gen), -1)
    mean_real, mean_gen = real.mean(axis=0), gen.mean(axis=0)
    var_real, var_gen = real.var(axis=0), gen.var(axis=0)
    return float(np.sum((mean_gen - mean_real) ** 2)
                 + np.sum(var_gen + var_real - 2 * np.sqrt(var_gen * var_real)))
