"""Run one phase of untrusted (student) code in a sandbox: bubblewrap namespaces plus limits.

    ok, why = isolation()                        # is bubblewrap usable here? (probed once, cached)
    result = run_phase([sys.executable, "train.py", ...], lab=lab, work=work, read_only=[split],
                       env={"OMP_NUM_THREADS": "2"}, limits=Limits(seconds=600), log=work_log)
    result.ok, result.error, result.seconds, result.isolated

With bubblewrap (`bwrap`, isolate=True) the command sees, at the SAME absolute paths as outside
(so commands and file names need no translation):

  lab        read-only: the copy of the lab's code with the student's submission.py (the default cwd)
  work       read-write: the phase's private folder, the only host folder it can change
  read_only  read-only: the extra files/folders passed (e.g. one data split), nothing else
  /tmp       a private tmpfs of Limits.tmp_bytes (also HOME and TMPDIR); /dev/shm likewise
  /usr, /bin, /lib*, /sbin, a few /etc files (ld.so.cache, ld.so.conf*, nsswitch.conf, localtime,
  fonts), a synthetic /etc/passwd and /etc/group, and the Python installation (sys.prefix,
  sys.base_prefix, the exec prefixes, the interpreter's real path, and every entry of the clean
  `python -I` sys.path, by real path and as named), all read-only
  /proc of its own PID namespace, a minimal /dev (null, zero, random, urandom, tty, pts, shm)

Everything else (the home folder, /work, /opt, other students' folders, the grader's tables,
the data splits not passed) does not exist inside; the root and /dev are remounted read-only.
It runs as uid/gid 65534 in its own user, PID, network (loopback only), IPC and UTS namespaces
(cgroup namespace when possible), with --disable-userns (no nested namespaces) where bwrap and
the kernel allow it, --new-session and --die-with-parent: when the phase ends or is killed, the
PID namespace and every process in it go with it.

Limits, with or without bubblewrap (set by setrlimit in the child before exec, inherited):
  seconds       wall clock; then the process group (and the pids cgroup, if any) is SIGKILLed
  memory_bytes  RLIMIT_AS (default) or RLIMIT_DATA (Limits.memory_rlimit="DATA") per process.
                CPU torch (2.x, CUDA build) imports and trains under RLIMIT_AS of 4 GiB
                (VmPeak ~3.6 GiB); CUDA reserves far more address space than it uses, so with a
                GPU use "DATA" (RLIMIT_DATA also counts anonymous mmap since Linux 4.7).
  processes     tasks (processes + threads) of the phase, by a pids cgroup the grader creates
                per phase when a pids cgroup hierarchy is writable (cgroup v1 pids, or v2 with
                pids delegated); otherwise by RLIMIT_NPROC, which the kernel does NOT enforce
                for uid 0 (even mapped into bwrap's user namespace: the host uid stays 0), so as
                root without a writable pids cgroup the process limit is not enforced;
                process_limit() says which applies.
  file_bytes    RLIMIT_FSIZE: the largest file it may write, the log included
  work_bytes    the disk space of everything in the work folder together, and work_files the number
                of its files and folders: checked twice a second, and the phase is killed when it is
                over (a burst between two checks can overshoot by what the disk writes in half a
                second, each file still under file_bytes)
  cpu_seconds   CPU time of the whole phase: RLIMIT_CPU per process (all its threads together;
                SIGXCPU, then SIGKILL CPU_GRACE_SECONDS later), and, twice a second, the CPU of
                every task that was ever in the phase, counted by a cpuacct cgroup (v1) or cpu.stat
                (v2) made for it where one can be made, else by summing the process tree (which
                misses children that ended with no one waiting for them: cpu_limit() says which)
  tmp_bytes     size of the private /tmp and /dev/shm tmpfs (bubblewrap only)
  RLIMIT_CORE is 0. Without bubblewrap, nothing hides or protects the file system or network:
  isolation() says why, and the caller should warn or refuse (--require_isolation).

Stdlib only; Linux only for the isolation and cgroup parts.
"""
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:  # not POSIX: no limits, no isolation
    resource = None

