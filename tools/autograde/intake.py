"""The intake: the only code of the grader that touches a student's hand-in outside a sandbox.

    notes = []
    digest = take_in(SUBMISSIONS/<student>, STORE/<slot>, notes)   # LabError: why it was refused, one line

What crosses here is whatever a student (or a classmate with write access to the class folder) left in
the folder, so every property of it is bounded before it costs anything, and the grader reads only
what it grades:

  graded files  submission.py and checkpoints/<task>.pth are copied into the grader's store, which
                everything after reads (the phases, the fingerprint, similarity). A symbolic link at
                any level of their paths (the student's folder itself included), a named pipe, a
                socket or a device there, or a file over MAX_FILE_BYTES by st_size, refuses the
                hand-in: that student's error, in one line
  the rest      walked and hashed for the fingerprint, never kept: names as bytes (os.fsencode), at
                most MAX_DEPTH folders deep and MAX_FILES entries, each file at most MAX_FILE_BYTES
                and all MAX_TOTAL_BYTES by st_size before a byte is read (a sparse file of 15 TiB that
                takes no disk is never read). What is not a plain file or folder, or lies past a
                bound, is skipped with a note: an editor's lock link or a stray virtual environment
                costs an honest student nothing
  hard links    a plain file with a second name is read as it is and noted: nothing tells its owner
                from the student who linked it (both names count the same), and backup tools link
                honest files. A classmate's file handed in this way is found as a copy would be, by
                the grader's own hash (same-checkpoint) and similar-source

Every open is relative to an already opened folder, with O_NOFOLLOW, and the type is checked on the
open descriptor, so a link swapped in between two steps is refused too; no more than st_size bytes
are read (a file that grows while read is refused). The walk keeps a stack: no recursion.
"""
import errno
import hashlib
import os
import stat
import unicodedata
from pathlib import Path

from data_utils import LabError
from tasks import TASKS
from tools.kit import SOLUTION_FILE

GRADED = (SOLUTION_FILE, *(f"checkpoints/{task}.pth" for task in TASKS))
MAX_DEPTH = 8              # folders below the student's folder (checkpoints/ is 1)
MAX_FILES = 2000           # files and folders together
MAX_FILE_BYTES = 1 << 30   # one file: a checkpoint is the largest thing a hand-in needs
MAX_TOTAL_BYTES = 3 << 30  # the whole hand-in: two checkpoints of the largest size, and room for the rest
MAX_NOTES = 5              # skipped entries named in the notes; the others are counted
_BLOCK = 1 << 20


def shown(name) -> str:
    """A file name (str with surrogates, or bytes) as one line of text that prints anywhere: bytes that
    are not UTF-8, and control or formatting characters (a line break), as backslash escapes."""
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(char.encode("unicode_escape").decode() if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")
                   else char for char in text)


class _Skip(Exception):
    """An entry outside the graded files that is not read: a note, not an error."""


def _refuse(relative: bytes, why: str):
    raise LabError(f"{shown(relative) or 'the folder'}: {why}; hand in plain files and folders only")


def _open_folder(name, dir_fd, relative: bytes) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            _refuse(relative, "is a symbolic link, or not a folder")
        raise LabError(f"{shown(relative) or 'the folder'} cannot be read: {error.strerror}") from None


def _read_file(name, dir_fd, relative: bytes, target, digest, budget: list, notes: list) -> None:
    """Hash (and copy to `target`, unless None) one entry that lstat called a regular file; `budget` is
    [entries left, bytes left]."""
    try:
        handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            _refuse(relative, "is a symbolic link")
        raise LabError(f"{shown(relative)} cannot be read: {error.strerror}") from None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            _refuse(relative, "is not a regular file (a named pipe, socket or device)")
        if info.st_size > MAX_FILE_BYTES:
            raise LabError(f"{shown(relative)} is {info.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} a file of a "
                           f"hand-in may have")
        if info.st_size > budget[1]:
            raise LabError(f"the hand-in is more than {MAX_TOTAL_BYTES:,} bytes together at {shown(relative)}: "
                           f"hand in submission.py and checkpoints/ only")
        budget[1] -= info.st_size
        if info.st_nlink != 1:
            notes.append(f"{shown(relative)} has {info.st_nlink} names (a hard link): read as it is")
        digest.update(b"file\0" + relative + b"\0" + str(info.st_size).encode() + b"\0")
        left = info.st_size
        out = open(target, "xb") if target is not None else None
        try:
            while left > 0:
                block = os.read(handle, min(_BLOCK, left))
                if not block:
                    break
                left -= len(block)
                digest.update(block)
                if out is not None:
                    out.write(block)
        finally:
            if out is not None:
                out.close()
        if left or os.read(handle, 1):
            raise LabError(f"{shown(relative)} changed while it was read: hand in files that no process is writing")
    finally:
        os.close(handle)


