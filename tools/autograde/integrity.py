"""The integrity measures of the autograder: pure functions of the arrays the phases wrote and of
the real images, so they are tested alone (tests/test_integrity.py) and calibrated with
`python -m tools.autograde calibrate CHECKPOINT` (docs/course.md, "Integrity").

Each measure bounds a whole category of cheating by what the grade is computed from, not by
recognising one trick:
  bound_by_decode   the grade of the reconstructions is at most what decode makes of the codes
                    (SSIM and MSE together: the whole score, not one term of it)
  perturbation      decode of the codes moved by PERTURBATION x their spread: bits hidden in the
                    low digits of a code, or a code that is an index, do not survive it
  copy_check        samples nearer to a training image than real held-out digits of their label come
  legibility        samples the classifier does not read as their label
"""
import numpy as np

from data_utils import NUM_CLASSES, load_split

# The reconstructions are graded from the lower of forward's and decode(mu)'s scores; forward's
# score more than BYPASS_TOLERANCE (relative) plus MARGIN_POINTS above decode's is flagged
# recon-bypasses-code. (The margin keeps grades near 0, as after a tiny budget, from flagging on noise.)
BYPASS_TOLERANCE = 0.02
MARGIN_POINTS = 0.1
# The lower of forward's and decode's scores is graded, except that decode's counts only when it is lower
# by more than ROUNDING_POINTS: an honest model whose one-sample decode sums in another order than its
# batched forward moves a pixel or two by one grey level (about 1e-6 points), which is not a mark.
ROUNDING_POINTS = 1e-3
# Codes are moved by PERTURBATION times the spread (standard deviation over the graded images) of each
# of their numbers before a second decode. An honest decoder, trained on codes drawn with the
# posterior's noise, barely changes: the shipped models lose 0.22 and 0.31% of their grade at 0.05,
# the 15 honest styles at the tests' budget 0.18% at most, a reference VAE with a sharper posterior
# (--var 0.01) 0.02% (docs/course.md, "Calibration"). Beyond PERTURBATION_TOLERANCE, ten times the
# largest of those (relative drop of the score, and MARGIN_POINTS), the decode of the moved codes is
# graded: code-beyond-latent-dim. So information hidden past latent_dim earns at most that 3%.
PERTURBATION = 0.05
# Every number moves: by PERTURBATION times the larger of its spread and MOVE_FLOOR, the spread of the
# N(0, I) draws the moved codes are shuffled among. A number of zero spread (a constant, or bits below
# any spread) would otherwise pass through untouched, carry information past the move, and tell the
# codes apart from the draws by its exact value. (An honest number of small spread is one the KL term
# left near the prior, whose posterior noise the decoder was trained to ignore.)
MOVE_FLOOR = 1.0
PERTURBATION_TOLERANCE = 0.03
# copied-samples: a sample of label c whose nearest training image (mean squared pixel difference,
# 0-1 scale, best of the 9 one-pixel shifts of the sample) is nearer than COPY_RELATIVE times the
# 1st percentile of the same distance for real held-out digits of label c is a near-copy; above
# COPY_FRACTION of the samples, the FID term of the grade is zeroed. Honest samples are somewhat
# nearer than real digits (they are smoother), never half as near (docs/course.md).
COPY_RELATIVE = 0.5
COPY_PERCENTILE = 1
COPY_HELD_OUT_PER_LABEL = 300
COPY_SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
COPY_FRACTION = 0.05
# decode-returns-real-images: when the codes were caught carrying more than latent_dim numbers, the
# decode of the moved codes is checked too (REAL_IMAGE_CHECKED of them): more than COPY_FRACTION
# near-copies of real images means decode looks images up; then nothing of the reconstruction counts.
REAL_IMAGE_CHECKED = 500
# illegible-samples: the project's classifier reads fewer than LEGIBILITY_FLOOR of the samples as their
# label (honest trained models: 97 to 99%; chance: 10%) while the FID term pays: FID term zeroed.
LEGIBILITY_FLOOR = 0.5


