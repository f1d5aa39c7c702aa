"""The autograder's orchestration: the batch (settings, lab files, the grader's copies of the data),
each student through the phases to a record, the table, and the command line."""
import argparse
import ast
import atexit
import hashlib
import io
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from contract import FALLBACK_LATENT_DIM, IMPORTED_LINE, one_line
from data_utils import LabError, atomic_write_bytes, atomic_write_json, load_split, resolve_split
from hardware import PRECISIONS
from tasks import LATENT_RANGE, RECIPE_EPOCHS, TASK_RECORDS, TASKS
from tools import sandbox
from tools.jobs import BACKENDS, run_jobs
from tools.autograde.integrity import (BYPASS_TOLERANCE, COPY_FRACTION, LEGIBILITY_FLOOR, PERTURBATION,
                                      REAL_IMAGE_CHECKED, ROUNDING_POINTS, ImageBank, bound_by_decode, calibrate, copy_check,
                                      copy_thresholds, legibility, perturbation_check, real_image_share)
from tools.autograde.phases import (MAX_CHECKPOINT_BYTES, MAX_SUBMISSION_BYTES, PHASE_SCRIPT, Phases, Student,
                                   load_array, build_lab, clean_text, copy_untrusted, phase_json, read_untrusted,
                                   untrusted_file)
from tools.autograde.reports import write_tables
from tools.autograde.similarity import similarity_report
from tools.kit import ROOT, SOLUTION_FILE, kit_manifest

# The train phase's CPU time per task, unless --train_cpu_seconds says: a start (imports, validation)
# plus 4 ms per image and epoch, 4 times what our models cost on the AVX2 fp32 host (2 threads at
# about 2,000 images/s: 1 ms of CPU per image), so that a model four times heavier still fits.
TRAIN_CPU_BASE_SECONDS = 60
TRAIN_CPU_SECONDS_PER_IMAGE = 0.004

_print_lock = threading.Lock()


def _print(message: str):
    with _print_lock:
        print(message, flush=True)


def silent(iterable, **_):
    """grade.grade_arrays' progress, drawn by nothing: the grader prints one line per phase."""
    return iterable


