"""Which model and schedule reach full marks fastest? A bare training loop (no checkpoints, no
validation, no progress bar) over candidate (C)VAEs, each graded on the validation split by the
lab's grade_arrays, with its training seconds and images/s: the measurements behind issue 15.

    python benchmarks/levers.py --arch conv:32,256 --epochs 4 --batch_size 128 --lr 3e-3
    python benchmarks/levers.py --arch conv:16,256 --epochs 14 --lr 3e-3 --conditional
    python benchmarks/levers.py --arch mlp:512,256 --epochs 15 --batch_size 256
    python benchmarks/levers.py --throughput       # images/s of each candidate, random data
    python benchmarks/levers.py --compile          # submission.py's models, eager and torch.compile
    python benchmarks/levers.py --allocator        # submission.py's models, glibc malloc as is or tuned

--arch: conv:WIDTH,HIDDEN (submission.py's layout: two stride-2 convolutions of WIDTH and 2 WIDTH
channels, a HIDDEN-unit layer; mirrored in the decoder), mlp:H1,H2,... (fully connected),
hybrid:WIDTH,HIDDEN (an MLP encoder, the conv decoder), mlpl:H1,H2,... (an MLP whose decoder
layers each see the label). The learning rate rises linearly over the
first --warmup share of the steps, then follows a cosine to lr/50. A conditional model's samples
are drawn from one Gaussian fitted to each class's training codes (GenModel's statistics before issue 24;
it now keeps a mixture per class, which benchmarks/mixture.py measures).
Prints one JSON line per run. Run it alone: images/s beside another job mean nothing.
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data_utils import IMAGE_PIXELS, NUM_CLASSES, MNISTDataset, run_cli, to_uint8  # noqa: E402
from race import Grader  # noqa: E402
from submission import vae_loss  # noqa: E402
from hardware import keep_freed_memory  # noqa: E402


def act():
    return nn.LeakyReLU(0.2)


class Candidate(nn.Module):
    """A (C)VAE with the handout's forward/decode; `encoder` and `decoder` are built by the subclass.

    OUTPUT says how the decoder's last layer becomes pixel means: "sigmoid" (submission.py's), "clamp"
    (clamped to [0, 1]: no gradient for a pixel outside), or "linear" (unsquashed while training, so
    the loss is a plain regression; clamped to [0, 1] in eval mode, where the images are graded)."""
    OUTPUT = "sigmoid"

    def __init__(self, conditional: bool):
        super().__init__()
        self.extra = NUM_CLASSES if conditional else 0

    def squash(self, logits):
        if self.OUTPUT == "sigmoid":
            return torch.sigmoid(logits)
        if self.OUTPUT == "linear" and self.training:
            return logits
        return logits.clamp(0.0, 1.0)

    def condition(self, h, labels):
        return torch.cat([h, F.one_hot(labels, NUM_CLASSES).float()], dim=1) if self.extra else h

    def forward(self, x, labels):
        mu, log_var = self.encode(x, labels).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        return self.decode(z, labels), mu, log_var


class MLP(Candidate):
    def __init__(self, latent_dim, hidden, conditional):
        super().__init__(conditional)
        layers, size = [], IMAGE_PIXELS + self.extra
        for h in hidden:
            layers += [nn.Linear(size, h), act()]
            size = h
        self.encoder = nn.Sequential(*layers, nn.Linear(size, 2 * latent_dim))
        layers, size = [], latent_dim + self.extra
        for h in reversed(hidden):
            layers += [nn.Linear(size, h), act()]
            size = h
        self.decoder = nn.Sequential(*layers, nn.Linear(size, IMAGE_PIXELS))

    def encode(self, x, labels):
        return self.encoder(self.condition(x.reshape(len(x), -1), labels))

    def decode(self, z, labels):
        return self.squash(self.decoder(self.condition(z, labels))).reshape(-1, 28, 28)


class MLPLabelEveryLayer(MLP):
    """mlpl: as mlp, but the decoder's every layer sees the one-hot label, not only its first."""

    def __init__(self, latent_dim, hidden, conditional):
        super().__init__(latent_dim, hidden, conditional)
        linears = [m for m in self.decoder if isinstance(m, nn.Linear)]
        self.decoder = nn.ModuleList(
            [linears[0]] + [nn.Linear(m.in_features + self.extra, m.out_features) for m in linears[1:]])

    def decode(self, z, labels):
        h = z
        for i, linear in enumerate(self.decoder):
            h = linear(self.condition(h, labels))
            h = act()(h) if i < len(self.decoder) - 1 else h
        return self.squash(h).reshape(-1, 28, 28)


