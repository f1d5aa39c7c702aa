"""The bubblewrap command line of a phase, for tools/sandbox.py: what exists inside (the lab read-only,
the work folder, the files passed, the Python installation and a few system files, all at the same
paths as outside), and the synthetic /etc/passwd and /etc/group it is fed. Stdlib only."""
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SANDBOX_UID = 65534  # "nobody" inside the user namespace
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/nsswitch.conf",
             "/etc/localtime", "/etc/fonts")


def _bwrap_path():
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap")
                                          if os.access(p, os.X_OK)), None)


# ====================================================================== the bwrap command
def _absolute(path) -> str:
    return os.path.abspath(os.fspath(path))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@functools.lru_cache(maxsize=None)
def _clean_sys_path(executable: str) -> tuple:
    """sys.path of a fresh `python -I` (no PYTHONPATH, no user site, no script folder)."""
    try:
        done = subprocess.run([executable, "-I", "-c", "import sys, json; print(json.dumps(sys.path))"],
                              capture_output=True, text=True, timeout=60, env={"PATH": os.defpath})
        return tuple(json.loads(done.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return tuple(sys.path[1:])


def python_paths(executable: str = sys.executable) -> list:
    """The host paths the Python installation needs, read-only: prefixes, the interpreter's real
    path and the clean sys.path entries, both as named and resolved; never /, /usr's contents
    (bound whole), the home folder itself or one of its parents."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, getattr(sys, "base_exec_prefix", sys.exec_prefix),
                  executable, os.path.dirname(executable), *_clean_sys_path(executable)]
    home = _absolute(Path.home())
    chosen = []
    for candidate in candidates:
        if not candidate:
            continue
        for path in (_absolute(candidate), os.path.realpath(candidate)):
            if not os.path.exists(path) or path == "/" or _within(home, path):
                continue
            if _within(path, "/usr") or any(_within(path, other) for other in chosen):
                continue
            chosen = [other for other in chosen if not _within(other, path)] + [path]
    return sorted(chosen)


def _system_ops() -> list:
    ops = [(1, "--ro-bind", "/usr", "/usr")]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            ops.append((1, "--symlink", os.readlink(name), name))
        elif os.path.isdir(name):
            ops.append((1, "--ro-bind", name, name))
    ops += [(2, "--ro-bind-try", path, path) for path in ETC_FILES]
    return ops


def _etc_files() -> dict:
    return {"/etc/passwd": f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/usr/sbin/nologin\n",
            "/etc/group": f"sandbox:x:{SANDBOX_UID}:\n"}


class _etc_data:
    """Pipes holding the synthetic /etc files, for bwrap's --ro-bind-data FD."""

    def __enter__(self):
        self.fds, command_fds = [], {}
        for dest, text in _etc_files().items():
            read, write = os.pipe()
            os.write(write, text.encode())  # far below a pipe's buffer
            os.close(write)
            self.fds.append(read)
            command_fds[dest] = read
        return self.fds, command_fds

    def __exit__(self, *exc):
        for fd in self.fds:
            os.close(fd)


def _bind_data_fds(command: list, fds: dict) -> list:
    """Fill in the FD of each `--ro-bind-data {FD} DEST` placeholder."""
    out = list(command)
    for i, arg in enumerate(out[:-2]):
        if arg == "--ro-bind-data" and out[i + 1] == "{FD}":
            out[i + 1] = str(fds[out[i + 2]])
    return out


def bwrap_command(command: list, *, lab, work, read_only=(), cwd=None, limits,
                  devices=(), disable_userns: bool = True, bwrap: str = None) -> list:
    """The bwrap command line for `command` (paths inside = paths outside). `--ro-bind-data {FD}
    DEST` placeholders stand for the synthetic /etc/passwd and /etc/group that run_phase feeds."""
    bwrap = bwrap or _bwrap_path() or "bwrap"
    lab, work = _absolute(lab), _absolute(work)
    if lab == work:
        raise ValueError("lab and work must be different folders")
    args = [bwrap, "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--unshare-pid",
            "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if disable_userns:
        args.append("--disable-userns")
    args += ["--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev",
             "--size", str(int(limits.tmp_bytes)), "--tmpfs", "/dev/shm"]
    ops = _system_ops() + [(1, "--tmpfs", None, "/tmp")]
    ops += [(2, "--ro-bind-data", "{FD}", dest) for dest in _etc_files()]
    binds = [(path, "--ro-bind") for path in python_paths()]
    binds += [(lab, "--ro-bind"), (work, "--bind")]
    binds += [(_absolute(path), "--ro-bind") for path in read_only]
    binds += [(_absolute(path), "--dev-bind") for path in devices]
    for path, how in binds:
        real = os.path.realpath(path)
        for dest in dict.fromkeys([path, real]):  # as named, and resolved (realpath() inside works)
            ops.append((dest.count("/"), how, real, dest))
    seen = {}
    for depth, how, source, dest in sorted(ops, key=lambda op: op[0]):  # parents before what is inside them
        if seen.get(dest) == (how, source):
            continue
        seen[dest] = (how, source)
        if how == "--tmpfs":
            args += ["--size", str(int(limits.tmp_bytes)), how, dest]
        else:
            args += [how, source, dest]
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", _absolute(cwd or lab), "--", *map(str, command)]
    return args

