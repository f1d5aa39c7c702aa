"""The autograder's side of the phases: each student's lab copy, one sandboxed process per phase
(tools/autograde/inside.py inside it, as autograde_inside.py), what each phase is handed and may
spend, and the reading of what it wrote (reads.py), which the grader trusts only after checking it.

Each phase is metered, CPU and wall clock, from the reference's cost on the 2-core bf16 CPU host in
fp32 (docs/course.md, "Metering"): a phase's start (python, torch, the lab, the student's module, a
checkpoint's inspection) took 2.7 s of CPU; training 0.075 ms of CPU per image and epoch; forward
and decode, batched, under 0.05 ms per image. A phase gets START_CPU_SECONDS (about 4 x that start),
plus TRAIN_CPU_PER_IMAGE_EPOCH (13 x the reference's: a model as heavy as the lab's earlier
convolutional VAE, 1 ms, still fits) or INFERENCE_CPU_PER_ROW (20 x a one-sample-at-a-time decode of
the reference) per image it is given, times --cpu_scale; its wall clock is WALL_PER_CPU x that plus
WALL_EXTRA_SECONDS, unless --time_limit says.
"""
import hashlib
import hmac
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from data_utils import IMAGE_SHAPE, NUM_CLASSES, ROOT, LabError
from tasks import TASK_RECORDS
from tools import sandbox
from tools.autograde.integrity import perturbed_codes
from tools.autograde.reads import clean_text, copy_untrusted, load_array, phase_json, read_untrusted
from tools.kit import SOLUTION_FILE

PHASE_SCRIPT = "autograde_inside.py"
MAX_CHECKPOINT_BYTES = 1 << 30  # a checkpoint handed in or exported by the train phase, as a file
MAX_SUBMISSION_BYTES = 1 << 20  # submission.py: source code is expected
START_CPU_SECONDS = 10.0
TRAIN_CPU_PER_IMAGE_EPOCH = 1e-3
INFERENCE_CPU_PER_ROW = 1e-3
WALL_PER_CPU, WALL_EXTRA_SECONDS = 2.0, 30.0
FEED_TIME = 0  # the modification time of every file the decode phases are fed (1970)


def build_lab(lab: Path, source: bytes, lab_paths: list, root: Path = ROOT) -> None:
    """A copy of the course's lab (no data splits) with the student's submission.py (`source`) and the
    phase script."""
    for path in lab_paths:
        target = lab / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target)
    (lab / SOLUTION_FILE).write_bytes(source)
    shutil.copyfile(Path(__file__).with_name("inside.py"), lab / PHASE_SCRIPT)



def secret_rng(secret: bytes, *purpose) -> np.random.Generator:
    """A generator that only the holder of `secret` can rebuild: seeded by HMAC-SHA256(secret, purpose).
    No phase is handed the secret, nor any number derived from it but the rows it decodes."""
    key = hmac.new(secret, "/".join(map(str, purpose)).encode(), hashlib.sha256).digest()
    return np.random.default_rng(int.from_bytes(key, "big"))


@dataclass
class Student:
    """Everything about one student while they are graded: their hand-in as the intake copied it
    (`folder`), their name as the table shows it, their lab copy and phase folders under `base`, their
    logs, the tasks still in the running (task -> the checkpoint to use, None until trained here), and
    the record that becomes their row. `secret` seeds the grader's moves, shuffles and draws."""
    folder: Path
    base: Path
    logs: Path
    say: Callable[[str], None]
    name: str = None
    secret: bytes = b""
    record: dict = field(default_factory=dict)
    running: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)  # task -> (handed-in weights as one vector, their shapes)
    checkpoint_sha256: dict = field(default_factory=dict)  # task -> the handed-in file's sha256, as the grader read it
    pictures: dict = field(default_factory=dict)  # task -> evidence.task_pictures: what the class page shows

    def __post_init__(self):
        self.name = clean_text(self.name if self.name is not None else self.folder.name, 200)
        # notes: what the TA should know that is neither an error nor a flag (no grade depends on them)
        self.record = {"student": self.name, "tasks": {}, "errors": [], "flags": [], "notes": [], "phases": {}}

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

    def run_phase(self, batch, name, command, cpu_seconds, read_only=(), file_bytes=512 << 20, use_devices=False,
                  seconds=None):
        """One phase: `python command...` in the sandbox, in a fresh work folder base/<name>, with
        `cpu_seconds` of CPU (all its processes) and `seconds` of wall clock (default: derived from
        the CPU, or --time_limit)."""
        work = self.base / name
        sandbox.remove_tree(work)
        work.mkdir(parents=True)
        devices = sorted(str(p) for p in Path("/dev").glob("nvidia*")) \
            if use_devices and batch.args.device.startswith("cuda") else ()
        seconds = seconds or batch.args.time_limit or WALL_PER_CPU * cpu_seconds + WALL_EXTRA_SECONDS
        result = sandbox.run_phase([sys.executable, *map(str, command)], lab=self.lab, work=work,
                                   read_only=list(read_only), env=batch.env,
                                   limits=batch.limits(seconds, file_bytes, cpu_seconds),
                                   log=self.logs / f"{name}.log", isolate=batch.isolate, devices=devices)
        self.record["phases"][name] = {"ok": result.ok, "seconds": round(result.seconds, 2),
                                       "isolated": result.isolated, "cpu_limit": round(cpu_seconds, 1)}
        self.say(f"{name.replace('_', ' ')} {'ok' if result.ok else 'FAILED'} ({result.seconds:.1f} s)")
        return result, work


