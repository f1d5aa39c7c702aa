import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "derivation: checks the mathematics of docs/derivations.md itself, "
                                       "not project code")


def run(script, *args, check=True, timeout=300):
    """Run a repo script as a user would; return the CompletedProcess."""
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {args} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


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
