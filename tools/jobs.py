"""Run a set of independent jobs, here or on a cluster: the autograder's students and the sweep's points.

    run_jobs(function, items, on_done, backend="local", workers=2)
    run_jobs(function, items, on_done, backend="dask", scheduler="tcp://head-node:8786")

Each job is function(item); on_done(index, result, error) is called in the calling thread as each job
ends, in the order they end, with error None or the exception that ended it. Backends:

  local  `workers` threads of this process (the default; nothing to install). The jobs' heavy work
         runs in processes of their own (sandboxed phases, train.py), so threads are enough.
  dask   dask.distributed (requirements-course.txt). With `scheduler`, the address of a running Dask
         scheduler (`dask scheduler` and `dask worker` in a Slurm job, or dask-jobqueue's SLURMCluster:
         docs/course.md); without, a LocalCluster of `workers` worker processes on this machine, which
         talks to them through the same scheduler and TCP protocol as a cluster of many machines.
         A worker that dies mid-job has its job run again on another (Dask's allowed-failures, 3 by
         default); a job that outlives that ends with KilledWorker, given to on_done.

Dask sends `function` by reference: it must be importable on the workers (the lab on a shared file
system, the workers started with it on their PYTHONPATH).
"""
import logging
import os
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from data_utils import LabError

BACKENDS = ("local", "dask")
INSTALL = "python -m pip install -r requirements-course.txt"


def dask_client(workers: int, scheduler: str = None):
    """(client, cluster or None): a client of `scheduler`, or of a new LocalCluster of `workers` processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise LabError(f"--backend dask needs dask.distributed, which is not installed: {INSTALL}") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as error:
            raise LabError(f"--scheduler {scheduler}: no Dask scheduler answered ({error}); start one "
                           f"(`dask scheduler`) or leave --scheduler out for a local cluster") from None
    # One thread per worker: a job is one student or one training run, and torch threads are set per job.
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=0, silence_logs=logging.ERROR)
    return Client(cluster), cluster


def run_jobs(function, items, on_done, backend: str = "local", workers: int = 1, scheduler: str = None,
             name: str = "job") -> None:
    if backend not in BACKENDS:
        raise LabError(f"--backend {backend}: choose {' or '.join(BACKENDS)}")
    if workers < 1:
        raise LabError(f"--jobs {workers}: use 1 or more")
    if scheduler and backend != "dask":
        raise LabError("--scheduler is the address of a Dask scheduler: add --backend dask")
    items = list(items)
    if not items:
        return
    if backend == "dask":
        _run_dask(function, items, on_done, workers, scheduler, name)
    elif workers == 1:  # in this thread: Ctrl-C and tracebacks as in a plain loop
        for index, item in enumerate(items):
            try:
                result, error = function(item), None
            except Exception as caught:
                result, error = None, caught
            on_done(index, result, error)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            _collect({pool.submit(function, item): index for index, item in enumerate(items)}, on_done)


def _collect(pending: dict, on_done) -> None:
    """Wait for futures (future -> index) and report each as it ends (concurrent.futures' interface)."""
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            index = pending.pop(future)
            error = future.exception()
            on_done(index, None if error else future.result(), error)


def _run_dask(function, items, on_done, workers, scheduler, name):
    # Dask's nanny writes its workers' settings (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_, a hash seed)
    # into this process's environment too; everything started from here afterwards (train.py, phases)
    # would inherit them, and train with other threads than asked. Put the environment back.
    environment = dict(os.environ)
    try:
        _submit_and_collect(function, items, on_done, workers, scheduler, name)
    finally:
        os.environ.clear()
        os.environ.update(environment)


def _submit_and_collect(function, items, on_done, workers, scheduler, name):
    client, cluster = dask_client(workers, scheduler)
    from distributed import as_completed
    try:
        run = uuid.uuid4().hex[:8]
        # pure=False: two equal items are two jobs; the key names each in the scheduler's logs.
        futures = {client.submit(function, item, key=f"{name}-{run}-{index}", pure=False): index
                   for index, item in enumerate(items)}
        for future in as_completed(futures):
            error = future.exception()
            on_done(futures[future], None if error else future.result(), error)
            future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
