"""The benchmark behind docs/results.md, in one command:

    python benchmarks/benchmark.py                          # everything (about 30 minutes on 2 CPU cores)
    python benchmarks/benchmark.py --parts throughput timing # the quick parts only

1. grade, SSIM, MSE, FID of both tasks against latent_dim (2, 4, 8, 16, 32) on the test split,
   each model trained with train.py's defaults but 8 epochs (--epochs), with its training time
   (benchmarks/sweep.py). A report on the test split, not a way to choose settings: the
   defaults were chosen on the validation split (docs/model.md);
2. training throughput of the project's Trainer against a handout-style loop
   (benchmarks/throughput.py);
3. wall time of inference.py + grade.py on the 10,000-image test split for the shipped checkpoints.

Writes benchmarks/results/{latent,throughput,timing}.{csv,md}, latent.png, and report.md, which
gathers every part found in the results folder (so parts can be rerun one at a time).
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import sweep  # noqa: E402
import throughput  # noqa: E402
from data_utils import LabError, atomic_write_bytes, run_cli  # noqa: E402
from tasks import TASKS, default_checkpoint  # noqa: E402


PARTS = ("sweep", "throughput", "timing")


def time_inference_and_grade(out_dir: Path) -> list:
    rows = []
    for task in TASKS:
        outputs = out_dir / "timing_outputs" / task
        started = time.perf_counter()
        for args in (["inference.py", "--checkpoint_path", default_checkpoint(task), "--data_path", "test",
                      "--save_dir", outputs],
                     ["grade.py", f"--{task}_output_dir", outputs, f"--no-{[t for t in TASKS if t != task][0]}",
                      "--result_path", out_dir / "timing_outputs" / "grade_result.json"]):
            middle = time.perf_counter()
            result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
            if result.returncode != 0:
                raise LabError(f"{args[0]} failed: {result.stderr.strip().splitlines()[-1]}")
            if args[0] == "inference.py":
                inference_seconds = time.perf_counter() - middle
        total = time.perf_counter() - started
        rows.append({"task": task, "inference_s": round(inference_seconds, 1),
                     "grade_s": round(total - inference_seconds, 1), "total_s": round(total, 1)})
        print(rows[-1], flush=True)
    return rows


def table(rows, title) -> str:
    header = list(rows[0])
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--latent_dims", nargs="+", type=int, default=[2, 4, 8, 16, 32])
    parser.add_argument("--epochs", type=int, default=8,
                        help="epochs per sweep run (default 8: the sweep's latent_dims in about half an hour)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: all)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if "sweep" in args.parts:
        sweep.main(["--latent_dim", *map(str, args.latent_dims), "--var", str(sweep.DEFAULTS.var),
                    "--epochs", str(args.epochs), "--split", "test", "--out", str(args.out_dir / "latent")])
    if "throughput" in args.parts:
        throughput.main(["--out", str(args.out_dir / "throughput")])
    if "timing" in args.parts:
        timing = time_inference_and_grade(args.out_dir)
        csv_text = ",".join(timing[0]) + "\n" + "".join(",".join(map(str, r.values())) + "\n" for r in timing)
        atomic_write_bytes(args.out_dir / "timing.csv", csv_text.encode())
        atomic_write_bytes(args.out_dir / "timing.md",
                           table(timing, "inference.py + grade.py on the 10,000-image test split, shipped checkpoints").encode())
    sections = []
    if (args.out_dir / "latent.md").is_file():
        sections.append((args.out_dir / "latent.md").read_text().replace("# Sweep", "### Sweep", 1)
                        + "\n![grade against latent_dim](latent.png)\n")
    if (args.out_dir / "throughput.md").is_file():
        sections.append("### Throughput\n\n" + (args.out_dir / "throughput.md").read_text())
    if (args.out_dir / "timing.md").is_file():
        sections.append((args.out_dir / "timing.md").read_text())
    report = "# Benchmark report\n\nMade by `python benchmarks/benchmark.py`.\n\n" + "\n".join(sections)
    atomic_write_bytes(args.out_dir / "report.md", report.encode())
    print(f"wrote {args.out_dir / 'report.md'}")


if __name__ == "__main__":
    run_cli(main)
