"""The autograder's phase scripts: copied into each student's lab copy as autograde_inside.py and run
there, one phase per sandboxed process (tools/autograde.py starts them). A phase does its work for
every task given to it, one after another, in WORK/<task>/:

    python autograde_inside.py contract    --out WORK [--latent_dim TASK=N ...] [--checkpoint TASK=C ...]
    python autograde_inside.py train       --task TASK=N ... --out WORK [train.py's flags]
    python autograde_inside.py reconstruct --checkpoint TASK=C --latent_dim TASK=N ... --data SPLIT --num N --out WORK
    python autograde_inside.py decode      --checkpoint TASK=C --latent_dim TASK=N ... --inputs IN --out WORK

Every checkpoint is loaded here, inside the sandbox, by inspect_checkpoint, never by the grader.

A task whose work fails writes its one-line error to WORK/<task>/error.txt and the next task still
runs; a task that finished writes WORK/<task>/done. Student code is called only through train.py and
contract.py (build, forward, Decoder). Each phase writes into WORK and nothing else; the grader checks
every array itself and trusts nothing more.
"""
import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contract  # noqa: E402
from data_utils import LabError, MNISTDataset, to_uint8  # noqa: E402

MAX_INFLATED_BYTES = 1 << 30  # a checkpoint's tensors, uncompressed (the shipped models: 7 MB)
BUFFER_ALLOWANCE = 100_000    # numbers a model may keep beyond its trainable parameters, whatever their count


