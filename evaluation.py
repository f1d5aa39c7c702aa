"""Evaluation a person can trust, on top of (never instead of) the lab's grade.

The lab's grade judges reconstructions (SSIM, MSE) and compares per-pixel means and variances
of generated and real digits (the simplified FID); none of it can tell whether a generated '5'
looks like a 5. This module adds the measures the field uses, read with their floors:

    label accuracy        the share of gen/{label}/*.png that a digit classifier reads as `label`
    classifier FID        Frechet distance of real and generated images in the classifier's
                          penultimate features (full covariance), overall and per label, each
                          beside its real-vs-real floor
    diversity             mean pairwise feature distance within a label, generated / real
    likelihood            negative ELBO and an importance-weighted bound on -log p(x), in nats
                          per image, for the model's own Gaussian decoder
    pictures              interpolation.png, latent_map.png and loss_curve.png beside
                          inference.py's samples.png and recon.png

Commands:
    python evaluation.py train-classifier            # trains checkpoints/classifier.pth (a few CPU minutes)
    python grade.py --extended                       # the lab's grade, then everything above
    python evaluation.py fake-samples --outputs outputs/Genwithlabel --save_dir /tmp/fake
                                                     # a generator the lab's grade likes (docs/evaluation.md)
docs/evaluation.md explains every number.
"""
import argparse
import copy
import io
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from data_utils import (NUM_CLASSES, ROOT, LabError, MNISTDataset, atomic_torch_save, atomic_write_bytes,
                        load_split, run_cli, set_random_seed, to_uint8)
from tasks import TASK_RECORDS

CLASSIFIER_PATH = ROOT / "checkpoints" / "classifier.pth"
CLASSIFIER_FORMAT = "lab-digit-classifier-1"
LOG_2PI = math.log(2 * math.pi)


# ==================================================================== the digit classifier
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
        return self.body(x.reshape(-1, 1, 28, 28))

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def as_float_images(images) -> torch.Tensor:
    """uint8 [N,28,28] (0-255) or floats in [0, 1] -> float32 tensor [N,1,28,28] in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        images = images.float().div(255)
    return images.float().reshape(-1, 1, 28, 28)


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
    fix = "train it with `python evaluation.py train-classifier` (a few CPU minutes)"
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
    padded = F.pad(images.reshape(n, 28, 28), (max_shift,) * 4)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator))
    grid = torch.arange(28)
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


# ==================================================================== feature statistics
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||m_a - m_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets [n, d] (n >= 2),
    with full sample covariances. tr (S_a S_b)^(1/2) is computed as the sum of square roots of
    the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric, so no complex round-off."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise LabError(f"a Frechet distance needs at least 2 images per set, got {len(a)} and {len(b)}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(max(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root, 0.0))


def frechet_floor(real: np.ndarray, size: int, repeats=3, seed=0):
    """What the Frechet distance reads when nothing is wrong: a random `size` real images
    against the other real images (disjoint), averaged over `repeats` draws. When the real set
    is not twice `size`, it is halved instead. Returns (floor, size used, size of the rest)."""
    n = len(real)
    size = min(size, n // 2)
    if size < 2:
        return float("nan"), size, n - size
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(repeats):
        order = rng.permutation(n)
        values.append(frechet_distance(real[order[:size]], real[order[size:]]))
    return float(np.mean(values)), size, n - size


def mean_pairwise_distance(features: np.ndarray, max_points=2000, seed=0) -> float:
    """Mean Euclidean distance between two different images of the set (an unbiased estimate
    at any size, so sets of different sizes compare); large sets are subsampled."""
    features = np.asarray(features, np.float64)
    if len(features) > max_points:
        features = features[np.random.default_rng(seed).choice(len(features), max_points, replace=False)]
    n = len(features)
    if n < 2:
        return float("nan")
    t = torch.from_numpy(features)
    return float(torch.cdist(t, t).sum() / (n * (n - 1)))


# ==================================================================== likelihood
@torch.no_grad()
def log_weights(model, images, labels, var: float, k: int = 100, batch_size: int = 50, seed: int = 0,
                latent_dim: int = None):
    """log w = log p(x | z) + log p(z) - log q(z | x) for k draws z ~ q(z | x) per image:
    float64 [k, N]. p(z) = N(0, I), p(x | z) = N(x; decode(z, label), var I) over the 784 pixels
    on the 0-1 scale, q = N(mu, diag exp(log_var)) as the model's forward returns them in eval
    mode. Only the handout's calls are used (contract.py): forward for q, decode for p(x | z)."""
    import contract
    model.eval()
    images, labels = as_float_images(images), torch.as_tensor(labels).long()
    decoder = contract.Decoder(model, latent_dim or contract.forward(model, images[:2], labels[:2])[1].shape[1])
    generator = torch.Generator().manual_seed(seed)
    pixels = images[0].numel()
    const = -0.5 * pixels * math.log(2 * math.pi * var)
    out = []
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        b = len(x)
        _, mu, log_var = contract.forward(model, x, y, latent_dim)
        mu, log_var = mu.double(), log_var.double()
        eps = torch.randn(k, b, mu.shape[1], generator=generator, dtype=torch.float64)
        z = mu + eps * torch.exp(0.5 * log_var)                            # [k, b, d]
        mean = decoder(z.reshape(k * b, -1).float(), y.repeat(k)).reshape(k, b, -1).double()
        log_p_x = const - (x.reshape(1, b, -1).double() - mean).pow(2).sum(-1) / (2 * var)
        log_p_z = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_q_z = -0.5 * (eps.pow(2) + LOG_2PI + log_var).sum(-1)
        out.append(log_p_x + log_p_z - log_q_z)
    return torch.cat(out, dim=1)