class Conv(Candidate):
    def __init__(self, latent_dim, width, hidden, conditional):
        super().__init__(conditional)
        self.width = width
        self.conv = nn.Sequential(nn.Conv2d(1, width, 4, 2, 1), act(), nn.Conv2d(width, 2 * width, 4, 2, 1), act())
        self.encoder = nn.Sequential(nn.Linear(2 * width * 49 + self.extra, hidden), act(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim + self.extra, hidden), act(),
                                     nn.Linear(hidden, 2 * width * 49), act())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 4, 2, 1), act(),
                                    nn.ConvTranspose2d(width, 1, 4, 2, 1))

    def encode(self, x, labels):
        return self.encoder(self.condition(self.conv(x.reshape(-1, 1, 28, 28)).flatten(1), labels))

    def decode(self, z, labels):
        h = self.decoder(self.condition(z, labels)).reshape(-1, 2 * self.width, 7, 7)
        return self.squash(self.deconv(h)).reshape(-1, 28, 28)


class Hybrid(Conv):
    def __init__(self, latent_dim, width, hidden, conditional, encoder_hidden=(512, 256)):
        super().__init__(latent_dim, width, hidden, conditional)
        del self.conv
        self.encoder = MLP(latent_dim, encoder_hidden, conditional).encoder

    def encode(self, x, labels):
        return self.encoder(self.condition(x.reshape(len(x), -1), labels))


def build(arch: str, latent_dim: int, conditional: bool) -> nn.Module:
    kind, _, numbers = arch.partition(":")
    sizes = [int(n) for n in numbers.split(",") if n]
    if kind in ("mlp", "mlpl") and sizes:
        return (MLP if kind == "mlp" else MLPLabelEveryLayer)(latent_dim, sizes, conditional)
    if kind in ("conv", "hybrid") and len(sizes) == 2:
        return (Conv if kind == "conv" else Hybrid)(latent_dim, *sizes, conditional)
    raise SystemExit(f"error: --arch {arch}: use conv:WIDTH,HIDDEN, hybrid:WIDTH,HIDDEN, mlp:H1,H2,... or mlpl:H1,H2,...")


def lr_at(step, total, lr, warmup):
    warm = round(warmup * total)
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(total - 1 - warm, 1)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def class_gaussian_samples(model, train, latent_dim, per_label=100, spread=1.0):
    """uint8 [10, per_label, 28, 28]: decoded draws from a Gaussian fitted to each class's training codes."""
    model.eval()
    codes = torch.cat([model(train.images[i:i + 2000], train.labels[i:i + 2000])[1]
                       for i in range(0, len(train), 2000)]).double()
    generator, samples = torch.Generator().manual_seed(42), []
    for c in range(NUM_CLASSES):
        class_codes = codes[train.labels == c]
        scale = torch.linalg.cholesky(torch.cov(class_codes.T))
        z = class_codes.mean(0) + spread * torch.randn(per_label, latent_dim, generator=generator).double() @ scale.T
        samples.append(to_uint8(model.decode(z.float(), torch.full((per_label,), c))))
    return np.stack(samples)