def _take_graded(root_fd: int, store: Path, digest, budget: list, notes: list) -> None:
    """Copy the files the grader reads, strictly: any problem on their paths is the student's error."""
    for relative in GRADED:
        parts = [os.fsencode(part) for part in relative.split("/")]
        dir_fd, path = os.dup(root_fd), b""
        try:
            for part in parts[:-1]:
                path = path + b"/" + part if path else part
                try:
                    os.lstat(part, dir_fd=dir_fd)
                except FileNotFoundError:
                    break
                inner = _open_folder(part, dir_fd, path)
                os.close(dir_fd)
                dir_fd = inner
            else:
                try:
                    info = os.lstat(parts[-1], dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(info.st_mode):
                    _refuse(os.fsencode(relative), "is a symbolic link")
                target = store / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                _read_file(parts[-1], dir_fd, os.fsencode(relative), target, digest, budget, notes)
        finally:
            os.close(dir_fd)


def _walk_rest(root_fd: int, digest, budget: list, notes: list) -> None:
    """Hash every other entry within the bounds; what is not a plain file or folder, or lies past a bound,
    is skipped with a note (and counted in the digest), never read."""
    graded = {os.fsencode(relative) for relative in GRADED}
    skipped = []
    stack = [(os.dup(root_fd), b"", 0)]
    try:
        while stack:
            dir_fd, relative, depth = stack.pop()
            try:
                names = []
                with os.scandir(dir_fd) as entries:  # counted while listed: a million names cost nothing
                    for entry in entries:
                        if budget[0] <= 0:
                            skipped.append(f"{shown(relative) or 'the folder'}: more than {MAX_FILES:,} files and "
                                           f"folders, the rest not read")
                            while stack:
                                os.close(stack.pop()[0])
                            break
                        budget[0] -= 1
                        names.append(os.fsencode(entry.name))
                for name in sorted(names):
                    inner = relative + b"/" + name if relative else name
                    if inner in graded:
                        continue
                    try:
                        info = os.lstat(name, dir_fd=dir_fd)
                        if stat.S_ISDIR(info.st_mode):
                            if depth + 1 > MAX_DEPTH:
                                raise _Skip(f"more than {MAX_DEPTH} folders deep, not read")
                            digest.update(b"folder\0" + inner + b"\0")
                            stack.append((_open_folder(name, dir_fd, inner), inner, depth + 1))
                        elif stat.S_ISREG(info.st_mode):
                            if info.st_size > min(MAX_FILE_BYTES, budget[1]):
                                raise _Skip(f"{info.st_size:,} bytes, past the hand-in's bounds, not read")
                            _read_file(name, dir_fd, inner, None, digest, budget, notes)
                        else:
                            raise _Skip("a symbolic link" if stat.S_ISLNK(info.st_mode)
                                        else "not a regular file (a named pipe, socket or device)")
                    except (_Skip, LabError, FileNotFoundError) as why:
                        digest.update(b"skipped\0" + inner + b"\0")
                        skipped.append(f"{shown(inner)}: {why if not isinstance(why, FileNotFoundError) else 'vanished'}")
            finally:
                os.close(dir_fd)
    finally:
        for dir_fd, *_ in stack:
            os.close(dir_fd)
    if skipped:
        more = f" (and {len(skipped) - MAX_NOTES} more)" if len(skipped) > MAX_NOTES else ""
        notes.append("not read (not graded): " + "; ".join(skipped[:MAX_NOTES]) + more)


def take_in(folder: Path, store: Path, notes: list = None) -> str:
    """Copy the graded files of the hand-in `folder` into `store` (which must not exist yet) and hash the
    rest, within the bounds above; return the sha256 of what was read (names as bytes, kinds, sizes and
    contents, in byte order of names), which the resume cache keys on. What the TA should know (hard
    links, skipped entries) is added to `notes`. Raises LabError naming what refused the hand-in;
    `store` is then incomplete and must not be used."""
    notes = [] if notes is None else notes
    digest = hashlib.sha256(b"hand-in v2\0")
    budget = [MAX_FILES, MAX_TOTAL_BYTES]
    parent_fd = os.open(Path(folder).parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        root_fd = _open_folder(Path(folder).name, parent_fd, b"")
    finally:
        os.close(parent_fd)
    try:
        os.makedirs(store)
        _take_graded(root_fd, Path(store), digest, budget, notes)
        _walk_rest(root_fd, digest, budget, notes)
    finally:
        os.close(root_fd)
    return digest.hexdigest()
