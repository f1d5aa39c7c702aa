"""The digit classifier that reads generated digits for the extended measures (evaluation.py).

    python classifier.py            # trains checkpoints/classifier.pth (a few CPU minutes; committed)

It is trained on the train split with random shifts, the epoch kept by validation accuracy, and
the test split measured once at the end. docs/evaluation.md gives what the command printed.
"""
import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from data_utils import IMAGE_SHAPE, NUM_CLASSES, ROOT, LabError, MNISTDataset, atomic_torch_save, run_cli, set_random_seed

CLASSIFIER_PATH = ROOT / "checkpoints" / "classifier.pth"
CLASSIFIER_FORMAT = "lab-digit-classifier-1"


class DigitClassifier(nn.Module):
    """A small CNN: three 3x3 conv blocks (16, 32, 64 channels, batch norm, each halving the
    image), a 64-unit hidden layer (the features the FID and the diversity measure use), 10 logits."""

    FEATURES = 64

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),    # 28 -> 14
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),   # 14 -> 7
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),   # 7 -> 3
            nn.Flatten(), nn.Linear(64 * 3 * 3, self.FEATURES), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.25)
        self.head = nn.Linear(self.FEATURES, NUM_CLASSES)

    def features(self, x):
        """The penultimate activations [B, 64] of images in [0, 1]."""
        return self.body(x.reshape(-1, 1, *IMAGE_SHAPE))

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def as_float_images(images) -> torch.Tensor:
    """uint8 [N,28,28] (0-255) or floats in [0, 1] -> float32 tensor [N,1,28,28] in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        images = images.float().div(255)
    return images.float().reshape(-1, 1, *IMAGE_SHAPE)


@torch.no_grad()
def classify(classifier, images, batch_size=500):
    """(features float64 [N, 64], predicted labels int64 [N]) of images (uint8 or [0, 1] floats)."""
    classifier.eval()
    images = as_float_images(images)
    features, predictions = [], []
    for start in range(0, len(images), batch_size):
        h = classifier.features(images[start:start + batch_size])
        features.append(h.double())
        predictions.append(classifier.head(h).argmax(dim=1))
    if not features:
        return np.zeros((0, DigitClassifier.FEATURES)), np.zeros(0, dtype=np.int64)
    return torch.cat(features).numpy(), torch.cat(predictions).numpy()


def load_classifier(path=None):
    """The committed classifier (a dict of tensors and numbers; loads with weights_only=True)."""
    path = Path(path or CLASSIFIER_PATH)
    fix = "train it with `python classifier.py` (a few CPU minutes)"
    if not path.is_file():
        raise LabError(f"classifier {path} not found: {fix}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # refused pickles and damaged files alike
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        detail = next((line for line in lines if "GLOBAL" in line), lines[0])
        raise LabError(f"cannot load classifier {path} ({detail[:120]}): {fix}") from None
    if not isinstance(saved, dict) or saved.get("format") != CLASSIFIER_FORMAT:
        raise LabError(f"{path} is not a classifier of this lab (no format {CLASSIFIER_FORMAT!r}): {fix}")
    classifier = DigitClassifier()
    try:
        classifier.load_state_dict(saved["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise LabError(f"{path} does not fit DigitClassifier ({str(error).splitlines()[0][:120]}): {fix}") from None
    return classifier.eval(), saved


def shifted(images: torch.Tensor, generator, max_shift=2) -> torch.Tensor:
    """Each image moved by its own random whole-pixel shift in [-max_shift, max_shift]^2."""
    n = len(images)
    padded = F.pad(images.reshape(n, *IMAGE_SHAPE), (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator))
    grid = torch.arange(IMAGE_SHAPE[0])
    rows = (grid[None, :] + dy[:, None])[:, :, None]   # [n, 28, 1]
    cols = (grid[None, :] + dx[:, None])[:, None, :]   # [n, 1, 28]
    return padded[torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)


def accuracy(classifier, data: MNISTDataset) -> float:
    _, predictions = classify(classifier, data.images)
    return float((predictions == data.labels.numpy()).mean())


def train_classifier(out=CLASSIFIER_PATH, epochs=5, batch_size=128, lr=3e-3, seed=0, limit=None):
    """Train on the train split, keep the epoch with the best validation accuracy, and measure
    the test split once, at the end. Returns the saved dict."""
    set_random_seed(seed)
    train, valid = MNISTDataset("train", limit=limit), MNISTDataset("valid")
    classifier = DigitClassifier()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.2)
    generator = torch.Generator().manual_seed(seed)
    best, started = None, time.perf_counter()
    print(f"training DigitClassifier ({sum(p.numel() for p in classifier.parameters()):,} parameters) on "
          f"{len(train):,} training images, {epochs} epochs, {torch.get_num_threads()} CPU threads")
    for epoch in range(1, epochs + 1):
        classifier.train()
        total = 0.0
        for images, labels in train.batches(batch_size, shuffle=True, generator=generator):
            loss = F.cross_entropy(classifier(shifted(images, generator)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(labels)
        valid_accuracy = accuracy(classifier, valid)
        print(f"epoch {epoch}: train loss {total / len(train):.4f}, valid accuracy {valid_accuracy:.4%} "
              f"({time.perf_counter() - started:.0f} s)")
        if best is None or valid_accuracy > best[0]:
            best = (valid_accuracy, epoch, copy.deepcopy(classifier.state_dict()))
    valid_accuracy, best_epoch, state = best
    classifier.load_state_dict(state)
    test_accuracy = accuracy(classifier, MNISTDataset("test"))  # the one look at the test split
    seconds = time.perf_counter() - started
    saved = {"format": CLASSIFIER_FORMAT, "state_dict": state, "epoch": best_epoch, "epochs": epochs,
             "valid_accuracy": valid_accuracy, "test_accuracy": test_accuracy, "seed": seed,
             "train_images": len(train), "seconds": round(seconds, 1), "torch_version": str(torch.__version__)}
    atomic_torch_save(saved, out)
    print(f"kept epoch {best_epoch} (best validation accuracy {valid_accuracy:.4%}); test accuracy "
          f"{test_accuracy:.4%}; {seconds:.0f} s; saved {out} ({Path(out).stat().st_size / 1024:.0f} KiB)")
    return saved


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=CLASSIFIER_PATH, help="where to save it (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs (default %(default)s)")
    parser.add_argument("--batch_size", type=int, default=128, help="images per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule "
                                                               "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.limit < 0:
        raise LabError("--epochs and --batch_size must be >= 1 and --limit >= 0")
    train_classifier(args.out, args.epochs, args.batch_size, args.lr, args.seed, args.limit or None)


if __name__ == "__main__":
    run_cli(main)
