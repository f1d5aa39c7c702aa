"""A training run's files: the checkpoint format, loading it safely, the newest checkpoint of a
run, pruning, and the RNG state a resume needs. train.py, inference.py, evaluation.py, the
course kit and the benchmarks all read checkpoints through here.

A checkpoint is a plain dict of tensors, numbers, strings and lists (so it loads with
torch.load(weights_only=True)):

    format              CHECKPOINT_FORMAT
    task                "VAE0label" | "Genwithlabel"
    model               a key of tasks.MODEL_CLASSES, e.g. "submission.GenModel"
    model_kwargs        {"latent_dim": 8}: with `model`, enough to rebuild the network
    hyperparams         every training setting (also written to hyperparams.json)
    epoch, step         completed epochs; optimiser steps taken
    batch_in_epoch      batches of `epoch + 1` already done (non-zero only after an interrupt)
    model_state_dict
    optimizer_state_dict, rng_state, train_losses, valid_losses   (run checkpoints only)

A run NAME of task T writes checkpoints/T/NAME/epoch_{N}.pth (the newest `keep_last` kept),
interrupted.pth after Ctrl-C, hyperparams.json and loss_curve.png there, and when it finishes,
the model alone (no optimiser state, a few MB) as checkpoints/T/NAME.pth.
"""
import os
import pickle
import random
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from contract import build_model
from data_utils import LabError
from tasks import TASKS

CHECKPOINT_FORMAT = 1
# What every checkpoint (exported model or run checkpoint) must hold for the scripts to use it.
REQUIRED_KEYS = ("task", "model", "model_kwargs", "hyperparams", "epoch", "step", "batch_in_epoch",
                 "model_state_dict")
INTERRUPTED = "interrupted.pth"


# ---------------------------------------------------------------- loading
WHAT_TO_PASS = ("Pass a .pth that train.py wrote (the exported model checkpoints/<task>/<run>.pth, or its run "
                "folder's epoch_N.pth), or retrain with python train.py")


