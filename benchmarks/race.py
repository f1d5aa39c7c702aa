"""Grade against seconds of training, side by side on one machine (issue 15's benchmark).

    python benchmarks/race.py                            # VAE0label: ours, the handout's, pytorch/examples'
    python benchmarks/race.py --task Genwithlabel --contestants ours handout
    python benchmarks/race.py --epochs_scale 0.2         # a quick try (fewer epochs for everyone)
    python benchmarks/race.py --device cuda              # the same race on a GPU (default: auto)

Contestants, each trained on the 50,000 training images and graded after every epoch on the
validation split by the lab's grade (grade.grade_arrays on inference's reconstructions and samples):
  ours      train.py's defaults for the task (submission.py's model, the lab's Trainer)
  handout   the handout's original defaults: the demo MLP (model.py), latent_dim 20, batch 1024,
            lr 5e-3 constant, var 0.5, 10 epochs, through the same Trainer
  examples  the way pytorch/examples trains its VAE: an MLP 784-400-20 with ReLU, binary
            cross-entropy summed over pixels plus the KL, batch 128, Adam lr 1e-3, 10 epochs,
            in a bare loop of its own (graded by the same formula)
The clock counts training only: it stops while a model is graded. The run also measures the
machine's matmul limit (fp32, and bf16, which the trainer uses only where it is fast) and each
model's FLOPs per training image, so images/s can be read against it. Writes OUT.csv (one row per graded epoch), OUT.md and OUT.png.
Run it alone on the machine: timings taken beside another job mean nothing.
"""
import argparse
import contextlib
import csv
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import contract  # noqa: E402
from hardware import PRECISIONS, pick_autocast_dtype, pick_device  # noqa: E402
from data_utils import IMAGE_PIXELS, MNISTDataset, atomic_write_bytes, run_cli, to_uint8  # noqa: E402
from grade import grade_arrays  # noqa: E402
from inference import generate  # noqa: E402
from tasks import MODEL_FOR_TASK, TASK_RECORDS, canonical_task  # noqa: E402
from trainer import Trainer, TrainConfig  # noqa: E402

HANDOUT = {"model": "model.VAE", "latent_dim": 20, "batch_size": 1024, "lr": 5e-3, "lr_schedule": "constant",
           "var": 0.5, "epochs": 10}
EXAMPLES = {"latent_dim": 20, "batch_size": 128, "lr": 1e-3, "epochs": 10}


class ExamplesVAE(nn.Module):
    """pytorch/examples' VAE layout: 784-400 (ReLU) to mu and log_var of 20, 20-400 (ReLU)-784 (sigmoid)."""

    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.hidden = nn.Linear(IMAGE_PIXELS, 400)
        self.to_mu, self.to_log_var = nn.Linear(400, latent_dim), nn.Linear(400, latent_dim)
        self.decode_hidden, self.decode_out = nn.Linear(latent_dim, 400), nn.Linear(400, IMAGE_PIXELS)

    def decode(self, z, labels=None):
        return torch.sigmoid(self.decode_out(F.relu(self.decode_hidden(z)))).reshape(-1, 28, 28)

    def forward(self, x, labels=None):
        h = F.relu(self.hidden(x.reshape(-1, IMAGE_PIXELS)))
        mu, log_var = self.to_mu(h), self.to_log_var(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
        return self.decode(z), mu, log_var


def examples_loss(recon_x, x, mu, log_var):
    """Binary cross-entropy summed over the pixels of the batch, plus the KL, as pytorch/examples."""
    bce = F.binary_cross_entropy(recon_x.reshape(-1, IMAGE_PIXELS), x.reshape(-1, IMAGE_PIXELS), reduction="sum")
    return bce - 0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())


class Grader:
    """Grades a model on the validation split the way inference.py + grade.py would."""

    def __init__(self, task: str, device=torch.device("cpu")):
        self.task, self.record, self.device = task, TASK_RECORDS[task], device
        self.valid = MNISTDataset("valid")
        self.images = to_uint8(self.valid.images.squeeze(1))

    @torch.no_grad()
    def __call__(self, model, latent_dim: int, samples=None) -> dict:
        """samples: uint8 [10, K, 28, 28] drawn by the caller; by default inference's decode(z ~ N(0, I), c).
        The model is run on the grader's device."""
        was_training = model.training
        model.eval()
        recon = np.concatenate([
            to_uint8(contract.reconstruct(model, self.valid.images[i:i + 1000].to(self.device),
                                          self.valid.labels[i:i + 1000].to(self.device), latent_dim)[0])
            for i in range(0, len(self.valid), 1000)])
        if self.record.conditional and samples is None:
            samples = generate(contract.Decoder(model, latent_dim), latent_dim, self.record.samples_per_label,
                               seed=42, device=self.device)
        result = grade_arrays(self.task, self.images, self.valid.labels.numpy(), recon, samples, latent_dim)
        model.train(was_training)
        return result


