"""Reconstruct a split and generate digits of every label with a trained model, as PNG files.

    python inference.py --task Genwithlabel --data_path test        # the shipped checkpoint
    python inference.py --checkpoint_path checkpoints/VAE0label/run.pth
    python inference.py --checkpoint_path checkpoints/VAE0label/run/  # newest checkpoint of a run
    python inference.py --task VAE0label --latent_dim 20 --checkpoint_path epoch_10.pth  # handout format

Task, latent_dim and model class come from the checkpoint (a checkpoint in the handout's own
format records neither: give --task and --latent_dim). The model is called only the handout's
way (contract.py): forward for reconstructions, decode(z, label) for samples. Writes into
--save_dir (default outputs/<task>/; the layout is in outputs.py):
    recon/recon_{i}.png      reconstruction of image i of the split (8-bit grey)
    gen/{label}/{k}.png      decode(z ~ N(0, I), label): 10 per label (VAE0label) or 100 (Genwithlabel)
    hyperparams.json         the checkpoint's settings plus what this run read (split, checksum)
    recon.png, samples.png   originals above reconstructions; a sample grid, one row per label
    interpolation.png, latent_map.png, loss_curve.png   extras, each skipped with a note if it fails
    (--no-pictures: none of these pictures, only what grade.py reads)
The folder is replaced whole only when everything is written, and only if it is new, empty or an
earlier output of inference.py holding nothing else.
"""
import argparse
import hashlib
import shutil
import signal
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while the imports below load stops at once, without a traceback (run_cli)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import numpy as np
import torch

import contract
import outputs
import pictures
from data_utils import (NUM_CLASSES, BooleanFlag, LabError, MNISTDataset, ensure_writable_folder, resolve_split,
                        run_cli, set_random_seed, to_uint8, progress)
from tasks import TASK_RECORDS, canonical_task, default_checkpoint, default_output_dir
from checkpoint import load_checkpoint, model_from_checkpoint, newest_run_checkpoint
from hardware import pick_device


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=None,
                        help="VAE0label or Genwithlabel; picks checkpoints/<task>/default.pth when no "
                             "--checkpoint_path is given, and must match the checkpoint otherwise")
    parser.add_argument("--checkpoint_path", type=Path, default=None,
                        help="a .pth file, or a run folder (its newest checkpoint)")
    parser.add_argument("--latent_dim", type=int, default=None,
                        help="only for a checkpoint in the handout's format, which does not record it; otherwise "
                             "an optional check against the checkpoint's own value")
    parser.add_argument("--save_dir", type=Path, default=None, help="output folder (default outputs/<task>)")
    parser.add_argument("--data_path", default="valid",
                        help="split to reconstruct: valid (default), test, train, or an .npz path")
    parser.add_argument("--inf_num", type=int, default=0, help="reconstruct the first N images only (0: all)")
    parser.add_argument("--batch_size", type=int, default=1000,
                        help="images per forward call while reconstructing (default %(default)s); lower it if "
                             "memory is short")
    parser.add_argument("--seed", type=int, default=42, help="seed of the z ~ N(0, I) draws (default %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu; the default), or a torch device such as cpu")
    parser.add_argument("--pictures", action=BooleanFlag, default=True,
                        help="also draw recon.png, samples.png, interpolation.png and latent_map.png (default "
                             "True); --no-pictures writes only what grade.py reads, a second sooner")
    return parser.parse_args(argv)


def resolve_checkpoint(path, task):
    if path is None:
        return default_checkpoint(canonical_task(task or "VAE0label"))
    return newest_run_checkpoint(path) if path.is_dir() else path


