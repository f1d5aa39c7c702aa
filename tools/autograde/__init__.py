"""The sealed autograder: grade a folder of submissions into one table, with student code only in sandboxes.

    python -m tools.course autograde SUBMISSIONS --out grades.csv [--jobs 2] [--require_isolation]
    python -m tools.autograde SUBMISSIONS --out grades.csv        # the same
    python -m tools.autograde calibrate CHECKPOINT                # the copy check's distances

SUBMISSIONS/<student>/submission.py (+ optional checkpoints/VAE0label.pth, checkpoints/Genwithlabel.pth).

Each hand-in is first copied by the intake (intake.py, the only code that reads it outside a sandbox:
bounded sizes, depth and count, plain files only); then each student is graded in phases, each one
tools.sandbox.run_phase (bubblewrap when usable) of the phase script inside.py: the lab copy (the
lab's own modules + the student's submission.py, no data split) read-only, a fresh private work
folder, no network, CPU, wall-clock, memory, process and disk limits, and only the files that phase
must read:

    contract     import, inspect handed-in checkpoints, contract.check   the checkpoints
    train        the lab's train.py with the fixed budget                 the budget's images only
    reconstruct  forward on the grading split: recon.npy, codes.npy (mu)  grading split + checkpoints
    decode_1/2   decode(codes, labels): one gets the codes as forward      checkpoints + its rows only
                 gave them, the other the codes moved a little; each with
                 its own z ~ N(0, I) per label, shuffled; which is which,
                 and every move, draw and shuffle, from the grader's secret

Each phase is one process that does its work for every task still in the running (train: the tasks
without a handed-in checkpoint). The grader checks every array itself, grades with
grade.grade_arrays in its own process (policy.py), and flags what looks like cheating
(docs/course.md, "Integrity"); pairs of students with near-identical source or weights are listed,
never penalised. At the end, OUT.html shows the class (grades, pictures, each flag's evidence) and
OUT_feedback/ holds one file per student to hand back (docs/course.md, "The class page and the feedback files").
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The package's files, one job each, by stage (the host side, then what runs in the sandbox):
#   cli.py            the command line
#   orchestration.py  the batch, each student through intake, phases and policy, the class
#   intake.py         the only reader of a raw hand-in: a bounded copy into the grader's store
#   cache.py          the result cache (fingerprints) and the grader's secret
#   phases.py         each student's lab copy, what each sandboxed phase is handed and may spend
#   inside.py         the phase script, run INSIDE the sandbox (copied into the lab copy)
#   reads.py          safe reading of what a phase wrote
#   policy.py         one task's grade from the checked arrays
#   integrity.py      the checks on the arrays: bypass, moves, copies, legibility (and calibration)
#   similarity.py     similarity between students
#   reports.py        the table, its Markdown and JSON
#   evidence.py       the pictures of each graded task, kept for the pages (in the grading process)
#   class_page.py     the class page, OUT.html, drawn from what the batch kept
#   feedback.py       each student's feedback file, OUT_feedback/<student>.html
#   page_parts.py     what the two pages share: escaped text, pictures, the flags in plain words
from tools.autograde.cli import add_arguments, main  # noqa: E402,F401
from tools.autograde.orchestration import autograde  # noqa: E402,F401
