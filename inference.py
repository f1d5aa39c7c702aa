"""Reconstruct a split and generate digits of every label with a trained model, as PNG files.

    python inference.py --task Genwithlabel --data_path test        # the shipped checkpoint
    python inference.py --checkpoint_path checkpoints/VAE0label/run.pth
    python inference.py --checkpoint_path checkpoints/VAE0label/run/  # newest epoch of a run

Task, latent_dim and model class come from the checkpoint. Writes into --save_dir
(default outputs/<task>/):
    recon/recon_{i}.png      reconstruction of image i of the split (8-bit grey)
    gen/{label}/{k}.png      decode(z ~ N(0, I), label): 10 per label (VAE0label) or 100 (Genwithlabel)
    hyperparams.json         the checkpoint's settings plus what this run read (split, checksum)
    recon.png, samples.png   originals above reconstructions; a sample grid, one row per label
    interpolation.png, latent_map.png, loss_curve.png   see evaluation.write_pictures
The folder is replaced whole only when everything is written.
"""
import argparse
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data_utils import (NUM_CLASSES, LabError, MNISTDataset, atomic_write_bytes, atomic_write_json,
                        ensure_writable_folder, resolve_split, run_cli, set_random_seed, to_uint8)
from evaluation import png, tile, write_pictures
from tasks import SAMPLES_PER_LABEL, canonical_task, default_checkpoint, default_output_dir
from trainer import epoch_number, load_checkpoint, model_from_checkpoint, pick_device


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=None,
                        help="VAE0label or Genwithlabel; picks checkpoints/<task>/default.pth when no "
                             "--checkpoint_path is given, and must match the checkpoint otherwise")
    parser.add_argument("--checkpoint_path", type=Path, default=None,
                        help="a .pth file, or a run folder (its newest epoch_N.pth)")
    parser.add_argument("--latent_dim", type=int, default=None,
                        help="optional check: it must equal the checkpoint's latent_dim")
    parser.add_argument("--save_dir", type=Path, default=None, help="output folder (default outputs/<task>)")
    parser.add_argument("--data_path", default="valid",
                        help="split to reconstruct: valid (default), test, train, or an .npz path")
    parser.add_argument("--inf_num", type=int, default=0, help="reconstruct the first N images only (0: all)")
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42, help="seed of the z ~ N(0, I) draws")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser.parse_args(argv)