def source_latent_dim(text: str, class_name: str):
    """The int default of `latent_dim` in class_name's constructor, read with ast (no code runs):
    the class's own __init__, else the first base class defined in the file that has one; an alias
    `GenModel = CVAE` is followed. None when there is no int literal default."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    classes, aliases = {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = node
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    aliases[target.id] = node.value.id
    seen = set()

    def find(name):
        while name in aliases and name not in classes and name not in seen:
            seen.add(name)
            name = aliases[name]
        node = classes.get(name)
        if node is None or name in seen - set(aliases):
            return None
        seen.add(name)
        init = next((item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__"),
                    None)
        if init is None:
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
                    return find(base.id)
            return None
        args = init.args
        positional = args.posonlyargs + args.args
        defaults = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults))
        defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
        default = defaults.get("latent_dim")
        if isinstance(default, ast.Constant) and type(default.value) is int:
            return default.value
        return None
    return find(class_name)


# ====================================================================== one student
class Batch:
    """What every student's grading shares: settings, the lab files, the grader's copies of the data."""

    def __init__(self, args):
        self.args = args
        self.grading_path = resolve_split(args.data_path).resolve()
        self.valid_path = resolve_split(args.valid_data).resolve()
        self.train_path = resolve_split(args.train_data).resolve()
        images, labels = load_split(self.grading_path)  # a missing or corrupt split stops the batch now
        self.num = min(args.inf_num, len(images)) if args.inf_num else len(images)
        self.images, self.labels = images[:self.num], labels[:self.num]
        valid_images, valid_labels = load_split(self.valid_path)
        train_images, _ = load_split(self.train_path)
        self.banks = [ImageBank("train", train_images), ImageBank("grading", images)]
        # How near real digits the students never generated come to the training images, per label: the
        # copy check's thresholds (the validation split is held out from the training split).
        self.copy_thresholds = copy_thresholds(valid_images, valid_labels, self.banks[0])
        from classifier import load_classifier
        self.classifier, _ = load_classifier()
        lab, _ = kit_manifest(ROOT, include_test_split=False)
        # No data split in the lab copy: a phase sees only the splits it is given.
        self.lab_paths = [p for p in lab if p != SOLUTION_FILE and not p.endswith(".npz")]
        self.isolate = not args.no_isolation and sandbox.isolation()[0]
        env = {"TQDM_DISABLE": "1"}
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        self.env = env

    def read_only_split(self, path: Path) -> list:
        sums = path.parent / "SHA256SUMS"
        return [path] + ([sums] if sums.is_file() else [])

    def limits(self, seconds: float, file_bytes: int = 512 << 20, cpu_seconds: float = None):
        return sandbox.Limits(seconds=seconds, memory_bytes=int(self.args.memory_gb * sandbox.GiB),
                              processes=self.args.processes, file_bytes=file_bytes,
                              memory_rlimit="AS" if self.args.device == "cpu" else "DATA",
                              work_bytes=int(self.args.phase_disk_gb * sandbox.GiB), cpu_seconds=cpu_seconds)

    def write_budget(self, folder: Path) -> None:
        """The training budget's images as splits of their own in `folder` (the grader's): the first
        --train_limit training images, and the first --eval_num validation images. The train phase is
        given these files and no other: it cannot train on images beyond its budget."""
        args = self.args
        folder.mkdir(parents=True, exist_ok=True)
        kept = {}
        for name, path, count in (("train", self.train_path, args.train_limit),
                                  ("valid", self.valid_path, args.eval_num)):
            images, labels = load_split(path)
            images, labels = (images[:count], labels[:count]) if count else (images, labels)
            np.savez(folder / f"{name}.npz", images=images, labels=labels)
            kept[name] = len(images)
        self.budget_train, self.budget_valid = folder / "train.npz", folder / "valid.npz"
        self.train_cpu_seconds = args.train_cpu_seconds or \
            TRAIN_CPU_BASE_SECONDS + (args.epochs or max(task.epochs for task in TASK_RECORDS.values())) \
            * kept["train"] * TRAIN_CPU_SECONDS_PER_IMAGE


def grade_student(batch: Batch, student: Student) -> dict:
    """Everything for one student, in student.base (their lab copy, phase folders); returns their record."""
    args, folder, record, fail = batch.args, student.folder, student.record, student.fail
    base, lab, inputs = student.base, student.lab, student.inputs

    # What the student handed in is read without following a link at any level (a link could make the
    # grader read its own files, the test split, or another student's as theirs) and without loading
    # it: checkpoints are inspected inside the contract phase's sandbox.
    hand_ins = folder.parent
    try:
        source = read_untrusted(folder / SOLUTION_FILE, hand_ins, MAX_SUBMISSION_BYTES,
                                f"{SOLUTION_FILE} (source code is expected)")
    except LabError as error:
        fail(f"{error}: hand in the files themselves")
        return record
    if source is None:
        fail(f"no {SOLUTION_FILE} in the folder")
        return record
    handed_in = [task for task in TASKS if (folder / "checkpoints" / f"{task}.pth").exists()
                 or (folder / "checkpoints" / f"{task}.pth").is_symlink()]
    try:
        for task in handed_in:
            handle = untrusted_file(folder / "checkpoints" / f"{task}.pth", hand_ins)
            if handle is not None:
                handle.close()
    except LabError as error:
        fail(f"{error}: hand in the files themselves")
        return record
    try:  # compiling runs none of the student's code
        compile(source, SOLUTION_FILE, "exec")
    except (SyntaxError, ValueError) as error:
        fail(f"import: {one_line(error)}")
        return record
    sandbox.remove_tree(base)
    build_lab(lab, source, batch.lab_paths)
    inputs.mkdir(parents=True)
    given = {}
    for task in handed_in:
        try:
            digest = copy_untrusted(folder / "checkpoints" / f"{task}.pth", hand_ins, inputs / f"{task}.pth",
                                    MAX_CHECKPOINT_BYTES)
            if digest is not None:
                given[task] = inputs / f"{task}.pth"
                student.checkpoint_sha256[task] = digest
        except LabError as error:
            fail(f"{task} checkpoint: {error}")
            return record

    # 1. contract: the handed-in checkpoints inspected (their latent_dim), then every task's calls checked.
    # latent_dim is the grader's decision: --latent_dim, a handed-in checkpoint's, the source's default.
    text = source.decode(errors="replace")
    latent_dims = {task: (args.latent_dim or source_latent_dim(text, TASK_RECORDS[task].model_class)
                          or FALLBACK_LATENT_DIM) for task in TASKS if task not in given}
    command = [PHASE_SCRIPT, "contract", "--out", base / "contract"]
    command += [f"--latent_dim={task}={n}" for task, n in latent_dims.items()]
    command += [f"--checkpoint={task}={path}" for task, path in given.items()]
    result, work = student.run_phase(batch, "contract", command, args.import_time_limit,
                                     read_only=list(given.values()))
    try:
        raw = read_untrusted(work / "contract.json", work, 1 << 20)
        contract = json.loads(raw.decode(errors="replace")) if raw is not None else None
        if not isinstance(contract, dict) or not isinstance(contract.get("tasks", {}), dict):
            raise ValueError("not a result object")
    except (LabError, ValueError) as error:
        imported = IMPORTED_LINE in sandbox.log_tail(student.logs / "contract.log")
        why = str(error) if isinstance(error, LabError) else result.error or "exited before writing its result"
        fail(f"{'contract check' if imported else 'import'}: {why}")
        return record
    if contract.get("import"):
        fail(f"import: {str(contract['import'])[:300]}")
        return record
    refused = set()
    for task in given:
        try:
            facts = phase_json(work / task / "checkpoint.json", work, work / task / "error.txt")
            latent_dim = facts.get("latent_dim")
            if type(latent_dim) is not int or not LATENT_RANGE[0] <= latent_dim <= LATENT_RANGE[1]:
                raise LabError(f"checkpoints/{task}.pth: no latent_dim in [1, 784] found")
            if args.latent_dim is not None and latent_dim != args.latent_dim:
                raise LabError(f"checkpoints/{task}.pth has latent_dim {latent_dim}, the course grades at "
                               f"--latent_dim {args.latent_dim}")
            latent_dims[task] = latent_dim
        except LabError as error:
            refused.add(task)
            fail(f"{task} checkpoint: {error}")
            continue
        try:
            shapes = [tuple(map(int, shape)) for shape in facts.get("weight_shapes", [])]
            size = sum(int(np.prod(shape)) for shape in shapes)
            student.weights[task] = (load_array(work / task / "weights.npy", work, np.float32, (size,), "contract"),
                                     shapes)
        except (LabError, TypeError, ValueError):
            pass  # only the similar-weights comparison misses it

    running = student.running  # task -> its checkpoint (None: trained here), for the tasks not failed yet
    for task in TASKS:
        if task in refused:
            continue
        outcome = contract.get("tasks", {}).get(task)
        if not isinstance(outcome, dict) or outcome.get("ok") is not True:
            message = outcome.get("error") if isinstance(outcome, dict) else None
            fail(f"{task} contract: {str(message or 'no result')[:300]}")
            continue
        record["tasks"][task] = {"latent_dim": latent_dims[task], "source": "handed in" if task in given else "trained here"}
        running[task] = given.get(task)
        if outcome.get("decode_warning"):  # graded all the same: the TA decides what it is worth
            record["notes"].append(f"{task}: {clean_text(outcome['decode_warning'])}")

    # 2.-4. one process per phase, doing its work for every task still running; then the grades
    phases = Phases(batch, student)
    phases.train()
    recon, codes = phases.reconstruct()
    decoded = phases.decode(codes)
    for task in list(running):
        try:
            grade_task(task, record["tasks"][task], recon[task], decoded[task], batch, record["flags"])
        except LabError as error:
            fail(f"{task} {error}")
            for key in ("ssim", "mse", "fid", "score"):
                record["tasks"][task].pop(key, None)
    return record


def grade_task(task, entry, recon, decoded, batch, flags):
    """The grade of one task from the checked arrays (recon from forward; decoded: split_decoded's
    verified and perturbed reconstructions and samples), bounded by what the code supports: first the
    decode of codes moved a little (perturbation), then decode(mu) itself (bypass); the FID term needs
    samples that are not copies and that read as their label."""
    from grade import grade, grade_arrays
    latent_dim, samples = entry["latent_dim"], decoded["samples"]

    def measured(images):
        return grade_arrays(task, batch.images, batch.labels, images, samples, latent_dim, progress=silent)
    forward, verified, perturbed = measured(recon), measured(decoded["verified"]), measured(decoded["perturbed"])
    for name, result in (("forward", forward), ("verified", verified), ("perturbed", perturbed)):
        entry[name] = {k: result[k] for k in ("ssim", "mse", "score")}
    code = perturbation_check(verified, perturbed)
    entry["perturbation_check"] = code
    supported, supported_name = verified, "verified decode"
    if code["flagged"]:
        supported, supported_name = perturbed, "perturbed decode"
        flags.append({"flag": "code-beyond-latent-dim", "task": task,
                      "evidence": f"moving each code by {PERTURBATION} x its spread drops the decode's grade by "
                                  f"{100 * code['relative_drop']:.0f}% (from {verified['score_uncapped']:.2f} to "
                                  f"{perturbed['score_uncapped']:.2f}; an honest decoder barely changes): the codes "
                                  f"carry more than {latent_dim} numbers' worth; graded from the perturbed decode"})
        # A code that is an index decodes, once moved, to other real images: looked up, not decoded.
        checked = slice(0, REAL_IMAGE_CHECKED)
        share = real_image_share(decoded["perturbed"][checked], batch.labels[checked], batch.banks,
                                 batch.copy_thresholds)
        code["real_image_share"] = share
        if share > COPY_FRACTION:
            supported = dict(perturbed, ssim=0.0, mse=max(perturbed["mse"], 0.1))
            supported["score"] = grade(task, 0.0, supported["mse"], latent_dim, perturbed.get("fid"))
            supported["score_uncapped"] = grade(task, 0.0, supported["mse"], latent_dim, perturbed.get("fid"),
                                                capped=False)
            supported_name = "perturbed decode, whose images are real ones looked up: no reconstruction term"
            flags.append({"flag": "decode-returns-real-images", "task": task,
                          "evidence": f"{100 * share:.0f}% of the decode of the moved codes are near-copies of real "
                                      f"images (first {REAL_IMAGE_CHECKED} checked): decode looks images up; the "
                                      f"reconstruction terms (SSIM, MSE) count 0"})
    bypass = bound_by_decode(forward, supported, recon, decoded["verified"])
    entry["bypass_check"] = bypass
    # The lower of the two counts, always: a forward a little better than its decode, within the flag's
    # tolerance, earns nothing by it either. (Honest models: the same arrays, or a grey level apart in a
    # pixel or two, within ROUNDING_POINTS; sampling in eval: forward lower.)
    graded, entry["graded_from"] = forward, "forward"
    if code["flagged"] or supported["score_uncapped"] < forward["score_uncapped"] - ROUNDING_POINTS:
        graded, entry["graded_from"] = supported, supported_name
    if bypass["flagged"]:
        flags.append({"flag": "recon-bypasses-code", "task": task,
                      "evidence": f"forward grades {forward['score_uncapped']:.2f} (SSIM {forward['ssim']:.3f}, MSE "
                                  f"{forward['mse']:.5f}), more than {100 * BYPASS_TOLERANCE:.0f}% above what the "
                                  f"{supported_name} of its own codes gets, {supported['score_uncapped']:.2f} (SSIM "
                                  f"{supported['ssim']:.3f}, MSE {supported['mse']:.5f}); graded from the "
                                  f"{supported_name}; most different images: "
                                  + ", ".join(f"#{d['image']} (MSE {d['mse']:.4f})" for d in bypass["most_different"])})
    entry.update({key: graded[key] for key in ("ssim", "mse", "bonus", "score", "score_uncapped")})
    if samples is None:
        return
    entry["fid"] = graded["fid"]
    entry["fid_per_label"] = graded["fid_per_label"]
    copies = copy_check(samples, batch.banks, batch.copy_thresholds)
    entry["copy_check"] = copies
    readable = legibility(samples, batch.classifier)
    entry["legibility"] = readable
    reasons = []
    if copies["flagged"]:
        reasons.append("copied-samples")
        flags.append({"flag": "copied-samples", "task": task,
                      "evidence": f"{copies['copies']} of {copies['samples']} samples "
                                  f"({100 * copies['fraction']:.1f}%) lie nearer to a real image than real held-out "
                                  f"digits of their label come to the training set (thresholds "
                                  f"{min(copies['thresholds']):.4f} to {max(copies['thresholds']):.4f}); FID term "
                                  f"zeroed; e.g. "
                                  + ", ".join(f"sample {e['sample']} (label {e['label']}) = {e['split']} image "
                                              f"#{e['image']} shifted {tuple(e['shift'])} at {e['distance']:.5f}"
                                              for e in copies["examples"])})
    if readable["flagged"] and graded["fid"] < 10:
        reasons.append("illegible-samples")
        flags.append({"flag": "illegible-samples", "task": task,
                      "evidence": f"the classifier reads {100 * readable['overall']:.0f}% of the samples as their "
                                  f"label (honest models: 97 to 99%; floor {100 * LEGIBILITY_FLOOR:.0f}%), while "
                                  f"their simplified FID is {graded['fid']:.2f}: they match the pixel statistics "
                                  f"without being digits; FID term zeroed"})
    if reasons:
        entry["fid_term_zeroed"] = reasons
        entry["score"] = grade(task, entry["ssim"], entry["mse"], latent_dim, max(entry["fid"], 10.0))
        entry["score_uncapped"] = grade(task, entry["ssim"], entry["mse"], latent_dim, max(entry["fid"], 10.0),
                                        capped=False)


# ====================================================================== the batch
def student_folders(submissions: Path) -> list:
    if not submissions.is_dir():
        raise LabError(f"{submissions} is not a folder: pass the folder with one sub-folder per student")
    folders = sorted((p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.name)
    if not folders:
        raise LabError(f"{submissions} has no student sub-folders (expected SUBMISSIONS/<student>/submission.py)")
    return folders


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "student"


# Settings that decide where and how fast a batch runs, not what it finds: a rerun that changes only
# these reuses the students already graded (resume).
NOT_IN_RESULTS = ("submissions", "out", "jobs", "backend", "scheduler", "work_dir", "require_isolation")
_batches, _batches_lock = {}, threading.Lock()


def process_batch(args) -> Batch:
    """This process's Batch for `args`, made once: a Dask worker loads the data, the classifier and the
    budget's splits itself, from the paths the TA gave (which must be readable where it runs)."""
    key = json.dumps(vars(args), sort_keys=True, default=str)
    with _batches_lock:
        if key not in _batches:
            batch = Batch(args)
            budget = Path(tempfile.mkdtemp(prefix="autograde-budget."))
            atexit.register(sandbox.remove_tree, budget)
            batch.write_budget(budget)
            _batches[key] = batch
        return _batches[key]