SANDBOX_UID = 65534  # "nobody" inside the user namespace
BWRAP_HELPERS = 2    # bwrap's own processes (outer bwrap + the PID namespace's init) in the pids cgroup
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/nsswitch.conf",
             "/etc/localtime", "/etc/fonts")
BLOCKED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONINSPECT",
               "PYTHONSAFEPATH", "PYTHONEXECUTABLE", "LD_PRELOAD", "LD_AUDIT")
GiB = 1 << 30
CPU_GRACE_SECONDS = 2  # between the CPU limit's SIGXCPU (which a process may catch) and its SIGKILL
WORK_POLL_SECONDS = 0.5


@dataclass
class Limits:
    seconds: float                 # wall clock; then the whole group/namespace is killed
    memory_bytes: int = 6 * GiB    # per process, RLIMIT_AS (or RLIMIT_DATA, see memory_rlimit)
    processes: int = 64            # processes + threads of the phase (pids cgroup; see process_limit())
    file_bytes: int = 2 * GiB      # largest file it may write (RLIMIT_FSIZE), the log included
    tmp_bytes: int = 512 << 20     # size of the private /tmp and /dev/shm (bubblewrap only)
    memory_rlimit: str = "AS"      # "AS" (address space) or "DATA" (data + anonymous mmap; for CUDA)
    work_bytes: int = None         # disk space of the work folder, all files together (None: no limit)
    work_files: int = 100_000      # files and folders in the work folder (inodes are a disk's too)
    cpu_seconds: float = None      # CPU time of the phase, all its processes together (None: no limit)


@dataclass
class PhaseResult:
    ok: bool
    error: str             # one line, '' when ok
    seconds: float
    isolated: bool = False  # whether it ran under bubblewrap
    over_budget: bool = False  # its disk or CPU went past the limits: nothing it wrote is to be trusted


# ====================================================================== what is available
def _bwrap_path():
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap")
                                          if os.access(p, os.X_OK)), None)


@functools.lru_cache(maxsize=None)
def _probe_bwrap():
    """(available, description, disable_userns) after really running a Python inside bwrap."""
    if not sys.platform.startswith("linux"):
        return False, f"bubblewrap needs Linux (this is {sys.platform})", False
    bwrap = _bwrap_path()
    if not bwrap:
        return False, "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)", False
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"{bwrap} does not run: {error}", False
    why = ""
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as temp:
        lab, work = Path(temp, "lab"), Path(temp, "work")
        lab.mkdir()
        work.mkdir()
        for disable_userns in (True, False):
            command = bwrap_command([sys.executable, "-c", "open('ok', 'w').write('1')"], lab=lab, work=work,
                                   cwd=work, limits=Limits(seconds=20), disable_userns=disable_userns)
            with _etc_data() as (fds, command_fds):
                command = _bind_data_fds(command, command_fds)
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=30, pass_fds=fds,
                                          env=_child_env({}, "/tmp"), stdin=subprocess.DEVNULL)
                except (OSError, subprocess.SubprocessError) as error:
                    return False, f"{bwrap} does not run: {error}", False
            if done.returncode == 0 and (work / "ok").is_file():
                extra = "" if disable_userns else "; nested user namespaces NOT disabled (bwrap or kernel too old)"
                return True, (f"{version or 'bubblewrap'}: read-only lab, private work and /tmp, no network, "
                              f"own user/PID namespaces{extra}"), disable_userns
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            why = why or (lines[-1].strip() if lines else f"exit code {done.returncode}")
    return False, f"bubblewrap is installed but unusable here ({why}); user namespaces disabled?", False


def isolation():
    """(available, one line): whether run_phase can isolate with bubblewrap, and how or why not.
    Runs bwrap once (cached): it can be installed but unusable without user namespaces."""
    available, description, _ = _probe_bwrap()
    return available, description


