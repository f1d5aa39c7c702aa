"""The lab's two tasks, their aliases, and the model classes a checkpoint may name.

Every script takes its task names from here, so there is one list to change."""
from dataclasses import dataclass
from pathlib import Path

from data_utils import IMAGE_PIXELS, ROOT, LabError

@dataclass(frozen=True)
class Task:
    """Everything the scripts need to know about one task; they branch on these fields, not on names."""
    name: str
    aliases: tuple          # other spellings accepted on the command line
    model_class: str        # the class of submission.py that the task builds
    conditional: bool       # is the label a condition of generation (so samples are judged per label)?
    samples_per_label: int  # samples inference.py writes per label (and grade.py expects)
    cap: float              # the most the grade can be
    weights: tuple          # (SSIM, max(0.1 - MSE, 0), max(10 - FID, 0)) weights of the grade
    epochs: int             # the shipped recipe's epochs: train.py's and the autograder's default for the task

    def raw_grade(self, ssim: float, mse: float, fid: float = None) -> float:
        """The lab's weighted sum, before the compression bonus and the cap."""
        w_ssim, w_mse, w_fid = self.weights
        return w_ssim * ssim + w_mse * max(0.1 - mse, 0) + (w_fid * max(10 - fid, 0) if w_fid else 0.0)


# The handout's scripts spelled VAE0label "VAEwolabel"; a scanned copy reads "VAEOlabel".
TASK_RECORDS = {
    "VAE0label": Task("VAE0label", ("VAEwolabel", "VAEOlabel"), "VAE", conditional=False, samples_per_label=10,
                      cap=10.0, weights=(5, 50, 0), epochs=6),
    "Genwithlabel": Task("Genwithlabel", (), "GenModel", conditional=True, samples_per_label=100,
                         cap=30.0, weights=(10, 100, 1), epochs=10),
}
TASKS = tuple(TASK_RECORDS)
# For --help texts: "VAE0label 6, Genwithlabel 10".
RECIPE_EPOCHS = ", ".join(f"{name} {task.epochs}" for name, task in TASK_RECORDS.items())
TASK_ALIASES = {alias: task.name for task in TASK_RECORDS.values() for alias in task.aliases}
# The code may hold 1 to 784 numbers: a code longer than the image compresses nothing.
LATENT_RANGE = (1, IMAGE_PIXELS)
# The only classes a checkpoint can ask to be rebuilt with: a checkpoint names one of these
# keys, never an arbitrary import path.
MODEL_CLASSES = {
    "submission.VAE": ("submission", "VAE"),
    "submission.GenModel": ("submission", "GenModel"),
    "model.VAE": ("model", "VAE"),
}
# --model submission|demo -> the class trained for each task.
MODEL_FOR_TASK = {
    "submission": {name: f"submission.{task.model_class}" for name, task in TASK_RECORDS.items()},
    "demo": {name: "model.VAE" for name in TASK_RECORDS},
}


def task_record(name: str) -> Task:
    return TASK_RECORDS[canonical_task(name)]


def canonical_task(name: str) -> str:
    name = TASK_ALIASES.get(name, name)
    if name not in TASKS:
        aliases = ", ".join(f"{a} (= {t})" for a, t in TASK_ALIASES.items())
        raise LabError(f"unknown task {name!r}: choose one of {', '.join(TASKS)} (aliases: {aliases})")
    return name


def default_checkpoint(task: str) -> Path:
    return ROOT / "checkpoints" / task / "default.pth"


def default_output_dir(task: str) -> Path:
    return ROOT / "outputs" / task