def grade_one(job: dict) -> dict:
    """One student, in whichever process runs the job (this one, or a Dask worker on another machine):
    {"record", "weights", "digests"}. The record says which host graded it and what isolation it had."""
    args, folder = job["args"], Path(job["folder"])

    def say(message):
        _print(f"{job['prefix']}: {message}")
    started = time.perf_counter()
    logs = Path(job["logs"])
    sandbox.remove_tree(logs)
    logs.mkdir(parents=True)
    scratch = None if args.work_dir else Path(tempfile.mkdtemp(prefix="autograde."))
    base = (Path(args.work_dir).resolve() if args.work_dir else scratch) / job["slot"]
    student, isolation = None, "unknown"
    try:
        batch = process_batch(args)
        available, why = sandbox.isolation()
        isolation = "bubblewrap" if batch.isolate else \
            "none: " + ("disabled by --no_isolation" if args.no_isolation else why)
        student = Student(folder, base, logs, say)
        if args.require_isolation and not batch.isolate:
            student.fail(f"--require_isolation: student code cannot be isolated on {socket.gethostname()}: {why}")
            record = student.record
        else:
            record = grade_student(batch, student)
    except Exception as error:  # a grader bug must not lose the other students' rows
        record = failed_record(folder.name, f"autograder failure: {one_line(error)}")
        (logs / "autograder_traceback.txt").write_text(traceback.format_exc())
    finally:
        if scratch is not None:
            sandbox.remove_tree(scratch)
    record.update(seconds=round(time.perf_counter() - started, 2), host=socket.gethostname(), isolation=isolation)
    return {"record": record, "weights": student.weights if student else {},
            "digests": student.checkpoint_sha256 if student else {}}