def looks_like_torch(path) -> bool:
    """A zip archive (torch's format) or a pickle of protocol 2 or later (its legacy format)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def damage(path) -> str:
    """What a file that torch could not load is, in words, from its size and first bytes: what a student
    can act on (torch's own message is cut from a C++ exception, or a bare number)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(64)
            handle.seek(max(0, size - 22))
            tail = handle.read(22)
    except OSError as error:
        return f"it cannot be read ({error.strerror})"
    if size == 0:
        return "it is empty (0 bytes): a save that never wrote"
    if head.startswith(b"PK\x03\x04"):  # torch's format is a zip archive, whose directory ends the file
        if b"PK\x05\x06" not in tail and b"PK\x06\x06" not in tail:
            return f"it is the start of a zip archive (torch's format) cut short at {size:,} bytes: its end is missing, " \
                   f"as after a copy or a save that did not finish"
        return f"it is a zip archive (torch's format) of {size:,} bytes whose contents are damaged"
    try:
        text = head.decode("utf-8")
        if text.isprintable() or all(char.isprintable() or char in "\r\n\t" for char in text):
            return f"it is a text file, not a checkpoint (it begins {text[:40]!r})"
    except UnicodeDecodeError:
        pass
    return f"it is not a torch checkpoint ({size:,} bytes beginning {head[:8].hex(' ')})"


def load_checkpoint(path, handout_task=None, handout_latent_dim=None) -> dict:
    """Load a checkpoint safely (weights_only: no pickled code runs) and check its fields.

    A checkpoint in the handout's format ({epoch, model_state_dict, optimizer_state_dict}) does
    not say what it is: it is accepted when the caller knows the task and latent_dim (flags)."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"checkpoint {path} not found: train one with train.py or pass --checkpoint_path")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; we report below
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not looks_like_torch(path):  # a text file or other bytes, read as a legacy pickle: not a refusal
            raise LabError(f"{path} is truncated or corrupt: {damage(path)}. {WHAT_TO_PASS}") from None
        # torch's message is a paragraph; the line naming what was refused is the useful one
        lines = [line.strip() for line in str(error).splitlines()]
        detail = next((line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")),
                      "an object outside tensors, numbers, strings and containers")
        raise LabError(f"refused to load {path}: it needs arbitrary pickled code to load, which could run "
                       f"anything ({detail[:120]}); only load checkpoints written by this lab's trainer") from None
    except Exception:  # torch raises RuntimeError, EOFError, IndexError, ... on damaged files; its words name none
        raise LabError(f"{path} is truncated or corrupt: {damage(path)}. {WHAT_TO_PASS}") from None
    if isinstance(checkpoint, dict) and "format" not in checkpoint and "model_state_dict" in checkpoint:
        checkpoint = from_handout_format(checkpoint, path, handout_task, handout_latent_dim)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise LabError(f"{path} is not a checkpoint of this lab (no format {CHECKPOINT_FORMAT} header): "
                       f"train one with train.py")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise LabError(f"{path} lacks {', '.join(missing)}, so it is damaged or hand-made: "
                       f"use a checkpoint written by train.py")
    if checkpoint["task"] not in TASKS:
        raise LabError(f"{path} was trained for an unknown task {checkpoint['task']!r}: "
                       f"expected one of {', '.join(TASKS)}")
    return checkpoint




def from_handout_format(raw: dict, path, task, latent_dim) -> dict:
    """The handout's {epoch, model_state_dict, optimizer_state_dict} as a checkpoint of this lab,
    for submission.py's model of `task` built with `latent_dim` (neither is recorded in the file)."""
    if task is None or latent_dim is None:
        raise LabError(f"{path} is a checkpoint in the handout's format, which does not record the task or "
                       f"latent_dim: pass --task and --latent_dim (the values it was trained with)")
    from tasks import MODEL_FOR_TASK
    epoch = raw.get("epoch", 0)
    return {"format": CHECKPOINT_FORMAT, "task": task, "model": MODEL_FOR_TASK["submission"][task],
            "model_kwargs": {"latent_dim": latent_dim},
            "hyperparams": {"latent_dim": latent_dim, "epochs": epoch, "handout_format": True,
                            "note": "a handout-format checkpoint: task and latent_dim come from the flags"},
            "epoch": epoch if isinstance(epoch, int) else 0, "step": 0, "batch_in_epoch": 0,
            "model_state_dict": raw["model_state_dict"]}

def model_from_checkpoint(checkpoint: dict, path="checkpoint"):
    """Rebuild the network a checkpoint names and load its weights."""
    try:
        model = build_model(checkpoint["model"], **checkpoint["model_kwargs"])
    except LabError as error:  # a class outside tasks.MODEL_CLASSES
        raise LabError(f"{path}: {error}") from None
    except TypeError as error:  # model_kwargs the class does not take
        raise LabError(f"{path} asks for {checkpoint['model']}({checkpoint['model_kwargs']}), which the code "
                       f"cannot build ({error}): retrain, or restore the code it was trained with") from None
    try:
        model.load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError as error:
        detail = str(error).splitlines()[0][:150]
        raise LabError(f"{path} does not fit {checkpoint['model']}({checkpoint['model_kwargs']}) as the code "
                       f"defines it now ({detail}): retrain, or restore the code it was trained with") from None
    return model


# ---------------------------------------------------------------- a run's files
def newest_run_checkpoint(run_dir) -> Path:
    """The resumable checkpoint of a run folder with the most optimiser steps."""
    run_dir = Path(run_dir)
    candidates = [run_dir / INTERRUPTED] + sorted(run_dir.glob("epoch_*.pth"), key=epoch_number)[-1:]
    steps = {}
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            steps[candidate] = load_checkpoint(candidate)["step"]
        except LabError as error:  # a damaged file must not hide the good one beside it
            print(f"skipping {error}", file=sys.stderr)
    if not steps:
        raise LabError(f"no usable checkpoint to resume in {run_dir}: train without --load_from_checkpoint "
                       f"first, or pass --checkpoint PATH")
    return max(steps, key=steps.get)


def export_path(run_dir) -> Path:
    """Where a finished run NAME/ leaves its model: NAME.pth beside the run folder."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{run_dir.name}.pth"


def epoch_number(path: Path) -> int:
    match = re.fullmatch(r"epoch_(\d+)\.pth", path.name)
    return int(match.group(1)) if match else -1



def prune(run_dir: Path, newest: Path, epoch: int, keep_last: int) -> None:
    """After `newest` (epoch_{epoch}.pth) is in place: delete all but the `keep_last` newest epoch
    files, oldest first, never `newest`, and the interrupted.pth it supersedes. Epoch files numbered
    above `epoch` are leftovers of an earlier run in the same folder: sorting them among ours
    would prune our newest (and resume would pick theirs)."""
    ours = [p for p in run_dir.glob("epoch_*.pth") if epoch_number(p) <= epoch]
    leftovers = [p for p in run_dir.glob("epoch_*.pth") if epoch_number(p) > epoch]
    old = sorted(ours, key=epoch_number)[:-max(keep_last, 1)]
    for stale in old + leftovers + [run_dir / INTERRUPTED]:
        if stale != newest:
            stale.unlink(missing_ok=True)


# ---------------------------------------------------------------- random state
def capture_rng(device: torch.device) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    # The sampling noise of the reparameterisation comes from the device's own generator.
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    elif "mps" in state and device.type == "mps":
        torch.mps.set_rng_state(state["mps"])