def bounds(log_w: torch.Tensor, ks=(1, 10, 100)) -> dict:
    """Per-image averages of the bounds on -log p(x), from log weights [K, N].

    k = 1 is the negative ELBO; k > 1 the importance-weighted bound
    -log (1/k sum_i w_i). The K draws are split into K/k disjoint groups of k and the bound is
    averaged over the groups (an unbiased estimate of the k-sample bound that uses every draw).
    Because the groups of a larger k are unions of those of a smaller one, the estimates never
    increase with k (Jensen), as the true bounds do not."""
    big_k, n = log_w.shape
    result = {}
    for k in ks:
        if k > big_k or big_k % k:
            continue
        groups = log_w.reshape(big_k // k, k, n)
        iw = torch.logsumexp(groups, dim=1) - math.log(k)      # [K/k, N]
        result[k] = float(-iw.mean())
    return result


def likelihood_ks(k: int):
    return sorted({k} | {d for d in (1, 5, 10, 50, 100, 1000) if d < k and k % d == 0})


# ==================================================================== pictures
def labelled_grid(cells: np.ndarray, row_names, title: str, column_names=None) -> bytes:
    """uint8 cells [R, C, 28, 28] as a PNG with a name beside each row (and above each column)."""
    from matplotlib.figure import Figure
    from outputs import tile
    canvas = tile(cells)
    rows, columns = cells.shape[:2]
    fig = Figure(figsize=(1.1 + 0.42 * columns, 0.6 + 0.42 * rows))
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    step = 28 + 2
    ax.set_yticks([2 + 14 + i * step for i in range(rows)], list(row_names), fontsize=8)
    if column_names is None:
        ax.set_xticks([])
    else:
        ax.xaxis.tick_top()
        ax.set_xticks([2 + 14 + j * step for j in range(columns)], list(column_names), fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def recon_picture(originals: np.ndarray, recon: np.ndarray) -> bytes:
    return labelled_grid(np.stack([originals, recon]), ["original", "reconstruction"],
                         f"the first {len(recon)} images of the split and their reconstructions",
                         column_names=[str(i) for i in range(len(recon))])


def samples_picture(samples: np.ndarray, conditional: bool) -> bytes:
    """Row c: decode(z ~ N(0, I), c); an unconditional model ignores c, so its rows are just more draws."""
    if conditional:
        return labelled_grid(samples, [f"label {c}" for c in range(len(samples))],
                             "decode(z ~ N(0, I), label): one row per label")
    return labelled_grid(samples, [f"draws {1 + i * samples.shape[1]}-{(i + 1) * samples.shape[1]}"
                                   for i in range(len(samples))],
                         "decode(z ~ N(0, I)): the label-free model ignores the label")


def interpolation_pairs(labels: np.ndarray, conditional: bool):
    """Ten (index a, index b) pairs of the split. A conditional model keeps the label fixed, so
    its rows join two different digits of one label (a change of style); an unconditional one
    joins the first digit of label c to the first of label c + 1."""
    first = {c: np.flatnonzero(labels == c) for c in range(NUM_CLASSES)}
    pairs = []
    for c in range(NUM_CLASSES):
        if conditional:
            if len(first[c]) >= 2:
                pairs.append((first[c][0], first[c][1]))
        elif len(first[c]) and len(first[(c + 1) % NUM_CLASSES]):
            pairs.append((first[c][0], first[(c + 1) % NUM_CLASSES][0]))
    return pairs


@torch.no_grad()
def interpolation_png(decoder, codes: torch.Tensor, labels: torch.Tensor, conditional: bool, steps: int = 8):
    """Each row decodes `steps` points on the straight line between the posterior means of two
    digits of the split (ends included). None when the split has no pair."""
    labels = torch.as_tensor(labels)
    pairs = interpolation_pairs(labels.numpy(), conditional)
    if not pairs:
        return None
    t = torch.linspace(0, 1, steps)[:, None]
    rows, names = [], []
    for a, b in pairs:
        z = (1 - t) * codes[a] + t * codes[b]
        rows.append(to_uint8(decoder(z, labels[a].expand(steps))))
        names.append(f"{int(labels[a])} -> {int(labels[b])}")
    what = "two digits of one label (the label fixed)" if conditional else "digits of two labels"
    return labelled_grid(np.stack(rows), names, f"decoding the line between the codes of {what}",
                         column_names=[f"{v:.2f}" for v in t.squeeze(1).tolist()])


def principal_components(codes: torch.Tensor, n: int = 2):
    """(coordinates [N, n], share of variance each explains) by SVD of the centred codes; each
    axis's sign is fixed (largest loading positive) so a picture does not flip between runs."""
    centred = codes.double() - codes.double().mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    vh = vh[:n] * torch.sign(vh[:n].gather(1, vh[:n].abs().argmax(dim=1, keepdim=True)))
    coordinates = centred @ vh.T
    if coordinates.shape[1] < n:  # latent_dim 1
        coordinates = torch.cat([coordinates, torch.zeros(len(coordinates), n - coordinates.shape[1],
                                                          dtype=coordinates.dtype)], dim=1)
    share = (s ** 2 / (s ** 2).sum().clamp_min(1e-300))[:n].tolist()
    return coordinates.numpy(), share + [0.0] * (n - len(share))


def latent_map_png(codes: torch.Tensor, labels, task: str, map_num: int = 5000) -> bytes:
    """The posterior means (from forward) of the first `map_num` images on their two main axes."""
    from matplotlib.figure import Figure
    from matplotlib import colormaps
    num = min(map_num, len(codes))
    codes, labels = codes[:num], np.asarray(labels)[:num]
    coordinates, share = principal_components(codes)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    colours = colormaps["tab10"]
    for c in range(NUM_CLASSES):
        points = coordinates[labels == c]
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.6, color=colours(c), label=str(c), rasterized=True)
    ax.set_xlabel(f"principal component 1 ({share[0]:.0%} of the variance)")
    ax.set_ylabel(f"principal component 2 ({share[1]:.0%})")
    title = f"{task}: posterior means of {num} images, PCA of {codes.shape[1]} dims"
    if TASK_RECORDS[task].conditional:
        title += "\n(the label is given to the model, so the code holds style, not class)"
    ax.set_title(title, fontsize=10)
    ax.legend(title="label", markerscale=4, fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def run_folder_of(checkpoint_path) -> Path:
    """The run folder a checkpoint came from: its own folder for epoch_N.pth / interrupted.pth,
    NAME/ beside an exported NAME.pth."""
    path = Path(checkpoint_path)
    if path.name.startswith("epoch_") or path.name == "interrupted.pth":
        return path.parent
    return path.with_suffix("")


def loss_curve_copy(checkpoint_path):
    """The training's loss_curve.png when the checkpoint's run folder still has it, else None."""
    curve = run_folder_of(checkpoint_path) / "loss_curve.png"
    return curve.read_bytes() if curve.is_file() else None


# ==================================================================== extended metrics
def resolve_model_checkpoint(info: dict, output_dir: Path) -> Path:
    recorded = info.get("checkpoint_path")
    if not recorded:
        raise LabError(f"{output_dir / 'hyperparams.json'} names no checkpoint_path, which the likelihood needs: "
                       f"rerun inference.py")
    path = Path(recorded)
    for candidate in (path, ROOT / path):
        if candidate.is_file():
            return candidate
    raise LabError(f"the likelihood needs the model that made {output_dir}, but its checkpoint {recorded} "
                   f"(recorded in hyperparams.json) is gone: restore it or rerun inference.py with one that exists")


def label_metrics(predictions, gen_labels, task):
    share = np.bincount(predictions, minlength=NUM_CLASSES) / max(len(predictions), 1)
    result = {"predicted_label_share": share.tolist()}
    if TASK_RECORDS[task].conditional:
        correct = predictions == gen_labels
        result["overall"] = float(correct.mean())
        result["per_label"] = [float(correct[gen_labels == c].mean()) for c in range(NUM_CLASSES)]
    return result


def fid_metrics(real_features, real_labels, gen_features, gen_labels, task, seed=0):
    overall = frechet_distance(real_features, gen_features)
    floor, floor_size, floor_rest = frechet_floor(real_features, len(gen_features), seed=seed)
    result = {"overall": overall, "overall_floor": floor, "num_generated": len(gen_features),
              "num_real": len(real_features), "floor_sizes": [floor_size, floor_rest]}
    if TASK_RECORDS[task].conditional:
        per, floors = [], []
        for c in range(NUM_CLASSES):
            real_c, gen_c = real_features[real_labels == c], gen_features[gen_labels == c]
            per.append(frechet_distance(real_c, gen_c) if len(real_c) >= 2 else float("nan"))
            floors.append(frechet_floor(real_c, len(gen_c), seed=seed + c)[0])
        result.update(per_label=per, per_label_floor=floors, mean_per_label=float(np.nanmean(per)),
                      mean_per_label_floor=float(np.nanmean(floors)))
    return result


def diversity_metrics(real_features, real_labels, gen_features, gen_labels, task):
    real_spread, gen_spread = mean_pairwise_distance(real_features), mean_pairwise_distance(gen_features)
    result = {"overall_ratio": gen_spread / real_spread, "real_spread": real_spread, "generated_spread": gen_spread}
    if TASK_RECORDS[task].conditional:
        ratios = [mean_pairwise_distance(gen_features[gen_labels == c])
                  / mean_pairwise_distance(real_features[real_labels == c]) for c in range(NUM_CLASSES)]
        result.update(per_label_ratio=ratios, mean_per_label_ratio=float(np.nanmean(ratios)),
                      min_per_label_ratio=float(np.nanmin(ratios)))
    return result


def likelihood_metrics(info, output_dir, task, images, labels, num, k, seed=0):
    from checkpoint import load_checkpoint, model_from_checkpoint
    path = resolve_model_checkpoint(info, output_dir)
    checkpoint = load_checkpoint(path)
    if checkpoint["task"] != task or checkpoint["model_kwargs"].get("latent_dim") != info["latent_dim"]:
        raise LabError(f"{path} (a {checkpoint['task']} model, latent_dim "
                       f"{checkpoint['model_kwargs'].get('latent_dim')}) did not make {output_dir}: rerun inference.py")
    var = float(checkpoint["hyperparams"]["var"])
    model = model_from_checkpoint(checkpoint, path).eval()
    total = len(images)
    num = total if num <= 0 else min(num, total)
    index = np.sort(np.random.default_rng(seed).choice(total, num, replace=False))
    log_w = log_weights(model, images[index], labels[index], var, k=k, seed=seed,
                        latent_dim=info["latent_dim"])
    iw = bounds(log_w, likelihood_ks(k))
    return {"num_images": num, "of": total, "subset": f"random, seed {seed}", "k": k, "var": var,
            "checkpoint_path": str(path), "conditional_on_label": TASK_RECORDS[task].conditional,
            "neg_elbo": iw[1], "iw_bound": iw[k], "iw_bound_by_k": {str(key): value for key, value in iw.items()},
            "per_pixel": {"neg_elbo": iw[1] / 784, "iw_bound": iw[k] / 784}}


def extended_metrics(task, output_dir, data_path, num=1000, k=100, classifier_path=None, seed=0) -> dict:
    """Everything above for one task's inference outputs, as a JSON-ready dict."""
    import outputs
    started = time.perf_counter()
    output_dir = Path(output_dir)
    if k < 1 or num < 0:
        raise LabError(f"--extended_k {k} --extended_num {num}: use k >= 1 (100 or more for a tight bound) "
                       f"and num >= 0 (0: the whole split)")
    info = outputs.read_info(output_dir)
    classifier, saved = load_classifier(classifier_path)
    images, labels = load_split(data_path)
    gen_images, gen_labels = outputs.read_samples(output_dir, TASK_RECORDS[task].samples_per_label)
    real_features, real_predictions = classify(classifier, images)
    gen_features, gen_predictions = classify(classifier, gen_images)
    result = {
        "classifier": {"path": str(Path(classifier_path or CLASSIFIER_PATH)),
                       "test_accuracy": saved.get("test_accuracy"),
                       "accuracy_on_real": float((real_predictions == labels).mean()),
                       "num_real": len(labels), "data_path": str(data_path)},
        "label_accuracy": label_metrics(gen_predictions, gen_labels, task),
        "classifier_fid": fid_metrics(real_features, labels, gen_features, gen_labels, task, seed=seed),
        "diversity": diversity_metrics(real_features, labels, gen_features, gen_labels, task),
        "likelihood": likelihood_metrics(info, output_dir, task, images, labels, num, k, seed=seed),
        "pictures": {name: str(output_dir / name) for name in outputs.PICTURES if (output_dir / name).is_file()},
    }
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def report(task: str, e: dict) -> str:
    """The extended metrics as the lines grade.py prints."""
    pct = lambda v: f"{100 * v:.1f}%"
    c, fid, div, lik = e["classifier"], e["classifier_fid"], e["diversity"], e["likelihood"]
    lines = [f"{task:>12} extended [{e['seconds']} s] (classifier {c['path']}: {pct(c['test_accuracy'])} on the test "
             f"split, {pct(c['accuracy_on_real'])} on the {c['num_real']} real images graded here):"]
    label = e["label_accuracy"]
    if "overall" in label:
        lines.append(f"  label accuracy   {pct(label['overall'])} of {fid['num_generated']} samples read as their "
                     f"label; " + " ".join(f"{i}:{pct(v)}" for i, v in enumerate(label["per_label"])))
    else:
        lines.append("  label accuracy   n/a (unconditional samples); share read as each label: "
                     + " ".join(f"{i}:{pct(v)}" for i, v in enumerate(label["predicted_label_share"])))
    lines.append(f"  classifier FID   overall {fid['overall']:.2f} (real-vs-real floor {fid['overall_floor']:.2f}, "
                 f"{fid['floor_sizes'][0]} vs {fid['floor_sizes'][1]} real images)")
    if "per_label" in fid:
        pairs = " ".join(f"{i}:{value:.1f}/{floor:.1f}"
                         for i, (value, floor) in enumerate(zip(fid["per_label"], fid["per_label_floor"])))
        lines.append(f"                   per label mean {fid['mean_per_label']:.2f} "
                     f"(floor {fid['mean_per_label_floor']:.2f}); {pairs}  (value/floor)")
    lines.append(f"  diversity        generated/real spread {div['overall_ratio']:.2f} overall"
                 + (f"; within a label mean {div['mean_per_label_ratio']:.2f}, lowest {div['min_per_label_ratio']:.2f}"
                    if "per_label_ratio" in div else "") + "  (1 = as varied as real digits; well below 1: collapse)")
    ks = ", ".join(f"k={k}: {v:.1f}" for k, v in lik["iw_bound_by_k"].items())
    lines.append(f"  likelihood       on {lik['num_images']} of {lik['of']} images ({lik['subset']}), "
                 f"p(z) = N(0, I), Gaussian decoder var {lik['var']:g}"
                 + (", given the label" if lik["conditional_on_label"] else "") + ":")
    target = "-log p(x | label)" if lik["conditional_on_label"] else "-log p(x)"
    lines.append(f"                   negative ELBO {lik['neg_elbo']:.1f} nats/image; "
                 f"{target} <= {lik['iw_bound']:.1f} (importance-weighted, k={lik['k']}) [{ks}]")
    from outputs import PICTURES
    missing = [name for name in PICTURES if name not in e["pictures"]]
    lines.append(f"  pictures         {', '.join(e['pictures']) or 'none'}"
                 + (f"; missing {', '.join(missing)} (loss_curve.png is copied only when the checkpoint's run folder still exists)"
                    if missing else ""))
    return "\n".join(lines)


# ==================================================================== a generator the lab's grade likes
def fake_samples(outputs: Path, save_dir: Path, kind: str = "pixel-shuffle", seed: int = 0) -> None:
    """Copy an inference output folder and replace its gen/ by a hand-made 'generator' built
    from the training split (never the graded one):
      pixel-shuffle   every pixel drawn on its own from that pixel's values over the training
                      images of the label: the per-pixel means and variances the simplified
                      FID compares are the real ones, but the images are not digits
      collapse        one training image of the label, repeated
    hyperparams.json (and so the model behind the likelihood) is copied unchanged."""
    from outputs import png_bytes
    outputs, save_dir = Path(outputs), Path(save_dir)
    info_path = outputs / "hyperparams.json"
    if not info_path.is_file():
        raise LabError(f"{outputs} holds no hyperparams.json: pass an inference.py output folder")
    task = json.loads(info_path.read_text())["task"]
    if save_dir.exists():
        raise LabError(f"{save_dir} exists: choose a new --save_dir")
    rng = np.random.default_rng(seed)
    images, labels = load_split("train")
    per_label = TASK_RECORDS[task].samples_per_label
    shutil.copytree(outputs, save_dir, ignore=shutil.ignore_patterns("gen", "samples.png"))
    rows = []
    for c in range(NUM_CLASSES):
        pool = images[labels == c].reshape(-1, 784)
        if kind == "pixel-shuffle":
            fake = pool[rng.integers(0, len(pool), (per_label, 784)), np.arange(784)]
        elif kind == "collapse":
            fake = np.repeat(pool[rng.integers(0, len(pool))][None], per_label, axis=0)
        else:
            raise LabError(f"--kind {kind}: choose pixel-shuffle or collapse")
        fake = fake.reshape(per_label, 28, 28).astype(np.uint8)
        (save_dir / "gen" / str(c)).mkdir(parents=True)
        for i, pixels in enumerate(fake):
            (save_dir / "gen" / str(c) / f"{i}.png").write_bytes(png_bytes(pixels))
        rows.append(fake[:10])
    atomic_write_bytes(save_dir / "samples.png", samples_picture(np.stack(rows), conditional=True))
    print(f"wrote {save_dir}: {kind} samples ({per_label} per label) in gen/, the rest copied from {outputs}; "
          f"grade with: python grade.py --extended --{task}_output_dir {save_dir} --result_path {save_dir}/grade.json")


# ==================================================================== CLI
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train-classifier", help="train the digit classifier (train split; selected on "
                                                         "valid; test accuracy measured once)")
    train.add_argument("--out", type=Path, default=CLASSIFIER_PATH, help="where to save it (default %(default)s)")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch_size", type=int, default=128)
    train.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all)")
    fake = commands.add_parser("fake-samples", help="replace an output folder's samples by a hand-made generator")
    fake.add_argument("--outputs", type=Path, required=True, help="an inference.py output folder")
    fake.add_argument("--save_dir", type=Path, required=True, help="the new folder")
    fake.add_argument("--kind", default="pixel-shuffle", choices=("pixel-shuffle", "collapse"))
    fake.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train-classifier":
        if args.epochs < 1 or args.batch_size < 1 or args.limit < 0:
            raise LabError("--epochs and --batch_size must be >= 1 and --limit >= 0")
        train_classifier(args.out, args.epochs, args.batch_size, args.lr, args.seed, args.limit or None)
    else:
        fake_samples(args.outputs, args.save_dir, args.kind, args.seed)


if __name__ == "__main__":
    run_cli(main)