def train_and_grade(args):
    torch.manual_seed(args.seed)
    Candidate.OUTPUT = args.output
    model = build(args.arch, args.latent_dim, args.conditional)
    train = MNISTDataset("train")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = int(args.epochs * steps_per_epoch)
    step, started = 0, time.perf_counter()
    model.train()
    while step < total:
        order = torch.randperm(len(train))
        for batch in range(steps_per_epoch):
            if step >= total:
                break
            index = order[batch * args.batch_size:(batch + 1) * args.batch_size]
            x, labels = train.images[index], train.labels[index]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, args.lr, args.warmup)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                recon_x, mu, log_var = model(x, labels)
                loss = vae_loss(recon_x, x, mu, log_var, args.var)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    seconds = time.perf_counter() - started
    grader = Grader("Genwithlabel" if args.conditional else "VAE0label")
    samples = class_gaussian_samples(model, train, args.latent_dim, spread=args.spread) if args.conditional else None
    result = grader(model, args.latent_dim, samples)
    if args.conditional:  # how legible the samples are: the share the project's classifier reads as their label
        from classifier import classify, load_classifier
        from evaluation import label_metrics
        predictions = classify(load_classifier()[0], samples.reshape(-1, 28, 28))[1]
        asked = np.repeat(np.arange(NUM_CLASSES), samples.shape[1])
        legibility = label_metrics(predictions, asked, "Genwithlabel")
        result["label_accuracy"] = legibility["overall"]
        result["per_label"] = [round(a, 2) for a in legibility["per_label"]]
    row = {"arch": args.arch, "latent_dim": args.latent_dim, "precision": args.precision, "output": args.output, "conditional": args.conditional, "epochs": args.epochs, "batch_size": args.batch_size,
           "lr": args.lr, "var": args.var, "train_seconds": round(seconds, 1),
           "images_per_s": round(step * args.batch_size / seconds), "ssim": round(result["ssim"], 4),
           "mse": round(result["mse"], 5), "fid": round(result["fid"], 3) if "fid" in result else None,
           "grade_uncapped": round(result["score_uncapped"], 3), "label_accuracy": result.get("label_accuracy"), "per_label": result.get("per_label"),
           "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)


def random_step(model, optimizer, x, labels, batch_size):
    """One training step on a random batch of x: the unit the throughput measurements time."""
    index = torch.randint(0, len(x), (batch_size,))
    recon_x, mu, log_var = model(x[index], labels[index])
    loss = vae_loss(recon_x, x[index], mu, log_var, 0.01)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def random_images():
    """4,096 random images and labels: the data of the throughput measurements."""
    return torch.rand(4096, 1, 28, 28), torch.randint(0, NUM_CLASSES, (4096,))


def submission_model(name: str):
    """submission.py's VAE or GenModel with its defaults, seeded, with the fused Adam the Trainer builds."""
    import submission
    torch.manual_seed(0)
    model = getattr(submission, name)()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)


def throughput(seconds=6.0):
    x, labels = random_images()
    for arch in ("conv:32,256", "conv:16,256", "hybrid:32,256", "mlp:512,256"):
        for batch_size in (128, 512):
            model = build(arch, 8, True)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            images, started, steps = 0, None, 0
            while started is None or time.perf_counter() - started < seconds:
                random_step(model, optimizer, x, labels, batch_size)
                steps += 1
                if steps == 3:
                    started = time.perf_counter()
                elif steps > 3:
                    images += batch_size
            rate = images / (time.perf_counter() - started)
            print(json.dumps({"arch": arch, "batch_size": batch_size, "images_per_s": round(rate),
                              "threads": torch.get_num_threads()}), flush=True)


