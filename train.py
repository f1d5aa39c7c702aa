"""Train the model of a task and save it.

    python train.py --task VAE0label
    python train.py --task Genwithlabel --latent_dim 8 --epochs 10   # another recipe
    python train.py --task VAE0label --model demo              # model.py's MLP instead
    python train.py --task Genwithlabel --load_from_checkpoint  # resume run checkpoints/Genwithlabel/run/

A run writes checkpoints/<task>/<save_dir>/ (epoch_{N}.pth, hyperparams.json, loss_curve.png)
and, when it finishes, the model alone as checkpoints/<task>/<save_dir>.pth, which
inference.py reads. Ctrl-C saves interrupted.pth there; --load_from_checkpoint resumes.
"""
import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while the imports below load stops at once, without a traceback (run_cli)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import torch

from data_utils import INTERRUPTED_EXIT_CODE, ROOT, BooleanFlag, LabError, MNISTDataset, run_cli, set_random_seed
from tasks import MODEL_FOR_TASK, RECIPE_EPOCHS, TASKS, canonical_task
from checkpoint import epoch_number, export_path, newest_run_checkpoint
from hardware import configure_process, has_fast_bf16
from trainer import Trainer, TrainConfig, TrainingInterrupted

DEFAULTS = TrainConfig(epochs=0, task="")  # epochs 0: each task's own (tasks.py)

