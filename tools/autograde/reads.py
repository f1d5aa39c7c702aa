"""Safe reading of what crossed from a student's process: a file a phase wrote (or a hand-in), opened
without following a link at any level, without blocking, only if regular and of bounded size; arrays
checked for exact dtype, shape and finite values; text made fit for the tables."""
import errno
import hashlib
import io
import json
import os
import stat
import unicodedata
from pathlib import Path

import numpy as np

from contract import one_line
from data_utils import LabError


def clean_text(text, limit: int = 300) -> str:
    """Text that came out of a student's process (an error message, a warning, a field of a JSON it
    wrote), fit for the table: every character encodable (a lone surrogate would stop the batch when
    the tables are written), control and formatting characters (line breaks, carriage returns,
    direction marks) as spaces, at most `limit` characters."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(" " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char for char in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def untrusted_file(path: Path, root: Path):
    """An open binary file for `path`, a file under `root` that student code could have written or
    replaced (a phase's work folder, a student's hand-in), or None when there is none. Refused with a
    LabError: a symbolic link at ANY component below root (the grader would follow it outside the
    sandbox, to another student's work or to its own files), and anything but a regular file (a
    named pipe would block the grader forever; it is opened without blocking and refused)."""
    relative = Path(path).relative_to(root)
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in relative.parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            except FileNotFoundError:
                return None
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LabError(f"{relative.as_posix()}: {part} is a symbolic link or not a folder; "
                                   f"plain folders and files only") from None
                raise
            os.close(directory)
            directory = inner
        try:
            handle = os.open(relative.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise LabError(f"{relative.as_posix()} is a symbolic link; plain files only") from None
            raise
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise LabError(f"{relative.as_posix()} is not a regular file; plain files only")
    return os.fdopen(handle, "rb")


def read_untrusted(path: Path, root: Path, limit: int, what: str = None):
    """The bytes of untrusted_file(path, root), or None when there is none; a LabError if it holds more
    than `limit` bytes."""
    handle = untrusted_file(path, root)
    if handle is None:
        return None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise LabError(f"{what or Path(path).name} is {size:,} bytes, expected at most {limit:,}")
        return handle.read(limit + 1)[:limit]


def copy_untrusted(path: Path, root: Path, target: Path, limit: int):
    """Copy untrusted_file(path, root) to `target` (at most `limit` bytes); return the sha256 of what was
    copied, or None when there is none."""
    handle = untrusted_file(path, root)
    if handle is None:
        return None
    digest = hashlib.sha256()
    with handle, open(target, "wb") as out:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise LabError(f"{Path(path).name} is {size:,} bytes, expected at most {limit:,}")
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def load_array(path: Path, root: Path, dtype, shape: tuple, what: str) -> np.ndarray:
    """A phase's .npy under `root`, checked here: exact dtype and shape, finite; LabError otherwise."""
    expected_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        raw = read_untrusted(path, root, expected_bytes + 4096)
    except LabError as error:
        raise LabError(f"{what}: {error}") from None
    if raw is None:
        raise LabError(f"{what}: the phase wrote no {path.name}")
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as error:
        raise LabError(f"{what}: {path.name} is not a readable .npy ({one_line(error, 120)})") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
        raise LabError(f"{what}: {path.name} is {getattr(array, 'dtype', '?')} {list(getattr(array, 'shape', []))}, "
                       f"expected {np.dtype(dtype)} {list(shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise LabError(f"{what}: {path.name} holds NaN or infinite values")
    return np.ascontiguousarray(array)


def phase_json(path: Path, root: Path, error_path: Path) -> dict:
    """The JSON object a phase wrote at `path` (under `root`); LabError with the phase's error (error_path)
    when it wrote none."""
    raw = read_untrusted(path, root, 1 << 20)
    if raw is None:
        error = read_untrusted(error_path, root, 1 << 20)
        raise LabError(error[:300].decode(errors="replace") if error else f"the phase wrote no {path.name}")
    try:
        value = json.loads(raw.decode(errors="replace"))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise LabError(f"{path.name} is not a JSON object")
    return value