# ====================================================================== the pids cgroup
def _cgroup_parents(controller: str = "pids"):
    """Folders of this process's own cgroup of `controller` (its v1 hierarchy, then v2) where a child
    may be made."""
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    paths = {}
    for line in own:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":
            paths["v2"] = path
        elif controller in controllers.split(","):
            paths["v1"] = path
    parents = []
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mountpoint, fstype, options = fields[3], fields[4], tail[0], tail[2].split(",")
        kind = "v1" if fstype == "cgroup" and controller in options else "v2" if fstype == "cgroup2" else None
        path = paths.get(kind) if kind else None
        if path is None:
            continue
        if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
            continue
        relative = path[len(root):] if root != "/" else path
        folder = Path(mountpoint, relative.lstrip("/"))
        if kind == "v2" and controller == "pids":  # v2 counts every cgroup's CPU (cpu.stat) without delegation
            try:
                if "pids" not in (folder / "cgroup.subtree_control").read_text().split():
                    continue
            except OSError:
                continue
        parents.append(folder)
    return parents


class _PidsCgroup:
    """A pids cgroup made for one phase: pids.max, joined by the child before exec, killed and
    removed after."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs = str(folder / "cgroup.procs")

    @classmethod
    def create(cls, max_tasks: int):
        for parent in _cgroup_parents():
            folder = parent / f"vae-sandbox-{os.getpid()}-{uuid.uuid4().hex[:10]}"
            try:
                folder.mkdir()
            except OSError:
                continue
            try:
                (folder / "pids.max").write_text(str(max_tasks))
                return cls(folder)
            except OSError:
                try:
                    folder.rmdir()
                except OSError:
                    pass
        return None

    def join(self):
        """In the child (preexec_fn): move itself into the cgroup."""
        fd = os.open(self.procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    def pids(self):
        try:
            return [int(line) for line in Path(self.procs).read_text().split()]
        except (OSError, ValueError):
            return []

    def kill_and_remove(self, timeout: float = 5.0):
        """SIGKILL everything in it (again and again: a fork loop), then remove it."""
        deadline = time.monotonic() + timeout
        kill_file = self.folder / "cgroup.kill"  # cgroup v2 only
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                break
            if kill_file.exists():
                try:
                    kill_file.write_text("1")
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)
        while True:  # zombies still count until reaped
            try:
                self.folder.rmdir()
                return
            except OSError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.02)


class _CpuCgroup(_PidsCgroup):
    """A cgroup made for one phase that counts the CPU time of every task that was ever in it, those
    that ended and were reaped by no one (a parent that ignores SIGCHLD) included: cgroup v1's
    cpuacct.usage, or v2's cpu.stat."""

    @classmethod
    def create(cls):
        for parent in _cgroup_parents("cpuacct"):
            folder = parent / f"vae-sandbox-cpu-{os.getpid()}-{uuid.uuid4().hex[:10]}"
            try:
                folder.mkdir()
            except OSError:
                continue
            group = cls(folder)
            if group.seconds() is not None:
                return group
            try:
                folder.rmdir()
            except OSError:
                pass
        return None

    def seconds(self):
        try:
            if (self.folder / "cpuacct.usage").exists():
                return int((self.folder / "cpuacct.usage").read_text()) / 1e9
            fields = dict(line.split() for line in (self.folder / "cpu.stat").read_text().splitlines())
            return int(fields["usage_usec"]) / 1e6
        except (OSError, ValueError, KeyError):
            return None


def cpu_limit() -> str:
    """How a phase's CPU time is counted here, in words."""
    group = _CpuCgroup.create()
    if group is None:
        return "by the process tree (no cpuacct cgroup can be made: children nobody waits for are missed)"
    group.kill_and_remove()
    return f"by a cpu cgroup (under {group.folder.parent})"


