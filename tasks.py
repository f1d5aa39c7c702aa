"""The lab's two tasks, their aliases, and the model classes a checkpoint may name.

Every script takes its task names from here, so there is one list to change."""
import importlib
from pathlib import Path

from data_utils import ROOT, LabError

TASKS = ("VAE0label", "Genwithlabel")
# The handout's scripts spelled VAE0label "VAEwolabel"; a scanned copy reads "VAEOlabel".
TASK_ALIASES = {"VAEwolabel": "VAE0label", "VAEOlabel": "VAE0label"}
# Samples written per label by inference.py (and expected by grade.py).
SAMPLES_PER_LABEL = {"VAE0label": 10, "Genwithlabel": 100}
# The only classes a checkpoint can ask to be rebuilt with: a checkpoint names one of these
# keys, never an arbitrary import path.
MODEL_CLASSES = {
    "submission.VAE": ("submission", "VAE"),
    "submission.GenModel": ("submission", "GenModel"),
    "model.VAE": ("model", "VAE"),
}
# --model submission|demo -> the class trained for each task.
MODEL_FOR_TASK = {
    "submission": {"VAE0label": "submission.VAE", "Genwithlabel": "submission.GenModel"},
    "demo": {"VAE0label": "model.VAE", "Genwithlabel": "model.VAE"},
}


def canonical_task(name: str) -> str:
    name = TASK_ALIASES.get(name, name)
    if name not in TASKS:
        aliases = ", ".join(f"{a} (= {t})" for a, t in TASK_ALIASES.items())
        raise LabError(f"unknown task {name!r}: choose one of {', '.join(TASKS)} (aliases: {aliases})")
    return name


def build_model(model_name: str, latent_dim: int):
    """The model a checkpoint or --model names, built the handout's way: cls(latent_dim=N)."""
    import contract
    if model_name not in MODEL_CLASSES:
        raise LabError(f"unknown model class {model_name!r}: expected one of {', '.join(MODEL_CLASSES)}")
    module_name, class_name = MODEL_CLASSES[model_name]
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a student's file that fails to import: say so in one line
        raise LabError(f"cannot import {module_name}.py: {contract.one_line(error)}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise contract.ContractError(f"{module_name}.py defines no class {class_name}")
    return contract.build(cls, latent_dim)


def default_checkpoint(task: str) -> Path:
    return ROOT / "checkpoints" / task / "default.pth"


def default_output_dir(task: str) -> Path:
    return ROOT / "outputs" / task
