"""tools/sandbox.py: the autograder's sandbox for student code, checked with real child processes.

Tests marked by the `mode` fixture run twice: plainly (limits only) and under bubblewrap; the
bubblewrap runs, and the isolation tests, skip with the reason when bwrap is unusable here."""
import importlib.util
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import sandbox  # noqa: E402
from tools.sandbox import CPU_GRACE_SECONDS, Limits, disk_usage, run_phase  # noqa: E402

pytestmark = pytest.mark.slow  # real child processes against the sandbox's time, CPU, disk and memory limits

PY = sys.executable
MiB = 1 << 20


def py(code: str, *args) -> list:
    return [PY, "-c", code, *map(str, args)]


@pytest.fixture
def dirs(tmp_path):
    lab, work = tmp_path / "lab", tmp_path / "work"
    lab.mkdir()
    (lab / "lab_code.py").write_text("VALUE = 1\n")
    return lab, work


@pytest.fixture
def isolated():
    available, why = sandbox.isolation()
    if not available:
        pytest.skip(f"no isolation here: {why}")


@pytest.fixture(params=["plain", "isolated"])
def mode(request):
    if request.param == "isolated":
        available, why = sandbox.isolation()
        if not available:
            pytest.skip(f"no isolation here: {why}")
    return request.param == "isolated"


def phase(command, dirs, isolate=True, **limits):
    lab, work = dirs
    read_only = limits.pop("read_only", ())
    env = limits.pop("env", None)
    limits.setdefault("seconds", 30)
    log = lab.parent / f"log-{uuid.uuid4().hex[:6]}.txt"
    result = run_phase(command, lab=lab, work=work, read_only=read_only, env=env, limits=Limits(**limits),
                       log=log, isolate=isolate)
    return result, log.read_text(errors="replace")


def report(code: str, dirs, **kwargs) -> dict:
    """Run `code` (which fills a dict `out`) in the sandbox; return `out` from its last line."""
    result, log = phase(py("import json, os, sys\nout = {}\n" + code + "\nprint(json.dumps(out))"), dirs, **kwargs)
    assert result.ok, (result, log)
    return json.loads(log.strip().splitlines()[-1])


