"""The autograder's orchestration: the batch (settings, lab files, the grader's copies of the data),
each student through the phases to a record, the table, and the command line."""
import argparse
import ast
import json
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from contract import FALLBACK_LATENT_DIM, IMPORTED_LINE, one_line
from data_utils import LabError, load_split, resolve_split
from hardware import PRECISIONS
from tasks import LATENT_RANGE, TASK_RECORDS, TASKS
from tools import sandbox
from tools.autograde.integrity import BYPASS_RATIO, COPY_DISTANCE, ImageBank, bypass_check, calibrate, copy_check
from tools.autograde.phases import PHASE_SCRIPT, Phases, Student, build_lab, check_student_checkpoint
from tools.autograde.reports import write_tables
from tools.autograde.similarity import similarity_report
from tools.kit import ROOT, SOLUTION_FILE, kit_manifest

MAX_SUBMISSION_BYTES = 1 << 20

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
        self.grading_images, self.grading_labels = images, labels
        load_split(self.valid_path)
        train_images, _ = load_split(self.train_path)
        self.banks = [ImageBank("train", train_images), ImageBank("grading", images)]
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

    def limits(self, seconds: float, file_bytes: int = 512 << 20):
        return sandbox.Limits(seconds=seconds, memory_bytes=int(self.args.memory_gb * sandbox.GiB),
                              processes=self.args.processes, file_bytes=file_bytes,
                              memory_rlimit="AS" if self.args.device == "cpu" else "DATA")


def grade_student(batch: Batch, student: Student) -> dict:
    """Everything for one student, in student.base (their lab copy, phase folders); returns their record."""
    args, folder, record, fail = batch.args, student.folder, student.record, student.fail
    base, lab, inputs = student.base, student.lab, student.inputs

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
    build_lab(lab, submission, batch.lab_paths)
    inputs.mkdir(parents=True)

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
    result, work = student.run_phase(batch, "contract", command, args.import_time_limit)
    try:
        with open(work / "contract.json", encoding="utf-8", errors="replace") as handle:
            contract = json.loads(handle.read(100_000))
        if not isinstance(contract, dict) or not isinstance(contract.get("tasks", {}), dict):
            raise ValueError("not a result object")
    except (OSError, ValueError):
        imported = IMPORTED_LINE in sandbox.log_tail(student.logs / "contract.log")
        fail(f"{'contract check' if imported else 'import'}: {result.error or 'exited before writing its result'}")
        return record
    if contract.get("import"):
        fail(f"import: {str(contract['import'])[:300]}")
        return record

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

    # 2.-5. one process per phase, doing its work for every task still running; then the grades
    phases = Phases(batch, student)
    phases.train()
    recon, codes = phases.reconstruct()
    verified = phases.decode(codes)
    samples = phases.generate()
    for task in list(running):
        try:
            grade_task(task, record["tasks"][task], recon[task], verified[task], samples.get(task), batch,
                       record["flags"])
        except LabError as error:
            fail(f"{task} {error}")
            for key in ("ssim", "mse", "fid", "score"):
                record["tasks"][task].pop(key, None)
    return record


def grade_task(task, entry, recon, verified, samples, batch, flags):
    """The grade of one task from the checked arrays, with the bypass and copy checks."""
    from grade import grade, grade_arrays
    latent_dim = entry["latent_dim"]
    forward = grade_arrays(task, batch.images, batch.labels, recon, samples, latent_dim, progress=silent)
    decoded = grade_arrays(task, batch.images, batch.labels, verified, samples, latent_dim, progress=silent)
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
            record = grade_student(batch, Student(folder, base, logs, say))
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
    import tools.autograde
    parser = argparse.ArgumentParser(prog="python -m tools.autograde", description=tools.autograde.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    autograde(parser.parse_args(argv))
