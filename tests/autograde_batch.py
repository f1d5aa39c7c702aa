"""The autograder's test batch, graded once per test session (conftest.py's `graded` fixture) for every file
that reads it: tests/test_autograde.py (the grades and flags), tests/test_class_page.py (the class page and
the feedback files) and tests/test_dask_cli.py (the same students through a command-line Dask cluster).
HONEST + CHEATS + the reference + two broken submissions, with a tiny budget (BUDGET)."""
import csv
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import torch

from conftest import ROOT
from data_utils import atomic_torch_save, load_split
from tools import kit, sandbox

SUBMISSIONS, CHEATS_DIR = ROOT / "tests" / "submissions", ROOT / "tests" / "cheats"
# Two honest styles, each exercising a path of the grader that the cheats do not: a latent_dim other than
# 8 read from the constructor's default, with a decode that works only batched (the handout's one-sample call
# fails: a note, not a flag), and decode one sample at a time. The
# whole corpus runs through the same grader with `python -m tools.course autograde tests/submissions`
# (docs/course.md); here it would multiply the batch's process starts, which dominate the suite's time.
HONEST = ["decode_int", "decode_batch_only"]
# The cheats, one or more per category of the threat model (docs/course.md): the first round's, then the
# second's, each written the way a motivated student would.
CHEATS = ["identity_forward", "memorised_samples", "copy_samples", "writes_outside", "tamper_outputs",
          "copied_a", "copied_b",
          "mantissa_code", "lookup_bank", "grey_corner", "fid_noise", "budget_overrun", "link_swap",
          "fifo_contract", "copied_c", "bomb_checkpoint", "disk_fill",
          "optimise_codes", "log_flood", "phase_tell"]
BUDGET = ["--train_limit", 256, "--epochs", 1, "--batch_size", 64, "--inf_num", 200, "--eval_num", 100,
          "--pred_step", 0, "--import_time_limit", 180, "--time_limit", 300, "--train_cpu_seconds", 5,
          "--phase_disk_gb", 0.25]
MARKER = Path("/tmp/vae_lab_cheat_marker")  # where writes_outside.py writes (CHEAT_MARKER is not passed in)
ISOLATED, WHY = sandbox.isolation()


def autograde_cli(*args, timeout=1500):
    command = [sys.executable, "-m", "tools.course", "autograde", *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def read_run(out: Path):
    with open(out, newline="") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    report = json.loads(out.with_suffix(".json").read_text())
    return rows, {r["student"]: r for r in report["students"]}, report


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkpoint_of(model, task, latent_dim):
    return {"format": 1, "task": task, "model": course_model(task), "model_kwargs": {"latent_dim": latent_dim},
            "hyperparams": {"latent_dim": latent_dim}, "epoch": 0, "step": 0, "batch_in_epoch": 0,
            "model_state_dict": model.state_dict()}


def course_model(task):
    from tasks import MODEL_FOR_TASK
    return MODEL_FOR_TASK["submission"][task]


def grade_test_batch(base: Path, tiny_valid: Path, tiny_train: Path) -> dict:
    """Grade the batch in `base` (its submissions, work folders and tables): conftest.py's `graded`."""
    students = base / "submissions"
    for folder, names in ((SUBMISSIONS, HONEST), (CHEATS_DIR, CHEATS)):
        for name in names:
            (students / name).mkdir(parents=True)
            shutil.copyfile(folder / f"{name}.py", students / name / "submission.py")
    # The reference answer, handing in the shipped checkpoints: the model answer must grade unflagged too.
    (students / "reference" / "checkpoints").mkdir(parents=True)
    shutil.copyfile(ROOT / "submission.py", students / "reference" / "submission.py")
    for task in ("VAE0label", "Genwithlabel"):
        shutil.copyfile(ROOT / "checkpoints" / task / "default.pth", students / "reference" / "checkpoints" / f"{task}.pth")
    (students / "starter").mkdir()
    (students / "starter" / "submission.py").write_text(kit.strip_solution((ROOT / "submission.py").read_text()))
    (students / "syntax").mkdir()
    (students / "syntax" / "submission.py").write_text("import torch\n\nclass VAE(torch.nn.Module:\n    pass\n")
    # Handed-in checkpoints (untrained weights; they skip the training phase, whose cost the cheat does not
    # need): identity_forward's, copy_samples', and copied_a's, which copied_b hands in too, under its own
    # layer names.
    renamed = ["h", "to_mean", "to_logvar", "g1", "g2", "g_out"]
    grading_images = torch.from_numpy(load_split(tiny_valid)[0][:200]).float().div(255).reshape(200, 784)
    for name, latent_dim in (("identity_forward", 1), ("copy_samples", 8), ("copied_a", 12), ("copied_b", 12),
                             ("copied_c", 12), ("mantissa_code", 8), ("lookup_bank", 1), ("grey_corner", 1),
                             ("link_swap", 2)):
        source = "copied_a" if name in ("copied_b", "copied_c") else name
        module = load_module(CHEATS_DIR / f"{source}.py", f"handed_in_{source}")
        (students / name / "checkpoints").mkdir()
        for task, cls in (("VAE0label", module.VAE), ("Genwithlabel", module.GenModel)):
            torch.manual_seed(0)
            checkpoint = checkpoint_of(cls(latent_dim=latent_dim), task, latent_dim)
            if name == "lookup_bank":  # the public grading images, in a trainable parameter
                checkpoint["model_state_dict"]["bank"] = grading_images.clone()
            if name == "copied_b":
                values = list(checkpoint["model_state_dict"].values())
                checkpoint["model_state_dict"] = {f"{renamed[i // 2]}.{'weight' if i % 2 == 0 else 'bias'}": value
                                                  for i, value in enumerate(values)}
            atomic_torch_save(checkpoint, students / name / "checkpoints" / f"{task}.pth")
    (students / "bomb_checkpoint" / "checkpoints").mkdir()
    for task in ("VAE0label", "Genwithlabel"):  # 5 MB on disk, more than 1 GiB once inflated
        with zipfile.ZipFile(students / "bomb_checkpoint" / "checkpoints" / f"{task}.pth", "w", zipfile.ZIP_DEFLATED,
                             compresslevel=1) as archive, archive.open("archive/data/0", "w", force_zip64=True) as entry:
            block = bytes(16 << 20)
            for _ in range(70):
                entry.write(block)
    MARKER.unlink(missing_ok=True)
    connections = []
    listener = None
    try:  # writes_outside.py connects to 127.0.0.1:9 (CHEAT_PORT is not passed in); nothing may arrive
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 9))
        listener.listen(8)
        listener.settimeout(0.5)

        def accept():
            while listener is not None:
                try:
                    connections.append(listener.accept()[1].getpeername())
                except OSError:
                    if listener.fileno() < 0:
                        return
        threading.Thread(target=accept, daemon=True).start()
    except OSError:
        listener = None
    out = base / "grades" / "grades.csv"
    started = time.perf_counter()
    result = autograde_cli(students, "--out", out, "--data_path", tiny_valid, "--valid_data", tiny_valid,
                           "--train_data", tiny_train, *BUDGET, "--jobs", 2, "--work_dir", base / "work")
    seconds = time.perf_counter() - started
    if listener is not None:
        listener.close()
    rows, records, report = read_run(out)
    return {"base": base, "out": out, "rows": rows, "records": records, "report": report, "stdout": result.stdout,
            "seconds": seconds, "connections": connections, "listened": listener is not None}
