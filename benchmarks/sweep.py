"""Train, infer and grade every combination of a hyper-parameter grid; one table of grades.

    python benchmarks/sweep.py --out sweeps/sweep                      # the default grid below
    python benchmarks/sweep.py --latent_dim 2 4 8 16 32 --var 0.02 --split test --out benchmarks/results/latent

Each run goes through train.py, inference.py and grade.py as a user would run them, so the
table measures the real pipeline. Rows are appended to OUT.csv and OUT.md as runs finish
(an interrupted sweep keeps its finished rows, and running it again skips them); OUT.png plots grade against each varied
setting. Runs live in OUT_runs/ (checkpoints, outputs, grade JSON).

The points are independent jobs, run by tools/jobs.py as the autograder's students are: one after the
other by default, `--jobs N` at a time here, or on a Dask cluster with `--backend dask [--scheduler
tcp://HOST:8786]` (docs/course.md). With more than one at a time each training gets one torch thread.
"""
import argparse
import csv
import io
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data_utils import LabError, atomic_write_bytes, atomic_write_json, run_cli  # noqa: E402
from grade import GRADE_CAPS  # noqa: E402
from tasks import TASKS  # noqa: E402
from checkpoint import export_path  # noqa: E402
from trainer import TrainConfig  # noqa: E402
from tools.jobs import BACKENDS, run_jobs  # noqa: E402

DEFAULTS = TrainConfig()
COLUMNS = ["task", "latent_dim", "var", "lr", "epochs", "train_seconds", "ssim", "mse", "fid",
           "bonus", "grade", "grade_uncapped"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--latent_dim", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--var", nargs="+", type=float, default=[DEFAULTS.var / 2, DEFAULTS.var, DEFAULTS.var * 2])
    parser.add_argument("--lr", nargs="+", type=float, default=[DEFAULTS.lr])
    parser.add_argument("--epochs", nargs="+", type=int, default=[0], help="0: each task's recipe (tasks.py)")
    parser.add_argument("--split", default="valid", help="split to infer on and grade (default valid)")
    parser.add_argument("--out", type=Path, default=ROOT / "sweeps" / "sweep",
                        help="path prefix of OUT.csv, OUT.md, OUT.png and OUT_runs/")
    parser.add_argument("--train_args", default="", help="extra train.py flags, e.g. '--limit 2000'")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (local: here; dask without --scheduler: a local cluster of N workers)")
    parser.add_argument("--backend", choices=BACKENDS, default="local", help="local (default) or dask")
    parser.add_argument("--scheduler", default=None, help="with --backend dask: a running scheduler's address")
    return parser.parse_args(argv)


def step(*args):
    """Run one pipeline script; a failure stops the sweep with the script's own message."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        raise LabError(f"{Path(args[0]).name} failed: {message}")


def run_point(point: tuple) -> dict:
    """One job of the sweep, wherever it runs: (task, latent_dim, var, lr, epochs, split, runs_dir, extra)."""
    return run_one(*point)


def run_one(task, latent_dim, var, lr, epochs, split, runs_dir: Path, extra) -> dict:
    # Everything that changes the result is in the name, so a cached row is never reused for another setup.
    name = f"{task}_z{latent_dim}_var{var:g}_lr{lr:g}_e{epochs}_{Path(str(split)).stem}" + "".join(
        f"_{arg.lstrip('-')}" for arg in extra)
    finished = runs_dir / f"{name}.row.json"
    if finished.is_file():  # a rerun of an interrupted sweep keeps the runs it finished
        return json.loads(finished.read_text())
    started = time.perf_counter()
    step("train.py", "--task", task, "--latent_dim", latent_dim, "--var", var, "--lr", lr, "--epochs", epochs,
         "--save_dir", runs_dir / name, "--no-save_loss_plot", *extra)
    train_seconds = time.perf_counter() - started
    step("inference.py", "--checkpoint_path", export_path(runs_dir / name), "--data_path", split,
         "--save_dir", runs_dir / f"{name}_outputs")
    other = [t for t in TASKS if t != task][0]
    step("grade.py", f"--{task}_output_dir", runs_dir / f"{name}_outputs", f"--no-{other}",
         "--result_path", runs_dir / f"{name}.json")
    graded = json.loads((runs_dir / f"{name}.json").read_text())[task]
    row = {"task": task, "latent_dim": latent_dim, "var": var, "lr": lr, "epochs": epochs,
            "train_seconds": round(train_seconds, 1), "ssim": round(graded["ssim"], 4),
            "mse": round(graded["mse"], 5), "fid": round(graded["fid"], 3) if "fid" in graded else "",
            "bonus": round(graded["bonus"], 4), "grade": round(graded["score"], 3),
            "grade_uncapped": round(graded["score_uncapped"], 3)}
    atomic_write_json(finished, row)
    return row


def write_tables(rows, out: Path, title: str) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out.with_name(out.name + ".csv"), buffer.getvalue().encode())
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    atomic_write_bytes(out.with_name(out.name + ".md"), ("\n".join(lines) + "\n").encode())


def plot(rows, out: Path, varied) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(varied), figsize=(5 * len(varied), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], varied):
        for task in TASKS:
            points = sorted((row[setting], row["grade_uncapped"]) for row in rows if row["task"] == task)
            if points:
                ax.plot(*zip(*points), "o-", label=f"{task} (cap {GRADE_CAPS[task]:g})")
        ax.set_xlabel(setting)
        ax.set_ylabel("grade, uncapped")
        if setting in ("latent_dim", "var", "lr"):
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out.with_name(out.name + ".png"), buffer.getvalue())


def main(argv=None):
    args = parse_args(argv)
    args.out = args.out.resolve()  # the steps run from the repository root
    grid = list(itertools.product(args.tasks, args.latent_dim, args.var, args.lr, args.epochs))
    runs_dir = args.out.with_name(args.out.name + "_runs")
    extra = args.train_args.split()
    varied = [name for name, values in (("latent_dim", args.latent_dim), ("var", args.var), ("lr", args.lr),
                                        ("epochs", args.epochs)) if len(set(values)) > 1]
    title = f"Sweep on the {args.split} split: " + ", ".join(
        f"{name} {getattr(args, name)}" for name in ("tasks", "latent_dim", "var", "lr", "epochs"))
    print(f"{title}: {len(grid)} runs")
    if (args.jobs > 1 or args.backend == "dask") and "--threads" not in extra:
        extra += ["--threads", "1"]  # runs side by side: one thread each, or they stall each other
    rows, failures = [None] * len(grid), []

    def done(index, row, error):
        if error is not None:
            failures.append(f"{', '.join(map(str, grid[index]))}: {error}")
            print(f"[{index + 1}/{len(grid)}] failed: {failures[-1]}", flush=True)
            return
        rows[index] = row
        write_tables([r for r in rows if r is not None], args.out, title)  # in grid order, as runs finish
        print(f"[{index + 1}/{len(grid)}] " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    run_jobs(run_point, [(*combo, args.split, runs_dir, extra) for combo in grid], done, backend=args.backend,
             workers=args.jobs, scheduler=args.scheduler, name="sweep")
    rows = [r for r in rows if r is not None]
    if varied and rows:
        plot(rows, args.out, varied)
    if failures:
        raise LabError(f"{len(failures)} of {len(grid)} runs failed (the {len(rows)} others are in {args.out}.csv); "
                       f"the first: {failures[0]}")
    print(f"wrote {args.out}.csv, {args.out}.md" + (f", {args.out}.png" if varied else ""))


if __name__ == "__main__":
    run_cli(main)
