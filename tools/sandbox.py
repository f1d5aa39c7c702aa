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
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools.sandbox_bwrap import _bind_data_fds, _bwrap_path, _etc_data, bwrap_command, python_paths  # noqa: F401
from tools.sandbox_host import (LOG_KEEP_HEAD, LOG_KEEP_TAIL, _CpuCgroup, _PidsCgroup, _user_tasks,  # noqa: F401
                                cpu_limit, disk_usage, last_error_line, log_tail, process_limit, tree_cpu_seconds,
                                trim_log)

try:
    import resource
except ImportError:  # not POSIX: no limits, no isolation
    resource = None

BWRAP_HELPERS = 2    # bwrap's own processes (outer bwrap + the PID namespace's init) in the pids cgroup
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


@dataclass
class _Setup:
    """What run_phase prepared: the command line, the environment's home, the cgroups made for the phase."""
    argv: list
    home: str
    isolated: bool
    group: object = None
    cpu_group: object = None
    nproc: int = None
    temp_home: str = None

    def preexec(self, limits: Limits):
        """In the child, before exec: the rlimits, and the phase's cgroups (inherited by its children)."""
        _set_limits(limits, self.nproc)
        for joined in (self.group, self.cpu_group):
            if joined is not None:
                try:
                    joined.join()
                except OSError:
                    pass

    def release(self):
        """Kill what is left in the phase's cgroups and remove them, and the home made without bubblewrap
        (once; a second call does nothing)."""
        for made in (self.group, self.cpu_group):
            if made is not None:
                made.kill_and_remove()
        self.group = self.cpu_group = None
        if self.temp_home:
            shutil.rmtree(self.temp_home, ignore_errors=True)
            self.temp_home = None


def _setup(command, lab, work, read_only, limits, log, isolate, cwd, devices) -> _Setup:
    lab, work = Path(lab), Path(work)
    if not lab.is_dir():
        raise FileNotFoundError(f"lab folder {lab} does not exist")
    for path in [*read_only, *devices]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} (to pass into the sandbox) does not exist")
    work.mkdir(parents=True, exist_ok=True)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    available, _, disable_userns = _probe_bwrap() if isolate else (False, "", False)
    if available:
        setup = _Setup(bwrap_command(command, lab=lab, work=work, read_only=read_only, cwd=cwd, limits=limits,
                                     devices=devices, disable_userns=disable_userns), "/tmp", True)
    else:
        home = tempfile.mkdtemp(prefix="sandbox-home-")
        setup = _Setup([str(part) for part in command], home, False, temp_home=home)
    setup.group = _PidsCgroup.create(int(limits.processes) + (BWRAP_HELPERS if available else 0))
    setup.cpu_group = _CpuCgroup.create() if limits.cpu_seconds is not None else None
    if setup.group is None and resource is not None and os.geteuid() != 0:
        setup.nproc = int(limits.processes) + _user_tasks(os.getuid()) + 4
    return setup


def _over_disk(work: Path, log: Path, limits: Limits) -> bool:
    used, files = disk_usage(work)
    return used + log.stat().st_size > limits.work_bytes or files > limits.work_files  # the log is its writing too


def _watch(process, setup: _Setup, work: Path, log: Path, limits: Limits, started: float) -> str:
    """Wait for the phase, checking twice a second its wall clock, its work folder's disk and its CPU
    (the cgroup counts every task ever in it; without one, the process tree); then kill its whole group,
    even after a normal end (stray children). Returns which limit it went past: '', 'time', 'disk', 'cpu'."""
    deadline, over = started + limits.seconds, ""
    try:
        while True:
            try:
                process.wait(timeout=max(0.0, min(WORK_POLL_SECONDS, deadline - time.perf_counter())))
                break
            except subprocess.TimeoutExpired:
                if time.perf_counter() >= deadline:
                    return "time"
                if limits.work_bytes is not None and _over_disk(work, log, limits):
                    return "disk"
                if limits.cpu_seconds is not None:
                    used_cpu = setup.cpu_group.seconds() if setup.cpu_group else None
                    if (tree_cpu_seconds(process.pid) if used_cpu is None else used_cpu) > limits.cpu_seconds:
                        return "cpu"
        if limits.work_bytes is not None and _over_disk(work, log, limits):  # a short phase ends between checks
            over = "disk"
        return over
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        setup.release()


