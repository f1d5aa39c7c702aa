"""The autograder's side of the phases: each student's lab copy, one sandboxed process per phase
(tools/autograde_phases.py inside it), and the reading of what a phase wrote, which the grader
trusts only after checking it (plain files, exact dtypes and shapes, finite values)."""
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from contract import one_line
from data_utils import IMAGE_SHAPE, NUM_CLASSES, ROOT, LabError
from tasks import LATENT_RANGE, MODEL_FOR_TASK, TASK_RECORDS
from tools import sandbox
from tools.kit import SOLUTION_FILE

PHASE_SCRIPT = "autograde_phases.py"


def check_student_checkpoint(path: Path, task: str) -> int:
    """Load a checkpoint with weights_only=True (checkpoint.load_checkpoint: no pickled code runs, every required key present) and
    check it is a `task` checkpoint of submission.py's model; return its latent_dim or raise
    LabError naming the file as checkpoints/<task>.pth."""
    from checkpoint import load_checkpoint
    label = f"checkpoints/{task}.pth"
    try:
        checkpoint = load_checkpoint(path)
    except LabError as error:
        raise LabError(str(error).replace(str(path), label)) from None
    if checkpoint["task"] != task:
        raise LabError(f"{label} is a {checkpoint['task']} checkpoint, handed in as {task}")
    expected = MODEL_FOR_TASK["submission"][task]
    if checkpoint["model"] != expected:
        raise LabError(f"{label} holds a {checkpoint['model']} model, not {expected}")
    kwargs = checkpoint["model_kwargs"]
    latent_dim = kwargs.get("latent_dim") if isinstance(kwargs, dict) else None
    if not isinstance(kwargs, dict) or set(kwargs) != {"latent_dim"} or not isinstance(latent_dim, int) \
            or isinstance(latent_dim, bool) or not LATENT_RANGE[0] <= latent_dim <= LATENT_RANGE[1]:
        raise LabError(f"{label} has model_kwargs {kwargs!r}, expected {{'latent_dim': N}} with 1 <= N <= 784")
    return latent_dim


def trained_precision(path: Path) -> str:
    """The precision a checkpoint trained here was trained in, as the Trainer recorded it: 'fp32',
    'bf16', or 'fp32 (bf16 failed)' when the model could not take bf16 autocast."""
    from checkpoint import load_checkpoint
    hyperparams = load_checkpoint(path)["hyperparams"]
    precision = str(hyperparams.get("autocast", "?"))
    return f"{precision} (bf16 failed)" if hyperparams.get("autocast_fallback") else precision


def _phase_file(path: Path) -> bool:
    """Is there a plain file at `path`, written by a phase? A symbolic link is refused: the grader would
    follow it outside the sandbox, to another student's work or to its own files."""
    if path.is_symlink():
        raise LabError(f"{path.name} is a symbolic link; a phase must write plain files")
    return path.is_file()


def _read_error(path: Path, limit: int = 300) -> str:
    """The first `limit` characters of a phase's error.txt (a task's one-line error)."""
    with open(path, "rb") as handle:
        return handle.read(limit).decode(errors="replace")


def _load_array(path: Path, dtype, shape: tuple, what: str) -> np.ndarray:
    """A phase's .npy, checked here: exact dtype and shape, finite; LabError otherwise."""
    try:
        written = _phase_file(path)
    except LabError as error:
        raise LabError(f"{what}: {error}") from None
    if not written:
        raise LabError(f"{what}: the phase wrote no {path.name}")
    expected_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if path.stat().st_size > expected_bytes + 4096:
        raise LabError(f"{what}: {path.name} is {path.stat().st_size:,} bytes, expected about {expected_bytes:,}")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:
        raise LabError(f"{what}: {path.name} is not a readable .npy ({one_line(error, 120)})") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
        raise LabError(f"{what}: {path.name} is {getattr(array, 'dtype', '?')} {list(getattr(array, 'shape', []))}, "
                       f"expected {np.dtype(dtype)} {list(shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise LabError(f"{what}: {path.name} holds NaN or infinite values")
    return np.ascontiguousarray(array)


def build_lab(lab: Path, submission: Path, lab_paths: list, root: Path = ROOT) -> None:
    """A copy of the course's lab (no data splits) with the student's submission.py and the phase script."""
    for path in lab_paths:
        target = lab / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target)
    shutil.copyfile(submission, lab / SOLUTION_FILE)
    shutil.copyfile(ROOT / "tools" / PHASE_SCRIPT, lab / PHASE_SCRIPT)


