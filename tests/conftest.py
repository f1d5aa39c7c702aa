import contextlib
import io
import os
import random
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "derivation: checks the mathematics of docs/derivations.md itself, "
                                       "not project code")
    config.addinivalue_line("markers", "slow: a whole batch, a real training run, a cluster or `bash run.sh`; "
                                       "`python -m pytest -q -m \"not slow\" tests` is the edit loop's suite "
                                       "(under a minute), the README's command runs everything")


def run(script, *args, check=True, folder=ROOT):
    """Run a lab script as `python script args...` would, from `folder` (the repo, or a lab copy such as
    the starter kit), but in this process: a fresh interpreter would add seconds of imports to every
    call and test nothing more (the tests that need a real process, for signals or a whole `bash
    run.sh`, start one). Returns a CompletedProcess: exit code, stdout, stderr; an uncaught exception
    is exit code 1 with its traceback, as Python's. The folder's own modules are imported for the call
    (a file the folder lacks fails to import, as it would there) and the repo's put back afterwards,
    with sys.path, the working directory, the RNG states and torch's thread count."""
    import torch
    folder = Path(folder)
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    rng_states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    threads, cwd, path, argv = torch.get_num_threads(), os.getcwd(), list(sys.path), sys.argv
    ours = {} if folder == ROOT else {name: module for name, module in sys.modules.items() if _is_lab_module(module, ROOT)}
    for name in ours:
        del sys.modules[name]
    if folder != ROOT:  # the folder's files only, as in a process started there
        sys.path[:] = [str(folder)] + [p for p in sys.path if p not in ("", ".") and Path(p).resolve() != ROOT]
    os.chdir(folder)
    sys.argv = [str(folder / script), *map(str, args)]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(str(folder / script), run_name="__main__")
            except SystemExit as exit:  # sys.exit(None) is 0; sys.exit("text") prints it and is 1
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        if folder != ROOT:
            for name in [n for n, m in sys.modules.items() if _is_lab_module(m, folder)]:
                del sys.modules[name]
            sys.modules.update(ours)
        torch.set_rng_state(rng_states[0]), np.random.set_state(rng_states[1]), random.setstate(rng_states[2])
        torch.set_num_threads(threads), os.chdir(cwd)
        sys.path[:], sys.argv = path, argv
    result = subprocess.CompletedProcess([script, *map(str, args)], code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} {args} exited {code}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def _is_lab_module(module, folder: Path) -> bool:
    """A module loaded from a file of `folder` (the tests' own modules excepted). A string comparison:
    resolving the path of each of torch's thousands of modules would cost a second a call."""
    path = getattr(module, "__file__", None) or ""
    return path.startswith(f"{folder}{os.sep}") and not path.startswith(f"{ROOT / 'tests'}{os.sep}")


def first_images(tmp_path_factory, split: str, count: int):
    """The first `count` images of a split saved as a split of their own (an .npz path)."""
    from data_utils import load_split
    images, labels = load_split(split)
    path = tmp_path_factory.mktemp("data") / f"{split}_{count}.npz"
    np.savez_compressed(path, images=images[:count], labels=labels[:count])
    return path


@pytest.fixture(scope="session")
def tiny_valid(tmp_path_factory):
    """The first 200 validation images as their own split, to keep CLI tests fast."""
    return first_images(tmp_path_factory, "valid", 200)


TINY_TRAIN = ["--limit", 384, "--epochs", 1, "--batch_size", 64, "--eval_num", 200, "--pred_step", 3]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_valid):
    """One tiny training run per task through train.py: {task: (run_dir, exported .pth)}."""
    base = tmp_path_factory.mktemp("runs")
    runs = {}
    for task, latent_dim in (("VAE0label", 6), ("Genwithlabel", 4)):
        run_dir = base / task
        run("train.py", "--task", task, "--latent_dim", latent_dim, "--save_dir", run_dir,
            "--valid_data", tiny_valid, *TINY_TRAIN)
        runs[task] = (run_dir, base / f"{task}.pth")
    return runs


@pytest.fixture(scope="session")
def tiny_train(tmp_path_factory):
    """The first 2,000 training images: the autograder batch's training split and the copy check's bank."""
    return first_images(tmp_path_factory, "train", 2000)


@pytest.fixture(scope="session")
def graded(tmp_path_factory, tiny_valid, tiny_train):
    """The autograder's test batch (tests/autograde_batch.py), graded once for every test file that reads it:
    {"base", "out", "rows", "records", "report", "stdout", "seconds", ...}."""
    from autograde_batch import grade_test_batch
    return grade_test_batch(tmp_path_factory.mktemp("autograde"), tiny_valid, tiny_train)