class Phases:
    """The phases, one method each, for one student. A task whose phase fails is failed (its error in the
    student's row) and dropped from `student.running`; the other tasks go on."""

    def __init__(self, batch, student: Student):
        self.batch, self.args, self.student = batch, batch.args, student
        self.base, self.inputs, self.record, self.running = student.base, student.inputs, student.record, student.running

    def cpu(self, rows: float, per_row: float) -> float:
        """A phase's CPU seconds: the start, and `per_row` for each of its `rows` images, times --cpu_scale."""
        return (START_CPU_SECONDS + per_row * rows) * self.args.cpu_scale

    def _run(self, name, what, tasks, command, read_only, cpu_seconds, **options):
        """Run phase `name` for `tasks`; return {task: its output folder} for the tasks that finished."""
        result, work = self.student.run_phase(self.batch, name, command, cpu_seconds, read_only, **options)
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

    def contract(self, latent_dims: dict, given: dict):
        """Import submission.py and check every task's calls at its latent_dim; inspect the handed-in
        checkpoints (`given`: task -> path) first. Returns (contract.json's object, its work folder), or
        (None, reason) when the phase wrote no result object."""
        command = [PHASE_SCRIPT, "contract", "--out", self.base / "contract"]
        command += [f"--latent_dim={task}={n}" for task, n in latent_dims.items()]
        command += [f"--checkpoint={task}={path}" for task, path in given.items()]
        limit = self.args.import_time_limit
        result, work = self.student.run_phase(self.batch, "contract", command, limit, read_only=list(given.values()),
                                              seconds=limit)
        try:
            raw = read_untrusted(work / "contract.json", work, 1 << 20)
            outcome = json.loads(raw.decode(errors="replace")) if raw is not None else None
            if not isinstance(outcome, dict) or not isinstance(outcome.get("tasks", {}), dict):
                raise ValueError("not a result object")
        except (LabError, ValueError) as error:
            return None, str(error) if isinstance(error, LabError) else result.error or "exited before writing its result"
        return outcome, work

    def train(self):
        """The lab's train.py with the fixed budget, for every task without a handed-in checkpoint. The
        sandbox enforces the budget, not train.py, which runs the student's code in its process: the
        phase sees only the budget's images (batch.budget_train; its validation images are some of
        those, so nothing beyond the budget is handed over) and gets its CPU time for them."""
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
                   "--no-save_loss_plot", "--no-check_loss"]  # the loss is graded by what it trains
        cpu = sum(batch.train_cpu_seconds[task] for task in tasks)
        finished = self._run("train", "training", tasks, command, [batch.budget_train, batch.budget_valid], cpu,
                             file_bytes=2 << 30, use_devices=True)
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
        finished = self._run("reconstruct", "reconstruct", tasks, command, read_only,
                             self.cpu(n * len(tasks), INFERENCE_CPU_PER_ROW))
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
        """decode(z, label) in two processes that see no image and cannot tell themselves apart: each is
        handed, shuffled together, one copy of the grading images' codes and, for the conditional task,
        z ~ N(0, I) for every label. In one the codes are the grader's copy as forward gave them (the
        verified reconstruction); in the other they are moved by integrity.PERTURBATION x their spread
        (the perturbed reconstruction), and its draws are the graded samples. Which is which, the order
        they run in, the moves, the draws and the shuffles all come from the grader's secret; the two
        get the same argv shape, environment, layout and number of rows. Returns {task: {"verified":
        uint8 [N,28,28], "perturbed": uint8 [N,28,28], "samples": uint8 [10,K,28,28] or None}}."""
        tasks = [task for task in self.running if task in codes]
        if not tasks:
            return {}
        secret = self.student.secret
        inputs = {task: decode_rows(task, codes[task], self.batch.labels, secret) for task in tasks}
        moved_first = bool(secret_rng(secret, "decode order").integers(2))
        names = {"moved": "decode_1", "verified": "decode_2"} if moved_first else \
            {"verified": "decode_1", "moved": "decode_2"}
        self.record["decode_phases"] = names  # the grader's own record: no phase reads it
        rows = {kind: {task: data[kind] for task, data in inputs.items()} for kind in names}
        for kind in names:  # both feeds written before either runs, their times all alike: no clock tells them apart
            self._feed(names[kind], rows[kind])
        decoded = {}
        for kind in sorted(names, key=names.get):
            decoded[kind] = self._decode(names[kind], {task: half for task, half in rows[kind].items()
                                                       if task in self.running})
        return {task: {"verified": undo(decoded["verified"][task], inputs[task]["verified"])["codes"],
                       **split_decoded(decoded["moved"][task], inputs[task]["moved"])}
                for task in tasks if task in decoded["verified"] and task in decoded["moved"]}

    def _feed(self, name, rows):
        """Write a decode phase's rows, {task: decode_rows' half}, into inputs/<name>/<task>/, every file and
        folder dated FEED_TIME."""
        feed = self.inputs / name
        for task, half in rows.items():
            (feed / task).mkdir(parents=True)
            np.save(feed / task / "codes.npy", half["codes"], allow_pickle=False)
            np.save(feed / task / "labels.npy", half["labels"], allow_pickle=False)
            for path in (feed / task / "codes.npy", feed / task / "labels.npy", feed / task):
                os.utime(path, (FEED_TIME, FEED_TIME))
        os.utime(feed, (FEED_TIME, FEED_TIME))

    def _decode(self, name, rows):
        """One decode phase `name` over {task: decode_rows' half}, fed by _feed: {task: uint8 [M, 28, 28]}, in
        the order the phase was handed the rows."""
        if not rows:
            return {}
        feed = self.inputs / name
        tasks = list(rows)
        command = [PHASE_SCRIPT, "decode", *self._checkpoints(tasks),
                   "--inputs", feed, "--out", self.base / name, "--seed", self.args.seed]
        total = sum(len(half["codes"]) for half in rows.values())
        finished = self._run(name, "decode", tasks, command, [self.running[t] for t in tasks] + [feed],
                             self.cpu(total, INFERENCE_CPU_PER_ROW))
        arrays = self._arrays(finished, "decode", {"decoded.npy": (np.uint8, lambda task: (
            len(rows[task]["codes"]), *IMAGE_SHAPE))})
        return {task: a["decoded.npy"] for task, a in arrays.items()}


