"""tools/jobs.py against a real Dask cluster (a LocalCluster: a scheduler and worker processes speaking
TCP, as on many machines), and the sweep through it. The autograder through Dask is in test_autograde.py."""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from data_utils import LabError
from tools import jobs

pytestmark = pytest.mark.slow  # a real Dask cluster

distributed = pytest.importorskip("distributed", reason="dask.distributed is a course extra (requirements-course.txt)")


# The jobs: module-level functions, which Dask sends to its workers by reference.
def square_and_pid(number):
    if number == 3:
        raise ValueError("three is refused")
    return number * number, os.getpid()


def die_once(marker: str):
    """Kill the worker running this the first time (a node lost mid-student), succeed the second."""
    if not Path(marker).exists():
        Path(marker).write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return "done on a second worker", os.getpid()


def die_on(item):
    if item == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def collect(function, items, **options):
    finished = []
    jobs.run_jobs(function, items, lambda i, result, error: finished.append((i, result, error)), **options)
    return finished


@pytest.mark.parametrize("backend, workers", [("local", 1), ("local", 2), ("dask", 2)])
def test_every_job_is_reported_once_with_its_result_or_its_error(backend, workers):
    environment = dict(os.environ)
    finished = collect(square_and_pid, [1, 2, 3, 4], backend=backend, workers=workers)
    assert dict(os.environ) == environment  # (Dask's nanny sets OMP_NUM_THREADS=1 and more here: undone)
    assert sorted(i for i, _, _ in finished) == [0, 1, 2, 3]
    by_index = {i: (result, error) for i, result, error in finished}
    assert [by_index[i][0][0] for i in (0, 1, 3)] == [1, 4, 16]
    assert by_index[2][0] is None and isinstance(by_index[2][1], ValueError) and "three" in str(by_index[2][1])
    pids = {by_index[i][0][1] for i in (0, 1, 3)}
    if backend == "dask":  # the jobs ran in the cluster's worker processes, not here
        assert os.getpid() not in pids
    else:
        assert pids == {os.getpid()}


def test_a_worker_killed_mid_job_has_its_job_run_again_on_another(tmp_path):
    marker = tmp_path / "killed"
    finished = collect(die_once, [str(marker)], backend="dask", workers=2)
    assert marker.read_text() == "killed once"
    [(index, result, error)] = finished
    assert error is None and result[0] == "done on a second worker"


def test_a_job_that_keeps_killing_workers_ends_in_an_error_and_the_others_finish():
    finished = collect(die_on, ["a", "poison", "b"], backend="dask", workers=2)
    by_index = {i: (result, error) for i, result, error in finished}
    assert len(finished) == 3 and by_index[0] == ("a", None) and by_index[2] == ("b", None)
    assert by_index[1][0] is None and type(by_index[1][1]).__name__ == "KilledWorker"


def test_bad_settings_are_refused_in_one_line(monkeypatch):
    with pytest.raises(LabError, match="--backend slurm: choose local or dask"):
        collect(square_and_pid, [1], backend="slurm")
    with pytest.raises(LabError, match="--scheduler is the address of a Dask scheduler: add --backend dask"):
        collect(square_and_pid, [1], backend="local", scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(LabError, match="--jobs 0: use 1 or more"):
        collect(square_and_pid, [1], workers=0)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the course extra were not installed
    with pytest.raises(LabError, match="needs dask.distributed.*pip install -r requirements-course.txt"):
        collect(square_and_pid, [1], backend="dask")


def sweep(out: Path, split: Path, *extra):
    """benchmarks/sweep.py as a user runs it (a script: Dask sends its jobs to the workers by value)."""
    command = [sys.executable, "benchmarks/sweep.py", "--tasks", "VAE0label", "--latent_dim", "2", "4", "--var", "0.01",
               "--epochs", "1", "--split", str(split), "--out", str(out),
               "--train_args", "--limit 300 --eval_num 50 --pred_step 0 --batch_size 64 --threads 1", *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out.with_name(out.name + ".csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_sweep_gives_the_same_table_through_dask_as_here(tmp_path, tiny_valid):
    here = sweep(tmp_path / "local" / "sweep", tiny_valid)
    there = sweep(tmp_path / "dask" / "sweep", tiny_valid, "--backend", "dask", "--jobs", "2")
    assert [r["latent_dim"] for r in here] == [r["latent_dim"] for r in there] == ["2", "4"]  # in grid order

    def results(rows):  # everything but the seconds
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]
    assert results(here) == results(there)
    assert all(float(r["grade"]) > 0 for r in here)
