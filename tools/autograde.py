"""The sealed autograder: grade a folder of submissions into one table, with student code only in sandboxes.

    python -m tools.course autograde SUBMISSIONS --out grades.csv [--jobs 2] [--require_isolation]
    python -m tools.autograde SUBMISSIONS --out grades.csv        # the same

SUBMISSIONS/<student>/submission.py (+ optional checkpoints/VAE0label.pth, checkpoints/Genwithlabel.pth).
Each student is graded in phases; every phase that runs student code is one tools.sandbox.run_phase
(bubblewrap when usable): the lab copy (the course's files + the student's submission.py, no data
split) read-only, a fresh private work folder, no network, limits, and only the files that phase
must read:

    contract     contract.check for both tasks                         no data split
    train        the lab's train.py with the fixed budget               train + validation splits
    reconstruct  forward on the grading split: recon.npy, codes.npy (mu) grading split + checkpoints
    decode       decode(codes, labels) of the grader's copy of the codes  checkpoints + codes/labels only
    generate     decode(z ~ N(0, I), label): samples.npy (Genwithlabel)  checkpoint only

Each phase is one process that does its work for every task still in the running (train: the tasks
without a handed-in checkpoint), so a student costs five process starts, not one per task and phase.

The grader checks every array itself, grades with grade.grade_arrays in its own process, and
flags what looks like cheating (docs/course.md, "Integrity"): a forward reconstruction that is
clearly better than the decode of its own codes (recon-bypasses-code: graded from the decode),
samples that are near-copies of real images (copied-samples: FID term zeroed), and pairs of
students with near-identical normalised source or handed-in weights (similar-source,
similar-weights: listed, never penalised).
"""
import argparse
import ast
import csv
import difflib
import io
import json
import re
import shutil
import sys
import tempfile
import threading
import time
import tokenize
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contract import FALLBACK_LATENT_DIM, IMPORTED_LINE, one_line  # noqa: E402
from data_utils import IMAGE_SHAPE, NUM_CLASSES, LabError, atomic_write_bytes, load_split, resolve_split, run_cli  # noqa: E402
from hardware import PRECISIONS  # noqa: E402
from tasks import LATENT_RANGE, MODEL_FOR_TASK, TASK_RECORDS, TASKS  # noqa: E402
from tools import sandbox  # noqa: E402

SOLUTION_FILE = "submission.py"
PHASE_SCRIPT = "autograde_phases.py"
MAX_SUBMISSION_BYTES = 1 << 20

TABLE_COLUMNS = ["student",
                 "VAE0label_ssim", "VAE0label_mse", "VAE0label_grade", "VAE0label_source", "VAE0label_precision",
                 "Genwithlabel_ssim", "Genwithlabel_mse", "Genwithlabel_fid", "Genwithlabel_grade",
                 "Genwithlabel_source", "Genwithlabel_precision", "total", "integrity", "errors"]
METRICS = {"VAE0label": ("ssim", "mse"), "Genwithlabel": ("ssim", "mse", "fid")}

# ---- integrity thresholds (calibration: docs/course.md, "Integrity"; `python -m tools.autograde calibrate CHECKPOINT`)
# recon-bypasses-code: forward MSE < BYPASS_RATIO * verified MSE - BYPASS_EPS
BYPASS_RATIO = 0.8
BYPASS_EPS = 1e-4
# copied-samples: a sample whose nearest real image (mean squared pixel difference, 0-1 scale, best
# of the 9 one-pixel shifts of the sample) lies below COPY_DISTANCE is a near-copy; above
# COPY_FRACTION of the samples, the FID term of the grade is zeroed.
COPY_DISTANCE = 0.005
COPY_SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
COPY_FRACTION = 0.05
# similarity between students (flagged, never penalised)
SOURCE_SIMILARITY = 0.9   # difflib ratio of the normalised token streams
WEIGHT_SIMILARITY = 0.99  # cosine of the flattened handed-in state dicts

