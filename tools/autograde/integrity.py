"""The integrity measures of the autograder: pure functions of the arrays the phases wrote and of
the real images, so they are tested alone (tests/test_integrity.py) and calibrated with
`python -m tools.autograde calibrate CHECKPOINT` (docs/course.md, "Integrity")."""
import numpy as np

from data_utils import load_split

# recon-bypasses-code: forward MSE < BYPASS_RATIO * verified MSE - BYPASS_EPS
BYPASS_RATIO = 0.8
BYPASS_EPS = 1e-4
# copied-samples: a sample whose nearest real image (mean squared pixel difference, 0-1 scale, best
# of the 9 one-pixel shifts of the sample) lies below COPY_DISTANCE is a near-copy; above
# COPY_FRACTION of the samples, the FID term of the grade is zeroed.
COPY_DISTANCE = 0.005
COPY_SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
COPY_FRACTION = 0.05


def bypass_check(forward_mse: float, verified_mse: float, recon: np.ndarray, verified: np.ndarray,
                 examples: int = 5) -> dict:
    """Is the forward reconstruction clearly better than decode(mu) of its own codes?"""
    flagged = forward_mse < BYPASS_RATIO * verified_mse - BYPASS_EPS
    per_image = np.mean(((recon.astype(np.float64) - verified.astype(np.float64)) / 255.0) ** 2, axis=(1, 2))
    worst = np.argsort(-per_image, kind="stable")[:examples]
    return {"flagged": bool(flagged), "forward_mse": forward_mse, "verified_mse": verified_mse,
            "ratio": forward_mse / verified_mse if verified_mse > 0 else None,
            "identical": bool(np.array_equal(recon, verified)),
            "most_different": [{"image": int(i), "mse": float(per_image[i])} for i in worst if per_image[i] > 0]}


class ImageBank:
    """Real images (0-1 scale, float32 [N,784]) with their squared norms, for nearest-image queries."""

    def __init__(self, name: str, images: np.ndarray):
        import torch
        self.name = name
        self.images = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        self.norms = (self.images ** 2).sum(1)

    def nearest(self, queries, chunk: int = 8192):
        """(distance, index) of each query's nearest image: mean squared difference, 0-1 scale."""
        import torch
        q_norms = (queries ** 2).sum(1, keepdim=True)
        best = torch.full((len(queries),), float("inf"))
        index = torch.zeros(len(queries), dtype=torch.long)
        for start in range(0, len(self.images), chunk):
            block = self.images[start:start + chunk]
            distance = (q_norms + self.norms[start:start + chunk][None] - 2 * queries @ block.T).clamp_(min=0)
            value, where = distance.min(1)
            better = value < best
            best[better], index[better] = value[better], where[better] + start
        return best / queries.shape[1], index


def shifted(samples: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Samples [M,28,28] moved by (dy, dx) pixels, zero-filled."""
    out = np.zeros_like(samples)
    h, w = samples.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        samples[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def nearest_real(samples: np.ndarray, banks: list, shifts=COPY_SHIFTS):
    """For samples uint8 [M,28,28]: (distance [M], bank name [M], image index [M], shift [M]) of the
    nearest real image over every bank and every shift of the sample."""
    import torch
    m = len(samples)
    best = np.full(m, np.inf)
    where = [("", -1, (0, 0))] * m
    for dy, dx in shifts:
        queries = torch.from_numpy(shifted(samples, dy, dx).reshape(m, -1).astype(np.float32) / 255.0)
        for bank in banks:
            distance, index = bank.nearest(queries)
            distance, index = distance.double().numpy(), index.numpy()
            for i in np.nonzero(distance < best)[0]:
                best[i] = distance[i]
                where[i] = (bank.name, int(index[i]), (dy, dx))
    return best, where


def copy_check(samples: np.ndarray, banks: list, examples: int = 5) -> dict:
    """Near-copies among the generated samples (uint8 [10, K, 28, 28])."""
    flat = samples.reshape(-1, *samples.shape[2:])
    distance, where = nearest_real(flat, banks)
    copies = np.nonzero(distance < COPY_DISTANCE)[0]
    fraction = len(copies) / len(flat)
    order = copies[np.argsort(distance[copies], kind="stable")][:examples]
    per_label = samples.shape[1]
    return {"flagged": bool(fraction > COPY_FRACTION), "fraction": fraction, "copies": int(len(copies)),
            "samples": int(len(flat)), "threshold": COPY_DISTANCE,
            "median_distance": float(np.median(distance)), "min_distance": float(distance.min()),
            "examples": [{"sample": int(i), "label": int(i // per_label), "split": where[i][0],
                          "image": where[i][1], "shift": list(where[i][2]), "distance": float(distance[i])}
                         for i in order]}


def calibrate(checkpoint, train="train", grading="test", per_label: int = 100, seed: int = 42) -> dict:
    """Print the nearest-real-image distances (no shift and best of COPY_SHIFTS) of an honest model's
    samples and of exact, noisy and shifted copies of training images: what COPY_DISTANCE is chosen
    from. Runs the checkpoint's model in this process: use a model you trust (e.g. one you trained)."""
    import contract
    import inference
    from checkpoint import load_checkpoint, model_from_checkpoint
    train_images, _ = load_split(train)
    banks = [ImageBank("train", train_images), ImageBank("grading", load_split(grading)[0])]
    loaded = load_checkpoint(checkpoint)
    latent_dim = loaded["model_kwargs"]["latent_dim"]
    model = model_from_checkpoint(loaded, checkpoint).eval()
    samples = inference.generate(contract.Decoder(model, latent_dim), latent_dim, per_label, seed, "cpu")
    rng = np.random.default_rng(0)
    exact = train_images[rng.choice(len(train_images), 10 * per_label, replace=False)]

    def noisy(sigma):
        return np.clip(exact + rng.normal(0, sigma * 255, exact.shape), 0, 255).round().astype(np.uint8)
    sets = {f"honest samples ({loaded['model']}, latent_dim {latent_dim})": samples.reshape(-1, 28, 28),
            "exact copies": exact, "copies + noise sd 0.05": noisy(0.05), "copies + noise sd 0.10": noisy(0.10),
            "copies shifted 1 px": shifted(exact, 1, 0), "copies shifted 1 px diagonally": shifted(exact, 1, 1)}
    result = {}
    print("nearest real image, mean squared pixel difference (0-1 scale): percentiles 0, 1, 5, 50, 95, 100; "
          f"fraction below COPY_DISTANCE={COPY_DISTANCE}")
    for name, images in sets.items():
        for label, shifts in (("no shift", [(0, 0)]), ("9 shifts", COPY_SHIFTS)):
            distance, _ = nearest_real(images, banks, shifts)
            result[(name, label)] = distance
            print(f"{name:>45} {label:>8}: {np.percentile(distance, [0, 1, 5, 50, 95, 100]).round(5)} "
                  f"below: {np.mean(distance < COPY_DISTANCE):.3f}")
    return result
