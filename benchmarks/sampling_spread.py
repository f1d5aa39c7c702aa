"""How wide should a generator's draws be? The simplified FID against the label accuracy of the samples
when every class's code covariance of the shipped GenModel is scaled by t^2 (t = 1: the model as shipped).

    python benchmarks/sampling_spread.py                       # valid split, t = 0.9 ... 1.4
    python benchmarks/sampling_spread.py --split test --spread 1.0 1.1

GenModel decodes z ~ N(0, I) as z_c = m_c + t L_c z, where L_c L_c^T is the covariance of class c's
codes. Wider draws (t > 1) give samples whose pixel variance is closer to the real digits' (the lab's
simplified FID compares per-pixel means and variances), but more of them leave the region the decoder
was trained on and stop looking like their label. Samples: 100 per label, seed 42, as inference.py
draws them; FID: the mean over labels of data_utils.cal_fid against the split's digits of that label;
label accuracy: the share the shipped classifier (classifier.py) reads as the label asked for.
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint("Genwithlabel"),
                        help="a GenModel checkpoint (default: the shipped one)")
    parser.add_argument("--split", default="valid", help="the real digits compared with (default %(default)s)")
    parser.add_argument("--spread", type=float, nargs="+", default=[0.9, 1.0, 1.1, 1.2, 1.3, 1.4],
                        help="values of t (default %(default)s)")
    parser.add_argument("--per_label", type=int, default=100, help="samples per label (default %(default)s)")
    args = parser.parse_args(argv)
    model = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint).eval()
    statistics = getattr(model, "code_statistics", None)
    if statistics is None:
        raise LabError(f"{args.checkpoint} holds no per-class code statistics (submission.GenModel's): nothing to widen")
    images, labels = load_split(args.split)
    classifier, _ = load_classifier()
    mean, second_moment = statistics.mean.clone(), statistics.second_moment.clone()
    outer = mean[:, :, None] * mean[:, None, :]
    print(f"{args.checkpoint}, {args.per_label} samples per label, compared with {args.split}")
    for spread in args.spread:
        statistics.second_moment.copy_((second_moment - outer) * spread ** 2 + outer)  # covariance x t^2
        generator = torch.Generator().manual_seed(42)
        fids, correct = [], 0
        with torch.no_grad():
            for label in range(NUM_CLASSES):
                z = torch.randn(args.per_label, model.latent_dim, generator=generator)
                samples = to_uint8(model.decode(z, label))
                real = images[labels == label].reshape(-1, IMAGE_PIXELS) / 255.0
                fids.append(cal_fid(real, samples.reshape(-1, IMAGE_PIXELS) / 255.0))
                correct += int((classify(classifier, samples)[1] == label).sum())
        print(f"t = {spread:.2f}: simplified FID {np.mean(fids):.3f}, label accuracy "
              f"{100 * correct / (NUM_CLASSES * args.per_label):.1f}%", flush=True)
    statistics.second_moment.copy_(second_moment)


if __name__ == "__main__":
    run_cli(main)