class Clock:
    """Seconds of training: runs except while paused (grading)."""

    def __init__(self):
        self.started, self.paused_total = time.perf_counter(), 0.0

    @contextlib.contextmanager
    def pause(self):
        since = time.perf_counter()
        try:
            yield
        finally:
            self.paused_total += time.perf_counter() - since

    def seconds(self):
        return time.perf_counter() - self.started - self.paused_total


def row_of(contestant, epoch, seconds, images, latent_dim, result):
    return {"contestant": contestant, "epoch": epoch, "train_seconds": round(seconds, 1),
            "images_per_s": round(images / max(seconds, 1e-9)), "latent_dim": latent_dim,
            "ssim": round(result["ssim"], 4), "mse": round(result["mse"], 5),
            "fid": round(result["fid"], 3) if "fid" in result else "", "grade": round(result["score"], 3),
            "grade_uncapped": round(result["score_uncapped"], 3)}


def race_trainer(contestant, task, settings, grader, epochs_scale, folder, say):
    """ours / handout: the lab's Trainer, graded at the end of every epoch with the clock paused."""
    rows = []
    epochs = max(1, round(settings.get("epochs", TASK_RECORDS[task].epochs) * epochs_scale))
    config = TrainConfig(task=task, save_dir=str(folder / contestant), device=str(grader.device),
                         **dict(settings, epochs=epochs))
    train_data, valid_data = MNISTDataset(config.train_data), MNISTDataset(config.valid_data)
    torch.manual_seed(config.seed)

    class GradedTrainer(Trainer):
        def end_epoch(self, epoch, batches_per_epoch, save_loss_plot):
            super().end_epoch(epoch, batches_per_epoch, save_loss_plot)
            synchronize(grader.device)  # the epoch's queued GPU work is training time
            with clock.pause():
                result = grader(self.model, config.latent_dim)
            rows.append(row_of(contestant, epoch, clock.seconds(), epoch * len(train_data), config.latent_dim, result))
            say(rows[-1])

    trainer = GradedTrainer(config, train_data, valid_data)  # validates every pred_step steps, as train.py
    clock = Clock()
    trainer.train(save_loss_plot=False)
    return rows, trainer.model, config.batch_size


def race_examples(task, grader, epochs_scale, say):
    """examples: pytorch/examples' loop (shuffled batches, BCE + KL, Adam), nothing else."""
    rows = []
    torch.manual_seed(42)
    train_data = MNISTDataset("train")
    model = ExamplesVAE(EXAMPLES["latent_dim"]).to(grader.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=EXAMPLES["lr"])
    epochs = max(1, round(EXAMPLES["epochs"] * epochs_scale))
    clock = Clock()
    for epoch in range(1, epochs + 1):
        model.train()
        for images, labels in train_data.batches(EXAMPLES["batch_size"], shuffle=True):
            images = images.to(grader.device)
            recon_x, mu, log_var = model(images, labels)
            loss = examples_loss(recon_x, images, mu, log_var)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        synchronize(grader.device)
        with clock.pause():
            result = grader(model, EXAMPLES["latent_dim"])
        rows.append(row_of("examples", epoch, clock.seconds(), epoch * len(train_data), EXAMPLES["latent_dim"], result))
        say(rows[-1])
    return rows, model, EXAMPLES["batch_size"]


def matmul_limit(dtype, device=torch.device("cpu"), size=(1024, 784, 400), seconds=2.0) -> float:
    """GFLOP/s of a [1024,784] @ [784,400] matmul on `device`, repeated for `seconds`."""
    a = torch.rand(size[0], size[1], device=device).to(dtype)
    b = torch.rand(size[1], size[2], device=device).to(dtype)
    for _ in range(5):
        a @ b
    synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):  # on a GPU one matmul is microseconds: time them in tens
            a @ b
        synchronize(device)
        count += 10
    return 2 * size[0] * size[1] * size[2] * count / (time.perf_counter() - started) / 1e9


def synchronize(device) -> None:
    """Wait for the GPU's queued work, so that the clock measures it (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(model, batch_size: int, latent_dim: int) -> float:
    """FLOPs of one training step (forward, backward) per image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    device = next(model.parameters()).device
    images = torch.rand(batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    model.train()
    with FlopCounterMode(display=False) as counter:
        recon_x, mu, log_var = model(images, labels)
        ((recon_x.reshape(batch_size, -1) - images.reshape(batch_size, -1)) ** 2).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


def time_to_full_marks(rows, cap):
    reached = [r["train_seconds"] for r in rows if r["grade"] >= cap]
    return min(reached) if reached else None


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()} CPU threads"