def bound_by_decode(forward: dict, decoded: dict, recon: np.ndarray, verified: np.ndarray, examples: int = 5) -> dict:
    """Is forward's grade (`forward`, grade.grade_arrays' result) clearly above the grade of decode(mu)
    (`decoded`)? Then the reconstructions did not come through the code, and decode's grade counts."""
    flagged = forward["score_uncapped"] > decoded["score_uncapped"] * (1 + BYPASS_TOLERANCE) + MARGIN_POINTS
    per_image = np.mean(((recon.astype(np.float64) - verified.astype(np.float64)) / 255.0) ** 2, axis=(1, 2))
    worst = np.argsort(-per_image, kind="stable")[:examples]
    return {"flagged": bool(flagged), "forward_score": forward["score_uncapped"],
            "decode_score": decoded["score_uncapped"],
            "forward_mse": forward["mse"], "verified_mse": decoded["mse"],
            "forward_ssim": forward["ssim"], "verified_ssim": decoded["ssim"],
            "ratio": forward["mse"] / decoded["mse"] if decoded["mse"] > 0 else None,
            "identical": bool(np.array_equal(recon, verified)),
            "most_different": [{"image": int(i), "mse": float(per_image[i])} for i in worst if per_image[i] > 0]}


def perturbed_codes(codes: np.ndarray, generator: np.random.Generator, scale: float = PERTURBATION) -> np.ndarray:
    """codes [N, D] moved by `scale` times each number's spread over the N codes (at least MOVE_FLOOR),
    in a random direction: float32, as the decode phase gets them."""
    spread = np.maximum(codes.astype(np.float64).std(axis=0, keepdims=True), MOVE_FLOOR)
    noise = generator.standard_normal(codes.shape)
    return (codes + scale * spread * noise).astype(np.float32)


def perturbation_check(verified: dict, perturbed: dict) -> dict:
    """How much the grade falls when decode gets the codes moved by PERTURBATION x their spread."""
    points = verified["score_uncapped"] - perturbed["score_uncapped"]
    drop = points / max(verified["score_uncapped"], 1e-9)
    return {"flagged": bool(drop > PERTURBATION_TOLERANCE and points > MARGIN_POINTS), "relative_drop": float(drop),
            "scale": PERTURBATION,
            "verified_score": verified["score_uncapped"], "perturbed_score": perturbed["score_uncapped"],
            "verified_mse": verified["mse"], "perturbed_mse": perturbed["mse"],
            "verified_ssim": verified["ssim"], "perturbed_ssim": perturbed["ssim"]}


def legibility(samples: np.ndarray, classifier) -> dict:
    """The share of samples (uint8 [10, K, 28, 28], row c drawn for label c) that the classifier reads
    as their label, overall and per label."""
    from classifier import classify
    _, predictions = classify(classifier, samples.reshape(-1, *samples.shape[2:]))
    correct = predictions.reshape(samples.shape[:2]) == np.arange(len(samples))[:, None]
    return {"flagged": bool(correct.mean() < LEGIBILITY_FLOOR), "overall": float(correct.mean()),
            "per_label": [float(row.mean()) for row in correct], "floor": LEGIBILITY_FLOOR}


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


def copy_thresholds(held_out: np.ndarray, labels: np.ndarray, train_bank: ImageBank,
                    per_label: int = COPY_HELD_OUT_PER_LABEL) -> np.ndarray:
    """Per label c: COPY_RELATIVE x the COPY_PERCENTILE-th percentile of how near real held-out digits of
    label c (up to `per_label` of them) come to the training images. A held-out image identical to a
    training image (a split that overlaps the training split) is left out: it is not held out."""
    thresholds = np.zeros(NUM_CLASSES)
    for label in range(NUM_CLASSES):
        images = held_out[labels == label][:per_label]
        distance, _ = nearest_real(images, [train_bank]) if len(images) else (np.zeros(0), [])
        distance = distance[distance > 1e-6]
        if len(distance):
            thresholds[label] = COPY_RELATIVE * np.percentile(distance, COPY_PERCENTILE)
    return thresholds


def real_image_share(images: np.ndarray, labels: np.ndarray, banks: list, thresholds: np.ndarray) -> float:
    """The share of images (uint8 [N,28,28], of labels [N]) that are near-copies of a real image, by the
    copy check's thresholds of their labels: what a decoder that looks real images up returns."""
    distance, _ = nearest_real(images, banks)
    return float(np.mean(distance < np.asarray(thresholds, dtype=np.float64)[labels]))