def resolve_checkpoint(path, task):
    if path is None:
        return default_checkpoint(canonical_task(task or "VAE0label"))
    if path.is_dir():
        epochs = sorted(path.glob("epoch_*.pth"), key=epoch_number)
        if not epochs:
            raise LabError(f"{path} is a folder without epoch_N.pth files: pass a checkpoint file")
        return epochs[-1]
    return path


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def reconstruct(model, data: MNISTDataset, batch_size: int, device) -> np.ndarray:
    out = []
    for images, labels in tqdm(data.batches(batch_size), total=-(-len(data) // batch_size), desc="reconstruct"):
        recon_x, _, _ = model(images.to(device), labels.to(device))
        out.append(to_uint8(recon_x.reshape(-1, 28, 28)))
    return np.concatenate(out)


@torch.no_grad()
def generate(model, latent_dim: int, per_label: int, seed: int, device) -> np.ndarray:
    """uint8 [10, per_label, 28, 28]: row c is decode(z ~ N(0, I), c)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label in range(NUM_CLASSES):
        z = torch.randn(per_label, latent_dim, generator=generator).to(device)
        rows.append(to_uint8(model.decode(z, torch.full((per_label,), label, device=device)).reshape(-1, 28, 28)))
    return np.stack(rows)


def write_outputs(folder: Path, recon: np.ndarray, samples: np.ndarray, originals: np.ndarray, info: dict) -> None:
    (folder / "recon").mkdir(parents=True)
    for i, pixels in enumerate(tqdm(recon, desc="write recon PNGs")):
        (folder / "recon" / f"recon_{i}.png").write_bytes(png_bytes(pixels))
    for label, row in enumerate(samples):
        (folder / "gen" / str(label)).mkdir(parents=True)
        for k, pixels in enumerate(row):
            (folder / "gen" / str(label) / f"{k}.png").write_bytes(png_bytes(pixels))
    atomic_write_json(folder / "hyperparams.json", info)
    shown = min(16, len(recon))
    atomic_write_bytes(folder / "recon.png", png(tile(np.stack([originals[:shown], recon[:shown]]))))
    atomic_write_bytes(folder / "samples.png", png(tile(samples[:, :min(10, samples.shape[1])])))


def check_replaceable(target: Path) -> None:
    """Refuse to replace a folder that is not an earlier output of inference.py: --save_dir
    pointing at, say, the home folder must not delete it."""
    if not target.exists():
        return
    empty = target.is_dir() and not any(target.iterdir())
    earlier_output = target.is_dir() and (target / "hyperparams.json").is_file() and (target / "recon").is_dir()
    if not (empty or earlier_output):
        raise LabError(f"--save_dir {target} exists and is not an output folder of inference.py: "
                       f"choose a new or empty folder (inference.py replaces its folder whole)")


def replace_folder(new: Path, target: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only afterwards."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    checkpoint_path = resolve_checkpoint(args.checkpoint_path, args.task)
    checkpoint = load_checkpoint(checkpoint_path)
    task = checkpoint["task"]
    if args.task is not None and canonical_task(args.task) != task:
        raise LabError(f"--task {args.task} contradicts {checkpoint_path}, which was trained for {task}: "
                       f"drop --task or pass a {canonical_task(args.task)} checkpoint")
    latent_dim = checkpoint["model_kwargs"]["latent_dim"]
    if args.latent_dim is not None and args.latent_dim != latent_dim:
        raise LabError(f"--latent_dim {args.latent_dim} contradicts {checkpoint_path}, trained with latent_dim "
                       f"{latent_dim}: drop --latent_dim (it is read from the checkpoint)")
    if args.inf_num < 0 or args.batch_size < 1:
        raise LabError("--inf_num must be >= 0 and --batch_size >= 1")

    set_random_seed(args.seed)
    device = pick_device(args.device)
    model = model_from_checkpoint(checkpoint, checkpoint_path).to(device).eval()
    data = MNISTDataset(args.data_path, limit=args.inf_num or None)
    data_file = resolve_split(args.data_path)
    save_dir = args.save_dir or default_output_dir(task)
    ensure_writable_folder(save_dir.parent, "--save_dir")  # now, not after minutes of reconstruction
    check_replaceable(save_dir)
    print(f"{task}: {checkpoint['model']} latent_dim={latent_dim} from {checkpoint_path}; "
          f"reconstructing {len(data)} images of {data_file} into {save_dir}")

    recon = reconstruct(model, data, args.batch_size, device)
    samples = generate(model, latent_dim, SAMPLES_PER_LABEL[task], args.seed, device)
    info = dict(checkpoint["hyperparams"], task=task, latent_dim=latent_dim, model=checkpoint["model"],
                checkpoint_path=str(checkpoint_path), data_path=str(data_file),
                data_sha256=hashlib.sha256(data_file.read_bytes()).hexdigest(),
                num_images=len(data), samples_per_label=SAMPLES_PER_LABEL[task], inference_seed=args.seed)

    partial = save_dir.parent / f".{save_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        save_dir.parent.mkdir(parents=True, exist_ok=True)
        write_outputs(partial, recon, samples, to_uint8(data.images[:16].squeeze(1)), info)
        write_pictures(partial, model, data, task, checkpoint_path)
        replace_folder(partial, save_dir)
    except BaseException as error:
        # Whatever stopped the write (disk full, Ctrl-C, an error), leave no half-written folder.
        shutil.rmtree(partial, ignore_errors=True)
        if not isinstance(error, OSError):
            raise
        raise LabError(f"cannot write outputs into {save_dir.parent} ({error.strerror}): "
                       f"pass a writable --save_dir") from None
    print(f"wrote {len(recon)} reconstructions and {samples.shape[0]}x{samples.shape[1]} samples to {save_dir} "
          f"(see recon.png, samples.png, interpolation.png, latent_map.png); grade with: "
          f"python grade.py --{task}_output_dir {save_dir}")


if __name__ == "__main__":
    run_cli(main)
