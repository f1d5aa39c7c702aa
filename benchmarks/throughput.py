"""Training throughput: this project's Trainer against a handout-style training loop.

    python benchmarks/throughput.py [--images 50000] [--out benchmarks/results/throughput]

Both train the same model at the same batch size on the same images, one after the other in
one process. The handout-style loop keeps each image as PNG bytes, as the handout's arrow
files did, and decodes it with PIL and converts it with ToTensor inside a DataLoader's
__getitem__, as the original scripts did; the Trainer holds the
split as one tensor, slices batches by index and uses bf16 autocast where the CPU has fast
bf16. The Trainer's time is its whole train() call: steps plus its per-epoch prior fit and
checkpoint. Prints and writes a table of images/s and the speed-up.
"""
import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data_utils import MNISTDataset, atomic_write_bytes, load_split, run_cli, set_random_seed  # noqa: E402
from submission import vae_loss  # noqa: E402
from contract import build_model  # noqa: E402
from hardware import keep_freed_memory  # noqa: E402
from trainer import Trainer, TrainConfig  # noqa: E402

DEFAULTS = TrainConfig()
CASES = [  # (name, model class, task, batch size)
    ("demo MLP (model.VAE)", "model.VAE", "VAE0label", 1024),
    ("submission VAE (conv)", "submission.VAE", "VAE0label", 128),
    ("submission GenModel (conv CVAE)", "submission.GenModel", "Genwithlabel", 128),
]


class HandoutStyleDataset(Dataset):
    """The original data path: the handout's Hugging Face arrow files held each digit as PNG
    bytes, and every item access decoded them with PIL and converted with ToTensor."""

    def __init__(self, images, labels):
        self.png_bytes = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            self.png_bytes.append(buffer.getvalue())
        self.labels = labels
        self.to_tensor = transforms.ToTensor()

    def __len__(self):
        return len(self.png_bytes)

    def __getitem__(self, index):
        with Image.open(io.BytesIO(self.png_bytes[index])) as image:
            return self.to_tensor(image), int(self.labels[index])


def handout_loop(model_name, batch_size, images, labels, latent_dim, var) -> float:
    set_random_seed(0)
    model = build_model(model_name, latent_dim=latent_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=DEFAULTS.lr)
    loader = DataLoader(HandoutStyleDataset(images, labels), batch_size=batch_size, shuffle=True)
    started = time.perf_counter()
    for x, y in loader:
        recon_x, mu, log_var = model(x, y)
        loss = vae_loss(recon_x, x, mu, log_var, var)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(images) / (time.perf_counter() - started)


def project_trainer(model_name, task, batch_size, num_images, latent_dim, var) -> float:
    set_random_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(task=task, model=model_name, latent_dim=latent_dim, batch_size=batch_size, epochs=1,
                             var=var, pred_step=0, save_dir=str(Path(folder) / "run"))
        train_data = MNISTDataset("train", limit=num_images)
        trainer = Trainer(config, train_data, MNISTDataset("valid", limit=100))
        started = time.perf_counter()
        trainer.train(save_loss_plot=False)
        return num_images / (time.perf_counter() - started), trainer.hyperparams()["autocast"]


def measure(num_images: int):
    keep_freed_memory()  # as train.py does, so that both loops are measured with the same malloc
    images, labels = load_split("train")
    images, labels = images[:num_images], labels[:num_images]
    rows = []
    for name, model_name, task, batch_size in CASES:
        handout = handout_loop(model_name, batch_size, images, labels, DEFAULTS.latent_dim, DEFAULTS.var)
        ours, autocast = project_trainer(model_name, task, batch_size, num_images, DEFAULTS.latent_dim, DEFAULTS.var)
        rows.append({"model": name, "batch_size": batch_size, "handout_images_per_s": round(handout),
                     "trainer_images_per_s": round(ours), "trainer_precision": autocast,
                     "speedup": round(ours / handout, 2)})
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50000, help="training images per measurement (default: one epoch)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput")
    args = parser.parse_args(argv)
    rows = measure(args.images)
    header = list(rows[0])
    csv_text = ",".join(header) + "\n" + "".join(",".join(str(r[h]) for h in header) + "\n" for r in rows)
    atomic_write_bytes(args.out.with_name(args.out.name + ".csv"), csv_text.encode())
    md = [f"Training throughput on {torch.get_num_threads()} CPU threads, {args.images} images per measurement",
          "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    atomic_write_bytes(args.out.with_name(args.out.name + ".md"), ("\n".join(md) + "\n").encode())
    print("\n".join(md))


if __name__ == "__main__":
    run_cli(main)
