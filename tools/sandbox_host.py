"""What this host can enforce on a phase, and how a phase's use is measured, for tools/sandbox.py: a
pids cgroup (the process limit) and a cpu cgroup (the CPU limit) made per phase where a hierarchy is
writable, the fallbacks and what they miss (process_limit(), cpu_limit() say which applies), the CPU
of a process tree from /proc, the disk a folder takes, and a phase's log (its telling line, its trim).
Stdlib only; Linux for the cgroups."""
import functools
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

try:
    import resource
except ImportError:  # not POSIX
    resource = None

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