@torch.no_grad()
def reconstruct(model, data: MNISTDataset, batch_size: int, latent_dim: int, device):
    """(uint8 reconstructions [N,28,28], posterior means [N, latent_dim]) through forward."""
    recon, codes = [], []
    for images, labels in progress(data.batches(batch_size), total=-(-len(data) // batch_size), desc="reconstruct"):
        images, mu, _ = contract.reconstruct(model, images.to(device), labels.to(device), latent_dim)
        recon.append(to_uint8(images))
        codes.append(mu.float().cpu())
    return np.concatenate(recon), torch.cat(codes)


@torch.no_grad()
def generate(decoder: contract.Decoder, latent_dim: int, per_label: int, seed: int, device) -> np.ndarray:
    """uint8 [10, per_label, 28, 28]: row c is decode(z ~ N(0, I), c)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label in progress(range(NUM_CLASSES), desc="generate"):
        z = torch.randn(per_label, latent_dim, generator=generator).to(device)
        rows.append(to_uint8(decoder(z, torch.full((per_label,), label, device=device))))
    return np.stack(rows)


def main(argv=None):
    args = parse_args(argv)
    checkpoint_path = resolve_checkpoint(args.checkpoint_path, args.task)
    flag_task = canonical_task(args.task) if args.task is not None else None
    checkpoint = load_checkpoint(checkpoint_path, handout_task=flag_task, handout_latent_dim=args.latent_dim)
    task = checkpoint["task"]
    if flag_task is not None and flag_task != task:
        raise LabError(f"--task {args.task} contradicts {checkpoint_path}, which was trained for {task}: "
                       f"drop --task or pass a {flag_task} checkpoint")
    latent_dim = checkpoint["model_kwargs"]["latent_dim"]
    if args.latent_dim is not None and args.latent_dim != latent_dim:
        raise LabError(f"--latent_dim {args.latent_dim} contradicts {checkpoint_path}, trained with latent_dim "
                       f"{latent_dim}: drop --latent_dim (it is read from the checkpoint)")
    if checkpoint["hyperparams"].get("handout_format"):
        print(f"note: {checkpoint_path} is in the handout's format; task {task} and latent_dim {latent_dim} "
              f"come from the flags")
    if args.inf_num < 0 or args.batch_size < 1:
        raise LabError("--inf_num must be >= 0 and --batch_size >= 1")

    set_random_seed(args.seed)
    device = pick_device(args.device)
    model = model_from_checkpoint(checkpoint, checkpoint_path).to(device).eval()
    data = MNISTDataset(args.data_path, limit=args.inf_num or None)
    data_file = resolve_split(args.data_path)
    save_dir = args.save_dir or default_output_dir(task)
    ensure_writable_folder(save_dir.parent, "--save_dir")  # now, not after minutes of reconstruction
    outputs.check_replaceable(save_dir)
    print(f"{task}: {checkpoint['model']} latent_dim={latent_dim} from {checkpoint_path}; "
          f"reconstructing {len(data)} images of {data_file} into {save_dir}")

    recon, codes = reconstruct(model, data, args.batch_size, latent_dim, device)
    decoder = contract.Decoder(model, latent_dim)
    print(f"generating with {decoder.note}")
    if decoder.warning:
        print(f"warning: {decoder.warning}")
    per_label = TASK_RECORDS[task].samples_per_label
    samples = generate(decoder, latent_dim, per_label, args.seed, device)
    info = dict(checkpoint["hyperparams"], task=task, latent_dim=latent_dim, model=checkpoint["model"],
                checkpoint_path=str(checkpoint_path), data_path=str(data_file),
                data_sha256=hashlib.sha256(data_file.read_bytes()).hexdigest(),
                num_images=len(data), samples_per_label=per_label, inference_seed=args.seed)

    partial = save_dir.parent / f".{save_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        save_dir.parent.mkdir(parents=True, exist_ok=True)
        outputs.write(partial, recon, samples, info, progress=lambda items: progress(items, desc="write PNGs"))
        written = (pictures.write_pictures(partial, data, recon, samples, codes, decoder, task, checkpoint_path)
                   if args.pictures else ["none, --no-pictures"])
        outputs.replace_folder(partial, save_dir)
    except BaseException as error:
        # Whatever stopped the write (disk full, Ctrl-C, an error), leave no half-written folder.
        shutil.rmtree(partial, ignore_errors=True)
        if not isinstance(error, OSError):
            raise
        raise LabError(f"cannot write outputs into {save_dir.parent} ({error.strerror}): "
                       f"pass a writable --save_dir") from None
    print(f"wrote {len(recon)} reconstructions and {samples.shape[0]}x{samples.shape[1]} samples to {save_dir} "
          f"(pictures: {', '.join(written)}); grade with: python grade.py --{task}_output_dir {save_dir}")


if __name__ == "__main__":
    run_cli(main)
