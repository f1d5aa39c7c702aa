"""Course kit: the student starter generated from the solution, and batch autograding.

    python -m tools.course starter OUT_DIR                        # the kit students get
    python -m tools.course strip [submission.py]                  # print the stripped submission.py
    python -m tools.course autograde SUBMISSIONS --out grades.csv # one row per student

starter   copies the lab's files (those git tracks or would track) into OUT_DIR, leaving out what a student
          must not see (KIT_EXCLUDES says what and why), with submission.py stripped: every
          region between `# BEGIN SOLUTION <section>` and `# END SOLUTION` becomes a TODO stub.
          The kit also gets check_submission.py (the contract check the autograder runs) and
          STARTER.md.
autograde takes SUBMISSIONS/<student>/submission.py (+ optional checkpoints/VAE0label.pth,
          checkpoints/Genwithlabel.pth) for every student, and for each: checks the model
          contract, trains with a fixed budget unless a checkpoint is given, reconstructs and
          samples on the grading split, grades, and writes OUT.csv, OUT.md, OUT.json and
          OUT_logs/<student>/. Student code only ever runs in a subprocess with a time limit,
          in a throw-away copy of the lab; a crash, hang or broken contract is that student's
          error, not the batch's.

See docs/course.md.
"""
import argparse
import ast
import csv
import importlib
import inspect
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils import LabError, atomic_write_bytes, run_cli  # noqa: E402
from tasks import MODEL_FOR_TASK, TASKS  # noqa: E402

SOLUTION_FILE = "submission.py"
CHECK_SCRIPT = "check_submission.py"
STARTER_NOTE = "STARTER.md"

# ====================================================================== stripping the solution
BEGIN_MARKER = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?:[ \t]+(?P<section>\S+))?[ \t]*$")
END_MARKER = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
# The handout's sections, for the stub messages; an unknown section is named by number only.
SECTION_TITLES = {
    "2.2.1": "the network's layers",
    "2.2.2": "the encoder",
    "2.2.3": "the decoder",
    "2.2.4": "reparameterisation and forward",
    "2.3": "the loss",
    "3": "the conditional generator",
}


@dataclass(frozen=True)
class Region:
    """One `# BEGIN SOLUTION` .. `# END SOLUTION` block (0-based line indices, both markers included)."""
    section: str
    begin: int
    end: int
    indent: str
    owner: str      # the enclosing class, or "" at module level / in a plain function
    function: str   # the enclosing function, or "" at module level

    @property
    def label(self) -> str:
        title = SECTION_TITLES.get(self.section)
        return f"TODO {self.section}" + (f" ({title})" if title else "")

    @property
    def qualname(self) -> str:
        return ".".join(part for part in (self.owner, self.function) if part)

    @property
    def constructs(self) -> bool:
        """Constructor and module-level regions become a comment + `pass`, so that importing the
        module and building the classes work; any other region raises when called."""
        return self.function in ("", "__init__")

    def stub(self) -> list:
        if not self.constructs:
            message = f"{self.label}: implement {self.qualname} in {SOLUTION_FILE}"
            return [f"raise NotImplementedError({json.dumps(message)})"]
        if self.function == "__init__":
            return [f"# {self.label}: define the layers and attributes of {self.owner} here.", "pass"]
        return [f"# {self.label}: your code here.", "pass"]


def _enclosing(tree: ast.AST, lineno: int):
    """(class, function) names around 1-based line `lineno`, innermost function."""
    found = ("", "")

    def visit(node, owner):
        nonlocal found
        for child in ast.iter_child_nodes(node):
            if not (hasattr(child, "lineno") and child.lineno <= lineno <= (child.end_lineno or child.lineno)):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found = (owner, child.name)
                visit(child, owner)
            elif isinstance(child, ast.ClassDef):
                visit(child, child.name)
    visit(tree, "")
    return found