_print_lock = threading.Lock()


def _print(message: str):
    with _print_lock:
        print(message, flush=True)


# ====================================================================== what the grader reads itself
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


# ====================================================================== integrity measures
def bypass_check(forward_mse: float, verified_mse: float, recon: np.ndarray, verified: np.ndarray,
                 examples: int = 5) -> dict:
    """Is the forward reconstruction clearly better than decode(mu) of its own codes?"""
    flagged = forward_mse < BYPASS_RATIO * verified_mse - BYPASS_EPS
    per_image = np.mean(((recon.astype(np.float64) - verified.astype(np.float64)) / 255.0) ** 2, axis=(1, 2))
    worst = np.argsort(-per_image, kind="stable")[:examples]
    return {"flagged": bool(flagged), "forward_mse": forward_mse, "verified_mse": verified_mse,
            "ratio": forward_mse / verified_mse if verified_mse > 0 else None,
            "identical": bool(np.array_equal(recon, verified)),
            "most_different": [{"image": int(i), "mse": float(per_image[i])} for i in worst if per_image[i] > 0]}


class ImageBank:
    """Real images (0-1 scale, float32 [N,784]) with their squared norms, for nearest-image queries."""

    def __init__(self, name: str, images: np.ndarray):
        import torch
        self.name = name
        self.images = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        self.norms = (self.images ** 2).sum(1)

    def nearest(self, queries, chunk: int = 8192):
        """(distance, index) of each query's nearest image: mean squared difference, 0-1 scale."""
        import torch
        q_norms = (queries ** 2).sum(1, keepdim=True)
        best = torch.full((len(queries),), float("inf"))
        index = torch.zeros(len(queries), dtype=torch.long)
        for start in range(0, len(self.images), chunk):
            block = self.images[start:start + chunk]
            distance = (q_norms + self.norms[start:start + chunk][None] - 2 * queries @ block.T).clamp_(min=0)
            value, where = distance.min(1)
            better = value < best
            best[better], index[better] = value[better], where[better] + start
        return best / queries.shape[1], index


