"""The autograder's phase scripts: copied into each student's lab copy as autograde_phases.py and run
there, one phase per sandboxed process (tools/autograde.py starts them). A phase does its work for
every task given to it, one after another, in WORK/<task>/:

    python autograde_phases.py contract    --out WORK [--latent_dim TASK=N ...]
    python autograde_phases.py train       --task TASK=N ... --out WORK [train.py's flags]
    python autograde_phases.py reconstruct --checkpoint TASK=C ... --data SPLIT --num N --out WORK
    python autograde_phases.py decode      --checkpoint TASK=C ... --inputs IN --out WORK
    python autograde_phases.py generate    --checkpoint TASK=C ... --per_label K --seed S --out WORK

A task whose work fails writes its one-line error to WORK/<task>/error.txt and the next task still
runs; a task that finished writes WORK/<task>/done. Student code is called only through train.py and
contract.py (build, forward, Decoder). Each phase writes into WORK and nothing else; the grader checks
every array itself and trusts nothing more.
"""
import argparse
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contract  # noqa: E402
from data_utils import NUM_CLASSES, LabError, MNISTDataset, to_uint8  # noqa: E402


def _model(checkpoint_path):
    from checkpoint import load_checkpoint, model_from_checkpoint
    checkpoint = load_checkpoint(checkpoint_path)
    latent_dim = checkpoint["model_kwargs"]["latent_dim"]
    return model_from_checkpoint(checkpoint, checkpoint_path).eval(), latent_dim


def _save(path: Path, array: np.ndarray):
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _pairs(items, what):
    """['VAE0label=8', ...] -> [('VAE0label', '8'), ...]"""
    pairs = [item.partition("=")[::2] for item in items]
    if not pairs or any(not task or not value for task, value in pairs):
        raise LabError(f"expected one or more TASK={what}, got {items}")
    return pairs


def for_each_task(pairs, out, work):
    """work(task, value, folder) for each (task, value) in turn, in folder = out/<task>. A task that raises
    gets error.txt (its one-line error; the traceback goes to the log) and the next task still runs."""
    for task, value in pairs:
        folder = Path(out) / task
        folder.mkdir(parents=True, exist_ok=True)
        try:
            work(task, value, folder)
        except Exception as error:
            traceback.print_exc()
            (folder / "error.txt").write_text(str(error) if isinstance(error, LabError) else contract.one_line(error))
        except SystemExit as error:  # train.py's argument parser; its message is in the log
            (folder / "error.txt").write_text(f"exited with status {error.code}")
        else:
            (folder / "done").write_text("")


def contract_phase(args, _):
    """contract.main: import, then contract.check for each task; writes contract.json."""
    argv = ["--json", str(Path(args.out) / "contract.json")]
    argv += [f"--latent_dim={item}" for item in args.latent_dim]
    return contract.main(argv)


def train_phase(args, train_flags):
    """The lab's train.py for each task, in this process: the run in <task>/run, the model in <task>/run.pth."""
    import train

    def work(task, latent_dim, folder):
        train.main(["--task", task, "--latent_dim", latent_dim, "--save_dir", str(folder / "run"), *train_flags])
    for_each_task(_pairs(args.task, "N"), args.out, work)


@torch.no_grad()
def reconstruct_phase(args, _):
    """recon.npy uint8 [N,28,28] from forward (the handout's way) and codes.npy float32 [N, D], its mu."""
    def work(task, checkpoint, folder):
        model, latent_dim = _model(checkpoint)
        data = MNISTDataset(args.data, limit=args.num or None)
        recon, codes = [], []
        for images, labels in data.batches(args.batch_size):
            images, mu, _ = contract.reconstruct(model, images, labels, latent_dim)
            recon.append(to_uint8(images))
            codes.append(mu.float().cpu().numpy())
        _save(folder / "recon.npy", np.concatenate(recon))
        _save(folder / "codes.npy", np.concatenate(codes).astype(np.float32))
        print(f"{task}: reconstructed {len(data)} images (latent_dim {latent_dim})")
    for_each_task(_pairs(args.checkpoint, "CHECKPOINT"), args.out, work)


@torch.no_grad()
def decode_phase(args, _):
    """verified.npy uint8 [N,28,28] = decode(codes, labels), from IN/<task>/codes.npy and labels.npy,
    which the grader wrote."""
    def work(task, checkpoint, folder):
        model, latent_dim = _model(checkpoint)
        inputs = Path(args.inputs) / task
        codes = torch.from_numpy(np.load(inputs / "codes.npy", allow_pickle=False)).float()
        labels = torch.from_numpy(np.load(inputs / "labels.npy", allow_pickle=False)).long()
        decoder = contract.Decoder(model, latent_dim)
        print(f"{task}: decoding {len(codes)} codes with {decoder.note}")
        out = [to_uint8(decoder(codes[i:i + args.batch_size], labels[i:i + args.batch_size]))
               for i in range(0, len(codes), args.batch_size)]
        _save(folder / "verified.npy", np.concatenate(out))
    for_each_task(_pairs(args.checkpoint, "CHECKPOINT"), args.out, work)


@torch.no_grad()
def generate_phase(args, _):
    """samples.npy uint8 [10, K, 28, 28]: row c is decode(z ~ N(0, I), c), seeded."""
    def work(task, checkpoint, folder):
        model, latent_dim = _model(checkpoint)
        torch.manual_seed(args.seed)
        decoder = contract.Decoder(model, latent_dim)
        print(f"{task}: generating {args.per_label} per label with {decoder.note}")
        generator = torch.Generator().manual_seed(args.seed)
        rows = []
        for label in range(NUM_CLASSES):
            z = torch.randn(args.per_label, latent_dim, generator=generator)
            rows.append(to_uint8(decoder(z, torch.full((args.per_label,), label, dtype=torch.long))))
        _save(folder / "samples.npy", np.stack(rows))
    for_each_task(_pairs(args.checkpoint, "CHECKPOINT"), args.out, work)


PHASES = {"contract": contract_phase, "train": train_phase, "reconstruct": reconstruct_phase,
          "decode": decode_phase, "generate": generate_phase}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    phases = parser.add_subparsers(dest="phase", required=True)
    p = phases.add_parser("contract")
    p.add_argument("--out", required=True)
    p.add_argument("--latent_dim", action="append", default=[])
    p = phases.add_parser("train", help="any other flag is passed to train.py", allow_abbrev=False)
    p.add_argument("--out", required=True)
    p.add_argument("--task", action="append", default=[], help="TASK=latent_dim")
    for name in ("reconstruct", "decode", "generate"):
        p = phases.add_parser(name)
        p.add_argument("--checkpoint", action="append", default=[], help="TASK=path")
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
    args, rest = parser.parse_known_args(argv)
    if rest and args.phase != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    torch.manual_seed(getattr(args, "seed", 0))
    return PHASES[args.phase](args, rest) or 0


if __name__ == "__main__":
    from data_utils import run_cli
    code = 0

    def _main():
        global code
        code = main()
    run_cli(_main)
    sys.exit(code)