def solution_regions(text: str, filename: str = SOLUTION_FILE) -> list:
    """Find and check the solution markers of `text`; raise LabError naming the line on a mistake."""
    try:
        tree = ast.parse(text, filename)
    except SyntaxError as error:
        raise LabError(f"{filename} does not parse (line {error.lineno}: {error.msg}): "
                       f"fix it before stripping") from None
    regions, opened = [], None
    for index, line in enumerate(text.splitlines()):
        begin, end = BEGIN_MARKER.match(line), END_MARKER.match(line)
        if begin:
            if opened is not None:
                raise LabError(f"{filename}:{index + 1}: BEGIN SOLUTION inside the region opened at line "
                               f"{opened[0] + 1}: close that one with '# END SOLUTION' first")
            if not begin["section"]:
                raise LabError(f"{filename}:{index + 1}: '# BEGIN SOLUTION' needs a section number, "
                               f"e.g. '# BEGIN SOLUTION 2.2.2'")
            opened = (index, begin)
        elif end:
            if opened is None:
                raise LabError(f"{filename}:{index + 1}: '# END SOLUTION' without a '# BEGIN SOLUTION' before it")
            start, match = opened
            # The BEGIN line lies inside the enclosing function's line range (its body follows).
            owner, function = _enclosing(tree, start + 1)
            regions.append(Region(match["section"], start, index, match["indent"], owner, function))
            opened = None
    if opened is not None:
        raise LabError(f"{filename}:{opened[0] + 1}: the region opened here has no '# END SOLUTION'")
    if not regions:
        raise LabError(f"{filename} has no '# BEGIN SOLUTION <section>' markers: nothing to strip")
    return regions


def strip_solution(text: str, filename: str = SOLUTION_FILE) -> str:
    """The starter version of `text`: each marked region, markers included, replaced by its stub
    at the region's indentation. A pure function of the text; lines outside regions are kept."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    out, position = [], 0
    for region in solution_regions(text, filename):
        out.extend(lines[position:region.begin])
        out.extend(f"{region.indent}{stub}{newline}" for stub in region.stub())
        position = region.end + 1
    out.extend(lines[position:])
    stripped = "".join(out)
    try:
        compile(stripped, filename, "exec")
    except SyntaxError as error:
        raise LabError(f"the stripped {filename} does not compile (line {error.lineno}: {error.msg}): a region "
                       f"must hold whole statements of one block") from None
    return stripped


# ====================================================================== the starter kit
# (pattern, why): a pattern ending in "/" is a folder, any other pattern one exact path.
KIT_EXCLUDES = [
    ("checkpoints/", "the reference solution's trained weights"),
    ("tools/", "this course kit: the stripper and the autograder are the instructor's"),
    ("tests/", "the solution's test suite: it tests the reference models (it fails on the stubs) and "
               "checks the derivations numerically; check_submission.py replaces it"),
    (".ci/", "runs that test suite"),
    ("docs/derivations.md", "the worked answers to sections 0 and 1"),
    ("docs/results.md", "the reference solution's measured grades and tuning"),
    ("docs/course.md", "the instructors' guide to this kit"),
    ("benchmarks/results/", "measurements of the reference solution"),
    ("sweeps/", "hyper-parameter sweeps of the reference solution"),
    ("outputs/", "inference outputs of the reference solution"),
    ("grade_result.json", "grades of the reference solution"),
    ("dataset/test.npz", "the grading split (see --include_test_split)"),
]
TEST_SPLIT = "dataset/test.npz"


def _excluded(path: str, include_test_split: bool):
    for pattern, why in KIT_EXCLUDES:
        if pattern == TEST_SPLIT and include_test_split:
            continue
        if path.startswith(pattern) if pattern.endswith("/") else path == pattern:
            return why
    return None


def lab_files(root: Path = ROOT) -> list:
    """The lab's files as relative POSIX paths: the working tree's files that git tracks or would
    track (untracked ones that .gitignore does not ignore count: a new module is part of the lab
    before it is committed); without git, every file outside hidden folders and run outputs."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True,
                                check=True, timeout=60).stdout.decode().split("\0")
        files = sorted({p for p in listed if p and (root / p).is_file()})
        if files:
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    skip_dirs = {"__pycache__", "outputs", "sweeps"}
    files = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if path.is_file() and not any(p.startswith(".") or p in skip_dirs for p in parts[:-1]) \
                and path.suffix != ".pyc" and path.name != "grade_result.json":
            files.append(path.relative_to(root).as_posix())
    return sorted(files)