def shifted(samples: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Samples [M,28,28] moved by (dy, dx) pixels, zero-filled."""
    out = np.zeros_like(samples)
    h, w = samples.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        samples[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def nearest_real(samples: np.ndarray, banks: list, shifts=COPY_SHIFTS):
    """For samples uint8 [M,28,28]: (distance [M], bank name [M], image index [M], shift [M]) of the
    nearest real image over every bank and every shift of the sample."""
    import torch
    m = len(samples)
    best = np.full(m, np.inf)
    where = [("", -1, (0, 0))] * m
    for dy, dx in shifts:
        queries = torch.from_numpy(shifted(samples, dy, dx).reshape(m, -1).astype(np.float32) / 255.0)
        for bank in banks:
            distance, index = bank.nearest(queries)
            distance, index = distance.double().numpy(), index.numpy()
            for i in np.nonzero(distance < best)[0]:
                best[i] = distance[i]
                where[i] = (bank.name, int(index[i]), (dy, dx))
    return best, where


def copy_check(samples: np.ndarray, banks: list, examples: int = 5) -> dict:
    """Near-copies among the generated samples (uint8 [10, K, 28, 28])."""
    flat = samples.reshape(-1, *samples.shape[2:])
    distance, where = nearest_real(flat, banks)
    copies = np.nonzero(distance < COPY_DISTANCE)[0]
    fraction = len(copies) / len(flat)
    order = copies[np.argsort(distance[copies], kind="stable")][:examples]
    per_label = samples.shape[1]
    return {"flagged": bool(fraction > COPY_FRACTION), "fraction": fraction, "copies": int(len(copies)),
            "samples": int(len(flat)), "threshold": COPY_DISTANCE,
            "median_distance": float(np.median(distance)), "min_distance": float(distance.min()),
            "examples": [{"sample": int(i), "label": int(i // per_label), "split": where[i][0],
                          "image": where[i][1], "shift": list(where[i][2]), "distance": float(distance[i])}
                         for i in order]}


# ====================================================================== similarity between students
class _Normaliser(ast.NodeTransformer):
    """Canonical names, in order of appearance, for every name the file defines (functions,
    classes, arguments, assigned names and attributes); library names are kept."""

    def __init__(self, defined: set):
        self.defined, self.names = defined, {}

    def rename(self, name):
        if name not in self.defined:
            return name
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_FunctionDef(self, node):
        node.name = self.rename(node.name)
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        node.name = self.rename(node.name)
        return self.generic_visit(node)

    def visit_arg(self, node):
        node.arg, node.annotation = self.rename(node.arg), None
        return node

    def visit_Name(self, node):
        node.id = self.rename(node.id)
        return node

    def visit_Attribute(self, node):
        node.attr = self.rename(node.attr)
        return self.generic_visit(node)

    def visit_keyword(self, node):
        if node.arg:
            node.arg = self.rename(node.arg)
        return self.generic_visit(node)


def _strip_docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]


def _units(tree) -> list:
    """The functions of a module (top-level and methods; nested ones stay in their parent), then
    the rest of the module (imports, assignments, class attributes) as one more unit."""
    units, rest = [], []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            units.append(node)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                (units if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) else rest).append(item)
        else:
            rest.append(node)
    return units + ([ast.Module(body=rest, type_ignores=[])] if rest else [])


def normalised_tokens(text: str) -> list:
    """The source as token streams, one per function (and one for the rest of the module), with
    docstrings and comments dropped and the file's own names (functions, classes, arguments,
    assigned names and attributes) renamed to v0, v1, ... in order of appearance within each unit:
    the result does not depend on names, layout, comments or the order of definitions."""
    tree = ast.parse(text)
    _strip_docstrings(tree)
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            defined.add(node.attr)
    defined -= {"self", "cls"}
    skip = {tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.ENCODING, tokenize.ENDMARKER,
            tokenize.INDENT, tokenize.DEDENT}
    streams = []
    for unit in _units(tree):
        source = ast.unparse(_Normaliser(defined).visit(unit))
        streams.append([t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                        if t.type not in skip])
    return [stream for stream in streams if stream]


def source_similarity(a: list, b: list) -> float:
    """How much of each file's normalised code has a near-identical counterpart in the other: for
    every unit, the best difflib ratio against the other file's units, weighted by length; the
    smaller of the two directions."""
    if not a or not b:
        return 0.0
    ratios = np.zeros((len(a), len(b)))
    for j, v in enumerate(b):
        matcher = difflib.SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(v)
        for i, u in enumerate(a):
            matcher.set_seq1(u)
            if matcher.real_quick_ratio() > 0.5 and matcher.quick_ratio() > 0.5:
                ratios[i, j] = matcher.ratio()
    weights_a, weights_b = np.array([len(u) for u in a]), np.array([len(v) for v in b])
    return float(min(weights_a @ ratios.max(1) / weights_a.sum(), weights_b @ ratios.max(0) / weights_b.sum()))


def weight_vector(path: Path):
    """The handed-in checkpoint's weights as one float64 vector and the list of shapes."""
    import torch
    from checkpoint import load_checkpoint
    state = load_checkpoint(path)["model_state_dict"]
    tensors = [t for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    shapes = [tuple(t.shape) for t in tensors]
    vector = torch.cat([t.detach().double().flatten() for t in tensors]) if tensors else torch.zeros(0)
    return vector.numpy(), shapes


def similarity_report(records: list, folders: dict) -> list:
    """[{kind, students, value}] for every pair above its threshold."""
    tokens, weights = {}, {}
    for record in records:
        name = record["student"]
        try:
            tokens[name] = normalised_tokens((folders[name] / SOLUTION_FILE).read_text())
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            pass
        for task in TASKS:
            path = folders[name] / "checkpoints" / f"{task}.pth"
            if record["tasks"].get(task, {}).get("source") == "handed in":
                try:
                    weights[(name, task)] = weight_vector(path)
                except Exception:
                    pass
    pairs = []
    names = sorted(tokens)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ratio = source_similarity(tokens[a], tokens[b])
            if ratio >= SOURCE_SIMILARITY:
                pairs.append({"kind": "similar-source", "students": [a, b], "value": ratio})
    keys = sorted(weights)
    for i, (a, task) in enumerate(keys):
        for b, other in keys[i + 1:]:
            if other != task or a == b:
                continue
            (va, sa), (vb, sb) = weights[(a, task)], weights[(b, task)]
            if sa != sb or not len(va):
                continue
            norm = np.linalg.norm(va) * np.linalg.norm(vb)
            cosine = float(va @ vb / norm) if norm else 0.0
            if cosine >= WEIGHT_SIMILARITY:
                pairs.append({"kind": "similar-weights", "task": task, "students": [a, b], "value": cosine})
    return pairs


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
        self.grading_images, self.grading_labels = images, labels
        load_split(self.valid_path)
        train_images, _ = load_split(self.train_path)
        self.banks = [ImageBank("train", train_images), ImageBank("grading", images)]
        from tools.course import kit_manifest
        lab, _ = kit_manifest(ROOT, include_test_split=False)
        # No data split in the lab copy: a phase sees only the splits it is given.
        self.lab_paths = [p for p in lab if p != SOLUTION_FILE and not p.endswith(".npz")]
        self.isolate = not args.no_isolation and sandbox.isolation()[0]
        import functools
        import grade
        from tqdm import tqdm
        grade.tqdm = functools.partial(tqdm, disable=True)  # the grader prints one line per phase, no bars
        env = {"TQDM_DISABLE": "1"}
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        self.env = env

    def read_only_split(self, path: Path) -> list:
        sums = path.parent / "SHA256SUMS"
        return [path] + ([sums] if sums.is_file() else [])

    def limits(self, seconds: float, file_bytes: int = 512 << 20):
        return sandbox.Limits(seconds=seconds, memory_bytes=int(self.args.memory_gb * sandbox.GiB),
                              processes=self.args.processes, file_bytes=file_bytes,
                              memory_rlimit="AS" if self.args.device == "cpu" else "DATA")


def build_lab(lab: Path, submission: Path, lab_paths: list, root: Path = ROOT) -> None:
    """A copy of the course's lab (no data splits) with the student's submission.py and the phase script."""
    for path in lab_paths:
        target = lab / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target)
    shutil.copyfile(submission, lab / SOLUTION_FILE)
    shutil.copyfile(ROOT / "tools" / PHASE_SCRIPT, lab / PHASE_SCRIPT)