def processes_with(marker: str) -> list:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def wait_gone(marker: str, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# A child that leaves a grandchild (in a session of its own: killpg alone would miss it) and then
# either sleeps or exits.
SPAWN = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", sys.argv[1]], start_new_session=True)
print("spawned", flush=True)
time.sleep(float(sys.argv[2]))
"""


# ====================================================================== without a child
def test_bwrap_command_mounts_lab_read_only_work_writable_and_nothing_else(tmp_path):
    lab, work, split = tmp_path / "lab", tmp_path / "lab" / "runs", tmp_path / "data" / "valid.npz"
    command = sandbox.bwrap_command([PY, "train.py"], lab=lab, work=work, read_only=[split],
                                    limits=Limits(seconds=5, tmp_bytes=64 * MiB))
    text = " ".join(command)
    for option in ("--unshare-user", "--unshare-pid", "--unshare-net", "--die-with-parent", "--new-session",
                   "--proc /proc", "--dev /dev", f"--size {64 * MiB} --tmpfs /tmp", "--ro-bind /usr /usr"):
        assert option in text
    assert f"--ro-bind {lab} {lab}" in text and f"--bind {work} {work}" in text
    assert f"--ro-bind {split} {split}" in text
    assert text.index(f"--ro-bind {lab} ") < text.index(f"--bind {work} ")  # work, inside lab, stays writable
    assert text.index("--tmpfs /tmp") < text.index(f" {lab} ")  # /tmp's tmpfs first, then binds under it
    assert command[-5:] == ["--chdir", str(lab), "--", PY, "train.py"]
    assert "--remount-ro /" in text and "--share-net" not in text
    for hidden in (str(Path.home()), str(ROOT), "/work", "/opt", "/var"):
        assert not any(arg == hidden for arg in command), hidden
    assert all(not p.startswith(str(ROOT)) for p in sandbox.python_paths())


def test_last_error_line_prefers_error_lines_then_exceptions(tmp_path):
    log = tmp_path / "log"
    log.write_text("Traceback (most recent call last):\n  File x\nValueError: bad shape\n 50%|#####| 5/10\r 60%|###|\n")
    assert sandbox.last_error_line(log) == "ValueError: bad shape"
    log.write_text("training\nerror: the split is missing\nTraceback\nSystemExit: 2\n")
    assert sandbox.last_error_line(log) == "the split is missing"
    log.write_text("just the end\n\n")
    assert sandbox.last_error_line(log) == "just the end"
    assert sandbox.last_error_line(tmp_path / "missing") == ""


# ====================================================================== both modes
def test_a_failure_is_one_line_from_the_log(dirs, mode):
    result, log = phase(py("print('working'); raise ValueError('bad shape')"), dirs, isolate=mode)
    assert not result.ok and result.error == "ValueError: bad shape" and result.isolated == mode
    result, _ = phase(py("import sys; print('error: no such split'); sys.exit(2)"), dirs, isolate=mode)
    assert result.error == "no such split"
    result, _ = phase(py("import lab_code; print(lab_code.VALUE)"), dirs, isolate=mode)  # cwd is lab
    assert result.ok, result


def test_the_environment_is_clean(dirs, mode, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "x")
    out = report("out.update({k: os.environ.get(k) for k in ('PYTHONPATH', 'SECRET_TOKEN', 'MPLBACKEND', "
                 "'OMP_NUM_THREADS', 'HOME', 'PYTHONDONTWRITEBYTECODE')})",
                 dirs, isolate=mode, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out["PYTHONPATH"] is None and out["SECRET_TOKEN"] is None
    assert out["MPLBACKEND"] == "Agg" and out["OMP_NUM_THREADS"] == "1" and out["PYTHONDONTWRITEBYTECODE"] == "1"
    assert out["HOME"] != str(Path.home())


def test_the_wall_clock_limit_kills_the_child_and_its_grandchildren(dirs, mode):
    marker = f"sandbox-test-{uuid.uuid4().hex}"
    started = time.monotonic()
    result, log = phase(py(SPAWN, marker, 1000), dirs, isolate=mode, seconds=1.5)
    assert not result.ok and result.error == "timed out after 1.5 s (killed)", (result, log)
    assert "spawned" in log and time.monotonic() - started < 10
    if not mode and not sandbox.process_limit()[0]:
        pytest.skip("plainly, without a pids cgroup, a grandchild in its own session escapes killpg")
    assert wait_gone(marker) == []


def test_a_finished_phase_leaves_no_process_behind(dirs, mode):
    marker = f"sandbox-test-{uuid.uuid4().hex}"
    result, log = phase(py(SPAWN, marker, 0), dirs, isolate=mode)
    assert result.ok, (result, log)
    if not mode and not sandbox.process_limit()[0]:
        pytest.skip("plainly, without a pids cgroup, a grandchild in its own session escapes killpg")
    assert wait_gone(marker) == []


def test_the_file_size_limit_stops_a_big_write(dirs, mode):
    lab, work = dirs
    result, _ = phase(py("open(sys.argv[1], 'wb').write(b'x' * 3_000_000)".replace("sys", "__import__('sys')"),
                         work / "big.bin"), dirs, isolate=mode, file_bytes=1 * MiB)
    assert not result.ok and "File too large" in result.error and "file size limit 1 MiB" in result.error, result
    # A program that does not ignore SIGXFSZ (Python does) is killed by it.
    result, _ = phase(["/bin/sh", "-c", f"exec head -c 3000000 /dev/zero > {work / 'big2.bin'}"], dirs, isolate=mode,
                      file_bytes=1 * MiB)
    assert not result.ok and result.error == "killed by SIGXFSZ (wrote a file larger than the limit, 1 MiB)", result
    assert (work / "big2.bin").stat().st_size == 1 * MiB
    # A runaway log is stopped too.
    result, _ = phase(py("while True: print('x' * 1000)"), dirs, isolate=mode, file_bytes=1 * MiB)
    assert not result.ok and "file size limit" in result.error, result


def test_the_memory_limit_stops_a_big_allocation(dirs, mode):
    for kind in ("AS", "DATA"):
        result, _ = phase(py("b = bytearray(2 << 30); print('allocated')"), dirs, isolate=mode,
                          memory_bytes=1 << 30, memory_rlimit=kind)
        assert not result.ok and result.error.startswith("MemoryError"), (kind, result)
        assert "memory limit 1 GiB" in result.error


def test_the_process_limit_stops_a_fork_loop(dirs, mode):
    enforced, how = sandbox.process_limit()
    if not enforced:
        pytest.skip(f"process limit {how}")
    code = ("import os, time\nn = 0\n"
            "while n < 200:\n    pid = os.fork()\n    if pid == 0:\n        time.sleep(30); os._exit(0)\n    n += 1\n"
            "print('forked', n)  # %s" % uuid.uuid4().hex)
    started = time.monotonic()
    result, log = phase(py(code), dirs, isolate=mode, processes=16)
    assert not result.ok and "BlockingIOError" in result.error and "process limit 16" in result.error, (result, log)
    assert time.monotonic() - started < 10
    assert wait_gone(code.splitlines()[-1]) == []  # the sleeping children are gone too


# ====================================================================== isolation only
def test_writes_outside_work_fail_and_leave_nothing(dirs, isolated, tmp_path):
    lab, work = dirs
    outside = tmp_path / "outside"
    outside.mkdir()
    name = f".sandbox-test-{uuid.uuid4().hex}"
    targets = [lab / "submission.py", lab / name, outside / name, Path.home() / name, Path("/") / name,
               Path("/etc") / name]
    code = ("for path in %r:\n"
            "    try:\n        open(path, 'w').write('x'); out[path] = 'written'\n"
            "    except OSError as error:\n        out[path] = type(error).__name__\n"
            "open(%r, 'w').write('kept')" % ([str(t) for t in targets], str(work / "result.txt")))
    try:
        out = report(code, dirs)
        for target in targets:
            assert out[str(target)] != "written", target
            assert not target.exists(), target
    finally:  # should isolation ever fail, leave no litter behind
        for target in targets[1:]:
            if target.exists():
                target.unlink()
    assert (work / "result.txt").read_text() == "kept"
    assert sorted(p.name for p in lab.iterdir()) == ["lab_code.py"]


def test_hidden_paths_can_be_neither_read_nor_listed(dirs, isolated, tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "grades.csv").write_text("alice,20\n")
    split = tmp_path / "data" / "valid.npz"
    split.parent.mkdir()
    split.write_bytes(b"split")
    (tmp_path / "data" / "grading.npz").write_bytes(b"secret split")
    paths = [str(hidden / "grades.csv"), str(hidden), str(Path.home()), str(ROOT / "tools" / "sandbox.py"),
             str(tmp_path / "data" / "grading.npz")]
    code = ("for path in %r:\n"
            "    try:\n"
            "        out[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()\n"
            "    except OSError as error:\n        out[path] = type(error).__name__\n"
            "out['split'] = open(%r, 'rb').read().decode()\n"
            "out['data'] = sorted(os.listdir(%r))\n"
            "try:\n    open(%r, 'ab').write(b'x'); out['write'] = 'written'\n"
            "except OSError as error:\n    out['write'] = type(error).__name__\n"
            % (paths, str(split), str(split.parent), str(split)))
    out = report(code, dirs, read_only=[split])
    assert out[paths[0]] == "FileNotFoundError" and out[paths[1]] == "FileNotFoundError"
    assert out[paths[2]] in ("FileNotFoundError", [], [".pyenv"]), out[paths[2]]  # at most the Python install
    assert out[paths[4]] == "FileNotFoundError"
    if not any(str(ROOT).startswith(p) for p in sandbox.python_paths()):
        assert out[paths[3]] == "FileNotFoundError"
    assert out["split"] == "split" and out["data"] == ["valid.npz"]
    assert out["write"] in ("OSError", "PermissionError") and split.read_bytes() == b"split"


def test_there_is_no_network(dirs, isolated):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = ("import socket, time\n"
            "for name, address in (('host', ('127.0.0.1', %d)), ('outside', ('192.0.2.1', 80)), "
            "('public', ('1.1.1.1', 443))):\n"
            "    started = time.monotonic()\n"
            "    try:\n        socket.create_connection(address, timeout=5); out[name] = 'connected'\n"
            "    except OSError as error:\n        out[name] = type(error).__name__\n"
            "    out[name + '_s'] = time.monotonic() - started\n" % port)
    try:
        out = report(code, dirs)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert out["host"] == "ConnectionRefusedError"
    for name in ("outside", "public"):
        assert out[name] != "connected" and out[name + "_s"] < 1.0, out


def test_isolate_false_runs_plainly(dirs, isolated):
    result, _ = phase(py("import os; assert os.path.exists(%r)" % str(ROOT)), dirs, isolate=False)
    assert result.ok and not result.isolated


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_and_the_lab_packages_import_under_the_limits(dirs, isolated):
    code = ("import torch, numpy, PIL, skimage, matplotlib, tqdm\n"
            "import matplotlib.pyplot as plt\n"
            "model = torch.nn.Linear(784, 16)\n"
            "loss = model(torch.rand(8, 784)).pow(2).mean(); loss.backward()\n"
            "plt.plot([1, 2]); plt.savefig(os.path.join(sys.argv[1], 'plot.png'))\n"
            "out['torch'] = torch.__version__; out['loss'] = float(loss)")
    lab, work = dirs
    result, log = phase(py("import json, os, sys\nout = {}\n" + code + "\nprint(json.dumps(out))", work), dirs,
                        seconds=120, memory_bytes=6 << 30, env={"OMP_NUM_THREADS": "1"})
    assert result.ok, (result, log[-2000:])
    assert json.loads(log.strip().splitlines()[-1])["torch"] and (work / "plot.png").is_file()


def test_the_cpu_time_limit_stops_a_phase_that_computes_too_long(dirs, mode):
    """CPU time, not wall time: a phase that sleeps is not stopped by it, one that computes is, even if it
    ignores SIGXCPU (SIGKILL follows)."""
    result, _ = phase(py("import time; time.sleep(1.5); print('slept')"), dirs, isolate=mode, cpu_seconds=1)
    assert result.ok, result
    # whichever comes first: the process's own limit (SIGXCPU) or the phase's count, twice a second
    stopped = ("killed by SIGXCPU (used more CPU time than the limit, 1 s)",
               "its processes together used more CPU time than the limit, 1 s (killed)")
    result, _ = phase(py("while True: pass"), dirs, isolate=mode, cpu_seconds=1)
    assert not result.ok and result.error.startswith(stopped), result
    ignoring = "import signal; signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass"
    started = time.perf_counter()
    result, _ = phase(py(ignoring), dirs, isolate=mode, cpu_seconds=1)
    assert not result.ok and (result.error.startswith(stopped) or "SIGKILL" in result.error), result
    assert time.perf_counter() - started < 1 + CPU_GRACE_SECONDS + 5


SPREAD = ("import multiprocessing as mp, sys, time\n"
          "def spin():\n    end = time.process_time() + 1.2\n    while time.process_time() < end: pass\n"
          "if __name__ == '__main__':\n"
          "    for _ in range(int(sys.argv[1])):\n        p = mp.Process(target=spin); p.start(); p.join()\n")


def test_the_cpu_time_of_child_processes_counts_toward_the_phase(dirs):
    """Work spread over child processes, each under the per-process limit, is stopped by the phase's total.
    (The count is the same with and without bubblewrap: run without, which every machine can.)"""
    result, _ = phase(py(SPREAD, 4), dirs, isolate=False, cpu_seconds=2)
    assert not result.ok and result.error == "its processes together used more CPU time than the limit, 2 s (killed)"
    result, _ = phase(py(SPREAD, 1), dirs, isolate=False, cpu_seconds=5)
    assert result.ok, result


@pytest.mark.skipif(sandbox._CpuCgroup.create() is None, reason=f"CPU counted {sandbox.cpu_limit()}")
def test_children_nobody_waits_for_count_too(dirs):
    """A parent that ignores SIGCHLD has its children reaped by the kernel, whose CPU then counts toward no
    process left in the tree: the phase's cgroup counts it all the same."""
    spread = ("import os, signal, time\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
              "for _ in range(4):\n    if os.fork() == 0:\n"
              "        end = time.process_time() + 1.2\n        while time.process_time() < end: pass\n"
              "        os._exit(0)\n    time.sleep(1.5)\nprint('spread 4.8 s')")
    result, _ = phase(py(spread), dirs, isolate=False, cpu_seconds=2)
    assert not result.ok and result.error == "its processes together used more CPU time than the limit, 2 s (killed)"


def test_the_work_folder_limit_stops_a_phase_that_fills_the_disk(dirs, mode):
    """Many files, each under the file size limit, together over the work folder's limit: killed, and
    the disk is not filled (each file is stopped at the file size limit)."""
    lab, work = dirs
    fill = f"for i in range(100): open(r'{work}/f%d' % i, 'wb').write(b'x' * (1 << 20))\nimport time; time.sleep(30)"
    started = time.perf_counter()
    result, _ = phase(py(fill), dirs, isolate=mode, file_bytes=2 * MiB, work_bytes=8 * MiB)
    assert not result.ok and "its files in the work folder took more than 8 MiB of disk" in result.error, result
    # a chain of 1,100 folders (paths past 4,096 characters) hides nothing, and is removed whole
    deep = (f"import os\nos.chdir(r'{work}')\nfor i in range(1100):\n    os.mkdir('d'); os.chdir('d')\n"
            f"open('bottom', 'wb').write(b'x' * (20 << 20))\nimport time; time.sleep(30)")
    result, _ = phase(py(deep), dirs, isolate=mode, file_bytes=32 * MiB, work_bytes=8 * MiB)
    assert not result.ok and "its files in the work folder took more than 8 MiB of disk" in result.error, result
    sandbox.remove_tree(work / "d")
    assert not (work / "d").exists()
    # what the phase prints counts too: its log lies outside the work folder, but it is the phase's writing
    result, _ = phase(py("import sys, time\nfor _ in range(20): sys.stdout.write('x' * (1 << 20)); sys.stdout.flush()\n"
                         "time.sleep(30)"), dirs, isolate=mode, file_bytes=64 * MiB, work_bytes=8 * MiB)
    assert not result.ok and "took more than 8 MiB" in result.error, result
    # many empty files take no disk, but they take the disk's inodes
    result, _ = phase(py(f"for i in range(5000): open(r'{work}/e%d' % i, 'w').close()\nimport time; time.sleep(30)"),
                      dirs, isolate=mode, work_bytes=8 * MiB, work_files=1000)
    assert not result.ok and "or were more than 1,000 (killed)" in result.error, result
    assert time.perf_counter() - started < 10
    # a phase that ends before the next check is measured once more at its end
    result, _ = phase(py(f"open(r'{work}/quick', 'wb').write(b'x' * (12 << 20))"), dirs, isolate=mode,
                      file_bytes=32 * MiB, work_bytes=8 * MiB)
    assert not result.ok and "took more than 8 MiB" in result.error, result
    for leftover in work.iterdir():  # what the phases above left
        sandbox.remove_tree(leftover)
    # a phase that stays under it is not disturbed
    result, _ = phase(py(f"open(r'{work}/small', 'wb').write(b'x' * 1000)"), dirs, isolate=mode, work_bytes=8 * MiB)
    assert result.ok, result


def test_disk_usage_counts_what_files_hold_without_following_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "data").write_bytes(b"x" * (1 << 20))
    with open(tmp_path / "sparse", "wb") as handle:  # 1 GiB apparent, nothing written
        handle.truncate(1 << 30)
    (tmp_path / "link").symlink_to("/usr")
    used, files = disk_usage(tmp_path)
    # the sparse file counts in full (it could be filled at once), the link as a link
    assert (1 << 30) + (1 << 20) <= used < (1 << 30) + (1 << 20) + 64 * 1024 and files == 5
