"""The autograder on a Dask cluster started from the command line, the way docs/course.md's Slurm script starts
one: `dask scheduler` and two `dask worker` processes (the venv's own command-line tools) on this machine,
then the grader's command line against the scheduler's address. Four students of the test batch (conftest.py's
`graded`) are graded there, and the worker grading one of them is SIGKILLed while that student trains: the
batch still finishes with every student graded, their rows those of the local backend, column for column.

The commands are COMMANDS below; docs/course.md's sbatch script is the same commands, with srun starting one
worker per node."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autograde_batch import BUDGET, read_run
from conftest import ROOT
from tools.autograde import cache, reports

pytestmark = pytest.mark.slow  # a batch on a real cluster
distributed = pytest.importorskip("distributed", reason="dask.distributed is a course extra (requirements-course.txt)")

BIN = Path(sys.executable).parent  # the venv's `dask`, as `source venv/bin/activate` would put first on PATH
STUDENTS = ["decode_int", "memorised_samples", "reference", "syntax"]  # one that trains, a cheat, handed in, broken
KILLED = "decode_int"  # killed while it trains: long enough to be caught in the middle


def commands(scheduler_file: Path) -> dict:
    """docs/course.md's sbatch script, but for one machine: the scheduler, writing its address to a file, on a
    port the system picks; a worker (one per node there, two here) of one process with one thread (a job at a
    time: one torch thread per phase, as the grader sets). Here both listen on this machine's loopback only
    (--host 127.0.0.1), which the script leaves out: a scheduler runs what its clients send."""
    return {"scheduler": [BIN / "dask", "scheduler", "--scheduler-file", scheduler_file, "--port", "0",
                          "--no-dashboard", "--host", "127.0.0.1"],
            "worker": [BIN / "dask", "worker", "--scheduler-file", scheduler_file, "--nworkers", "1",
                       "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]}


def start(command: list, log: Path) -> subprocess.Popen:
    # PYTHONPATH: the workers import tools.autograde from the lab (Dask sends the job by reference)
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([str(part) for part in command], cwd=ROOT, env=environment, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """A process this test started, and what it started (a worker's nanny, its worker)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def test_a_command_line_cluster_grades_as_the_local_backend_and_a_killed_worker_loses_nothing(graded, tiny_valid,
                                                                                             tiny_train, tmp_path):
    from distributed import Client
    students = tmp_path / "submissions"
    for name in STUDENTS:
        shutil.copytree(graded["base"] / "submissions" / name, students / name, symlinks=True)
    out = tmp_path / "grades" / "grades.csv"
    (out.parent / "grades_results").mkdir(parents=True)  # the local run's secret: the same moves, draws, shuffles
    shutil.copyfile(graded["out"].parent / "grades_results" / "secret", out.parent / "grades_results" / "secret")
    scheduler_file = tmp_path / "scheduler.json"
    run = commands(scheduler_file)
    processes, client, grader = [], None, None
    try:
        processes.append(start(run["scheduler"], tmp_path / "scheduler.log"))
        deadline = time.time() + 60
        while not scheduler_file.is_file() or not scheduler_file.read_text().strip():
            assert time.time() < deadline and processes[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        processes += [start(run["worker"], tmp_path / f"worker{i}.log") for i in range(2)]
        client = Client(address, timeout="30s")
        client.wait_for_workers(2, timeout=120)
        grader = subprocess.Popen(
            [sys.executable, "-m", "tools.course", "autograde", students, "--out", out, "--data_path", tiny_valid,
             "--valid_data", tiny_valid, "--train_data", tiny_train, *map(str, BUDGET), "--backend", "dask",
             "--scheduler", address], cwd=ROOT, stdout=open(tmp_path / "grader.log", "wb"), stderr=subprocess.STDOUT)
        killed = kill_while_training(client, grader, out.parent / "grades_logs" / KILLED / "train.log")
        grader.wait(timeout=900)
        stdout = (tmp_path / "grader.log").read_text()
        assert grader.returncode == 0, stdout[-4000:]
    finally:
        if grader is not None and grader.poll() is None:  # the test failed while it graded
            grader.kill()
            grader.wait(15)
        if client is not None:
            client.close()
        for process in reversed(processes):
            stop(process)
    assert killed is not None, "no worker was caught training " + KILLED
    rows, records, report = read_run(out)
    print(f"killed worker {killed} while {KILLED} trained; {report['seconds']:.0f} s for the batch")
    assert sorted(rows) == STUDENTS and report["backend"] == "dask"
    for name in STUDENTS:  # the local backend's rows, column for column (similarity pairs depend on the batch)
        here, there = graded["rows"][name], rows[name]
        same = [c for c in reports.TABLE_COLUMNS if c != "integrity"]
        assert {c: there[c] for c in same} == {c: here[c] for c in same}, name
        assert [f for f in there["integrity"].split(";") if ":" in f] == \
            [f for f in here["integrity"].split(";") if ":" in f], name
    assert len(re.findall(rf"^\[\d/4\] {KILLED}: done in", stdout, re.M)) == 1  # graded once, after the kill
    # every batch writes its class page and feedback files, with the pictures kept on the workers
    assert out.with_suffix(".html").is_file() and len(list((out.parent / "grades_feedback").iterdir())) == 4
    pictures = cache.saved_pictures(out.parent / "grades_results" / f"{KILLED}.pictures.npz")
    assert pictures["Genwithlabel"]["samples"].shape[0] == 10


def kill_while_training(client, grader: subprocess.Popen, train_log: Path):
    """SIGKILL the worker process (not its nanny, which starts a new one) that grades KILLED, once its train
    phase has started (its log exists); returns the worker's address, or None if none was caught."""
    deadline = time.time() + 600
    while grader.poll() is None and time.time() < deadline:
        if train_log.is_file():
            for address, keys in client.processing().items():
                # the student's job key ends with its place among the students to grade (tools/jobs.py)
                if any(str(key).endswith(f"-{STUDENTS.index(KILLED)}") for key in keys):
                    os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)
                    return address
        time.sleep(0.2)
    return None
