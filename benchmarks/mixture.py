"""One Gaussian per class, or a mixture? Train submission.GenModel once for each --components value
with train.py's recipe for Genwithlabel (the lab's Trainer and its defaults), then grade it on the
validation split at each --spread (the width at which it draws inside a component; the shipped
model: 20 components, spread 0.8).

    python benchmarks/mixture.py                                   # 1 and 20 components, spread 0.85 and 1
    python benchmarks/mixture.py --components 10 20 40 --spread 0.85
    python benchmarks/mixture.py --components 20 --latent_dim 16
    python benchmarks/mixture.py --components 20 --spread 0.8 --precision fp32 --epochs 8 --hidden 400 200

Prints one row per (components, spread): training seconds, SSIM, MSE, simplified FID, the uncapped
grade, and the share of the 1,000 samples (drawn as inference.py draws them: 100 per label, seed 42)
that the project's classifier reads as their label, overall and for the label read worst. Run it
alone on the machine: the seconds mean nothing beside another job.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import contract  # noqa: E402
from classifier import load_classifier  # noqa: E402
from data_utils import MNISTDataset, run_cli, set_random_seed  # noqa: E402
from hardware import configure_process  # noqa: E402
from inference import generate  # noqa: E402
from race import Grader  # noqa: E402
import submission  # noqa: E402
from tools.autograde.integrity import legibility  # noqa: E402
from trainer import Trainer, TrainConfig  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", type=int, nargs="+", default=[1, 20],
                        help="mixture components per class, one training each (default %(default)s)")
    parser.add_argument("--spread", type=float, nargs="+", default=[0.85, 1.0],
                        help="widths to draw at, each graded (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=0, help="0: train.py's recipe for Genwithlabel")
    parser.add_argument("--latent_dim", type=int, default=TrainConfig.latent_dim, help="(default %(default)s)")
    parser.add_argument("--batch_size", type=int, default=TrainConfig.batch_size, help="(default %(default)s)")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="(default %(default)s)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="train.py's --precision")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(submission.HIDDEN),
                        help="the hidden widths of the reference's layers (submission.HIDDEN, default %(default)s)")
    args = parser.parse_args(argv)
    configure_process(0)
    train_data, valid_data = MNISTDataset("train"), MNISTDataset("valid")
    grader, (classifier, _) = Grader("Genwithlabel"), load_classifier()
    submission.HIDDEN = tuple(args.hidden)
    print(f"latent_dim {args.latent_dim}, hidden {args.hidden}, precision {args.precision}, "
          f"batch_size {args.batch_size}, lr {args.lr:g}, epochs {args.epochs or 'the recipe'}")
    print("| components | spread | train s | SSIM | MSE | FID | grade (uncapped) | label accuracy | lowest label |")
    print("|---|---|---|---|---|---|---|---|---|")
    for components in args.components:
        with tempfile.TemporaryDirectory() as folder:
            config = TrainConfig(task="Genwithlabel", model="submission.GenModel", epochs=args.epochs,
                                 latent_dim=args.latent_dim, precision=args.precision,
                                 batch_size=args.batch_size, lr=args.lr, save_dir=str(Path(folder) / "run"))
            set_random_seed(config.seed)
            model = submission.GenModel(latent_dim=config.latent_dim)
            statistics = model.code_statistics  # the same step 2 with another number of components
            model.code_statistics = submission.ClassCodeStatistics(
                statistics.total.shape[-1], submission.NUM_CLASSES, components, selectors=statistics.selectors)
            trainer = Trainer(config, train_data, valid_data, model=model)
            started = time.perf_counter()
            trainer.train(save_loss_plot=False)
            seconds = time.perf_counter() - started
        model = trainer.model.eval()
        for spread in args.spread:
            model.code_statistics.spread = spread
            samples = generate(contract.Decoder(model, config.latent_dim), config.latent_dim,
                               grader.record.samples_per_label, seed=42, device=torch.device("cpu"))
            result = grader(model, config.latent_dim, samples)
            read = legibility(samples, classifier)
            worst = int(np.argmin(read["per_label"]))
            print(f"| {components} | {spread:g} | {seconds:.1f} | {result['ssim']:.4f} | {result['mse']:.5f} | "
                  f"{result['fid']:.3f} | {result['score_uncapped']:.2f} | {100 * read['overall']:.1f}% | "
                  f"{worst}: {100 * read['per_label'][worst]:.0f}% |", flush=True)


if __name__ == "__main__":
    run_cli(main)