def _verdict(code: int, over: str, log: Path, limits: Limits, seconds: float, isolated: bool) -> PhaseResult:
    """The phase's result in one line, from its exit code, the limit it went past, and its log."""
    if over == "time":
        return PhaseResult(False, f"timed out after {limits.seconds:g} s (killed)", seconds, isolated)
    if over == "disk":
        return PhaseResult(False, f"its files in the work folder took more than {_size(limits.work_bytes)} of disk, "
                                  f"or were more than {limits.work_files:,} (killed)", seconds, isolated, True)
    if over == "cpu":
        return PhaseResult(False, f"its processes together used more CPU time than the limit, "
                                  f"{limits.cpu_seconds:g} s (killed)", seconds, isolated, True)
    if code == 0:
        return PhaseResult(True, "", seconds, isolated)
    # bwrap's init reports a child killed by signal N as exit code 128 + N
    number = -code if code < 0 else code - 128 if isolated and 128 < code < 128 + 65 else 0
    if number:
        return PhaseResult(False, _signal_error(number, limits), seconds, isolated)
    try:
        log_size = log.stat().st_size
    except OSError:
        log_size = 0
    if log_size >= limits.file_bytes:
        return PhaseResult(False, f"its output reached the file size limit, {_size(limits.file_bytes)}",
                           seconds, isolated)
    line = last_error_line(log)
    if not line:
        return PhaseResult(False, f"exited with code {code}", seconds, isolated)
    hint = _hint(line, limits)
    return PhaseResult(False, f"{line} ({hint})" if hint else line, seconds, isolated)


def run_phase(command: list, *, lab: Path, work: Path, read_only=(), env: dict = None, limits: Limits,
              log: Path, isolate: bool = True, cwd: Path = None, devices=()) -> PhaseResult:
    """Run `command` (use sys.executable for Python) as one phase of untrusted code, stdout and
    stderr into `log`, with `limits`; under bubblewrap when isolate and isolation() allow,
    else plainly with the limits only. `work` is made if missing; `cwd` defaults to `lab`; `env`
    adds to the clean environment (PYTHONPATH and the like are dropped); `devices` are
    device nodes to pass through (e.g. /dev/nvidia*; untested). Never raises for the command's
    failures: a crash, a limit or a hang is PhaseResult(ok=False, error=one line)."""
    lab, work, log = Path(lab), Path(work), Path(log)
    setup = _setup(command, lab, work, read_only, limits, log, isolate, cwd, devices)
    started = time.perf_counter()
    try:
        with open(log, "wb") as output, _etc_data() as (fds, command_fds):
            argv = _bind_data_fds(setup.argv, command_fds) if setup.isolated else setup.argv
            try:
                process = subprocess.Popen(argv, cwd=work if setup.isolated else (cwd or lab),
                                           env=_child_env(env, setup.home), stdin=subprocess.DEVNULL, stdout=output,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           preexec_fn=lambda: setup.preexec(limits),
                                           pass_fds=fds if setup.isolated else ())
            except OSError as error:
                setup.release()
                return PhaseResult(False, f"could not start {argv[0]}: {error.strerror or error}",
                                   time.perf_counter() - started, setup.isolated)
            over = _watch(process, setup, work, log, limits, started)
            try:  # killed with its whole group; a process stuck in the kernel must not hang the grader
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = -signal.SIGKILL
    finally:
        setup.release()
    return _verdict(code, over, log, limits, time.perf_counter() - started, setup.isolated)