def write_results(out: Path, task: str, rows: list, summary: list, limits: dict, device, precision: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out.with_suffix(".csv"), buffer.getvalue().encode())
    lines = [f"# Grade against seconds of training: {task}, validation split", "",
             f"`python benchmarks/race.py --task {task} --device {device.type} --precision {precision}`; "
             f"{device_name(device)}; matmul limit "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in limits.items()) + ".", "",
             "| contestant | epoch | train s | images/s | latent_dim | SSIM | MSE | FID | grade | uncapped |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['contestant']} | {r['epoch']} | {r['train_seconds']} | {r['images_per_s']:,} | {r['latent_dim']} | "
              f"{r['ssim']} | {r['mse']} | {r['fid']} | {r['grade']} | {r['grade_uncapped']} |" for r in rows]
    lines += ["", "| contestant | first full marks (train s) | ours / theirs | images/s | FLOPs per image (train step) "
              "| share of the fp32 matmul limit |", "|---|---|---|---|---|---|"]
    ours = next((s["full_marks_s"] for s in summary if s["contestant"] == "ours"), None)
    for s in summary:
        ratio = f"{ours / s['full_marks_s']:.2f}" if ours and s["full_marks_s"] and s["contestant"] != "ours" else ""
        lines.append(f"| {s['contestant']} | {s['full_marks_s'] if s['full_marks_s'] is not None else 'not reached'} | "
                     f"{ratio} | {s['images_per_s']:,} | {s['flops_per_image'] / 1e6:.1f} M | {s['share']:.0%} |")
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name in dict.fromkeys(r["contestant"] for r in rows):
        mine = [r for r in rows if r["contestant"] == name]
        ax.plot([r["train_seconds"] for r in mine], [r["grade_uncapped"] for r in mine], "o-", ms=3, label=name)
    ax.axhline(TASK_RECORDS[task].cap, color="grey", lw=0.8, ls="--", label="full marks")
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("grade (uncapped), validation split")
    ax.set_title(f"{task}: grade against training time")
    ax.legend()
    fig.tight_layout()
    picture = io.BytesIO()
    fig.savefig(picture, format="png", dpi=100)
    atomic_write_bytes(out.with_suffix(".png"), picture.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="VAE0label", help="VAE0label or Genwithlabel (default %(default)s)")
    parser.add_argument("--contestants", nargs="+", default=["ours", "handout", "examples"],
                        choices=["ours", "handout", "examples"], help="who races (default: all three)")
    parser.add_argument("--epochs_scale", type=float, default=1.0,
                        help="multiply every contestant's epochs (at least 1 each; default %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="where every contestant trains and is graded: auto (a GPU if there is one), cpu, cuda "
                             "(default %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="arithmetic of ours and handout (train.py's --precision; default %(default)s: bf16 where "
                             "the hardware is fast at it). fp32 races as an AVX2-only host would; examples is fp32 "
                             "always")
    parser.add_argument("--out", type=Path, default=None,
                        help="results prefix (default benchmarks/results/race_<task>)")
    args = parser.parse_args(argv)
    task = canonical_task(args.task)
    out = args.out or ROOT / "benchmarks" / "results" / f"race_{task}"
    device = pick_device(args.device)
    limits = {"fp32": matmul_limit(torch.float32, device)}
    # bf16 is measured everywhere; where the hardware has no fast bf16 the trainer does not use it
    bf16 = "bf16" if pick_autocast_dtype("auto", device) is not None else "bf16 (slow here, not used)"
    limits[bf16] = matmul_limit(torch.bfloat16, device)
    print(f"{device_name(device)}; matmul limit: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in limits.items()),
          flush=True)
    grader = Grader(task, device)
    rows, summary = [], []

    def say(row):
        print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)

    with tempfile.TemporaryDirectory() as folder:
        for contestant in args.contestants:
            if contestant == "examples":
                mine, model, batch_size = race_examples(task, grader, args.epochs_scale, say)
            else:
                settings = {"model": MODEL_FOR_TASK["submission"][task]} if contestant == "ours" else HANDOUT
                settings = dict(settings, precision=args.precision)
                mine, model, batch_size = race_trainer(contestant, task, settings, grader, args.epochs_scale,
                                                       Path(folder), say)
            rows += mine
            flops = flops_per_image(model, batch_size, mine[-1]["latent_dim"])
            rate = mine[-1]["images_per_s"]
            summary.append({"contestant": contestant, "full_marks_s": time_to_full_marks(mine, TASK_RECORDS[task].cap),
                            "images_per_s": rate, "flops_per_image": flops,
                            "share": rate * flops / (limits["fp32"] * 1e9)})
    write_results(out, task, rows, summary, limits, device, args.precision)
    print(out.with_suffix(".md").read_text())
    print(f"wrote {out}.csv, {out}.md and {out}.png")


if __name__ == "__main__":
    run_cli(main)