def compile_throughput(steps=150, batch_size=128):
    """submission.py's VAE and GenModel, eager and under torch.compile: the first step's seconds (where
    compiling happens) and the training images/s after 10 more steps, random images, the fused Adam."""
    x, labels = random_images()
    for name in ("VAE", "GenModel"):
        for compiled in (False, True):
            model, optimizer = submission_model(name)
            run = torch.compile(model) if compiled else model
            started = time.perf_counter()
            random_step(run, optimizer, x, labels, batch_size)
            first = time.perf_counter() - started
            for _ in range(10):
                random_step(run, optimizer, x, labels, batch_size)
            started = time.perf_counter()
            for _ in range(steps):
                random_step(run, optimizer, x, labels, batch_size)
            print(json.dumps({"model": name, "torch_compile": compiled, "first_step_s": round(first, 1),
                              "images_per_s": round(steps * batch_size / (time.perf_counter() - started)),
                              "threads": torch.get_num_threads()}), flush=True)


def allocator_throughput(rounds=3):
    """submission.py's VAE and GenModel with glibc's malloc as it comes and after the Trainer's
    keep_freed_memory(), which cannot be undone in a process: so each measurement is a fresh
    process, the two settings in turn, `rounds` times."""
    for name in ("VAE", "GenModel"):
        for _ in range(rounds):
            for keep in (0, 1):
                child = subprocess.run([sys.executable, __file__, "--allocator_child", f"{name},{keep}"],
                                       capture_output=True, text=True)
                if child.returncode != 0:
                    raise SystemExit(f"error: the measurement of {name} failed:\n{child.stderr.strip()}")
                print(child.stdout.strip(), flush=True)


def allocator_child(spec: str, steps=150, batch_size=128):
    """One measurement of allocator_throughput: training images/s and page faults per step."""
    import resource
    name, keep = spec.split(",")
    applied = keep_freed_memory() if keep == "1" else False
    x, labels = random_images()
    model, optimizer = submission_model(name)
    for _ in range(10):
        random_step(model, optimizer, x, labels, batch_size)
    faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    cpu_started = time.process_time()
    for _ in range(steps):
        random_step(model, optimizer, x, labels, batch_size)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    # CPU time counts what this process ran, all threads together; it moves less than wall time
    # when other work on the host takes turns on the cores.
    print(json.dumps({"model": name, "keep_freed_memory": applied, "images_per_s": round(steps * batch_size / seconds),
                      "cpu_ms_per_step": round(cpu_seconds / steps * 1000, 1),
                      "page_faults_per_step": round(faults / steps), "threads": torch.get_num_threads()}))


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="conv:32,256", help="conv:W,H, hybrid:W,H, mlp:H1,H2 or mlpl:H1,H2 (default %(default)s)")
    parser.add_argument("--conditional", action="store_true", help="a CVAE graded as Genwithlabel (default: VAE0label)")
    parser.add_argument("--latent_dim", type=int, default=8, help="(default %(default)s)")
    parser.add_argument("--epochs", type=float, default=4, help="may be fractional (default %(default)s)")
    parser.add_argument("--batch_size", type=int, default=128, help="(default %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=0.03, help="share of steps of linear warm-up (default %(default)s)")
    parser.add_argument("--var", type=float, default=0.01, help="decoder variance of the loss (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    parser.add_argument("--output", choices=("sigmoid", "clamp", "linear"), default="sigmoid",
                        help="the decoder's last step to pixel means (Candidate's docstring; default %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: the training steps under bf16 autocast, as the Trainer on fast-bf16 hardware "
                             "(default %(default)s)")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="a conditional model's draws: the class Gaussian's standard deviations times this "
                             "(default %(default)s)")
    parser.add_argument("--throughput", action="store_true", help="only images/s of each candidate on random data")
    parser.add_argument("--compile", action="store_true",
                        help="only images/s of submission.py's models, eager and under torch.compile")
    parser.add_argument("--allocator", action="store_true",
                        help="only images/s and page faults per step of submission.py's models, with glibc's malloc "
                             "as it comes and as the Trainer sets it (keep_freed_memory)")
    parser.add_argument("--allocator_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.allocator_child:
        allocator_child(args.allocator_child)
    elif args.allocator:
        allocator_throughput()
    elif args.compile:
        compile_throughput()
    elif args.throughput:
        throughput()
    else:
        train_and_grade(args)


if __name__ == "__main__":
    run_cli(main)