def grade_student(folder: Path, batch: Batch, base: Path, logs: Path, say) -> dict:
    """Everything for one student in `base` (its lab copy, phase folders) with logs in `logs`."""
    args = batch.args
    record = {"student": folder.name, "tasks": {}, "errors": [], "flags": [], "phases": {}}
    errors, flags = record["errors"], record["flags"]

    def fail(message):
        errors.append(message)
        say(message)

    submission = folder / SOLUTION_FILE
    links = [p.relative_to(folder).as_posix() for p in [submission, *folder.glob("checkpoints/*.pth")]
             if p.is_symlink()]
    if links:  # a link could make the grader read its own files (the test split) as the student's
        fail(f"{', '.join(links)} is a symbolic link: hand in the files themselves")
        return record
    if not submission.is_file():
        fail(f"no {SOLUTION_FILE} in the folder")
        return record
    if submission.stat().st_size > MAX_SUBMISSION_BYTES:
        fail(f"{SOLUTION_FILE} is {submission.stat().st_size:,} bytes; source code is expected")
        return record
    source = submission.read_bytes()
    try:  # compiling runs none of the student's code
        compile(source, SOLUTION_FILE, "exec")
    except (SyntaxError, ValueError) as error:
        fail(f"import: {one_line(error)}")
        return record
    shutil.rmtree(base, ignore_errors=True)
    lab, inputs = base / "lab", base / "inputs"
    build_lab(lab, submission, batch.lab_paths)
    inputs.mkdir(parents=True)
    python = sys.executable
    devices = sorted(str(p) for p in Path("/dev").glob("nvidia*")) if args.device.startswith("cuda") else []

    def phase(name, command, seconds, read_only=(), file_bytes=512 << 20, use_devices=False):
        work = base / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        result = sandbox.run_phase([python, *map(str, command)], lab=lab, work=work, read_only=list(read_only),
                                   env=batch.env, limits=batch.limits(seconds, file_bytes), log=logs / f"{name}.log",
                                   isolate=batch.isolate, devices=devices if use_devices else ())
        record["phases"][name] = {"ok": result.ok, "seconds": round(result.seconds, 2), "isolated": result.isolated}
        say(f"{name.replace('_', ' ')} {'ok' if result.ok else 'FAILED'} ({result.seconds:.1f} s)")
        return result, work

    # latent_dim per task: the grader's decision (--latent_dim, the handed-in checkpoint, the source's default)
    text = source.decode(errors="replace")
    latent_dims, given, refused = {}, {}, set()
    for task in TASKS:
        path = folder / "checkpoints" / f"{task}.pth"
        if path.is_file():
            try:
                latent_dim = check_student_checkpoint(path, task)
                if args.latent_dim is not None and latent_dim != args.latent_dim:
                    raise LabError(f"checkpoints/{task}.pth has latent_dim {latent_dim}, the course grades at "
                                   f"--latent_dim {args.latent_dim}")
            except LabError as error:
                refused.add(task)
                fail(f"{task} checkpoint: {error}")
                continue
            given[task] = inputs / f"{task}.pth"
            shutil.copyfile(path, given[task])
            latent_dims[task] = latent_dim
        else:
            latent_dims[task] = (args.latent_dim or source_latent_dim(text, TASK_RECORDS[task].model_class)
                                 or FALLBACK_LATENT_DIM)

    # 1. contract
    command = [PHASE_SCRIPT, "contract", "--out", base / "contract"]
    command += [f"--latent_dim={task}={n}" for task, n in latent_dims.items()]
    result, work = phase("contract", command, args.import_time_limit)
    try:
        with open(work / "contract.json", encoding="utf-8", errors="replace") as handle:
            contract = json.loads(handle.read(100_000))
        if not isinstance(contract, dict) or not isinstance(contract.get("tasks", {}), dict):
            raise ValueError("not a result object")
    except (OSError, ValueError):
        imported = IMPORTED_LINE in sandbox.log_tail(logs / "contract.log")
        fail(f"{'contract check' if imported else 'import'}: {result.error or 'exited before writing its result'}")
        return record
    if contract.get("import"):
        fail(f"import: {str(contract['import'])[:300]}")
        return record

    running = {}  # task -> its checkpoint (None: trained here), for the tasks not failed yet
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

    # 2.-5. one process per phase, doing its work for every task still running; then the grades
    phases = Phases(batch, base, inputs, phase, record, running, fail)
    phases.train()
    recon, codes = phases.reconstruct()
    verified = phases.decode(codes)
    samples = phases.generate()
    for task in list(running):
        try:
            grade_task(task, record["tasks"][task], recon[task], verified[task], samples.get(task), batch, flags)
        except LabError as error:
            fail(f"{task} {error}")
            for key in ("ssim", "mse", "fid", "score"):
                record["tasks"][task].pop(key, None)
    return record