def _user_tasks(uid: int) -> int:
    """How many tasks (threads included) the user has now: RLIMIT_NPROC counts all of them."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                pass
    return count


@functools.lru_cache(maxsize=None)
def process_limit():
    """(enforced, one line): how Limits.processes is enforced here (probed once, cached)."""
    group = _PidsCgroup.create(8)
    if group is not None:
        group.kill_and_remove()
        return True, f"pids cgroup (under {group.folder.parent})"
    if resource is None or not hasattr(resource, "RLIMIT_NPROC"):
        return False, "not enforced: no pids cgroup and no RLIMIT_NPROC on this system"
    if os.geteuid() == 0:
        return False, ("not enforced: running as root, for which the kernel ignores RLIMIT_NPROC (also inside "
                       "bwrap's user namespace, where the host uid stays 0), and no writable pids cgroup")
    return True, "RLIMIT_NPROC (approximate: counts all of this user's tasks, so the limit is set above them)"


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


def bwrap_command(command: list, *, lab, work, read_only=(), cwd=None, limits: Limits,
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


# ====================================================================== running a phase
def _child_env(env: dict, home: str) -> dict:
    base = {"PATH": os.pathsep.join(dict.fromkeys([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin",
                                                   "/bin"])),
            "HOME": home, "TMPDIR": home, "USER": "sandbox", "LOGNAME": "sandbox", "LANG": "C.UTF-8",
            "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{home}/.matplotlib", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"}
    base.update({key: str(value) for key, value in (env or {}).items() if key not in BLOCKED_ENV})
    return base


def _set_limits(limits: Limits, nproc):
    """In the child, before exec (inherited by bwrap's children)."""
    if resource is None:
        return
    memory = resource.RLIMIT_DATA if limits.memory_rlimit.upper() == "DATA" else resource.RLIMIT_AS
    settings = [(resource.RLIMIT_FSIZE, int(limits.file_bytes)), (memory, int(limits.memory_bytes)),
                (resource.RLIMIT_CORE, 0)]
    if limits.cpu_seconds is not None:
        cpu = max(1, int(limits.cpu_seconds))
        settings.append((resource.RLIMIT_CPU, (cpu, cpu + CPU_GRACE_SECONDS)))
    if nproc is not None:
        settings.append((resource.RLIMIT_NPROC, nproc))
    for which, value in settings:
        try:
            resource.setrlimit(which, value if isinstance(value, tuple) else (value, value))
        except (ValueError, OSError):
            pass


def log_tail(log: Path, tail: int = 16384) -> str:
    """The last `tail` bytes of a log, decoded ('' if unreadable)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - tail))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


LOG_KEEP_HEAD, LOG_KEEP_TAIL = 64 << 10, 1 << 20


def trim_log(log: Path, head: int = LOG_KEEP_HEAD, tail: int = LOG_KEEP_TAIL) -> None:
    """Keep a finished phase's log to its first `head` and last `tail` bytes, so that what a student's
    process printed leaves at most about a MiB per phase on the grader's disk (while the phase runs,
    the log counts toward its disk limit)."""
    try:
        size = os.stat(log).st_size
        if size <= head + tail:
            return
        with open(log, "rb") as handle:
            first = handle.read(head)
            handle.seek(size - tail)
            last = handle.read(tail)
        cut = f"\n[... {size - head - tail:,} bytes of this log cut by the grader ...]\n".encode()
        partial = log.with_name(f".{log.name}.tmp")
        partial.write_bytes(first + cut + last)
        os.replace(partial, log)
    except OSError:
        pass


def last_error_line(log: Path) -> str:
    """The most telling line at the end of a log: an `error: ...` line of the lab's scripts, else
    the exception line of a traceback, else the last line."""
    lines = [" ".join(line.split()) for line in re.split(r"[\r\n]+", log_tail(log))]
    lines = [line for line in lines if line and not re.search(r"\d+%\|", line)]  # drop tqdm bars
    for pattern in (r"^error: ", r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b"):
        for line in reversed(lines):
            if re.match(pattern, line):
                return re.sub(r"^error: ", "", line)[:240]
    return lines[-1][:240] if lines else ""


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and all its descendants: user and system time of each, and of the
    children each has waited for (a process that ended counts once its parent reaped it; a zombie
    still shows its own). Under bubblewrap an orphan is adopted by the PID namespace's init, inside
    the tree; without it, an orphan leaves the tree (and the count). Linux /proc only; 0 elsewhere."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return 0.0
    parents, times = {}, {}
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            # after the command name: state ppid ... utime(11) stime(12) cutime(13) cstime(14)
            parents[int(entry)], times[int(entry)] = int(fields[1]), sum(int(value) for value in fields[11:15])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
    children = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / ticks


def disk_usage(folder: Path) -> tuple:
    """(bytes the files under `folder` take, number of files and folders), by `du`, which walks any
    depth and any path length and does not follow links. The bytes are the larger of the allocated
    blocks and the apparent sizes: a file system that allocates late shows few blocks for data just
    written, and a sparse file counts in full. What cannot be measured counts as over any limit."""
    counts = []
    try:
        for flags in (["-B1"], ["-B1", "--apparent-size"], ["--inodes"]):
            done = subprocess.run(["du", "-s", *flags, "--", str(folder)], capture_output=True, text=True, timeout=60)
            if done.returncode:
                raise ValueError(done.stderr)
            counts.append(int(done.stdout.split()[0]))
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return float("inf"), float("inf")
    return max(counts[0], counts[1]), counts[2]


def remove_tree(path: Path) -> None:
    """Remove a folder a phase wrote into, whatever its depth (`rm -rf`; shutil.rmtree recurses once per
    level, and a chain of a thousand folders would raise RecursionError in the grader)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        shutil.rmtree(path, ignore_errors=True)