def decode_rows(task: str, codes: np.ndarray, labels: np.ndarray, secret: bytes) -> dict:
    """The two decode phases' inputs for one task, {"verified": half, "moved": half}; a half is
    {"codes", "labels"} as the phase gets them (shuffled) and {"order", "n", "per_label"} for undo.
    Each half holds the N codes (as forward gave them, or moved) and, for a conditional task, its own
    z ~ N(0, I) for every label, shuffled by a permutation only the grader knows."""
    n, latent_dim = codes.shape
    per_label = TASK_RECORDS[task].samples_per_label if TASK_RECORDS[task].conditional else 0
    draw_labels = np.repeat(np.arange(NUM_CLASSES), per_label)
    halves = {}
    for kind, rows in (("verified", codes), ("moved", perturbed_codes(codes, secret_rng(secret, task, "move")))):
        draws = secret_rng(secret, task, kind, "draws").standard_normal((len(draw_labels), latent_dim))
        all_rows = np.concatenate([rows, draws.astype(np.float32)]).astype(np.float32)
        all_labels = np.concatenate([labels, draw_labels]).astype(np.int64)
        order = secret_rng(secret, task, kind, "order").permutation(len(all_rows))
        halves[kind] = {"codes": all_rows[order], "labels": all_labels[order], "order": order, "n": n,
                        "per_label": per_label}
    return halves


def undo(decoded: np.ndarray, half: dict) -> dict:
    """A decode phase's output put back in the grader's order: {"codes": its N rows of codes,
    "draws": the rest (None for a task without draws)}."""
    unshuffled = np.empty_like(decoded)
    unshuffled[half["order"]] = decoded
    n, per_label = half["n"], half["per_label"]
    return {"codes": unshuffled[:n], "draws": unshuffled[n:].reshape(NUM_CLASSES, per_label, *IMAGE_SHAPE)
            if per_label else None}


def split_decoded(decoded: np.ndarray, half: dict) -> dict:
    """The moved half's output as the perturbed reconstructions and the samples (None without them)."""
    back = undo(decoded, half)
    return {"perturbed": back["codes"], "samples": back["draws"]}
