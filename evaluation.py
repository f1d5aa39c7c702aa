"""Evaluation a person can trust, on top of (never instead of) the lab's grade:
`python grade.py --extended` prints these measures after the grade.

The lab's grade judges reconstructions (SSIM, MSE) and compares per-pixel means and variances
of generated and real digits (the simplified FID); none of it can tell whether a generated '5'
looks like a 5. This module adds the measures the field uses, read with their floors:

    label accuracy        the share of gen/{label}/*.png that a digit classifier (classifier.py)
                          reads as `label`
    classifier FID        Frechet distance of real and generated images in the classifier's
                          penultimate features (full covariance), overall and per label, each
                          beside its real-vs-real floor
    diversity             mean pairwise feature distance within a label, generated / real
    likelihood            negative ELBO and an importance-weighted bound on -log p(x), in nats
                          per image, for the model's own Gaussian decoder

It only reads an inference.py output folder (and the model its hyperparams.json names); the
pictures beside it are inference.py's (pictures.py). docs/evaluation.md explains every number.
"""
import math
import time
from pathlib import Path

import numpy as np
import torch

from classifier import CLASSIFIER_PATH, as_float_images, classify, load_classifier
from data_utils import NUM_CLASSES, ROOT, LabError, load_split
from tasks import TASK_RECORDS

LOG_2PI = math.log(2 * math.pi)


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