@dataclass
class Student:
    """Everything about one student while they are graded: their folder, their lab copy and phase
    folders under `base`, their logs, the tasks still in the running (task -> the checkpoint to use,
    None until trained here), and the record that becomes their row."""
    folder: Path
    base: Path
    logs: Path
    say: Callable[[str], None]
    record: dict = field(default_factory=dict)
    running: dict = field(default_factory=dict)

    def __post_init__(self):
        self.record = {"student": self.folder.name, "tasks": {}, "errors": [], "flags": [], "phases": {}}

    @property
    def lab(self) -> Path:
        return self.base / "lab"

    @property
    def inputs(self) -> Path:
        return self.base / "inputs"

    def fail(self, message: str) -> None:
        self.record["errors"].append(message)
        self.say(message)

    def drop(self, task: str, message: str) -> None:
        """Fail one task and take it out of the running; the student's other task goes on."""
        self.fail(f"{task} {message}")
        del self.running[task]

    def run_phase(self, batch, name, command, seconds, read_only=(), file_bytes=512 << 20, use_devices=False):
        """One phase: `python command...` in the sandbox, in a fresh work folder base/<name>."""
        work = self.base / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        devices = sorted(str(p) for p in Path("/dev").glob("nvidia*")) \
            if use_devices and batch.args.device.startswith("cuda") else ()
        result = sandbox.run_phase([sys.executable, *map(str, command)], lab=self.lab, work=work,
                                   read_only=list(read_only), env=batch.env, limits=batch.limits(seconds, file_bytes),
                                   log=self.logs / f"{name}.log", isolate=batch.isolate, devices=devices)
        self.record["phases"][name] = {"ok": result.ok, "seconds": round(result.seconds, 2),
                                       "isolated": result.isolated}
        self.say(f"{name.replace('_', ' ')} {'ok' if result.ok else 'FAILED'} ({result.seconds:.1f} s)")
        return result, work


