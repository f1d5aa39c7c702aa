"""The autograder's phase scripts: copied into each student's lab copy as autograde_phases.py and run
there, one phase per sandboxed process (tools/autograde.py starts them).

    python autograde_phases.py contract    --out WORK [--latent_dim TASK=N ...]
    python autograde_phases.py reconstruct --checkpoint C --data SPLIT --num N --out WORK
    python autograde_phases.py decode      --checkpoint C --inputs IN --out WORK
    python autograde_phases.py generate    --checkpoint C --per_label K --seed S --out WORK

Student code is called only through contract.py (build, forward, Decoder). Each phase writes its
result into WORK and nothing else; the grader checks every array itself and trusts nothing more.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contract  # noqa: E402
from data_utils import NUM_CLASSES, MNISTDataset, to_uint8  # noqa: E402


def _model(checkpoint_path):
    from checkpoint import load_checkpoint, model_from_checkpoint
    checkpoint = load_checkpoint(checkpoint_path)
    latent_dim = checkpoint["model_kwargs"]["latent_dim"]
    return model_from_checkpoint(checkpoint, checkpoint_path).eval(), latent_dim


def _save(path: Path, array: np.ndarray):
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def contract_phase(args):
    """contract.main: import, then contract.check for each task; writes contract.json."""
    argv = ["--json", str(Path(args.out) / "contract.json")]
    argv += [f"--latent_dim={item}" for item in args.latent_dim]
    return contract.main(argv)


@torch.no_grad()
def reconstruct_phase(args):
    """recon.npy uint8 [N,28,28] from forward (the handout's way) and codes.npy float32 [N, D], its mu."""
    model, latent_dim = _model(args.checkpoint)
    data = MNISTDataset(args.data, limit=args.num or None)
    recon, codes = [], []
    for images, labels in data.batches(args.batch_size):
        images, mu, _ = contract.reconstruct(model, images, labels, latent_dim)
        recon.append(to_uint8(images))
        codes.append(mu.float().cpu().numpy())
    _save(Path(args.out) / "recon.npy", np.concatenate(recon))
    _save(Path(args.out) / "codes.npy", np.concatenate(codes).astype(np.float32))
    print(f"reconstructed {len(data)} images (latent_dim {latent_dim})")


@torch.no_grad()
def decode_phase(args):
    """verified.npy uint8 [N,28,28] = decode(codes, labels), codes and labels written by the grader."""
    model, latent_dim = _model(args.checkpoint)
    codes = torch.from_numpy(np.load(Path(args.inputs) / "codes.npy", allow_pickle=False)).float()
    labels = torch.from_numpy(np.load(Path(args.inputs) / "labels.npy", allow_pickle=False)).long()
    decoder = contract.Decoder(model, latent_dim)
    print(f"decoding {len(codes)} codes with {decoder.note}")
    out = [to_uint8(decoder(codes[i:i + args.batch_size], labels[i:i + args.batch_size]))
           for i in range(0, len(codes), args.batch_size)]
    _save(Path(args.out) / "verified.npy", np.concatenate(out))


@torch.no_grad()
def generate_phase(args):
    """samples.npy uint8 [10, K, 28, 28]: row c is decode(z ~ N(0, I), c), seeded."""
    model, latent_dim = _model(args.checkpoint)
    torch.manual_seed(args.seed)
    decoder = contract.Decoder(model, latent_dim)
    print(f"generating {args.per_label} per label with {decoder.note}")
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for label in range(NUM_CLASSES):
        z = torch.randn(args.per_label, latent_dim, generator=generator)
        rows.append(to_uint8(decoder(z, torch.full((args.per_label,), label, dtype=torch.long))))
    _save(Path(args.out) / "samples.npy", np.stack(rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    phases = parser.add_subparsers(dest="phase", required=True)
    p = phases.add_parser("contract")
    p.add_argument("--out", required=True)
    p.add_argument("--latent_dim", action="append", default=[])
    for name in ("reconstruct", "decode", "generate"):
        p = phases.add_parser(name)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--batch_size", type=int, default=500)
        p.add_argument("--seed", type=int, default=42)
        if name == "reconstruct":
            p.add_argument("--data", required=True)
            p.add_argument("--num", type=int, default=0)
        elif name == "decode":
            p.add_argument("--inputs", required=True)
        else:
            p.add_argument("--per_label", type=int, required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed if hasattr(args, "seed") else 0)
    return {"contract": contract_phase, "reconstruct": reconstruct_phase, "decode": decode_phase,
            "generate": generate_phase}[args.phase](args) or 0


if __name__ == "__main__":
    from data_utils import run_cli
    code = 0

    def _main():
        global code
        code = main()
    run_cli(_main)
    sys.exit(code)
