"""How wide should a generator's draws be? The simplified FID against the label accuracy of the samples
when GenModel draws inside each component of its per-class mixtures at t times the component's width
(submission.GenModel's `spread`; the shipped model draws at 0.85).

    python benchmarks/sampling_spread.py                       # valid split, t = 0.8 ... 1.0
    python benchmarks/sampling_spread.py --split test --spread 0.85 1.0

GenModel decodes z ~ N(0, I) as m_ck + t L_ck z[1:], with component k of class c picked by z[0] and
L_ck L_ck^T its covariance. Wider draws (larger t) give samples whose pixel variance is closer to the
real digits' (the lab's simplified FID compares per-pixel means and variances), but more of them come
from the rims of the components, where the odd digits are, and stop looking like their label. Samples:
100 per label, seed 42, as inference.py draws them; FID: the mean over labels of data_utils.cal_fid
against the split's digits of that label; label accuracy: the share the shipped classifier
(classifier.py) reads as the label asked for, overall and for the label read worst. The grade's other
terms (SSIM, MSE) come from reconstructions, which t does not change.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from classifier import classify, load_classifier  # noqa: E402
from data_utils import IMAGE_PIXELS, NUM_CLASSES, LabError, cal_fid, load_split, run_cli, to_uint8  # noqa: E402
from tasks import default_checkpoint  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint("Genwithlabel"),
                        help="a GenModel checkpoint (default: the shipped one)")
    parser.add_argument("--split", default="valid", help="the real digits compared with (default %(default)s)")
    parser.add_argument("--spread", type=float, nargs="+", default=[0.8, 0.85, 0.9, 0.95, 1.0],
                        help="values of t (default %(default)s)")
    parser.add_argument("--per_label", type=int, default=100, help="samples per label (default %(default)s)")
    args = parser.parse_args(argv)
    model = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint).eval()
    statistics = getattr(model, "code_statistics", None)
    if statistics is None or not hasattr(statistics, "spread"):
        raise LabError(f"{args.checkpoint} holds no per-class mixtures with a spread (submission.GenModel's): "
                       f"nothing to widen")
    images, labels = load_split(args.split)
    classifier, _ = load_classifier()
    print(f"{args.checkpoint}, {args.per_label} samples per label, compared with {args.split}")
    for spread in args.spread:
        statistics.spread = spread
        generator = torch.Generator().manual_seed(42)
        fids, correct = [], []
        with torch.no_grad():
            for label in range(NUM_CLASSES):
                z = torch.randn(args.per_label, model.latent_dim, generator=generator)
                samples = to_uint8(model.decode(z, label))
                real = images[labels == label].reshape(-1, IMAGE_PIXELS) / 255.0
                fids.append(cal_fid(real, samples.reshape(-1, IMAGE_PIXELS) / 255.0))
                correct.append(float((classify(classifier, samples)[1] == label).mean()))
        worst = int(np.argmin(correct))
        print(f"t = {spread:.2f}: simplified FID {np.mean(fids):.3f}, label accuracy {100 * np.mean(correct):.1f}% "
              f"(lowest: label {worst}, {100 * correct[worst]:.0f}%)", flush=True)


if __name__ == "__main__":
    run_cli(main)