def copy_check(samples: np.ndarray, banks: list, thresholds: np.ndarray, examples: int = 5) -> dict:
    """Near-copies among the generated samples (uint8 [10, K, 28, 28], row c drawn for label c): samples
    nearer to a real image than their label's threshold (copy_thresholds)."""
    flat = samples.reshape(-1, *samples.shape[2:])
    distance, where = nearest_real(flat, banks)
    per_label = samples.shape[1]
    sample_thresholds = np.repeat(np.asarray(thresholds, dtype=np.float64), per_label)
    copies = np.nonzero(distance < sample_thresholds)[0]
    fraction = len(copies) / len(flat)
    order = copies[np.argsort(distance[copies], kind="stable")][:examples]
    return {"flagged": bool(fraction > COPY_FRACTION), "fraction": fraction, "copies": int(len(copies)),
            "samples": int(len(flat)), "thresholds": [float(t) for t in thresholds],
            "median_distance": float(np.median(distance)), "min_distance": float(distance.min()),
            "examples": [{"sample": int(i), "label": int(i // per_label), "split": where[i][0],
                          "image": where[i][1], "shift": list(where[i][2]), "distance": float(distance[i])}
                         for i in order]}


def calibrate(checkpoint, train="train", held_out="valid", per_label: int = 100, seed: int = 42) -> dict:
    """Print what the copy check's thresholds are chosen from: per label, how near real held-out digits
    come to the training images, and which share of an honest model's samples, and of exact, noisy
    and shifted copies of training images, falls below the thresholds. Runs the checkpoint's model in
    this process: use a model you trust (e.g. one you trained)."""
    import contract
    import inference
    from checkpoint import load_checkpoint, model_from_checkpoint
    train_images, train_labels = load_split(train)
    bank = ImageBank("train", train_images)
    held_images, held_labels = load_split(held_out)
    thresholds = copy_thresholds(held_images, held_labels, bank)
    loaded = load_checkpoint(checkpoint)
    latent_dim = loaded["model_kwargs"]["latent_dim"]
    model = model_from_checkpoint(loaded, checkpoint).eval()
    samples = inference.generate(contract.Decoder(model, latent_dim), latent_dim, per_label, seed, "cpu")
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.choice(np.nonzero(train_labels == c)[0], per_label, replace=False)
                             for c in range(NUM_CLASSES)])
    exact = train_images[chosen]

    def noisy(sigma):
        return np.clip(exact + rng.normal(0, sigma * 255, exact.shape), 0, 255).round().astype(np.uint8)
    sets = {f"honest samples ({loaded['model']}, latent_dim {latent_dim})": samples.reshape(-1, 28, 28),
            "exact copies": exact, "copies + noise sd 0.05": noisy(0.05), "copies + noise sd 0.10": noisy(0.10),
            "copies shifted 1 px": shifted(exact, 1, 0), "copies shifted 1 px diagonally": shifted(exact, 1, 1)}
    print(f"thresholds per label (COPY_RELATIVE={COPY_RELATIVE} x percentile {COPY_PERCENTILE} of held-out "
          f"{held_out} digits' distance to {train}): {np.round(thresholds, 5).tolist()}")
    result = {"thresholds": thresholds}
    for name, images in sets.items():
        check = copy_check(images.reshape(NUM_CLASSES, per_label, 28, 28), [bank], thresholds)
        result[name] = check
        print(f"{name:>45}: {check['copies']} of {check['samples']} below ({100 * check['fraction']:.1f}%; "
              f"flagged above {100 * COPY_FRACTION:.0f}%), median distance {check['median_distance']:.5f}")
    result["perturbation"] = perturbation_drops(model, loaded["task"], latent_dim, *load_split(held_out), seed=seed)
    print(f"perturbation (the first 2,000 {held_out} images): relative drop of the uncapped grade when the codes "
          f"move by s x their spread: " + ", ".join(f"s = {s}: {100 * drop:.2f}%"
                                                   for s, drop in result["perturbation"].items()))
    return result


def perturbation_drops(model, task, latent_dim, images, labels, scales=(0.02, 0.05, 0.1, 0.2), num=2000, seed=42):
    """{scale: relative drop of the grade} of a model's decode when its codes move by scale x their
    spread, as the decode phase moves them (scale PERTURBATION), on the first `num` images."""
    import torch
    import contract
    from data_utils import to_uint8
    from grade import grade_arrays
    images, labels = images[:num], labels[:num]
    x = torch.from_numpy(images).float().div(255)[:, None]
    decoder = contract.Decoder(model, latent_dim)
    with torch.no_grad():
        _, codes, _ = contract.reconstruct(model, x, torch.from_numpy(labels).long(), latent_dim)
        codes = codes.float().numpy()

        def graded(rows):  # the reconstruction terms of the grade (VAE0label's formula)
            decoded = to_uint8(decoder(torch.from_numpy(rows), torch.from_numpy(labels).long()))
            return grade_arrays("VAE0label", images, labels, decoded, None, latent_dim, progress=lambda r, **_: r)
        verified = graded(codes)
        return {scale: perturbation_check(verified, graded(perturbed_codes(codes, np.random.default_rng([seed, 1]),
                                                                           scale)))["relative_drop"]
                for scale in scales}