def kit_manifest(root: Path = ROOT, include_test_split: bool = False):
    """(files to copy, {excluded file: why}), both relative paths."""
    copied, left_out = [], {}
    for path in lab_files(root):
        why = _excluded(path, include_test_split)
        if why:
            left_out[path] = why
        else:
            copied.append(path)
    if SOLUTION_FILE not in copied:
        raise LabError(f"{root} has no {SOLUTION_FILE} to strip")
    return copied, left_out


def left_out_by_rule(left_out: dict) -> list:
    """[(pattern, why)] for the KIT_EXCLUDES rules that left something out, in their order."""
    reasons = set(left_out.values())
    return [(pattern, why) for pattern, why in KIT_EXCLUDES if why in reasons]


def check_script_source() -> str:
    """check_submission.py: tools/check_submission.py as it is (it runs contract.py's check)."""
    return (ROOT / "tools" / CHECK_SCRIPT).read_text()


def starter_note(regions: list, left_out: dict, include_test_split: bool) -> str:
    stubs = {True: "fill in (constructing the class works while it is empty)",
             False: "raises NotImplementedError until written"}
    todo = "\n".join(f"| {r.section} | `{r.qualname or '(module level)'}` | {stubs[r.constructs]} |" for r in regions)
    reasons = "\n".join(f"- `{pattern}`: {why}" for pattern, why in left_out_by_rule(left_out))
    split = ("`dataset/test.npz` is included." if include_test_split else
             "There is no `dataset/test.npz`: the course grades on a test split you do not get. Choose your "
             "hyper-parameters on the validation split (`--data_path valid`, the default of inference.py).")
    return f"""# Starter kit

This is the lab with its answers taken out. Everything runs as described in README.md, except that
`submission.py` holds TODO stubs: it imports, its classes can be built, and each unwritten part
raises `NotImplementedError` naming its section when it is called.

## What to write (all in submission.py)

| section | where | stub |
|---|---|---|
{todo}

You may change anything inside `submission.py` (add layers, helper classes, other models), as long as
the contract at its top holds. Other files you may read and run but not hand in: the autograder
uses the course's own copy of every other file.

## Check, train, grade

```bash
python check_submission.py                 # the contract check the autograder runs first
python train.py --task VAE0label --save_dir checkpoints/VAE0label      # writes checkpoints/VAE0label.pth
python inference.py --checkpoint_path checkpoints/VAE0label.pth --save_dir outputs/VAE0label
python grade.py --VAE0label_output_dir outputs/VAE0label --no-Genwithlabel
```

and the same with `Genwithlabel`. No trained checkpoints are included: `inference.py` without
`--checkpoint_path` needs one you trained. {split}

## What to hand in

A folder with `submission.py`, and optionally your trained `checkpoints/VAE0label.pth` and
`checkpoints/Genwithlabel.pth` (the files the commands above write). Without a checkpoint the
autograder trains your model itself with a fixed budget.

## Left out of this kit

{reasons}
"""


