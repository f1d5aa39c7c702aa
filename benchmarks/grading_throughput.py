"""Students graded per hour: the autograder on one batch, locally with --jobs 1 and 2, and through a Dask
cluster on this machine; and the phase starts per student that no cluster takes away.

    python benchmarks/grading_throughput.py                      # 4 students, a small stated budget
    python benchmarks/grading_throughput.py --students 8 --train_limit 5000 --epochs 2

The batch: copies of the honest submissions in tests/submissions (each trains under the budget), graded
on the first --inf_num test images with `python -m tools.autograde`. Every run grades the same batch
from scratch (its own --out). The phase start is a sandboxed `python -c "import torch, submission"` in
a lab copy, as every phase begins; a student costs 5 of them. Run it alone on the machine.
Writes benchmarks/results/grading_throughput.md.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data_utils import atomic_write_bytes, run_cli  # noqa: E402
from tools import sandbox  # noqa: E402
from tools.autograde.phases import build_lab  # noqa: E402
from tools.kit import SOLUTION_FILE, kit_manifest  # noqa: E402

HONEST = ["decode_int", "decode_batch_only", "mlp_flatten", "embedding_label"]
PHASES_PER_STUDENT = 5


def make_batch(folder: Path, count: int) -> Path:
    available = sorted(p for p in (ROOT / "tests" / "submissions").glob("*.py"))
    chosen = [p for name in HONEST for p in available if p.stem == name] or available
    for i in range(count):
        source = chosen[i % len(chosen)]
        (folder / f"s{i:02d}_{source.stem}").mkdir(parents=True)
        shutil.copyfile(source, folder / f"s{i:02d}_{source.stem}" / "submission.py")
    return folder


def phase_start_seconds(rounds: int = 3) -> float:
    """Median seconds of one sandboxed phase that only imports torch and the submission."""
    with tempfile.TemporaryDirectory() as scratch:
        lab, _ = kit_manifest(ROOT, include_test_split=False)
        build_lab(Path(scratch) / "lab", (ROOT / SOLUTION_FILE).read_bytes(),
                  [p for p in lab if p != SOLUTION_FILE and not p.endswith(".npz")])
        times = []
        for i in range(rounds):
            result = sandbox.run_phase([sys.executable, "-c", "import torch, submission"], lab=Path(scratch) / "lab",
                                       work=Path(scratch) / f"work{i}", log=Path(scratch) / f"log{i}.txt",
                                       limits=sandbox.Limits(seconds=120, memory_bytes=6 * sandbox.GiB))
            if not result.ok:
                raise SystemExit(f"error: the phase start failed: {result.error}")
            times.append(result.seconds)
        return sorted(times)[len(times) // 2]


def batch_setup_seconds(budget: list) -> float:
    """Seconds to load what every student's grading shares (splits, copy-check thresholds, classifier,
    the budget's splits): once per process that grades, so once per Dask worker."""
    import argparse as _argparse
    from tools import autograde
    from tools.autograde.batch import Batch
    parser = _argparse.ArgumentParser(allow_abbrev=False)
    autograde.add_arguments(parser)
    args = parser.parse_args(["unused", "--out", "unused.csv", *map(str, budget)])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        Batch(args).write_budget(Path(scratch))
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=4, help="students in the batch (default %(default)s)")
    parser.add_argument("--train_limit", type=int, default=2000, help="budget: training images (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="budget: epochs (default %(default)s)")
    parser.add_argument("--inf_num", type=int, default=1000, help="test images graded (default %(default)s)")
    parser.add_argument("--runs", nargs="+", default=["local:1", "local:2", "dask:2"],
                        help="BACKEND:JOBS runs (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grading_throughput.md")
    args = parser.parse_args(argv)
    budget = ["--train_limit", args.train_limit, "--epochs", args.epochs, "--inf_num", args.inf_num]
    start = phase_start_seconds()
    print(f"one sandboxed phase start: {start:.2f} s; {PHASES_PER_STUDENT} per student: "
          f"{PHASES_PER_STUDENT * start:.1f} s", flush=True)
    setup = batch_setup_seconds(budget)
    print(f"the batch's shared setup, once per grading process (a Dask worker): {setup:.1f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        students = make_batch(Path(scratch) / "submissions", args.students)
        for run in args.runs:
            backend, _, jobs = run.partition(":")
            out = Path(scratch) / run.replace(":", "_") / "grades.csv"
            command = [sys.executable, "-m", "tools.autograde", str(students), "--out", str(out),
                       "--backend", backend, "--jobs", jobs or "1", *map(str, budget)]
            started = time.perf_counter()
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(f"error: {run} failed: {(result.stderr or result.stdout).strip()[-500:]}")
            rows.append({"run": run, "seconds": seconds, "per_hour": args.students * 3600 / seconds})
            print(f"{run}: {args.students} students in {seconds:.1f} s: {rows[-1]['per_hour']:.0f} students/hour",
                  flush=True)
    available, why = sandbox.isolation()
    lines = ["# Students graded per hour", "",
             f"`python benchmarks/grading_throughput.py --students {args.students} --train_limit {args.train_limit} "
             f"--epochs {args.epochs} --inf_num {args.inf_num}`; isolation: "
             f"{'bubblewrap' if available else 'none (' + why + ')'}.", "",
             "| run (backend:jobs) | seconds for the batch | students per hour |", "|---|---|---|"]
    lines += [f"| {r['run']} | {r['seconds']:.1f} | {r['per_hour']:.0f} |" for r in rows]
    lines += ["", f"One sandboxed phase start (python, torch, the submission): {start:.2f} s; a student needs "
                  f"{PHASES_PER_STUDENT}, {PHASES_PER_STUDENT * start:.1f} s of starts that no number of machines "
                  f"removes. The batch's shared setup (splits, copy thresholds, classifier): {setup:.1f} s, once per "
                  f"grading process, so once per Dask worker."]
    atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
