"""The autograder's side of the phases: each student's lab copy, one sandboxed process per phase
(tools/autograde_phases.py inside it), and the reading of what a phase wrote, which the grader
trusts only after checking it (plain files, exact dtypes and shapes, finite values)."""
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from contract import one_line
from data_utils import IMAGE_SHAPE, NUM_CLASSES, ROOT, LabError
from tasks import TASK_RECORDS
from tools import sandbox
from tools.autograde.integrity import perturbed_codes
from tools.kit import SOLUTION_FILE

PHASE_SCRIPT = "autograde_phases.py"
MAX_CHECKPOINT_BYTES = 1 << 30  # a checkpoint handed in or exported by the train phase, as a file
MAX_SUBMISSION_BYTES = 1 << 20  # submission.py: source code is expected


def clean_text(text, limit: int = 300) -> str:
    """Text that came out of a student's process (an error message, a warning, a field of a JSON it
    wrote), fit for the table: every character encodable (a lone surrogate would stop the batch when
    the tables are written), control and formatting characters (line breaks, carriage returns,
    direction marks) as spaces, at most `limit` characters."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(" " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char for char in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def untrusted_file(path: Path, root: Path):
    """An open binary file for `path`, a file under `root` that student code could have written or
    replaced (a phase's work folder, a student's hand-in), or None when there is none. Refused with a
    LabError: a symbolic link at ANY component below root (the grader would follow it outside the
    sandbox, to another student's work or to its own files), and anything but a regular file (a
    named pipe would block the grader forever; it is opened without blocking and refused)."""
    relative = Path(path).relative_to(root)
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in relative.parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            except FileNotFoundError:
                return None
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LabError(f"{relative.as_posix()}: {part} is a symbolic link or not a folder; "
                                   f"plain folders and files only") from None
                raise
            os.close(directory)
            directory = inner
        try:
            handle = os.open(relative.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise LabError(f"{relative.as_posix()} is a symbolic link; plain files only") from None
            raise
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise LabError(f"{relative.as_posix()} is not a regular file; plain files only")
    return os.fdopen(handle, "rb")


def read_untrusted(path: Path, root: Path, limit: int, what: str = None):
    """The bytes of untrusted_file(path, root), or None when there is none; a LabError if it holds more
    than `limit` bytes."""
    handle = untrusted_file(path, root)
    if handle is None:
        return None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise LabError(f"{what or Path(path).name} is {size:,} bytes, expected at most {limit:,}")
        return handle.read(limit + 1)[:limit]


def copy_untrusted(path: Path, root: Path, target: Path, limit: int):
    """Copy untrusted_file(path, root) to `target` (at most `limit` bytes); return the sha256 of what was
    copied, or None when there is none."""
    handle = untrusted_file(path, root)
    if handle is None:
        return None
    digest = hashlib.sha256()
    with handle, open(target, "wb") as out:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise LabError(f"{Path(path).name} is {size:,} bytes, expected at most {limit:,}")
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def load_array(path: Path, root: Path, dtype, shape: tuple, what: str) -> np.ndarray:
    """A phase's .npy under `root`, checked here: exact dtype and shape, finite; LabError otherwise."""
    expected_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        raw = read_untrusted(path, root, expected_bytes + 4096)
    except LabError as error:
        raise LabError(f"{what}: {error}") from None
    if raw is None:
        raise LabError(f"{what}: the phase wrote no {path.name}")
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as error:
        raise LabError(f"{what}: {path.name} is not a readable .npy ({one_line(error, 120)})") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
        raise LabError(f"{what}: {path.name} is {getattr(array, 'dtype', '?')} {list(getattr(array, 'shape', []))}, "
                       f"expected {np.dtype(dtype)} {list(shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise LabError(f"{what}: {path.name} holds NaN or infinite values")
    return np.ascontiguousarray(array)


def phase_json(path: Path, root: Path, error_path: Path) -> dict:
    """The JSON object a phase wrote at `path` (under `root`); LabError with the phase's error (error_path)
    when it wrote none."""
    raw = read_untrusted(path, root, 1 << 20)
    if raw is None:
        error = read_untrusted(error_path, root, 1 << 20)
        raise LabError(error[:300].decode(errors="replace") if error else f"the phase wrote no {path.name}")
    try:
        value = json.loads(raw.decode(errors="replace"))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise LabError(f"{path.name} is not a JSON object")
    return value


def build_lab(lab: Path, source: bytes, lab_paths: list, root: Path = ROOT) -> None:
    """A copy of the course's lab (no data splits) with the student's submission.py (`source`) and the
    phase script."""
    for path in lab_paths:
        target = lab / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target)
    (lab / SOLUTION_FILE).write_bytes(source)
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
    weights: dict = field(default_factory=dict)  # task -> (handed-in weights as one vector, their shapes)
    checkpoint_sha256: dict = field(default_factory=dict)  # task -> the handed-in file's sha256, as the grader read it

    def __post_init__(self):
        # notes: what the TA should know that is neither an error nor a flag (no grade depends on them)
        self.record = {"student": self.folder.name, "tasks": {}, "errors": [], "flags": [], "notes": [], "phases": {}}

    @property
    def lab(self) -> Path:
        return self.base / "lab"

    @property
    def inputs(self) -> Path:
        return self.base / "inputs"

    def fail(self, message: str) -> None:
        message = clean_text(message, 600)  # it may quote what the student's process wrote
        self.record["errors"].append(message)
        self.say(message)

    def drop(self, task: str, message: str) -> None:
        """Fail one task and take it out of the running; the student's other task goes on."""
        self.fail(f"{task} {message}")
        del self.running[task]

    def run_phase(self, batch, name, command, seconds, read_only=(), file_bytes=512 << 20, use_devices=False,
                  cpu_seconds=None):
        """One phase: `python command...` in the sandbox, in a fresh work folder base/<name>."""
        work = self.base / name
        sandbox.remove_tree(work)
        work.mkdir(parents=True)
        devices = sorted(str(p) for p in Path("/dev").glob("nvidia*")) \
            if use_devices and batch.args.device.startswith("cuda") else ()
        result = sandbox.run_phase([sys.executable, *map(str, command)], lab=self.lab, work=work,
                                   read_only=list(read_only), env=batch.env, limits=batch.limits(seconds, file_bytes, cpu_seconds),
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
        self.work = work
        finished = {}
        for task in tasks:
            try:
                error = read_untrusted(work / task / "error.txt", work, 1 << 20)
                if getattr(result, "over_budget", False):  # a task done past the budget is not done
                    message = result.error
                elif error is not None:
                    message = error[:300].decode(errors="replace")
                elif read_untrusted(work / task / "done", work, 1 << 10) is None:
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
        pass load_array's checks; a task with one that does not is dropped with its error."""
        arrays = {}
        for task, folder in finished.items():
            try:
                arrays[task] = {name: load_array(folder / name, self.work, dtype, shape(task), what)
                                for name, (dtype, shape) in files.items()}
            except LabError as error:
                self.drop(task, str(error))
        return arrays

    def drop(self, task, message):
        self.student.drop(task, message)

    def _checkpoints(self, tasks):
        """The phase flags naming each task's checkpoint and the latent_dim it must have."""
        return ([f"--checkpoint={task}={self.running[task]}" for task in tasks]
                + [f"--latent_dim={task}={self.record['tasks'][task]['latent_dim']}" for task in tasks])

    def train(self):
        """The lab's train.py with the fixed budget, for every task without a handed-in checkpoint. The
        sandbox enforces the budget, not train.py, which runs the student's code in its process: the
        phase sees only the budget's images (batch.budget_train, batch.budget_valid) and gets
        batch.train_cpu_seconds of CPU time per task."""
        args, batch = self.args, self.batch
        tasks = [task for task, checkpoint in self.running.items() if checkpoint is None]
        if not tasks:
            return
        command = [PHASE_SCRIPT, "train", "--out", self.base / "train",
                   *[f"--task={task}={self.record['tasks'][task]['latent_dim']}" for task in tasks],
                   "--model", "submission", "--epochs", args.epochs, "--batch_size", args.batch_size,
                   "--train_data", batch.budget_train, "--valid_data", batch.budget_valid,
                   "--eval_num", 0, "--pred_step", args.pred_step, "--seed", args.seed,
                   "--device", args.device, "--precision", args.precision, "--keep_last", "1",
                   "--no-save_loss_plot"]
        finished = self._run("train", "training", tasks, command, [batch.budget_train, batch.budget_valid],
                             file_bytes=2 << 30, use_devices=True, cpu_seconds=batch.train_cpu_seconds * len(tasks))
        for task, folder in finished.items():
            checkpoint = self.inputs / f"{task}.pth"
            try:  # copied, not loaded: the reconstruct phase inspects it (inspect_checkpoint)
                if not copy_untrusted(folder / "run.pth", self.work, checkpoint, MAX_CHECKPOINT_BYTES):
                    raise LabError("the phase wrote no run.pth")
            except LabError as error:
                self.drop(task, f"training: the exported checkpoint: {error}")
                continue
            self.running[task] = checkpoint

    def reconstruct(self):
        """forward on the first `num` grading images: {task: recon uint8 [N,28,28]}, {task: codes [N, D]}."""
        tasks, n = list(self.running), self.batch.num
        if not tasks:
            return {}, {}
        command = [PHASE_SCRIPT, "reconstruct", *self._checkpoints(tasks),
                   "--data", self.batch.grading_path, "--num", n, "--out", self.base / "reconstruct",
                   "--seed", self.args.seed]
        read_only = [self.running[t] for t in tasks] + self.batch.read_only_split(self.batch.grading_path)
        finished = self._run("reconstruct", "reconstruct", tasks, command, read_only)
        for task, folder in finished.items():
            if self.record["tasks"][task]["source"] == "trained here":  # the arithmetic train.py recorded
                try:
                    facts = phase_json(folder / "checkpoint.json", self.work, folder / "error.txt")
                    self.record["tasks"][task]["precision"] = clean_text(facts.get("precision", "?"), 24)
                except LabError:
                    pass
        arrays = self._arrays(finished, "reconstruct", {
            "recon.npy": (np.uint8, lambda task: (n, *IMAGE_SHAPE)),
            "codes.npy": (np.float32, lambda task: (n, self.record["tasks"][task]["latent_dim"]))})
        return ({task: a["recon.npy"] for task, a in arrays.items()},
                {task: a["codes.npy"] for task, a in arrays.items()})

    def decode(self, codes):
        """decode(z, label) in two processes that see no image: one decodes the grader's copy of each
        grading image's code (the verified reconstruction); the other, which never sees those codes,
        decodes the same codes moved by integrity.PERTURBATION x their spread and, for the
        conditional tasks, z ~ N(0, I) for every label (the samples), shuffled together. So a decoder
        cannot match a moved code to its original, nor build samples from the grading images the
        codes describe. Returns {task: {"verified": uint8 [N,28,28], "perturbed": uint8 [N,28,28],
        "samples": uint8 [10,K,28,28] or None}}."""
        tasks = [task for task in self.running if task in codes]
        if not tasks:
            return {}
        inputs = {task: decode_rows(task, codes[task], self.batch.labels, self.args.seed) for task in tasks}
        verified = self._decode("decode", {task: rows["verified"] for task, rows in inputs.items()})
        moved = self._decode("decode_moved", {task: rows["moved"] for task, rows in inputs.items() if task in verified})
        return {task: dict(verified=verified[task], **split_decoded(moved[task], inputs[task]["layout"]))
                for task in moved}

    def _decode(self, name, rows):
        """One decode phase `name` over {task: (codes [M, D], labels [M])}: {task: uint8 [M, 28, 28]}."""
        if not rows:
            return {}
        feed = self.inputs / name
        for task, (task_codes, labels) in rows.items():
            (feed / task).mkdir(parents=True)
            np.save(feed / task / "codes.npy", task_codes, allow_pickle=False)
            np.save(feed / task / "labels.npy", labels, allow_pickle=False)
        tasks = list(rows)
        command = [PHASE_SCRIPT, "decode", *self._checkpoints(tasks),
                   "--inputs", feed, "--out", self.base / name, "--seed", self.args.seed]
        finished = self._run(name, "decode", tasks, command, [self.running[t] for t in tasks] + [feed])
        arrays = self._arrays(finished, "decode", {"decoded.npy": (np.uint8, lambda task: (
            len(rows[task][0]), *IMAGE_SHAPE))})
        return {task: a["decoded.npy"] for task, a in arrays.items()}


def decode_rows(task: str, codes: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """The decode phases' inputs for one task: "verified": (the codes, their labels); "moved": (the codes
    moved a little and, for a conditional task, z ~ N(0, I) per label, shuffled by a permutation only
    the grader knows, and their labels); "layout", for split_decoded."""
    n, latent_dim = codes.shape
    per_label = TASK_RECORDS[task].samples_per_label if TASK_RECORDS[task].conditional else 0
    draws = np.random.default_rng([seed, 0]).standard_normal((NUM_CLASSES * per_label, latent_dim)).astype(np.float32)
    rows = np.concatenate([perturbed_codes(codes, np.random.default_rng([seed, 1])), draws])
    row_labels = np.concatenate([labels, np.repeat(np.arange(NUM_CLASSES), per_label)]).astype(np.int64)
    order = np.random.default_rng([seed, 2]).permutation(len(rows))
    return {"verified": (codes, labels.astype(np.int64)), "moved": (rows[order], row_labels[order]),
            "layout": {"order": order, "n": n, "per_label": per_label, "rows": len(rows)}}


def split_decoded(decoded: np.ndarray, layout: dict) -> dict:
    """The moved-codes phase's output, unshuffled into the perturbed reconstructions and the samples
    (None for a task without them)."""
    unshuffled = np.empty_like(decoded)
    unshuffled[layout["order"]] = decoded
    n, per_label = layout["n"], layout["per_label"]
    samples = unshuffled[n:].reshape(NUM_CLASSES, per_label, *IMAGE_SHAPE) if per_label else None
    return {"perturbed": unshuffled[:n], "samples": samples}