def write_starter(out_dir: Path, root: Path = ROOT, include_test_split: bool = False) -> list:
    """Write the starter kit into out_dir (which must not exist or be empty); return the files written."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LabError(f"{out_dir} exists and is not an empty folder: choose a new folder or remove it")
    copied, left_out = kit_manifest(root, include_test_split)
    solution = (root / SOLUTION_FILE).read_text()
    stripped = strip_solution(solution)
    regions = solution_regions(solution)
    partial = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for path in copied:
            target = partial / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if path == SOLUTION_FILE:
                target.write_text(stripped)
            else:
                shutil.copy2(root / path, target)
        (partial / CHECK_SCRIPT).write_text(check_script_source())
        (partial / STARTER_NOTE).write_text(starter_note(regions, left_out, include_test_split))
        if out_dir.exists():
            out_dir.rmdir()
        partial.rename(out_dir)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise LabError(f"cannot write the kit into {out_dir} ({error.strerror or error}): "
                       f"choose a writable folder") from None
    return sorted(copied + [CHECK_SCRIPT, STARTER_NOTE])


# ====================================================================== the model contract
from contract import FALLBACK_LATENT_DIM, one_line as describe_exception  # noqa: E402

IMPORTED_LINE = "submission.py imported"  # what contract.main prints once the import worked


# ====================================================================== running untrusted code
FILE_SIZE_LIMIT = 2 << 30  # bytes per file a sandboxed process may write (stops runaway logs)


@dataclass
class PhaseResult:
    ok: bool
    error: str
    seconds: float


def _limit_child():
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    except (ImportError, ValueError, OSError):
        pass


def _log_text(log: Path, tail: int = 16384) -> str:
    """The last `tail` bytes of a log, decoded ('' if unreadable)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - tail))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _last_error_line(log: Path) -> str:
    """The most telling line at the end of a log: an `error: ...` line of the lab's scripts, else
    the exception line of a traceback, else the last line."""
    tail = _log_text(log)
    lines = [" ".join(line.split()) for line in re.split(r"[\r\n]+", tail)]
    lines = [line for line in lines if line and not re.search(r"\d+%\|", line)]  # drop tqdm bars
    for pattern in (r"^error: ", r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b"):
        for line in reversed(lines):
            if re.match(pattern, line):
                return re.sub(r"^error: ", "", line)[:240]
    return lines[-1][:240] if lines else ""


def run_phase(command: list, cwd: Path, timeout: float, log: Path, env: dict) -> PhaseResult:
    """Run one command of untrusted code in its own process group, output into `log`; kill the
    whole group when it runs past `timeout` seconds (and after it ends, for stray children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_limit_child)
        try:
            code = process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = process.wait()
    seconds = time.perf_counter() - started
    if timed_out:
        return PhaseResult(False, f"timed out after {timeout:g} s (killed)", seconds)
    if code == 0:
        return PhaseResult(True, "", seconds)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGXFSZ": "wrote a file larger than the limit", "SIGKILL": "out of memory?"}.get(name, "")
        return PhaseResult(False, f"killed by {name}" + (f" ({why})" if why else ""), seconds)
    line = _last_error_line(log)
    return PhaseResult(False, line or f"exited with code {code}", seconds)


def _sandbox_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
    env.update(MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    return env


# ====================================================================== autograding
TABLE_COLUMNS = ["student", "VAE0label_ssim", "VAE0label_mse", "VAE0label_grade",
                 "Genwithlabel_ssim", "Genwithlabel_mse", "Genwithlabel_fid", "Genwithlabel_grade", "errors"]
METRICS = {"VAE0label": ("ssim", "mse"), "Genwithlabel": ("ssim", "mse", "fid")}
MAX_SUBMISSION_BYTES = 1 << 20
REQUIRED_CHECKPOINT_KEYS = ("task", "model", "model_kwargs", "hyperparams", "model_state_dict")


def check_student_checkpoint(path: Path, task: str) -> int:
    """Load a student's checkpoint with weights_only=True (trainer.load_checkpoint: no pickled code
    runs) and check it is a `task` checkpoint of submission.py's model; return its latent_dim or
    raise LabError with a message naming the file as checkpoints/<task>.pth."""
    from trainer import load_checkpoint
    label = f"checkpoints/{task}.pth"
    try:
        checkpoint = load_checkpoint(path)
    except LabError as error:
        raise LabError(str(error).replace(str(path), label)) from None
    missing = [key for key in REQUIRED_CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise LabError(f"{label} lacks {', '.join(missing)}: hand in the .pth that train.py exports")
    if checkpoint["task"] != task:
        raise LabError(f"{label} is a {checkpoint['task']} checkpoint, handed in as {task}")
    expected = MODEL_FOR_TASK["submission"][task]
    if checkpoint["model"] != expected:
        raise LabError(f"{label} holds a {checkpoint['model']} model, not {expected}")
    kwargs = checkpoint["model_kwargs"]
    latent_dim = kwargs.get("latent_dim") if isinstance(kwargs, dict) else None
    if not isinstance(kwargs, dict) or set(kwargs) != {"latent_dim"} or not isinstance(latent_dim, int) \
            or isinstance(latent_dim, bool) or not 1 <= latent_dim <= 784:
        raise LabError(f"{label} has model_kwargs {kwargs!r}, expected {{'latent_dim': N}} with 1 <= N <= 784")
    return latent_dim


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


def build_sandbox(sandbox: Path, submission: Path, lab_paths: list, root: Path = ROOT) -> None:
    """A copy of the course's lab with the student's submission.py (and nothing else of theirs)."""
    for path in lab_paths:
        target = sandbox / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target)
    shutil.copyfile(submission, sandbox / SOLUTION_FILE)
    (sandbox / CHECK_SCRIPT).write_text(check_script_source())


def grade_student(folder: Path, args, lab_paths: list, sandbox: Path, logs: Path, say) -> dict:
    """Everything for one student, in `sandbox` (created here) with logs in `logs`; returns
    {"student", "tasks": {task: {...}}, "errors": [...], "contract_seconds"}."""
    from grade import grade_task
    name = folder.name
    record = {"student": name, "tasks": {}, "errors": []}
    errors = record["errors"]
    submission = folder / SOLUTION_FILE
    if not submission.is_file():
        errors.append(f"no {SOLUTION_FILE} in the folder")
        return record
    if submission.stat().st_size > MAX_SUBMISSION_BYTES:
        errors.append(f"{SOLUTION_FILE} is {submission.stat().st_size:,} bytes; source code is expected")
        return record
    try:  # compiling runs none of the student's code, and spares a subprocess for syntax errors
        compile(submission.read_bytes(), SOLUTION_FILE, "exec")
    except (SyntaxError, ValueError) as error:
        errors.append(f"import: {describe_exception(error)}")
        say(errors[-1])
        return record
    shutil.rmtree(sandbox, ignore_errors=True)
    build_sandbox(sandbox, submission, lab_paths)
    env, python = _sandbox_env(), sys.executable

    # Handed-in checkpoints are checked here, in the grader, with weights_only=True.
    given, latent_dims, refused = {}, {}, set()
    for task in TASKS:
        path = folder / "checkpoints" / f"{task}.pth"
        if not path.is_file():
            if args.latent_dim:
                latent_dims[task] = args.latent_dim
            continue
        try:
            latent_dims[task] = check_student_checkpoint(path, task)
        except LabError as error:
            refused.add(task)
            errors.append(f"{task} checkpoint: {error}")
            say(errors[-1])
            continue
        given[task] = sandbox / "handed_in" / f"{task}.pth"
        given[task].parent.mkdir(exist_ok=True)
        shutil.copyfile(path, given[task])

    # 1. import + contract, in the sandbox.
    result_file = logs / "contract.json"
    result_file.unlink(missing_ok=True)
    command = [python, CHECK_SCRIPT, "--json", str(result_file)]
    command += [f"--latent_dim={task}={n}" for task, n in latent_dims.items()]
    phase = run_phase(command, sandbox, args.import_time_limit, logs / "contract.log", env)
    record["contract_seconds"] = round(phase.seconds, 2)
    try:
        contract = json.loads(result_file.read_text())
        if not isinstance(contract, dict) or not isinstance(contract.get("tasks", {}), dict):
            raise ValueError("not a result object")
    except (OSError, ValueError):
        imported = IMPORTED_LINE in _log_text(logs / "contract.log")
        errors.append(f"{'contract check' if imported else 'import'}: "
                      f"{phase.error or 'exited before writing its result'}")
        say(errors[-1])
        return record
    if contract.get("import"):
        errors.append(f"import: {contract['import']}")
        say(errors[-1])
        return record
    for task in TASKS:
        outcome = contract.get("tasks", {}).get(task, {})
        if task in refused:
            continue
        if not outcome.get("ok"):
            errors.append(f"{task} contract: {outcome.get('error', 'no result')}")
            say(errors[-1])
            continue
        latent_dim = outcome.get("latent_dim")
        if not isinstance(latent_dim, int) or isinstance(latent_dim, bool):
            errors.append(f"{task} contract: the check reported latent_dim {latent_dim!r}")
            continue
        say(f"{task}: contract ok (latent_dim {latent_dim})")
        entry = record["tasks"][task] = {"latent_dim": latent_dim,
                                         "source": "handed in" if task in given else "trained"}

        def timed_phase(what, key, command):
            """Run one step of this task; record its time, and its error for the table."""
            phase = run_phase(command, sandbox, args.time_limit, logs / f"{key}_{task}.log", env)
            entry[f"{key}_seconds"] = round(phase.seconds, 2)
            if not phase.ok:
                errors.append(f"{task} {what}: {phase.error}")
                say(errors[-1])
            return phase

        # 2. train with the fixed budget unless a checkpoint was handed in.
        checkpoint = given.get(task)
        if checkpoint is None:
            run_dir = sandbox / "runs" / task
            command = [python, "train.py", "--task", task, "--model", "submission", "--latent_dim", str(latent_dim),
                       "--save_dir", str(run_dir), "--epochs", str(args.epochs), "--batch_size", str(args.batch_size),
                       "--limit", str(args.train_limit), "--valid_data", str(args.valid_data_path),
                       "--eval_num", str(args.eval_num), "--pred_step", str(args.pred_step), "--seed", str(args.seed),
                       "--device", args.device, "--keep_last", "1", "--no-save_loss_plot"]
            phase = timed_phase("training", "train", command)
            if not phase.ok:
                continue
            from trainer import export_path
            checkpoint = export_path(run_dir)
            say(f"{task}: trained (latent_dim {latent_dim}) in {phase.seconds:.1f} s")

        # 3. inference on the grading split.
        outputs = sandbox / "outputs" / task
        command = [python, "inference.py", "--checkpoint_path", str(checkpoint), "--task", task,
                   "--data_path", str(args.grading_data_path), "--save_dir", str(outputs),
                   "--inf_num", str(args.inf_num), "--seed", str(args.seed),
                   "--device", "cpu" if args.device == "auto" else args.device]
        if not timed_phase("inference", "inference", command).ok:
            continue

        # 4. grade here, with the course's grade.py, against the course's copy of the split.
        try:
            graded = grade_task(task, outputs, args.grading_data_path)
            if graded["num_images"] != args.expected_images:
                raise LabError(f"outputs cover {graded['num_images']} images, expected {args.expected_images}")
            if graded["latent_dim"] != latent_dim:
                raise LabError(f"outputs claim latent_dim {graded['latent_dim']}, the model has {latent_dim}")
        except LabError as error:
            errors.append(f"{task} grading: {error}")
            say(errors[-1])
            continue
        entry.update({key: graded[key] for key in ("ssim", "mse", "fid", "bonus", "score", "score_uncapped")
                      if key in graded})
        say(f"{task}: grade {graded['score']:.2f} (SSIM {graded['ssim']:.4f}, MSE {graded['mse']:.5f}"
            + (f", FID {graded['fid']:.3f}" if "fid" in graded else "") + ")")
    return record


def table_rows(records: list) -> list:
    rows = []
    for record in records:
        row = {"student": record["student"], "errors": "; ".join(record["errors"])}
        for task, metrics in METRICS.items():
            entry = record["tasks"].get(task, {})
            for metric in metrics:
                row[f"{task}_{metric}"] = entry.get(metric)
            row[f"{task}_grade"] = entry.get("score")
        rows.append(row)
    return rows


def write_tables(records: list, out: Path) -> list:
    """OUT.csv (full precision), OUT.md (rounded) and OUT.json (everything); return the paths."""
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
            return f"{value:.2f}" if column.endswith("_grade") else f"{value:.4f}"
        return str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(json_path, (json.dumps(records, indent=2) + "\n").encode())
    return [csv_path, md_path, json_path]


def autograde(args) -> list:
    from data_utils import load_split
    submissions = Path(args.submissions)
    folders = student_folders(submissions)
    out = Path(args.out).resolve()
    if out.suffix.lower() != ".csv":
        raise LabError(f"--out {args.out}: give a .csv path (the .md and .json tables are written beside it)")
    for flag in ("import_time_limit", "time_limit"):
        if not getattr(args, flag) > 0:
            raise LabError(f"--{flag} must be a positive number of seconds")
    # The grading split is read here first: a missing or corrupt split stops the batch before it starts.
    # A split name is resolved by each side to its own copy; a path is made absolute for the sandbox.
    split_names = ("train", "valid", "test", "validation", "val")
    args.grading_data_path, args.valid_data_path = (
        value if value in split_names else Path(value).resolve() for value in (args.data_path, args.valid_data))
    if args.latent_dim is not None and not 1 <= args.latent_dim <= 784:
        raise LabError(f"--latent_dim {args.latent_dim}: use a value in [1, 784]")
    if submissions.resolve() in out.parents:
        raise LabError(f"--out {args.out} lies inside {submissions}: the tables would be taken for a student; "
                       f"write them elsewhere")
    images, _ = load_split(args.grading_data_path)
    args.expected_images = min(args.inf_num, len(images)) if args.inf_num else len(images)
    load_split(args.valid_data_path)

    lab_paths, _ = kit_manifest(ROOT, include_test_split="test" in (args.data_path, args.valid_data))
    lab_paths = [p for p in lab_paths if p != SOLUTION_FILE]
    logs_root = out.parent / f"{out.stem}_logs"
    work_root = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="autograde."))
    work_root.mkdir(parents=True, exist_ok=True)
    slots = {}  # folder -> a file-system-safe, unique name for its sandbox and logs
    for folder in folders:
        slot = _safe_name(folder.name)
        while slot in slots.values():
            slot += "_"
        slots[folder] = slot
    records = []
    started = time.perf_counter()
    try:
        for number, folder in enumerate(folders, 1):
            prefix = f"[{number}/{len(folders)}] {folder.name}"
            print(f"{prefix}: grading", flush=True)

            def say(message, prefix=prefix):
                print(f"{prefix}: {message}", flush=True)
            student_started = time.perf_counter()
            logs, sandbox = logs_root / slots[folder], work_root / slots[folder]
            shutil.rmtree(logs, ignore_errors=True)
            logs.mkdir(parents=True)
            try:
                record = grade_student(folder, args, lab_paths, sandbox, logs, say)
            except Exception as error:  # a grader bug must not lose the other students' rows
                record = {"student": folder.name, "tasks": {},
                          "errors": [f"autograder failure: {describe_exception(error)}"]}
                (logs / "autograder_traceback.txt").write_text(traceback.format_exc())
            record["seconds"] = round(time.perf_counter() - student_started, 2)
            records.append(record)
            if not args.work_dir:
                shutil.rmtree(sandbox, ignore_errors=True)
            write_tables(records, out)  # after every student: an interrupted batch keeps its rows
    finally:
        if not args.work_dir:
            shutil.rmtree(work_root, ignore_errors=True)
    paths = write_tables(records, out)
    print(f"graded {len(records)} students in {time.perf_counter() - started:.1f} s: "
          f"{', '.join(str(p) for p in paths)}; logs in {logs_root}")
    return records


# ====================================================================== CLI
def parse_args(argv=None):
    from trainer import TrainConfig
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    starter = commands.add_parser("starter", help="write the student starter kit into OUT_DIR")
    starter.add_argument("out_dir", type=Path)
    starter.add_argument("--include_test_split", action="store_true",
                         help="ship dataset/test.npz too (by default graders keep it)")

    strip = commands.add_parser("strip", help="print submission.py with its solution regions stripped")
    strip.add_argument("path", type=Path, nargs="?", default=ROOT / SOLUTION_FILE)

    grade = commands.add_parser("autograde", help="grade SUBMISSIONS/<student>/ folders into one table",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    grade.add_argument("submissions", type=Path, help="folder with one sub-folder per student")
    grade.add_argument("--out", required=True, help="the CSV table; OUT.md, OUT.json and OUT_logs/ go beside it")
    grade.add_argument("--data_path", default="test", help="split to grade on: a split name or an .npz path")
    grade.add_argument("--valid_data", default="valid", help="validation split used while training")
    grade.add_argument("--inf_num", type=int, default=0, help="grade on the first N images only (0: all)")
    grade.add_argument("--latent_dim", type=int, default=None,
                       help="latent_dim for models trained here (default: the student's constructor default, "
                            f"else {FALLBACK_LATENT_DIM})")
    grade.add_argument("--epochs", type=int, default=defaults.epochs, help="training budget: epochs")
    grade.add_argument("--train_limit", type=int, default=0, help="training budget: first N training images (0: all)")
    grade.add_argument("--batch_size", type=int, default=defaults.batch_size)
    grade.add_argument("--eval_num", type=int, default=1000, help="validation images per check while training")
    grade.add_argument("--pred_step", type=int, default=defaults.pred_step, help="validate every N steps (0: never)")
    grade.add_argument("--seed", type=int, default=defaults.seed)
    grade.add_argument("--device", default="cpu", help="torch device for training and inference")
    grade.add_argument("--import_time_limit", type=float, default=120.0,
                       help="seconds for importing submission.py and checking its contract")
    grade.add_argument("--time_limit", type=float, default=3600.0,
                       help="seconds for each training and each inference run")
    grade.add_argument("--work_dir", default=None,
                       help="keep each student's sandbox (lab copy, runs, outputs) here; default: a temporary "
                            "folder, removed")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "starter":
        files = write_starter(args.out_dir, ROOT, args.include_test_split)
        _, left_out = kit_manifest(ROOT, args.include_test_split)
        print(f"wrote {len(files)} files to {args.out_dir.resolve()} (see its {STARTER_NOTE}); left out:")
        for pattern, why in left_out_by_rule(left_out):
            count = sum(1 for reason in left_out.values() if reason == why)
            files = f" ({count} file{'s' * (count != 1)})" if pattern.endswith("/") else ""
            print(f"  {pattern}{files}: {why}")
    elif args.command == "strip":
        if not args.path.is_file():
            raise LabError(f"{args.path} not found")
        sys.stdout.write(strip_solution(args.path.read_text(), args.path.name))
    else:
        if args.inf_num < 0 or args.train_limit < 0:
            raise LabError("--inf_num and --train_limit must be >= 0")
        autograde(args)


if __name__ == "__main__":
    run_cli(main)