class Phases:
    """The phases after the contract, one method each. A task whose phase fails is failed (its error in the
    student's row) and dropped from `running`; the other tasks go on."""

    def __init__(self, batch, base, inputs, phase, record, running, fail):
        self.batch, self.args, self.base, self.inputs, self.phase = batch, batch.args, base, inputs, phase
        self.record, self.running, self.fail = record, running, fail

    def _run(self, name, what, tasks, command, read_only, **options):
        """Run phase `name` for `tasks`; return {task: its output folder} for the tasks that finished."""
        result, work = self.phase(name, command, self.args.time_limit * len(tasks), read_only, **options)
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
        self.fail(f"{task} {message}")
        del self.running[task]

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


def grade_task(task, entry, recon, verified, samples, batch, flags):
    """The grade of one task from the checked arrays, with the bypass and copy checks."""
    from grade import grade, grade_arrays
    latent_dim = entry["latent_dim"]
    forward = grade_arrays(task, batch.images, batch.labels, recon, samples, latent_dim)
    decoded = grade_arrays(task, batch.images, batch.labels, verified, samples, latent_dim)
    entry["forward"] = {k: forward[k] for k in ("ssim", "mse", "score")}
    entry["verified"] = {k: decoded[k] for k in ("ssim", "mse", "score")}
    bypass = bypass_check(forward["mse"], decoded["mse"], recon, verified)
    entry["bypass_check"] = bypass
    graded = forward
    entry["graded_from"] = "forward"
    if bypass["flagged"]:
        graded = decoded
        entry["graded_from"] = "verified decode"
        flags.append({"flag": "recon-bypasses-code", "task": task,
                      "evidence": f"forward MSE {bypass['forward_mse']:.5f} < {BYPASS_RATIO} x verified decode(mu) "
                                  f"MSE {bypass['verified_mse']:.5f} (forward grade {forward['score']:.2f}, graded "
                                  f"from the decode: {decoded['score']:.2f}); most different images: "
                                  + ", ".join(f"#{d['image']} (MSE {d['mse']:.4f})" for d in bypass["most_different"])})
    entry.update({key: graded[key] for key in ("ssim", "mse", "bonus", "score", "score_uncapped")})
    if samples is not None:
        entry["fid"] = graded["fid"]
        entry["fid_per_label"] = graded["fid_per_label"]
        copies = copy_check(samples, batch.banks)
        entry["copy_check"] = copies
        if copies["flagged"]:
            entry["fid_term_zeroed"] = True
            entry["score"] = grade(task, entry["ssim"], entry["mse"], latent_dim, max(entry["fid"], 10.0))
            entry["score_uncapped"] = grade(task, entry["ssim"], entry["mse"], latent_dim, max(entry["fid"], 10.0),
                                            capped=False)
            flags.append({"flag": "copied-samples", "task": task,
                          "evidence": f"{copies['copies']} of {copies['samples']} samples "
                                      f"({100 * copies['fraction']:.1f}%) lie within {COPY_DISTANCE} (mean squared "
                                      f"pixel difference) of a real image; FID term zeroed; e.g. "
                                      + ", ".join(f"sample {e['sample']} (label {e['label']}) = {e['split']} image "
                                                  f"#{e['image']} shifted {tuple(e['shift'])} at {e['distance']:.5f}"
                                                  for e in copies["examples"])})


