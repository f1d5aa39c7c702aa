"""The autograder's batch: the shared settings and data (Batch), each student through intake, the
phases and the grading policy to a record (grade_student, grade_one), and the whole class with the
result cache and the tables (autograde). The package's other files: intake.py (the hand-in),
phases.py and inside.py (the sandboxed phases, outside and inside), reads.py (what a phase wrote),
policy.py and integrity.py (the grade and its checks), cache.py, similarity.py, reports.py (the tables),
evidence.py and class_page.py (the pictures and the pages), cli.py."""
import hashlib
import os
import socket
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from contract import FALLBACK_LATENT_DIM, IMPORTED_LINE, one_line
from data_utils import LabError, load_split, resolve_split
from tasks import LATENT_RANGE, TASK_RECORDS, TASKS
from tools import sandbox
from tools.jobs import run_jobs
from tools.autograde.cache import (code_and_data_digest, grader_secret, load_result, results_fingerprint, save_result,
                                   student_secret)
from tools.autograde.batch import Batch, process_batch
from tools.autograde.class_page import write_pages
from tools.autograde.evidence import task_pictures
from tools.autograde.intake import shown, take_in
from tools.autograde.phases import MAX_CHECKPOINT_BYTES, MAX_SUBMISSION_BYTES, Phases, Student, build_lab
from tools.autograde.reads import clean_text, copy_untrusted, load_array, phase_json, read_untrusted
from tools.autograde.policy import grade_task, source_latent_dim
from tools.autograde.reports import write_tables
from tools.autograde.similarity import add_passages, similarity_report
from tools.kit import SOLUTION_FILE

_print_lock = threading.Lock()


def _print(message: str):
    with _print_lock:
        print(message, flush=True)


# ====================================================================== one student
def grade_student(batch: Batch, student: Student) -> dict:
    """Everything for one student, in student.base (their lab copy, phase folders), from their hand-in as
    the intake copied it (student.folder, the grader's own store); returns their record."""
    args, folder, record, fail = batch.args, student.folder, student.record, student.fail
    base, lab, inputs = student.base, student.lab, student.inputs
    # The store holds plain files only (intake.py); they are still read without following a link, and
    # checkpoints are never loaded here: they are inspected inside the contract phase's sandbox.
    try:
        source = read_untrusted(folder / SOLUTION_FILE, folder, MAX_SUBMISSION_BYTES,
                                f"{SOLUTION_FILE} (source code is expected)")
    except LabError as error:
        fail(f"{error}: hand in the files themselves")
        return record
    if source is None:
        fail(f"no {SOLUTION_FILE} in the folder")
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
    for task in TASKS:
        try:
            digest = copy_untrusted(folder / "checkpoints" / f"{task}.pth", folder, inputs / f"{task}.pth",
                                    MAX_CHECKPOINT_BYTES)
        except LabError as error:
            fail(f"{task} checkpoint: {error}")
            return record
        if digest is not None:
            given[task] = inputs / f"{task}.pth"
            student.checkpoint_sha256[task] = digest

    # 1. contract: the handed-in checkpoints inspected (their latent_dim), then every task's calls checked.
    # latent_dim is the grader's decision: --latent_dim, a handed-in checkpoint's, the source's default.
    text = source.decode(errors="replace")
    latent_dims = {}
    for task in (task for task in TASKS if task not in given):
        found = args.latent_dim or source_latent_dim(text, TASK_RECORDS[task].model_class)
        if found is None:  # graded all the same; the TA should know which latent_dim it was
            record["notes"].append(f"{task}: no int default of latent_dim found in "
                                   f"{TASK_RECORDS[task].model_class}'s constructor: trained at {FALLBACK_LATENT_DIM}")
        latent_dims[task] = found or FALLBACK_LATENT_DIM
    phases = Phases(batch, student)
    contract, work = phases.contract(latent_dims, given)
    if contract is None:
        imported = IMPORTED_LINE in sandbox.log_tail(student.logs / "contract.log")
        fail(f"{'contract check' if imported else 'import'}: {work}")
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
        for warning in ("decode_warning", "loss_warning"):  # graded all the same: the TA decides what it is worth
            if outcome.get(warning):
                record["notes"].append(f"{task}: {clean_text(outcome[warning])}")

    # 2.-4. one process per phase, doing its work for every task still running; then the grades
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
            continue
        try:  # for the class page and the feedback files: no grade depends on them
            student.pictures[task] = task_pictures(record["tasks"][task], recon[task], decoded[task], batch)
        except Exception as error:
            student.say(f"warning: {task}'s pictures were not kept: {one_line(error)}")
    return record