class Phases:
    """The phases after the contract, one method each, for one student. A task whose phase fails is failed
    (its error in the student's row) and dropped from `student.running`; the other tasks go on."""

    def __init__(self, batch, student: Student):
        self.batch, self.args, self.student = batch, batch.args, student
        self.base, self.inputs, self.record, self.running = student.base, student.inputs, student.record, student.running

    def _run(self, name, what, tasks, command, read_only, **options):
        """Run phase `name` for `tasks`; return {task: its output folder} for the tasks that finished."""
        result, work = self.student.run_phase(self.batch, name, command, self.args.time_limit * len(tasks), read_only,
                                              **options)
        finished = {}
        for task in tasks:
            error, done = work / task / "error.txt", work / task / "done"
            try:
                if _phase_file(error):
                    message = _read_error(error)
                elif not _phase_file(done):
                    message = result.error or "the phase ended before this task was done"
                else:
                    finished[task] = work / task
                    continue
            except LabError as refused:
                message = str(refused)
            self.drop(task, f"{what}: {message}")
        return finished

    def _arrays(self, finished, what, files):
        """{task: {file: array}} for the finished tasks whose `files` (name -> (dtype, shape of a task)) all
        pass _load_array's checks; a task with one that does not is dropped with its error."""
        arrays = {}
        for task, folder in finished.items():
            try:
                arrays[task] = {name: _load_array(folder / name, dtype, shape(task), what)
                                for name, (dtype, shape) in files.items()}
            except LabError as error:
                self.drop(task, str(error))
        return arrays

    def drop(self, task, message):
        self.student.drop(task, message)

    def _checkpoints(self, tasks):
        return [f"{task}={self.running[task]}" for task in tasks]

    def train(self):
        """The lab's train.py with the fixed budget, for every task without a handed-in checkpoint."""
        args, batch = self.args, self.batch
        tasks = [task for task, checkpoint in self.running.items() if checkpoint is None]
        if not tasks:
            return
        command = [PHASE_SCRIPT, "train", "--out", self.base / "train",
                   *[f"--task={task}={self.record['tasks'][task]['latent_dim']}" for task in tasks],
                   "--model", "submission", "--epochs", args.epochs, "--batch_size", args.batch_size,
                   "--limit", args.train_limit, "--train_data", batch.train_path, "--valid_data", batch.valid_path,
                   "--eval_num", args.eval_num, "--pred_step", args.pred_step, "--seed", args.seed,
                   "--device", args.device, "--precision", args.precision, "--keep_last", "1",
                   "--no-save_loss_plot"]
        finished = self._run("train", "training", tasks, command,
                             batch.read_only_split(batch.train_path) + batch.read_only_split(batch.valid_path),
                             file_bytes=2 << 30, use_devices=True)
        for task, folder in finished.items():
            latent_dim = self.record["tasks"][task]["latent_dim"]
            exported = folder / "run.pth"
            try:
                if not _phase_file(exported):
                    raise LabError("the phase wrote no run.pth")
                found = check_student_checkpoint(exported, task)
                if found != latent_dim:
                    raise LabError(f"it has latent_dim {found}, not {latent_dim}")
            except LabError as error:
                self.drop(task, f"training: the exported checkpoint: {error}")
                continue
            checkpoint = self.inputs / f"{task}.pth"
            shutil.copyfile(exported, checkpoint)
            check_student_checkpoint(checkpoint, task)
            self.record["tasks"][task]["precision"] = trained_precision(checkpoint)
            self.running[task] = checkpoint

    def reconstruct(self):
        """forward on the first `num` grading images: {task: recon uint8 [N,28,28]}, {task: codes [N, D]}."""
        tasks, n = list(self.running), self.batch.num
        if not tasks:
            return {}, {}
        command = [PHASE_SCRIPT, "reconstruct", *[f"--checkpoint={c}" for c in self._checkpoints(tasks)],
                   "--data", self.batch.grading_path, "--num", n, "--out", self.base / "reconstruct",
                   "--seed", self.args.seed]
        read_only = [self.running[t] for t in tasks] + self.batch.read_only_split(self.batch.grading_path)
        finished = self._run("reconstruct", "reconstruct", tasks, command, read_only)
        arrays = self._arrays(finished, "reconstruct", {
            "recon.npy": (np.uint8, lambda task: (n, *IMAGE_SHAPE)),
            "codes.npy": (np.float32, lambda task: (n, self.record["tasks"][task]["latent_dim"]))})
        return ({task: a["recon.npy"] for task, a in arrays.items()},
                {task: a["codes.npy"] for task, a in arrays.items()})

    def decode(self, codes):
        """decode(mu, label) of the grader's own copy of the codes, in a process that sees no image."""
        tasks, n = [task for task in self.running if task in codes], self.batch.num
        if not tasks:
            return {}
        feed = self.inputs / "decode"
        for task in tasks:
            (feed / task).mkdir(parents=True)
            np.save(feed / task / "codes.npy", codes[task], allow_pickle=False)
            np.save(feed / task / "labels.npy", self.batch.labels.astype(np.int64), allow_pickle=False)
        command = [PHASE_SCRIPT, "decode", *[f"--checkpoint={c}" for c in self._checkpoints(tasks)],
                   "--inputs", feed, "--out", self.base / "decode", "--seed", self.args.seed]
        finished = self._run("decode", "decode", tasks, command, [self.running[t] for t in tasks] + [feed])
        arrays = self._arrays(finished, "decode", {"verified.npy": (np.uint8, lambda task: (n, *IMAGE_SHAPE))})
        return {task: a["verified.npy"] for task, a in arrays.items()}

    def generate(self):
        """decode(z ~ N(0, I), label), samples_per_label per label, for the conditional tasks (their grade has
        an FID term), in a process that has seen neither an image nor a code of one."""
        tasks = [task for task in self.running if TASK_RECORDS[task].conditional]
        if not tasks:
            return {}
        per_label = {TASK_RECORDS[task].samples_per_label for task in tasks}
        assert len(per_label) == 1, "one --per_label for every task of the phase"
        per_label = per_label.pop()
        command = [PHASE_SCRIPT, "generate", *[f"--checkpoint={c}" for c in self._checkpoints(tasks)],
                   "--per_label", per_label, "--seed", self.args.seed, "--out", self.base / "generate"]
        finished = self._run("generate", "generate", tasks, command, [self.running[t] for t in tasks])
        arrays = self._arrays(finished, "generate",
                              {"samples.npy": (np.uint8, lambda task: (NUM_CLASSES, per_label, *IMAGE_SHAPE))})
        return {task: a["samples.npy"] for task, a in arrays.items()}