def inspect_checkpoint(path, task: str, latent_dim: int = None):
    """(model in eval mode, latent_dim, facts) for a checkpoint handed in or trained here, checked inside
    the sandbox, whose memory limit bounds what loading it costs (the grader never loads one): the
    uncompressed sizes in its zip directory before anything is inflated; weights_only loading; a
    `task` checkpoint of submission.py's class with {"latent_dim": N} (N = latent_dim when the grader
    knows it); exactly the tensors cls(latent_dim=N) creates, same names, shapes and dtypes; and buffers
    (tensors that are not trainable parameters) no larger than the trainable parameters, so that a
    class cannot carry a data set in a buffer it sizes itself."""
    import zipfile
    from checkpoint import load_checkpoint
    from tasks import LATENT_RANGE, MODEL_FOR_TASK
    label = f"checkpoints/{task}.pth"
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        inflated = 0  # not a zip: torch's legacy format, which load_checkpoint refuses or reads as it is
    if inflated > MAX_INFLATED_BYTES:
        raise LabError(f"{label} inflates to {inflated:,} bytes (at most {MAX_INFLATED_BYTES:,})")
    try:
        checkpoint = load_checkpoint(path)
    except LabError as error:
        raise LabError(str(error).replace(str(path), label)) from None
    if checkpoint["task"] != task:
        raise LabError(f"{label} is a {checkpoint['task']} checkpoint, not {task}")
    if checkpoint["model"] != MODEL_FOR_TASK["submission"][task]:
        raise LabError(f"{label} holds a {checkpoint['model']} model, not {MODEL_FOR_TASK['submission'][task]}")
    kwargs = checkpoint["model_kwargs"]
    found = kwargs.get("latent_dim") if isinstance(kwargs, dict) else None
    if not isinstance(kwargs, dict) or set(kwargs) != {"latent_dim"} or type(found) is not int \
            or not LATENT_RANGE[0] <= found <= LATENT_RANGE[1]:
        raise LabError(f"{label} has model_kwargs {kwargs!r}, expected {{'latent_dim': N}} with 1 <= N <= 784")
    if latent_dim is not None and found != latent_dim:
        raise LabError(f"{label} has latent_dim {found}, not {latent_dim}")
    model = contract.build(contract.model_class(importlib.import_module("submission"), task), found)
    expected = model.state_dict()
    given = checkpoint["model_state_dict"]
    if not isinstance(given, dict) or set(given) != set(expected):
        extra, missing = sorted(set(given) - set(expected))[:3], sorted(set(expected) - set(given))[:3]
        raise LabError(f"{label} does not hold the tensors {type(model).__name__}(latent_dim={found}) creates "
                       f"(extra: {extra}, missing: {missing})")
    for name, tensor in expected.items():
        if not isinstance(given[name], torch.Tensor) or given[name].shape != tensor.shape \
                or given[name].dtype != tensor.dtype:
            raise LabError(f"{label}: {name} is {getattr(given[name], 'dtype', '?')} "
                           f"{list(getattr(given[name], 'shape', []))}, {type(model).__name__} creates "
                           f"{tensor.dtype} {list(tensor.shape)}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    held = sum(t.numel() for t in expected.values()) - trainable
    if held > max(trainable, BUFFER_ALLOWANCE):
        raise LabError(f"{label}: {type(model).__name__} keeps {held:,} numbers beyond its {trainable:,} trainable "
                       f"parameters (at most as many as those); a data set does not belong in a model")
    model.load_state_dict(given)
    hyperparams = checkpoint["hyperparams"] if isinstance(checkpoint["hyperparams"], dict) else {}
    precision = str(hyperparams.get("autocast", "?"))[:8]
    facts = {"latent_dim": found, "trainable_parameters": trainable,
             "precision": f"{precision} (bf16 failed)" if hyperparams.get("autocast_fallback") else precision}
    return model.eval(), found, facts


def _save(path: Path, array: np.ndarray):
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _latent_dim(args, task: str) -> int:
    """The latent_dim the grader expects for `task` (--latent_dim TASK=N)."""
    return int(dict(_pairs(args.latent_dim, "N"))[task])


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
    """The handed-in checkpoints (inspect_checkpoint: their latent_dim, checkpoint.json per task), then
    contract.main: import, and contract.check for each task at its latent_dim; writes contract.json."""
    latent_dims = list(args.latent_dim)
    if args.checkpoint:
        try:
            importlib.import_module("submission")
        except BaseException:  # contract.main reports it
            pass
        else:
            def work(task, path, folder):
                model, latent_dim, facts = inspect_checkpoint(path, task)
                latent_dims.append(f"{task}={latent_dim}")
                # the weights as one vector, for the grader's similar-weights comparison between students
                floats = [t for t in model.state_dict().values() if t.is_floating_point()]
                vector = torch.cat([t.detach().float().flatten() for t in floats]) if floats else torch.zeros(0)
                _save(folder / "weights.npy", vector.numpy())
                facts["weight_shapes"] = [list(t.shape) for t in floats]
                (folder / "checkpoint.json").write_text(json.dumps(facts))
            for_each_task(_pairs(args.checkpoint, "CHECKPOINT"), args.out, work)
    argv = ["--json", str(Path(args.out) / "contract.json"), "--loss_as_warning"]
    argv += [f"--latent_dim={item}" for item in latent_dims]
    return contract.main(argv)


def train_phase(args, train_flags):
    """The lab's train.py for each task, in this process: the run in <task>/run, the model in <task>/run.pth."""
    import train

    def work(task, latent_dim, folder):
        train.main(["--task", task, "--latent_dim", latent_dim, "--save_dir", str(folder / "run"), *train_flags])
    for_each_task(_pairs(args.task, "N"), args.out, work)


@torch.no_grad()
def reconstruct_phase(args, _):
    """recon.npy uint8 [N,28,28] from forward (the handout's way) and codes.npy float32 [N, D], its mu; and
    checkpoint.json, what inspect_checkpoint found."""
    def work(task, checkpoint, folder):
        model, latent_dim, facts = inspect_checkpoint(checkpoint, task, _latent_dim(args, task))
        (folder / "checkpoint.json").write_text(json.dumps(facts))
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
    """decoded.npy uint8 [M,28,28] = decode(codes, labels), from IN/<task>/codes.npy and labels.npy,
    which the grader wrote (codes of grading images, the same codes moved a little, and z ~ N(0, I),
    shuffled together: the grader knows which row is which, this phase does not)."""
    def work(task, checkpoint, folder):
        model, latent_dim, _ = inspect_checkpoint(checkpoint, task, _latent_dim(args, task))
        inputs = Path(args.inputs) / task
        codes = torch.from_numpy(np.load(inputs / "codes.npy", allow_pickle=False)).float()
        labels = torch.from_numpy(np.load(inputs / "labels.npy", allow_pickle=False)).long()
        decoder = contract.Decoder(model, latent_dim)
        print(f"{task}: decoding {len(codes)} codes with {decoder.note}")
        out = [to_uint8(decoder(codes[i:i + args.batch_size], labels[i:i + args.batch_size]))
               for i in range(0, len(codes), args.batch_size)]
        _save(folder / "decoded.npy", np.concatenate(out))
    for_each_task(_pairs(args.checkpoint, "CHECKPOINT"), args.out, work)


PHASES = {"contract": contract_phase, "train": train_phase, "reconstruct": reconstruct_phase,
          "decode": decode_phase}


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    phases = parser.add_subparsers(dest="phase", required=True)
    p = phases.add_parser("contract", allow_abbrev=False)
    p.add_argument("--out", required=True)
    p.add_argument("--latent_dim", action="append", default=[], help="TASK=N for a task without a checkpoint")
    p.add_argument("--checkpoint", action="append", default=[], help="TASK=path of a handed-in checkpoint")
    p = phases.add_parser("train", help="any other flag is passed to train.py", allow_abbrev=False)
    p.add_argument("--out", required=True)
    p.add_argument("--task", action="append", default=[], help="TASK=latent_dim")
    for name in ("reconstruct", "decode"):
        p = phases.add_parser(name, allow_abbrev=False)
        p.add_argument("--checkpoint", action="append", default=[], help="TASK=path")
        p.add_argument("--latent_dim", action="append", default=[], help="TASK=N, the latent_dim expected")
        p.add_argument("--out", required=True)
        p.add_argument("--batch_size", type=int, default=500)
        p.add_argument("--seed", type=int, default=42)
        if name == "reconstruct":
            p.add_argument("--data", required=True)
            p.add_argument("--num", type=int, default=0)
        else:
            p.add_argument("--inputs", required=True)
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