# ====================================================================== tables
def table_rows(records: list) -> list:
    rows = []
    for record in records:
        row = {"student": record["student"], "errors": "; ".join(record["errors"])}
        total = 0.0
        for task, metrics in METRICS.items():
            entry = record["tasks"].get(task, {})
            for metric in metrics:
                row[f"{task}_{metric}"] = entry.get(metric)
            row[f"{task}_grade"] = entry.get("score")
            row[f"{task}_source"] = entry.get("source") if "score" in entry else None
            row[f"{task}_precision"] = entry.get("precision")
            total += entry.get("score") or 0.0
        row["total"] = total
        row["integrity"] = ";".join(f"{f['task']}:{f['flag']}" if f.get("task") else f["flag"]
                                    for f in record.get("flags", []))
        rows.append(row)
    return rows


def write_tables(records: list, out: Path, report: dict) -> list:
    """OUT.csv (full precision), OUT.md (rounded, with the flags and similarity sections) and OUT.json."""
    rows = table_rows(records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()})
    csv_path, md_path, json_path = out, out.with_suffix(".md"), out.with_suffix(".json")
    atomic_write_bytes(csv_path, buffer.getvalue().encode())

    def cell(column, value):
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.2f}" if column.endswith("_grade") or column == "total" else f"{value:.4f}"
        return str(value).replace("|", "\\|").replace("\n", " ")
    lines = [f"Isolation: {report['isolation']}", ""]
    if not report["isolated"]:
        lines += ["**WARNING: isolation was not enforced**: student code ran with the grader's rights "
                  "(file system, network); the integrity checks below still ran.", ""]
    lines += ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    lines += ["", "## Integrity flags", ""]
    flagged = [(r["student"], f) for r in records for f in r.get("flags", [])]
    lines += [f"- **{name}** {f.get('task', '')} `{f['flag']}`: {f['evidence']}" for name, f in flagged] or ["none"]
    lines += ["", "## Similarity between students", ""]
    lines += [f"- {' and '.join(p['students'])}: `{p['kind']}`" + (f" ({p['task']})" if p.get("task") else "")
              + f" {p['value']:.3f}" for p in report.get("similarity", [])] or ["none above the thresholds"]
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(json_path, (json.dumps(dict(report, students=records), indent=2) + "\n").encode())
    return [csv_path, md_path, json_path]


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
    available, why = sandbox.isolation()
    if args.no_isolation:
        available, why = False, f"disabled by --no_isolation ({why})"
    if args.require_isolation and not available:
        raise LabError(f"--require_isolation: student code cannot be isolated here: {why}")
    _print(f"isolation: {'bubblewrap' if available else 'NOT ENFORCED'}: {why}")
    _print(f"process limit: {sandbox.process_limit()[1]}")
    if not available:
        _print("warning: grading WITHOUT isolation: student code runs with the grader's rights "
               "(the report says so)")
    if args.jobs > 1 and not args.threads:
        args.threads = 1
    batch = Batch(args)
    report = {"isolation": ("bubblewrap: " if available else "NOT ENFORCED: ") + why, "isolated": available,
              "process_limit": sandbox.process_limit()[1], "threads_per_phase": args.threads or None,
              "jobs": args.jobs, "similarity": []}

    logs_root = out.parent / f"{out.stem}_logs"
    work_root = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="autograde."))
    work_root.mkdir(parents=True, exist_ok=True)
    slots = {}
    for folder in folders:
        slot = _safe_name(folder.name)
        while slot in slots.values():
            slot += "_"
        slots[folder] = slot
    records = [None] * len(folders)
    lock = threading.Lock()
    started = time.perf_counter()

    def one(number, folder):
        prefix = f"[{number + 1}/{len(folders)}] {folder.name}"

        def say(message):
            _print(f"{prefix}: {message}")
        student_started = time.perf_counter()
        logs, base = logs_root / slots[folder], work_root / slots[folder]
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        try:
            record = grade_student(folder, batch, base, logs, say)
        except Exception as error:  # a grader bug must not lose the other students' rows
            record = {"student": folder.name, "tasks": {}, "flags": [],
                      "errors": [f"autograder failure: {one_line(error)}"]}
            (logs / "autograder_traceback.txt").write_text(traceback.format_exc())
        record["seconds"] = round(time.perf_counter() - student_started, 2)
        grades = ", ".join(f"{t} {record['tasks'][t]['score']:.2f}" for t in TASKS
                           if "score" in record["tasks"].get(t, {})) or "no grade"
        say(f"done in {record['seconds']:.1f} s: {grades}"
            + (f"; flags: {', '.join(f['flag'] for f in record['flags'])}" if record.get("flags") else ""))
        if not args.work_dir:
            shutil.rmtree(base, ignore_errors=True)
        with lock:
            records[number] = record
            write_tables([r for r in records if r is not None], out, report)  # an interrupted batch keeps rows

    try:
        if args.jobs > 1:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                for future in [pool.submit(one, i, f) for i, f in enumerate(folders)]:
                    future.result()
        else:
            for i, folder in enumerate(folders):
                one(i, folder)
    finally:
        if not args.work_dir:
            shutil.rmtree(work_root, ignore_errors=True)
    records = [r for r in records if r is not None]
    report["similarity"] = similarity_report(records, {f.name: f for f in folders})
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
    grade.add_argument("--epochs", type=int, default=defaults.epochs, help="training budget: epochs")
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
    grade.add_argument("--memory_gb", type=float, default=6.0, help="memory limit per process of a phase (GiB)")
    grade.add_argument("--processes", type=int, default=64, help="processes + threads per phase")
    grade.add_argument("--jobs", type=int, default=1, help="grade N students in parallel")
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