# ====================================================================== the batch
def student_folders(submissions: Path) -> list:
    """The class folder's entries that stand for a student: folders, and links (which the intake refuses,
    as that student's error); hidden entries and plain files are not students."""
    if not submissions.is_dir():
        raise LabError(f"{submissions} is not a folder: pass the folder with one sub-folder per student")
    folders = sorted((p for p in submissions.iterdir() if (p.is_dir() or p.is_symlink()) and not p.name.startswith(".")),
                     key=lambda p: shown(p.name).encode())
    if not folders:
        raise LabError(f"{submissions} has no student sub-folders (expected SUBMISSIONS/<student>/submission.py)")
    return folders


def student_slot(name: str) -> str:
    """The name of a student's files in the grader's folders: the folder's name where it is short and of
    [A-Za-z0-9._-] only, else a readable part and a hash of the whole name as bytes. The same folder
    always gets the same slot, whoever else is in the class (its saved result and its key follow it)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    if safe == name and 0 < len(name) <= 80 and not name.startswith("."):
        return name
    return f"{safe[:60].lstrip('.') or 'student'}-{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}"


def grade_one(job: dict) -> dict:
    """One student, in whichever process runs the job (this one, or a Dask worker on another machine):
    {"record", "weights", "digests"}. The record says which host graded it and what isolation it had."""
    args, folder, name = job["args"], Path(job["folder"]), job["name"]

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
        student = Student(folder, base, logs, say, name=name, secret=bytes.fromhex(job["secret"]))
        if args.require_isolation and not batch.isolate:
            student.fail(f"--require_isolation: student code cannot be isolated on {socket.gethostname()}: {why}")
            record = student.record
            record["final"] = False
        else:
            record = grade_student(batch, student)
    except Exception as error:  # a grader bug must not lose the other students' rows
        record = failed_record(name, f"autograder failure: {one_line(error)}")
        (logs / "autograder_traceback.txt").write_text(traceback.format_exc())
    finally:
        if scratch is not None:
            sandbox.remove_tree(scratch)
        for log in logs.glob("*.log"):
            sandbox.trim_log(log)
    record.update(seconds=round(time.perf_counter() - started, 2), host=socket.gethostname(), isolation=isolation,
                  hand_in_sha256=job["hand_in"])
    return {"record": record, "weights": student.weights if student else {},
            "digests": student.checkpoint_sha256 if student else {}, "pictures": student.pictures if student else {}}


def failed_record(name: str, error: str) -> dict:
    """The row of a student whom the grader failed before grading (intake) or by its own fault: not final,
    so a rerun grades them again."""
    return {"student": name, "tasks": {}, "flags": [], "notes": [], "errors": [clean_text(error, 600)], "final": False,
            "seconds": 0.0, "host": socket.gethostname(), "isolation": "not run"}


def check_settings(args, submissions: Path, out: Path) -> None:
    """Every setting checked before anything is graded: one line naming the flag and the fix."""
    if out.suffix.lower() != ".csv":
        raise LabError(f"--out {args.out}: give a .csv path (the .md and .json tables are written beside it)")
    for flag in ("import_time_limit", "time_limit", "train_cpu_seconds", "cpu_scale"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise LabError(f"--{flag} must be a positive number")
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


def write_outputs(records: list, pictures: dict, report: dict, out: Path, slots: dict) -> list:
    """The tables (reports.py), then the class page and the feedback files (class_page.py): extras, whose
    failure is one warning line and never costs the tables."""
    paths = write_tables(records, out, report)
    try:
        paths += write_pages(records, pictures, report, out, slots)
    except Exception as error:
        _print(f"warning: the class page and the feedback files were not written: {one_line(error)}")
    return paths


def autograde(args) -> list:
    submissions = Path(args.submissions)
    folders = student_folders(submissions)
    out = Path(args.out).resolve()
    check_settings(args, submissions, out)
    available, why = sandbox.isolation()
    if args.no_isolation:
        available, why = False, f"disabled by --no_isolation ({why})"
    here = "on this machine; " + ("each row's isolation column says what its worker enforced" if args.backend == "dask"
                                  else "every student is graded here")
    if args.require_isolation and not available and args.backend == "local":
        raise LabError(f"--require_isolation: student code cannot be isolated here: {why}")
    _print(f"isolation: {'bubblewrap' if available else 'NOT ENFORCED'}: {why} ({here})")
    _print(f"process limit: {sandbox.process_limit()[1]}")
    _print(f"CPU time of every phase counted {sandbox.cpu_limit()}")
    if not available and args.backend == "local":
        _print("warning: grading WITHOUT isolation: student code runs with the grader's rights "
               "(the report says so)")
    if (args.jobs > 1 or args.backend == "dask") and not args.threads:
        args.threads = 1
    report = {"isolation": ("bubblewrap: " if available else "NOT ENFORCED: ") + why, "isolated": available,
              "process_limit": sandbox.process_limit()[1], "threads_per_phase": args.threads or None,
              "jobs": args.jobs, "backend": args.backend, "similarity": []}
    # What this run enforces: part of every fingerprint, so a row graded under weaker rules is not resumed.
    enforced = {"isolation": bool(available), "cpu": sandbox.cpu_limit(), "processes": sandbox.process_limit()[1]}

    logs_root, results_root = out.parent / f"{out.stem}_logs", out.parent / f"{out.stem}_results"
    store = out.parent / f"{out.stem}_intake"  # the grader's copies of the hand-ins, for this run only
    secret = grader_secret(results_root)
    slots, names = {}, {}
    for folder in folders:  # each student's slot (the grader's file names) and name (the table's): both unique
        slots[folder] = slot = student_slot(folder.name)
        name = clean_text(shown(folder.name), 200)
        names[folder] = name if name not in names.values() else f"{name[:100]} [{slot}]"  # within 200
    records = [None] * len(folders)
    weights = {}  # (student, task) -> the handed-in weights as one vector, and their shapes
    digests = {}  # (student, task) -> the handed-in checkpoint's sha256, which the grader computed itself
    pictures = {}  # student -> {task: evidence.task_pictures}: what the class page and the feedback files show
    started = time.perf_counter()

    def keep(number, result):
        folder = folders[number]
        records[number] = result["record"]
        weights.update({(names[folder], task): vector for task, vector in result["weights"].items()})
        digests.update({(names[folder], task): digest for task, digest in result["digests"].items()})
        pictures[names[folder]] = result.get("pictures", {})

    lab_digest = code_and_data_digest(args)
    sandbox.remove_tree(store)
    store.mkdir(parents=True)
    fingerprints, todo, intake_notes, keys = {}, [], {}, {}
    for number, folder in enumerate(folders):
        notes = []
        try:  # the only read of the hand-in: everything after it reads the grader's copy
            handed_in = take_in(folder, store / slots[folder], notes)
        except LabError as error:
            keep(number, {"record": failed_record(names[folder], f"hand-in: {error}"), "weights": {}, "digests": {}})
            _print(f"[{number + 1}/{len(folders)}] {names[folder]}: hand-in refused: {clean_text(error)}")
            continue
        except Exception as error:  # a grader bug on one hand-in must not lose the batch
            keep(number, {"record": failed_record(names[folder], f"autograder failure: intake: {one_line(error)}"),
                          "weights": {}, "digests": {}})
            continue
        fingerprints[number] = results_fingerprint(args, handed_in, lab_digest, enforced)
        keys[number] = (student_secret(secret, slots[folder], handed_in).hex(), handed_in)
        saved = load_result(results_root, slots[folder], fingerprints[number], args.require_isolation)
        if saved is not None:
            saved["record"]["student"] = names[folder]  # the name of this run's folder, whatever it was then
            keep(number, saved)
            sandbox.remove_tree(store / slots[folder] / "checkpoints")  # only submission.py is read again
        else:
            todo.append(number)
        intake_notes[number] = [f"hand-in: {clean_text(note)}" for note in notes]
    graded_before = sum(1 for number in fingerprints if number not in todo)
    if graded_before:
        _print(f"resumed: {graded_before} of {len(folders)} students already graded with these files, settings and "
               f"enforcement ({results_root}); grading {len(todo)}")

    def done(index, result, error):
        number = todo[index]
        folder = folders[number]
        if error is not None:  # the job itself was lost: its worker died, or the scheduler gave it up
            result = {"record": failed_record(names[folder], f"autograder failure: the job was lost on its worker "
                                                             f"({one_line(error)})"),
                      "weights": {}, "digests": {}}
        record = result["record"]
        record["notes"] = intake_notes.get(number, []) + record.get("notes", [])
        keep(number, result)
        sandbox.remove_tree(store / slots[folder] / "checkpoints")  # graded: the store keeps only submission.py
        grades = ", ".join(f"{t} {record['tasks'][t]['score']:.2f}" for t in TASKS
                           if "score" in record["tasks"].get(t, {})) or "no grade"
        _print(f"[{number + 1}/{len(folders)}] {names[folder]}: done in {record['seconds']:.1f} s: {grades}"
               + (f"; flags: {', '.join(f['flag'] for f in record['flags'])}" if record.get("flags") else ""))
        if record.get("final", True):
            try:
                save_result(results_root, slots[folder], fingerprints[number], result)
            except OSError as failure:
                _print(f"warning: {names[folder]}'s result could not be saved for a rerun: {one_line(failure)}")
        try:  # an interrupted batch keeps the rows written so far
            write_tables([r for r in records if r is not None], out, report)
        except Exception as failure:  # the final write, after every student, says what it is
            _print(f"warning: the tables could not be updated after {names[folder]}: {one_line(failure)}")

    jobs = [{"args": args, "folder": str(store / slots[folders[n]]), "slot": slots[folders[n]],
             "name": names[folders[n]], "secret": keys[n][0], "hand_in": keys[n][1],
             "logs": str(logs_root / slots[folders[n]]),
             "prefix": f"[{n + 1}/{len(folders)}] {names[folders[n]]}"}
            for n in todo]
    run_jobs(grade_one, jobs, done, backend=args.backend, workers=args.jobs, scheduler=args.scheduler,
             name="autograde")
    records = [r for r in records if r is not None]
    copies = {names[f]: store / slots[f] for number, f in enumerate(folders) if number in fingerprints}
    try:
        report["similarity"], report["similarity_notes"] = similarity_report(records, copies, weights, digests)
    except Exception as error:  # a bug in the comparison must not lose the batch's tables
        report["similarity"], report["similarity_notes"] = [], [f"similarity not computed: {one_line(error)}"]
    add_passages(report["similarity"], copies)  # while the store holds the files: for the class page
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
    paths = write_outputs(records, pictures, report, out, {names[f]: slots[f] for f in folders})
    sandbox.remove_tree(store)
    _print(f"graded {len(records)} students in {report['seconds']:.1f} s "
           f"({', '.join(str(r['student']) + ' ' + format(r['seconds'], '.1f') + ' s' for r in records)}): "
           f"{', '.join(str(p) for p in paths)}; logs in {logs_root}")
    return records
