"""The sealed autograder: grade a folder of submissions into one table, with student code only in sandboxes.

    python -m tools.course autograde SUBMISSIONS --out grades.csv [--jobs 2] [--require_isolation]
    python -m tools.autograde SUBMISSIONS --out grades.csv        # the same
    python -m tools.autograde calibrate CHECKPOINT                # the copy check's distances

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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The package's files, one job each:
#   orchestration.py  the batch, each student through the phases, the command line
#   phases.py         the student's lab copy and sandboxed phases, and safe reading of their outputs
#   integrity.py      the checks on the arrays: bypass, copies (and their calibration)
#   similarity.py     similarity between students
#   reports.py        the table, its Markdown and JSON
from tools.autograde.orchestration import add_arguments, autograde, main  # noqa: E402,F401