def calibrate(checkpoint, train="train", grading="test", per_label: int = 100, seed: int = 42) -> dict:
    """Print the nearest-real-image distances (no shift and best of COPY_SHIFTS) of an honest model's
    samples and of exact, noisy and shifted copies of training images: what COPY_DISTANCE is chosen
    from. Runs the checkpoint's model in this process: use a model you trust (e.g. one you trained)."""
    import contract
    import inference
    from checkpoint import load_checkpoint, model_from_checkpoint
    train_images, _ = load_split(train)
    banks = [ImageBank("train", train_images), ImageBank("grading", load_split(grading)[0])]
    loaded = load_checkpoint(checkpoint)
    latent_dim = loaded["model_kwargs"]["latent_dim"]
    model = model_from_checkpoint(loaded, checkpoint).eval()
    samples = inference.generate(contract.Decoder(model, latent_dim), latent_dim, per_label, seed, "cpu")
    rng = np.random.default_rng(0)
    exact = train_images[rng.choice(len(train_images), 10 * per_label, replace=False)]

    def noisy(sigma):
        return np.clip(exact + rng.normal(0, sigma * 255, exact.shape), 0, 255).round().astype(np.uint8)
    sets = {f"honest samples ({loaded['model']}, latent_dim {latent_dim})": samples.reshape(-1, 28, 28),
            "exact copies": exact, "copies + noise sd 0.05": noisy(0.05), "copies + noise sd 0.10": noisy(0.10),
            "copies shifted 1 px": shifted(exact, 1, 0), "copies shifted 1 px diagonally": shifted(exact, 1, 1)}
    result = {}
    print("nearest real image, mean squared pixel difference (0-1 scale): percentiles 0, 1, 5, 50, 95, 100; "
          f"fraction below COPY_DISTANCE={COPY_DISTANCE}")
    for name, images in sets.items():
        for label, shifts in (("no shift", [(0, 0)]), ("9 shifts", COPY_SHIFTS)):
            distance, _ = nearest_real(images, banks, shifts)
            result[(name, label)] = distance
            print(f"{name:>45} {label:>8}: {np.percentile(distance, [0, 1, 5, 50, 95, 100]).round(5)} "
                  f"below: {np.mean(distance < COPY_DISTANCE):.3f}")
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        parser = argparse.ArgumentParser(prog="python -m tools.autograde calibrate", description=calibrate.__doc__)
        parser.add_argument("checkpoint", type=Path)
        parser.add_argument("--train_data", default="train")
        parser.add_argument("--data_path", default="test")
        options = parser.parse_args(argv[1:])
        calibrate(options.checkpoint, options.train_data, options.data_path)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    autograde(parser.parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
