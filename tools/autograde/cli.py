"""The autograder's command line: python -m tools.autograde SUBMISSIONS --out grades.csv [...], and
python -m tools.autograde calibrate CHECKPOINT."""
import argparse
import sys
from pathlib import Path

from contract import FALLBACK_LATENT_DIM
from hardware import PRECISIONS
from tasks import RECIPE_EPOCHS
from tools.jobs import BACKENDS
from tools.autograde.integrity import calibrate
from tools.autograde.orchestration import autograde
from tools.autograde.phases import (INFERENCE_CPU_PER_ROW, START_CPU_SECONDS, TRAIN_CPU_PER_IMAGE_EPOCH,
                                    WALL_EXTRA_SECONDS, WALL_PER_CPU)


def add_arguments(grade: argparse.ArgumentParser) -> None:
    from trainer import TrainConfig
    defaults = TrainConfig()
    grade.add_argument("submissions", type=Path, help="folder with one sub-folder per student")
    grade.add_argument("--out", required=True,
                       help="the CSV table; OUT.md, OUT.json, OUT_logs/, the class page OUT.html and the students' "
                            "feedback files OUT_feedback/ go beside it")
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
                       help="seed of training, the same for every student (the grader's moves, shuffles and draws "
                            "come from a secret of its own, OUT_results/secret)")
    grade.add_argument("--device", default="cpu", help="torch device for training (the other phases run on cpu)")
    grade.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="arithmetic of training: fp32 (default: every student of a class trains alike, whatever "
                            "machine grades them), bf16 autocast, or auto (bf16 where the hardware is fast at it); "
                            "a model that fails under bf16 goes on in fp32, and the table says so")
    grade.add_argument("--import_time_limit", type=float, default=120.0,
                       help="seconds for importing submission.py and checking its contract")
    grade.add_argument("--time_limit", type=float, default=None,
                       help="wall-clock seconds of each phase after the contract (default: derived from its CPU "
                            f"limit, {WALL_PER_CPU:g} x it + {WALL_EXTRA_SECONDS:g} s)")
    grade.add_argument("--train_cpu_seconds", type=float, default=None,
                       help=f"CPU time of the train phase per task (default: {START_CPU_SECONDS:g} s + "
                            f"{TRAIN_CPU_PER_IMAGE_EPOCH * 1000:g} ms per image and epoch of the budget, times "
                            f"--cpu_scale)")
    grade.add_argument("--cpu_scale", type=float, default=1.0,
                       help=f"multiply every phase's CPU allowance (a start of {START_CPU_SECONDS:g} s, then per "
                            f"image: {TRAIN_CPU_PER_IMAGE_EPOCH * 1000:g} ms an epoch of training, "
                            f"{INFERENCE_CPU_PER_ROW * 1000:g} ms of forward or decode): for a slower host, or "
                            "a course whose models are heavier (docs/course.md, 'Metering')")
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
        parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m tools.autograde calibrate", description=calibrate.__doc__)
        parser.add_argument("checkpoint", type=Path)
        parser.add_argument("--train_data", default="train")
        parser.add_argument("--held_out", default="valid", help="real digits the training split does not hold")
        options = parser.parse_args(argv[1:])
        calibrate(options.checkpoint, options.train_data, options.held_out)
        return
    import tools.autograde
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m tools.autograde", description=tools.autograde.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    autograde(parser.parse_args(argv))