def _size(number: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if number >= scale:
            return f"{number / scale:g} {unit}"
    return f"{number} bytes"


def _hint(line: str, limits: Limits) -> str:
    """The limit a failure line points at, if any."""
    if re.search(r"MemoryError|can't allocate memory|Cannot allocate memory|bad_alloc|out of memory", line, re.I):
        return f"memory limit {_size(limits.memory_bytes)} per process"
    if re.search(r"File too large|EFBIG|File size limit exceeded", line):
        return f"file size limit {_size(limits.file_bytes)}"
    if re.search(r"No space left on device", line):
        return f"/tmp holds {_size(limits.tmp_bytes)}; write into the work folder"
    if re.search(r"Resource temporarily unavailable|can't start new thread|BlockingIOError", line):
        return f"process limit {limits.processes}"
    if re.search(r"Read-only file system|Permission denied", line):
        return "only the work folder and /tmp are writable"
    return ""


def _signal_error(number: int, limits: Limits) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    why = {"SIGXFSZ": f"wrote a file larger than the limit, {_size(limits.file_bytes)}",
           "SIGXCPU": f"used more CPU time than the limit, {limits.cpu_seconds or 0:g} s",
           "SIGKILL": "out of memory, or past the CPU time limit?" if limits.cpu_seconds else "out of memory?",
           "SIGSEGV": "crashed", "SIGABRT": "aborted"}.get(name, "")
    return f"killed by {name}" + (f" ({why})" if why else "")


def run_phase(command: list, *, lab: Path, work: Path, read_only=(), env: dict = None, limits: Limits,
              log: Path, isolate: bool = True, cwd: Path = None, devices=()) -> PhaseResult:
    """Run `command` (use sys.executable for Python) as one phase of untrusted code, stdout and
    stderr into `log`, with `limits`; under bubblewrap when isolate and isolation() allow,
    else plainly with the limits only. `work` is made if missing; `cwd` defaults to `lab`; `env`
    adds to the clean environment (PYTHONPATH and the like are dropped); `devices` are
    device nodes to pass through (e.g. /dev/nvidia*; untested). Never raises for the command's
    failures: a crash, a limit or a hang is PhaseResult(ok=False, error=one line)."""
    lab, work, log = Path(lab), Path(work), Path(log)
    if not lab.is_dir():
        raise FileNotFoundError(f"lab folder {lab} does not exist")
    for path in [*read_only, *devices]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} (to pass into the sandbox) does not exist")
    work.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    available, _, disable_userns = _probe_bwrap() if isolate else (False, "", False)
    temp_home = None
    group = _PidsCgroup.create(int(limits.processes) + (BWRAP_HELPERS if available else 0))
    cpu_group = _CpuCgroup.create() if limits.cpu_seconds is not None else None
    nproc = None
    if group is None and resource is not None and os.geteuid() != 0:
        nproc = int(limits.processes) + _user_tasks(os.getuid()) + 4
    if available:
        home = "/tmp"
        argv = bwrap_command(command, lab=lab, work=work, read_only=read_only, cwd=cwd, limits=limits,
                             devices=devices, disable_userns=disable_userns)
    else:
        temp_home = tempfile.mkdtemp(prefix="sandbox-home-")
        home = temp_home
        argv = [str(part) for part in command]

    def preexec():
        _set_limits(limits, nproc)
        for joined in (group, cpu_group):
            if joined is not None:
                try:
                    joined.join()
                except OSError:
                    pass

    started = time.perf_counter()
    timed_out = over_disk = over_cpu = False
    try:
        with open(log, "wb") as output, _etc_data() as (fds, command_fds):
            if available:
                argv = _bind_data_fds(argv, command_fds)
            try:
                process = subprocess.Popen(argv, cwd=work if available else (cwd or lab), env=_child_env(env, home),
                                           stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                           start_new_session=True, preexec_fn=preexec,
                                           pass_fds=fds if available else ())
            except OSError as error:
                for made in (group, cpu_group):
                    if made is not None:
                        made.kill_and_remove()
                return PhaseResult(False, f"could not start {argv[0]}: {error.strerror or error}",
                                   time.perf_counter() - started, available)
            deadline = started + limits.seconds
            try:
                while True:  # the wall clock, and the work folder's disk space twice a second
                    try:
                        process.wait(timeout=max(0.0, min(WORK_POLL_SECONDS, deadline - time.perf_counter())))
                        break
                    except subprocess.TimeoutExpired:
                        if time.perf_counter() >= deadline:
                            timed_out = True
                            break
                        if limits.work_bytes is not None:  # the log is the phase's writing too
                            used, files = disk_usage(work)
                            used += log.stat().st_size
                            if used > limits.work_bytes or files > limits.work_files:
                                over_disk = True
                                break
                        if limits.cpu_seconds is not None:  # the cgroup counts every task ever in it
                            used_cpu = cpu_group.seconds() if cpu_group else None
                            if used_cpu is None:  # no cgroup here: the process tree
                                used_cpu = tree_cpu_seconds(process.pid)
                            if used_cpu > limits.cpu_seconds:
                                over_cpu = True
                                break
                if not (timed_out or over_disk or over_cpu) and limits.work_bytes is not None:
                    used, files = disk_usage(work)  # once more at the end: a short phase can end between checks
                    over_disk = used + log.stat().st_size > limits.work_bytes or files > limits.work_files
            finally:  # the whole group, even after a normal end: stray children
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                for made in (group, cpu_group):
                    if made is not None:
                        made.kill_and_remove()
                try:  # killed with its whole group; a process stuck in the kernel must not hang the grader
                    code = process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    code = -signal.SIGKILL
    finally:
        if temp_home:
            shutil.rmtree(temp_home, ignore_errors=True)
    seconds = time.perf_counter() - started
    if timed_out:
        return PhaseResult(False, f"timed out after {limits.seconds:g} s (killed)", seconds, available)
    if over_disk:
        return PhaseResult(False, f"its files in the work folder took more than {_size(limits.work_bytes)} of disk, "
                                  f"or were more than {limits.work_files:,} (killed)", seconds, available, True)
    if over_cpu:
        return PhaseResult(False, f"its processes together used more CPU time than the limit, "
                                  f"{limits.cpu_seconds:g} s (killed)", seconds, available, True)
    if code == 0:
        return PhaseResult(True, "", seconds, available)
    # bwrap's init reports a child killed by signal N as exit code 128 + N
    number = -code if code < 0 else code - 128 if available and 128 < code < 128 + 65 else 0
    if number:
        return PhaseResult(False, _signal_error(number, limits), seconds, available)
    try:
        log_size = log.stat().st_size
    except OSError:
        log_size = 0
    if log_size >= limits.file_bytes:
        return PhaseResult(False, f"its output reached the file size limit, {_size(limits.file_bytes)}",
                           seconds, available)
    line = last_error_line(log)
    if not line:
        return PhaseResult(False, f"exited with code {code}", seconds, available)
    hint = _hint(line, limits)
    return PhaseResult(False, f"{line} ({hint})" if hint else line, seconds, available)
