"""Does submission.GenModel reach its FID without our Trainer? Train it twice with the same budget:
once with a minimal handout-style loop (a shuffled DataLoader, forward, vae_loss, Adam at a
constant rate, nothing else), once with the lab's Trainer (constant rate too), and print the
simplified FID of decode(z ~ N(0, I), label) on the validation split for both.

    python benchmarks/standalone.py                       # 3 epochs of the 50,000 training images
    python benchmarks/standalone.py --epochs 1 --limit 6000

tests/test_models.py runs the same comparison with a small budget.
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
from data_utils import NUM_CLASSES, MNISTDataset, cal_fid, load_split, run_cli, to_uint8  # noqa: E402

from trainer import TrainConfig  # noqa: E402

# train.py's defaults, but a constant learning rate (the handout's loop has no schedule)
SETTINGS = {name: getattr(TrainConfig, name) for name in ("latent_dim", "batch_size", "lr", "var")}


def handout_loop(epochs: int, limit: int, seed: int = 42):
    """The training the handout's own harness did: nothing but forward, vae_loss and Adam."""
    from submission import GenModel, vae_loss
    torch.manual_seed(seed)
    data = MNISTDataset("train", limit=limit)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.images, data.labels),
                                         batch_size=SETTINGS["batch_size"], shuffle=True)
    model = GenModel(latent_dim=SETTINGS["latent_dim"])
    optimizer = torch.optim.Adam(model.parameters(), lr=SETTINGS["lr"])
    model.train()
    for _ in range(epochs):
        for x, labels in loader:
            recon_x, mu, log_var = model(x, labels)
            loss = vae_loss(recon_x, x, mu, log_var, var=SETTINGS["var"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def lab_trainer(epochs: int, limit: int, seed: int = 42):
    from trainer import Trainer
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(task="Genwithlabel", model="submission.GenModel", epochs=epochs, lr_schedule="constant",
                             pred_step=0, precision="fp32", device="cpu", save_dir=str(Path(folder) / "run"),
                             seed=seed, **SETTINGS)
        trainer = Trainer(config, MNISTDataset("train", limit=limit), None)
        trainer.train(save_loss_plot=False)
    return trainer.model.eval()


@torch.no_grad()
def sample_fid(model, per_label: int = 100, seed: int = 42) -> float:
    """The lab's simplified FID of decode(z ~ N(0, I), label) against the validation split."""
    images, labels = load_split("valid")
    generator = torch.Generator().manual_seed(seed)
    fids = []
    for label in range(NUM_CLASSES):
        z = torch.randn(per_label, model.latent_dim, generator=generator)
        samples = to_uint8(model.decode(z, torch.full((per_label,), label)).reshape(-1, 28, 28))
        fids.append(cal_fid(images[labels == label] / 255.0, samples / 255.0))
    return float(np.mean(fids))


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each training (default %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="first N training images (0: all 50,000)")
    args = parser.parse_args(argv)
    limit = args.limit or None
    print(f"GenModel, {SETTINGS}, {args.epochs} epoch(s) of {args.limit or 50000} training images, fp32, "
          f"{torch.get_num_threads()} threads")
    for name, train in (("handout-style loop", handout_loop), ("lab Trainer", lab_trainer)):
        started = time.perf_counter()
        model = train(args.epochs, limit)
        print(f"{name:>18}: simplified FID {sample_fid(model):.2f} on the validation split "
              f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    run_cli(main)