HELP = {
    "latent_dim": "size of the code z; the compression bonus is 0.2 + (1 - latent_dim/784)",
    "batch_size": "images per optimiser step",
    "epochs": f"total epochs (a resumed run continues up to this number); 0: the task's recipe, {RECIPE_EPOCHS}",
    "lr": "Adam learning rate",
    "lr_schedule": "constant, or cosine (decays to lr/20 over the run)",
    "var": "decoder variance in vae_loss: the reconstruction term is ||x - recon_x||^2 / (2 var)",
    "pred_step": "validate every N optimiser steps (0: never)",
    "eval_num": "validation images per check (0: the whole split)",
    "seed": "random seed (weights, shuffling, sampling)",
    "keep_last": "keep the newest N epoch checkpoints",
    "device": "auto (cuda, then mps, then cpu), or a torch device such as cpu or cuda:0",
    "precision": "auto (bf16 autocast where the hardware has fast bf16, else fp32), fp32 or bf16 (emulated, slow, "
                 "without fast bf16); a model that fails under bf16 goes on in fp32",
    "train_data": "training split: a name (train, valid, test) or an .npz path",
    "valid_data": "validation split: a name or an .npz path",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="VAE0label",
                        help=f"{' or '.join(TASKS)} (aliases VAEwolabel, VAEOlabel); default %(default)s")
    parser.add_argument("--model", choices=sorted(MODEL_FOR_TASK), default="submission",
                        help="submission: submission.py's model for the task; demo: model.py's MLP (default %(default)s)")
    parser.add_argument("--save_dir", default="run",
                        help="run name under checkpoints/<task>/, or a path containing '/' (default %(default)s)")
    for field in dataclasses.fields(TrainConfig):
        if field.name in HELP:
            default = getattr(DEFAULTS, field.name)
            parser.add_argument(f"--{field.name}", type=type(default), default=default,
                                help=f"{HELP[field.name]} (default {default})")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N training images only (0: all)")
    parser.add_argument("--load_from_checkpoint", action=BooleanFlag, default=False,
                        help="resume the run in --save_dir from its newest checkpoint (interrupted.pth or "
                             "epoch_N.pth, whichever has more steps; --checkpoint only if the folder has none)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="resume from this checkpoint file")
    parser.add_argument("--overwrite", action=BooleanFlag, default=False,
                        help="start over in a run folder that holds a run, finished or not, and replace its model "
                             "(default: refuse, and say how to resume it or where else to train)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default, one per core). On a busy machine 1 "
                             "can be faster than 2: threads that wait for a core stall each other")
    parser.add_argument("--check_loss", action=BooleanFlag, default=True,
                        help="before the first step, check that vae_loss rises as the reconstruction gets worse and "
                             "as mu leaves 0, and stop with what is wrong if not (default on)")
    parser.add_argument("--save_loss_plot", action=BooleanFlag, default=True,
                        help="write loss_curve.png into the run folder (default on)")
    parser.add_argument("--show_loss_plot", action=BooleanFlag, default=False,
                        help="open the loss curve in a window at the end (default off)")
    return parser.parse_args(argv)


def run_dir(task: str, save_dir: str) -> Path:
    return Path(save_dir) if "/" in save_dir else ROOT / "checkpoints" / task / save_dir


def unfinished_run(folder: Path):
    """What an interrupted or unfinished run left in `folder` ('interrupted.pth (step 267)', ...), or None."""
    if (folder / "interrupted.pth").is_file():
        return "interrupted.pth"
    epochs = sorted(epoch_number(p) for p in folder.glob("epoch_*.pth"))
    if not epochs:
        return None
    try:
        target = json.loads((folder / "hyperparams.json").read_text())["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        target = None
    if target is None or epochs[-1] < target:
        return f"epoch_{epochs[-1]}.pth" + (f" of {target} epochs" if target else "")
    return None


def finished_run(folder: Path):
    """What a finished run left in `folder` and beside it ('epoch_6.pth and run.pth'), or None: a
    student's result, which no run replaces without --overwrite."""
    export = export_path(folder)
    epochs = sorted(folder.glob("epoch_*.pth"), key=epoch_number) if folder.is_dir() else []
    found = ([epochs[-1].name] if epochs else []) + ([export.name] if export.is_file() else [])
    return " and ".join(found) or None


def refuse_to_overwrite(folder: Path) -> None:
    left = unfinished_run(folder)
    if left:
        raise LabError(f"{folder} holds an unfinished run ({left}): add --load_from_checkpoint to continue it "
                       f"(bash run.sh: RESUME=1 bash run.sh), choose another --save_dir, or pass --overwrite "
                       f"to start over and lose it")
    done = finished_run(folder)
    if done:
        raise LabError(f"{folder} holds a finished run ({done}): choose another --save_dir for a new run "
                       f"(bash run.sh: RUN=name bash run.sh), or pass --overwrite to replace it (FRESH=1 bash run.sh)")


def precision_line(trainer) -> str:
    fallback = "; a model that fails under it goes on in fp32"
    if trainer.autocast_dtype is not None and trainer.config.precision == "bf16":
        speed = "" if has_fast_bf16(trainer.device) else ", emulated here (no fast bf16 hardware), so slow"
        return f"bf16 autocast on {trainer.device} (--precision bf16{speed}){fallback}"
    if trainer.autocast_dtype is not None:
        return f"bf16 autocast on {trainer.device} (fast bf16 hardware found; --precision fp32 to turn it off){fallback}"
    if trainer.config.precision == "fp32":
        return f"fp32 on {trainer.device} (--precision fp32)"
    return (f"fp32 on {trainer.device} (no fast bf16 here, such as AVX512-BF16 or AMX, so training is slower than "
            f"on a CPU that has it)")


def main(argv=None):
    args = parse_args(argv)
    task = canonical_task(args.task)
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name in HELP}
    config = TrainConfig(task=task, model=MODEL_FOR_TASK[args.model][task],
                         save_dir=str(run_dir(task, args.save_dir)), **settings)
    config.check()
    if args.limit < 0:
        raise LabError(f"--limit {args.limit} is negative: use 0 for the whole split or a positive count")

    configure_process(args.threads)
    if not (args.load_from_checkpoint or args.checkpoint or args.overwrite):
        refuse_to_overwrite(Path(config.save_dir))

    set_random_seed(config.seed)
    train_data = MNISTDataset(config.train_data, limit=args.limit or None)
    valid_data = MNISTDataset(config.valid_data)
    trainer = Trainer(config, train_data, valid_data)
    trainer.check_loss_first = args.check_loss
    print("config: " + ", ".join(f"{k}={v}" for k, v in trainer.hyperparams().items()))
    print(f"data: {len(train_data)} training images from {train_data.path}, "
          f"validation on {valid_data.path}; {torch.get_num_threads()} CPU threads")
    print(f"precision: {precision_line(trainer)}")

    resume_from = args.checkpoint
    if args.load_from_checkpoint:
        # The run folder's own newest state wins over --checkpoint: after an interrupt, "the same
        # command plus --load_from_checkpoint" must continue from interrupted.pth, not start over
        # from the file the interrupted run had itself resumed from.
        try:
            resume_from = newest_run_checkpoint(config.save_dir)
        except LabError:
            if resume_from is None:
                raise
    if resume_from is not None:
        trainer.resume(resume_from)
        if trainer.epoch >= config.epochs:
            print(f"nothing to train: {resume_from} has {trainer.epoch} epochs done and --epochs is {config.epochs}; "
                  f"pass a larger --epochs to train on (the model is exported again as it is)")
    try:
        trainer.train(save_loss_plot=args.save_loss_plot, show_loss_plot=args.show_loss_plot)
    except TrainingInterrupted as message:
        print(f"interrupted by {message}", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
    run_cli(main)