def failed_record(name: str, error: str) -> dict:
    """The row of a student whom the grader itself failed: not final, so a rerun grades them again."""
    return {"student": name, "tasks": {}, "flags": [], "notes": [], "errors": [error], "final": False}


def file_digest(path: Path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def results_fingerprint(args, folder: Path, lab_digest: str) -> str:
    """What a student's result depends on: their folder's files (names, link targets, contents), the
    settings, the grader's code and the data splits. Equal fingerprints: the saved result stands."""
    digest = hashlib.sha256(lab_digest.encode())
    settings = {k: v for k, v in vars(args).items() if k not in NOT_IN_RESULTS}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for directory, subfolders, files in sorted(os.walk(folder)):  # links are hashed as links, never followed
        subfolders.sort()
        for name in sorted(files + [d for d in subfolders if (Path(directory) / d).is_symlink()]):
            path = Path(directory) / name
            digest.update(b"\0" + str(path.relative_to(folder)).encode() + b"\0")
            if path.is_symlink():
                digest.update(b"link:" + os.readlink(path).encode())
            elif path.is_file():
                file_digest(path, digest)
    return digest.hexdigest()


def code_and_data_digest(args) -> str:
    """The grader's code (the lab it copies, the autograder) and the three splits, as one digest."""
    digest = hashlib.sha256()
    lab, _ = kit_manifest(ROOT, include_test_split=False)
    code = sorted(set(lab) | {str(p.relative_to(ROOT)) for p in (ROOT / "tools").rglob("*.py")})
    for relative in code:
        if (ROOT / relative).is_file():
            digest.update(relative.encode())
            file_digest(ROOT / relative, digest)
    for split in (args.data_path, args.valid_data, args.train_data):
        file_digest(resolve_split(split), digest)
    return digest.hexdigest()


def save_result(folder: Path, slot: str, fingerprint: str, result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vectors = io.BytesIO()
    np.savez(vectors, **{task: vector for task, (vector, _) in result["weights"].items()})
    atomic_write_bytes(folder / f"{slot}.npz", vectors.getvalue())
    atomic_write_json(folder / f"{slot}.json", {
        "fingerprint": fingerprint, "record": result["record"], "digests": result["digests"],
        "shapes": {task: shapes for task, (_, shapes) in result["weights"].items()}})


def load_result(folder: Path, slot: str, fingerprint: str):
    """The saved result of a student with this fingerprint, or None (none saved, another fingerprint, unreadable)."""
    try:
        saved = json.loads((folder / f"{slot}.json").read_text())
        if saved.get("fingerprint") != fingerprint:
            return None
        with np.load(folder / f"{slot}.npz") as vectors:
            weights = {task: (vectors[task], [tuple(shape) for shape in shapes])
                       for task, shapes in saved["shapes"].items()}
        return {"record": saved["record"], "weights": weights, "digests": saved["digests"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def autograde(args) -> list:
    submissions = Path(args.submissions)
    folders = student_folders(submissions)
    out = Path(args.out).resolve()
    if out.suffix.lower() != ".csv":
        raise LabError(f"--out {args.out}: give a .csv path (the .md and .json tables are written beside it)")
    for flag in ("import_time_limit", "time_limit"):
        if not getattr(args, flag) > 0:
            raise LabError(f"--{flag} must be a positive number of seconds")
    if args.inf_num < 0 or args.train_limit < 0 or args.jobs < 1 or args.threads < 0:
        raise LabError("--inf_num, --train_limit and --threads must be >= 0, --jobs >= 1")
    if args.latent_dim is not None and not LATENT_RANGE[0] <= args.latent_dim <= LATENT_RANGE[1]:
        raise LabError(f"--latent_dim {args.latent_dim}: use a value in [1, 784]")
    if submissions.resolve() in out.parents:
        raise LabError(f"--out {args.out} lies inside {submissions}: the tables would be taken for a student; "
                       f"write them elsewhere")
    if args.scheduler and args.backend != "dask":
        raise LabError("--scheduler is the address of a Dask scheduler: add --backend dask")
    for split in (args.data_path, args.valid_data, args.train_data):
        load_split(resolve_split(split))  # a missing or corrupt split stops the batch now, in one line
    available, why = sandbox.isolation()
    if args.no_isolation:
        available, why = False, f"disabled by --no_isolation ({why})"
    here = "on this machine; " + ("each row's isolation column says what its worker enforced" if args.backend == "dask"
                                  else "every student is graded here")
    if args.require_isolation and not available and args.backend == "local":
        raise LabError(f"--require_isolation: student code cannot be isolated here: {why}")
    _print(f"isolation: {'bubblewrap' if available else 'NOT ENFORCED'}: {why} ({here})")
    _print(f"process limit: {sandbox.process_limit()[1]}")
    _print(f"CPU time of the train phase counted {sandbox.cpu_limit()}")
    if not available and args.backend == "local":
        _print("warning: grading WITHOUT isolation: student code runs with the grader's rights "
               "(the report says so)")
    if (args.jobs > 1 or args.backend == "dask") and not args.threads:
        args.threads = 1
    report = {"isolation": ("bubblewrap: " if available else "NOT ENFORCED: ") + why, "isolated": available,
              "process_limit": sandbox.process_limit()[1], "threads_per_phase": args.threads or None,
              "jobs": args.jobs, "backend": args.backend, "similarity": []}

    logs_root, results_root = out.parent / f"{out.stem}_logs", out.parent / f"{out.stem}_results"
    slots = {}
    for folder in folders:
        slot = _safe_name(folder.name)
        while slot in slots.values():
            slot += "_"
        slots[folder] = slot
    records = [None] * len(folders)
    weights = {}  # (student, task) -> the handed-in weights as one vector, and their shapes
    digests = {}  # (student, task) -> the handed-in checkpoint's sha256, which the grader computed itself
    started = time.perf_counter()

    def keep(number, result):
        folder = folders[number]
        records[number] = result["record"]
        weights.update({(folder.name, task): vector for task, vector in result["weights"].items()})
        digests.update({(folder.name, task): digest for task, digest in result["digests"].items()})

    lab_digest = code_and_data_digest(args)
    fingerprints, todo = {}, []
    for number, folder in enumerate(folders):
        fingerprints[number] = results_fingerprint(args, folder, lab_digest)
        saved = load_result(results_root, slots[folder], fingerprints[number])
        if saved is not None:
            keep(number, saved)
        else:
            todo.append(number)
    if len(todo) < len(folders):
        _print(f"resumed: {len(folders) - len(todo)} of {len(folders)} students already graded with these files and "
               f"settings ({results_root}); grading {len(todo)}")

    def done(index, result, error):
        number = todo[index]
        folder = folders[number]
        if error is not None:  # the job itself was lost: its worker died, or the scheduler gave it up
            result = {"record": failed_record(folder.name, f"autograder failure: the job was lost on its worker "
                                                           f"({one_line(error)})"),
                      "weights": {}, "digests": {}}
            result["record"]["seconds"] = 0.0
        record = result["record"]
        keep(number, result)
        grades = ", ".join(f"{t} {record['tasks'][t]['score']:.2f}" for t in TASKS
                           if "score" in record["tasks"].get(t, {})) or "no grade"
        _print(f"[{number + 1}/{len(folders)}] {folder.name}: done in {record['seconds']:.1f} s: {grades}"
               + (f"; flags: {', '.join(f['flag'] for f in record['flags'])}" if record.get("flags") else ""))
        if record.get("final", True):
            try:
                save_result(results_root, slots[folder], fingerprints[number], result)
            except OSError as failure:
                _print(f"warning: {folder.name}'s result could not be saved for a rerun: {one_line(failure)}")
        try:  # an interrupted batch keeps the rows written so far
            write_tables([r for r in records if r is not None], out, report)
        except Exception as failure:  # the final write, after every student, says what it is
            _print(f"warning: the tables could not be updated after {folder.name}: {one_line(failure)}")

    jobs = [{"args": args, "folder": str(folders[n].resolve()), "slot": slots[folders[n]],
             "logs": str(logs_root / slots[folders[n]]), "prefix": f"[{n + 1}/{len(folders)}] {folders[n].name}"}
            for n in todo]
    run_jobs(grade_one, jobs, done, backend=args.backend, workers=args.jobs, scheduler=args.scheduler,
             name="autograde")
    records = [r for r in records if r is not None]
    try:
        report["similarity"], report["similarity_notes"] = similarity_report(records, {f.name: f for f in folders},
                                                                               weights, digests)
    except Exception as error:  # a bug in the comparison must not lose the batch's tables
        report["similarity"], report["similarity_notes"] = [], [f"similarity not computed: {one_line(error)}"]
    for record in records:  # a resumed record may hold the flags of an earlier similarity pass
        record["flags"] = [f for f in record["flags"] if f["flag"] not in ("similar-source", "similar-weights",
                                                                             "same-checkpoint")]
    for pair in report["similarity"]:
        for name in pair["students"]:
            other = [s for s in pair["students"] if s != name][0]
            record = next(r for r in records if r["student"] == name)
            record["flags"].append({"flag": pair["kind"], "task": pair.get("task", ""),
                                    "evidence": f"{pair['kind']} with {other}: {pair['value']:.3f}"})
    report["seconds"] = round(time.perf_counter() - started, 2)
    paths = write_tables(records, out, report)
    _print(f"graded {len(records)} students in {report['seconds']:.1f} s "
           f"({', '.join(str(r['student']) + ' ' + format(r['seconds'], '.1f') + ' s' for r in records)}): "
           f"{', '.join(str(p) for p in paths)}; logs in {logs_root}")
    return records


# ====================================================================== CLI
def add_arguments(grade: argparse.ArgumentParser) -> None:
    from trainer import TrainConfig
    defaults = TrainConfig()
    grade.add_argument("submissions", type=Path, help="folder with one sub-folder per student")
    grade.add_argument("--out", required=True, help="the CSV table; OUT.md, OUT.json and OUT_logs/ go beside it")
    grade.add_argument("--data_path", default="test", help="split to grade on: a split name or an .npz path")
    grade.add_argument("--valid_data", default="valid", help="validation split used while training")
    grade.add_argument("--train_data", default="train",
                       help="training split: used by training here, and searched for copied samples")
    grade.add_argument("--inf_num", type=int, default=0, help="grade on the first N images only (0: all)")
    grade.add_argument("--latent_dim", type=int, default=None,
                       help="latent_dim for every model (default: a handed-in checkpoint's, else the student's "
                            f"constructor default read from the source, else {FALLBACK_LATENT_DIM})")
    grade.add_argument("--epochs", type=int, default=0,
                       help=f"training budget: epochs (0: each task's recipe, {RECIPE_EPOCHS})")
    grade.add_argument("--train_limit", type=int, default=0, help="training budget: first N training images (0: all)")
    grade.add_argument("--batch_size", type=int, default=defaults.batch_size,
                       help="training budget: images per optimiser step")
    grade.add_argument("--eval_num", type=int, default=1000, help="validation images per check while training")
    grade.add_argument("--pred_step", type=int, default=defaults.pred_step, help="validate every N steps (0: never)")
    grade.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed of training and of the z ~ N(0, I) draws, the same for every student")
    grade.add_argument("--device", default="cpu", help="torch device for training (the other phases run on cpu)")
    grade.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="arithmetic of training: fp32 (default: every student of a class trains alike, whatever "
                            "machine grades them), bf16 autocast, or auto (bf16 where the hardware is fast at it); "
                            "a model that fails under bf16 goes on in fp32, and the table says so")
    grade.add_argument("--import_time_limit", type=float, default=120.0,
                       help="seconds for importing submission.py and checking its contract")
    grade.add_argument("--time_limit", type=float, default=3600.0,
                       help="seconds for each training run and each other phase, per task it does (a phase "
                            "doing both tasks gets twice this)")
    grade.add_argument("--train_cpu_seconds", type=float, default=None,
                       help=f"CPU time of the train phase per task (default: {TRAIN_CPU_BASE_SECONDS} s + "
                            f"{TRAIN_CPU_SECONDS_PER_IMAGE * 1000:g} ms per image and epoch of the budget)")
    grade.add_argument("--memory_gb", type=float, default=6.0, help="memory limit per process of a phase (GiB)")
    grade.add_argument("--phase_disk_gb", type=float, default=2.0,
                       help="disk space of all the files a phase writes, together (GiB)")
    grade.add_argument("--processes", type=int, default=64, help="processes + threads per phase")
    grade.add_argument("--jobs", type=int, default=1,
                       help="grade N students in parallel (local: N threads here; dask without --scheduler: a local "
                            "cluster of N worker processes)")
    grade.add_argument("--backend", choices=BACKENDS, default="local",
                       help="where students are graded: local (this machine, the default) or dask (a Dask cluster: "
                            "docs/course.md, 'Grading a class on a cluster')")
    grade.add_argument("--scheduler", default=None,
                       help="with --backend dask: the address of a running Dask scheduler (tcp://HOST:8786); "
                            "default: a local cluster of --jobs workers")
    grade.add_argument("--threads", type=int, default=0,
                       help="torch threads per phase (OMP/MKL_NUM_THREADS); default 1 with --jobs > 1, else "
                            "torch's own; give the same value to compare runs")
    grade.add_argument("--require_isolation", action="store_true",
                       help="refuse to grade unless bubblewrap isolation is usable")
    grade.add_argument("--no_isolation", action="store_true",
                       help="run phases without bubblewrap even where it works (debugging; the report says so)")
    grade.add_argument("--work_dir", default=None,
                       help="keep each student's folders (lab copy, phase outputs) here; default: a temporary "
                            "folder, removed")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        parser = argparse.ArgumentParser(prog="python -m tools.autograde calibrate", description=calibrate.__doc__)
        parser.add_argument("checkpoint", type=Path)
        parser.add_argument("--train_data", default="train")
        parser.add_argument("--held_out", default="valid", help="real digits the training split does not hold")
        options = parser.parse_args(argv[1:])
        calibrate(options.checkpoint, options.train_data, options.held_out)
        return
    import tools.autograde
    parser = argparse.ArgumentParser(prog="python -m tools.autograde", description=tools.autograde.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    autograde(parser.parse_args(argv))
