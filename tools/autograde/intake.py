"""The intake: the only code of the grader that touches a student's hand-in outside a sandbox.

    digest = take_in(SUBMISSIONS/<student>, STORE/<slot>)   # LabError: what was refused, in one line

It copies the hand-in into the grader's own store and computes, while copying, the digest that the
resume cache keys on; from then on the grader (fingerprint, phases, similarity, reports) reads only
the copy. What crosses here is whatever a student (or a classmate with write access to the class
folder) put in the folder, so every property of it is bounded before it costs anything:

  names       handled as bytes (os.fsencode): a name that is not UTF-8 is copied and hashed as it is
  depth       at most MAX_DEPTH folders deep, walked with a stack (no recursion)
  count       at most MAX_FILES files and folders
  size        each file at most MAX_FILE_BYTES and all together MAX_TOTAL_BYTES, by st_size before a
              byte is read (a sparse file of 15 TiB that takes no disk is refused at once), and no
              more than st_size bytes read (a file that grows while read is refused)
  kinds       plain folders and plain files only: symbolic links (at any level, the student's folder
              itself included), named pipes, sockets and devices are refused. A hard link is a
              plain file with a second name: its bytes are copied and graded as they are, and it is
              listed (the caller notes it). It is not refused, because nothing tells its owner from
              the student who linked it (both names count the same), and backup tools link honest
              files too; a classmate's checkpoint or source handed in this way is found as a copy
              would be, by the grader's own hash (same-checkpoint) and similar-source

Every open is relative to an already opened folder, with O_NOFOLLOW, and the type is checked on the
open descriptor, so a link swapped in between two steps is refused too. A refusal is that student's
error ("hand in plain files"); the other students are not affected.
"""
import errno
import hashlib
import os
import stat
import unicodedata
from pathlib import Path

from data_utils import LabError

MAX_DEPTH = 8             # folders below the student's folder (checkpoints/ is 1)
MAX_FILES = 2000          # files and folders together
MAX_FILE_BYTES = 1 << 30  # one file: a checkpoint is the largest thing a hand-in needs
MAX_TOTAL_BYTES = 3 << 30  # the whole hand-in: two checkpoints of the largest size, and room for the rest
_BLOCK = 1 << 20


def shown(name) -> str:
    """A file name (str with surrogates, or bytes) as one line of text that prints anywhere: bytes that
    are not UTF-8, and control or formatting characters (a line break), as backslash escapes."""
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(char.encode("unicode_escape").decode() if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")
                   else char for char in text)


def _refuse(relative: bytes, why: str):
    raise LabError(f"{shown(relative) or 'the folder'}: {why}; hand in plain files and folders only")


def _open_folder(name, dir_fd, relative: bytes) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            _refuse(relative, "is a symbolic link, or not a folder")
        raise LabError(f"{shown(relative) or 'the folder'} cannot be read: {error.strerror}") from None


def _copy_file(name, dir_fd, relative: bytes, target: Path, digest, budget: list, linked: list) -> None:
    """Copy one entry that lstat called a regular file; `budget` is [files left, bytes left]; a file with
    more than one name (a hard link) is added to `linked`."""
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
        if info.st_nlink != 1:  # copied as it is; the caller notes it (a classmate's file is flagged by its hash)
            linked.append(f"{shown(relative)} ({info.st_nlink} names)")
        if info.st_size > MAX_FILE_BYTES:
            raise LabError(f"{shown(relative)} is {info.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} a file of a "
                           f"hand-in may have")
        budget[1] -= info.st_size
        if budget[1] < 0:
            raise LabError(f"the hand-in is more than {MAX_TOTAL_BYTES:,} bytes together at {shown(relative)}: "
                           f"hand in submission.py and checkpoints/ only")
        digest.update(b"file\0" + relative + b"\0" + str(info.st_size).encode() + b"\0")
        left = info.st_size
        with open(target, "xb") as out:
            while left > 0:
                block = os.read(handle, min(_BLOCK, left))
                if not block:
                    break
                left -= len(block)
                digest.update(block)
                out.write(block)
        if left or os.read(handle, 1):
            raise LabError(f"{shown(relative)} changed while it was copied: hand in files that no process is writing")
    finally:
        os.close(handle)


def take_in(folder: Path, store: Path, linked: list = None) -> str:
    """Copy the hand-in `folder` into `store` (which must not exist yet) within the bounds above; return
    the sha256 of the copy's tree (names as bytes, kinds, sizes and contents, in byte order of names).
    Files with several names (hard links) are copied and listed in `linked`. Raises LabError naming the
    first thing refused; `store` is then incomplete and must not be used."""
    linked = [] if linked is None else linked
    digest = hashlib.sha256(b"hand-in v1\0")
    budget = [MAX_FILES, MAX_TOTAL_BYTES]
    parent_fd = os.open(Path(folder).parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        root_fd = _open_folder(Path(folder).name, parent_fd, b"")
    finally:
        os.close(parent_fd)
    os.makedirs(store)
    stack = [(root_fd, b"", Path(store), 0)]
    try:
        while stack:
            dir_fd, relative, target, depth = stack.pop()
            try:
                names = []
                with os.scandir(dir_fd) as entries:  # counted while listed: a million names cost nothing
                    for entry in entries:
                        names.append(os.fsencode(entry.name))
                        budget[0] -= 1
                        if budget[0] < 0:
                            raise LabError(f"the hand-in has more than {MAX_FILES:,} files and folders: hand in "
                                           f"submission.py and checkpoints/ only")
                for name in sorted(names):
                    inner = relative + b"/" + name if relative else name
                    try:
                        info = os.lstat(name, dir_fd=dir_fd)
                    except FileNotFoundError:
                        raise LabError(f"{shown(inner)} vanished while it was copied: hand in files that no "
                                       f"process is changing") from None
                    if stat.S_ISDIR(info.st_mode):
                        if depth + 1 > MAX_DEPTH:
                            raise LabError(f"{shown(inner)} lies more than {MAX_DEPTH} folders deep")
                        digest.update(b"folder\0" + inner + b"\0")
                        inner_fd = _open_folder(name, dir_fd, inner)
                        os.mkdir(target / os.fsdecode(name))
                        stack.append((inner_fd, inner, target / os.fsdecode(name), depth + 1))
                    elif stat.S_ISLNK(info.st_mode):
                        _refuse(inner, "is a symbolic link")
                    elif stat.S_ISREG(info.st_mode):
                        _copy_file(name, dir_fd, inner, target / os.fsdecode(name), digest, budget, linked)
                    else:
                        _refuse(inner, "is not a regular file (a named pipe, socket or device)")
            finally:
                os.close(dir_fd)
    except BaseException:
        for dir_fd, *_ in stack:  # the folders opened but not walked
            os.close(dir_fd)
        raise
    return digest.hexdigest()
