"""Trainer: Adam on vae_loss, periodic validation, checkpoints, loss curve, resume.

Also the one definition of the checkpoint format. A checkpoint is a plain dict of tensors,
numbers, strings and lists (so it loads with torch.load(weights_only=True)):

    format              CHECKPOINT_FORMAT
    task                "VAE0label" | "Genwithlabel"
    model               a key of tasks.MODEL_CLASSES, e.g. "submission.GenModel"
    model_kwargs        {"latent_dim": 8}: with `model`, enough to rebuild the network
    hyperparams         every training setting (also written to hyperparams.json)
    epoch, step         completed epochs; optimiser steps taken
    batch_in_epoch      batches of `epoch + 1` already done (non-zero only after an interrupt)
    model_state_dict
    optimizer_state_dict, rng_state, train_losses, valid_losses   (run checkpoints only)

A run NAME of task T writes checkpoints/T/NAME/epoch_{N}.pth (the newest `keep_last` kept),
hyperparams.json and loss_curve.png there, and when it finishes, the model alone (no
optimiser state, a few MB) as checkpoints/T/NAME.pth.
"""
import dataclasses
import io
import math
import pickle
import random
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import contract
from data_utils import ROOT, LabError, atomic_torch_save, atomic_write_bytes, atomic_write_json
from submission import vae_loss
from tasks import TASKS, build_model

CHECKPOINT_FORMAT = 1
# What every checkpoint (exported model or run checkpoint) must hold for the scripts to use it.
REQUIRED_KEYS = ("task", "model", "model_kwargs", "hyperparams", "epoch", "step", "batch_in_epoch",
                 "model_state_dict")


@dataclass
class TrainConfig:
    """Every training setting; train.py makes one flag per field, with these defaults."""
    task: str = "VAE0label"
    model: str = "submission.VAE"
    latent_dim: int = 8
    batch_size: int = 128
    epochs: int = 14
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    var: float = 0.01
    pred_step: int = 200
    eval_num: int = 5000
    seed: int = 42
    keep_last: int = 5
    device: str = "auto"
    precision: str = "auto"
    save_dir: str = "checkpoints/VAE0label/run"
    train_data: str = "train"
    valid_data: str = "valid"

    def check(self) -> None:
        """Refuse settings that cannot train, with the fix in the message."""
        limits = {  # field: (lowest, highest, why)
            "latent_dim": (1, 784, "a code longer than the 784 pixels compresses nothing"),
            "batch_size": (1, 65536, ""),
            "epochs": (1, 100_000, ""),
            "lr": (1e-8, 1.0, ""),
            "var": (1e-6, 100.0, "the decoder variance of vae_loss"),
            "pred_step": (0, 10**9, "0 turns validation off"),
            "eval_num": (0, 10**9, "0 validates on the whole split"),
            "keep_last": (1, 10**6, ""),
        }
        for name, (low, high, why) in limits.items():
            value = getattr(self, name)
            if not (low <= value <= high) or value != value:
                raise LabError(f"--{name} {value} is out of range: use a value in [{low:g}, {high:g}]"
                               + (f" ({why})" if why else ""))
        if self.lr_schedule not in ("constant", "cosine"):
            raise LabError(f"--lr_schedule {self.lr_schedule}: choose constant or cosine")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise LabError(f"--precision {self.precision}: choose auto, fp32 or bf16")


def pick_device(name: str) -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise LabError(f"--device {name} is not a torch device: use auto, cpu, cuda, cuda:0 or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LabError(f"--device {name}: this machine has no CUDA GPU; use --device auto or cpu")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise LabError(f"--device {name}: MPS is not available here; use --device auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_autocast_dtype(precision: str, device: torch.device):
    """bf16 autocast where the hardware has fast bf16 (AVX512-BF16/AMX CPUs, recent GPUs);
    elsewhere bf16 is emulated and slower than fp32, so 'auto' falls back to fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        fast = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        fast = fast or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if fast else None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


# ---------------------------------------------------------------- checkpoint format
def load_checkpoint(path, handout_task=None, handout_latent_dim=None) -> dict:
    """Load a checkpoint safely (weights_only: no pickled code runs) and check its fields.

    A checkpoint in the handout's format ({epoch, model_state_dict, optimizer_state_dict}) does
    not say what it is: it is accepted when the caller knows the task and latent_dim (flags)."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"checkpoint {path} not found: train one with train.py or pass --checkpoint_path")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; we report below
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a paragraph; the line naming what was refused is the useful one
        lines = [line.strip() for line in str(error).splitlines()]
        detail = next((line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")),
                      "an object outside tensors, numbers, strings and containers")
        raise LabError(f"refused to load {path}: it needs arbitrary pickled code to load, which could run "
                       f"anything ({detail[:120]}); only load checkpoints written by this lab's trainer") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, IndexError, ... on damaged files
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise LabError(f"{path} is truncated or corrupt ({detail[:120]}): "
                       f"use another checkpoint or retrain") from None
    if isinstance(checkpoint, dict) and "format" not in checkpoint and "model_state_dict" in checkpoint:
        checkpoint = from_handout_format(checkpoint, path, handout_task, handout_latent_dim)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise LabError(f"{path} is not a checkpoint of this lab (no format {CHECKPOINT_FORMAT} header): "
                       f"train one with train.py")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise LabError(f"{path} lacks {', '.join(missing)}, so it is damaged or hand-made: "
                       f"use a checkpoint written by train.py")
    if checkpoint["task"] not in TASKS:
        raise LabError(f"{path} was trained for an unknown task {checkpoint['task']!r}: "
                       f"expected one of {', '.join(TASKS)}")
    return checkpoint



def from_handout_format(raw: dict, path, task, latent_dim) -> dict:
    """The handout's {epoch, model_state_dict, optimizer_state_dict} as a checkpoint of this lab,
    for submission.py's model of `task` built with `latent_dim` (neither is recorded in the file)."""
    if task is None or latent_dim is None:
        raise LabError(f"{path} is a checkpoint in the handout's format, which does not record the task or "
                       f"latent_dim: pass --task and --latent_dim (the values it was trained with)")
    from tasks import MODEL_FOR_TASK
    epoch = raw.get("epoch", 0)
    return {"format": CHECKPOINT_FORMAT, "task": task, "model": MODEL_FOR_TASK["submission"][task],
            "model_kwargs": {"latent_dim": latent_dim},
            "hyperparams": {"latent_dim": latent_dim, "epochs": epoch, "handout_format": True,
                            "note": "a handout-format checkpoint: task and latent_dim come from the flags"},
            "epoch": epoch if isinstance(epoch, int) else 0, "step": 0, "batch_in_epoch": 0,
            "model_state_dict": raw["model_state_dict"]}

def model_from_checkpoint(checkpoint: dict, path="checkpoint"):
    """Rebuild the network a checkpoint names and load its weights."""
    try:
        model = build_model(checkpoint["model"], **checkpoint["model_kwargs"])
    except LabError as error:  # a class outside tasks.MODEL_CLASSES
        raise LabError(f"{path}: {error}") from None
    except TypeError as error:  # model_kwargs the class does not take
        raise LabError(f"{path} asks for {checkpoint['model']}({checkpoint['model_kwargs']}), which the code "
                       f"cannot build ({error}): retrain, or restore the code it was trained with") from None
    try:
        model.load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError as error:
        detail = str(error).splitlines()[0][:150]
        raise LabError(f"{path} does not fit {checkpoint['model']}({checkpoint['model_kwargs']}) as the code "
                       f"defines it now ({detail}): retrain, or restore the code it was trained with") from None
    return model


def newest_run_checkpoint(run_dir) -> Path:
    """The resumable checkpoint of a run folder with the most optimiser steps."""
    run_dir = Path(run_dir)
    candidates = [run_dir / "interrupted.pth"] + sorted(run_dir.glob("epoch_*.pth"), key=epoch_number)[-1:]
    steps = {}
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            steps[candidate] = load_checkpoint(candidate)["step"]
        except LabError as error:  # a damaged file must not hide the good one beside it
            print(f"skipping {error}", file=sys.stderr)
    if not steps:
        raise LabError(f"no usable checkpoint to resume in {run_dir}: train without --load_from_checkpoint "
                       f"first, or pass --checkpoint PATH")
    return max(steps, key=steps.get)


def export_path(run_dir) -> Path:
    """Where a finished run NAME/ leaves its model: NAME.pth beside the run folder."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{run_dir.name}.pth"


def epoch_number(path: Path) -> int:
    match = re.fullmatch(r"epoch_(\d+)\.pth", path.name)
    return int(match.group(1)) if match else -1


class TrainingInterrupted(Exception):
    pass


class Trainer:
    def __init__(self, config: TrainConfig, train_data, valid_data, model=None):
        self.config = config
        self.device = pick_device(config.device)
        self.autocast_dtype = pick_autocast_dtype(config.precision, self.device)
        self.model_kwargs = {"latent_dim": config.latent_dim}
        self.model = (model or build_model(config.model, **self.model_kwargs)).to(self.device)
        self.optimizer = torch.optim.Adam(contract.require_parameters(self.model), lr=config.lr)
        self.train_data, self.valid_data = train_data, valid_data
        self.save_dir = Path(config.save_dir)
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.train_losses, self.valid_losses = [], []  # per step; [step, loss] pairs
        self._stop_signal = None

    # -------------------------------------------------------------- state
    def hyperparams(self) -> dict:
        params = dataclasses.asdict(self.config)
        params["learning_rate"] = params["lr"]  # the handout's key
        # A path inside the lab is recorded relative to it: the file travels with the checkpoint.
        save_dir = Path(params["save_dir"]).resolve()
        if save_dir.is_relative_to(ROOT):
            params["save_dir"] = save_dir.relative_to(ROOT).as_posix()
        params["trainable_parameters"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        params["device"] = str(self.device)
        params["autocast"] = str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "fp32"
        params["train_images"] = len(self.train_data) if self.train_data is not None else None
        return params

    def checkpoint(self, with_training_state=True) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "task": self.config.task,
            "model": self.config.model,
            "model_kwargs": self.model_kwargs,
            "hyperparams": self.hyperparams(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "model_state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }
        if with_training_state:
            state["optimizer_state_dict"] = self.optimizer.state_dict()
            state["train_losses"] = list(self.train_losses)
            state["valid_losses"] = [list(pair) for pair in self.valid_losses]
            state["rng_state"] = {
                "torch": torch.get_rng_state(),
                "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                "numpy_pos": int(np.random.get_state()[2]),
                "python": list(random.getstate()[1]),
            }
            # The sampling noise of the reparameterisation comes from the device's own generator.
            if self.device.type == "cuda":
                state["rng_state"]["cuda"] = torch.cuda.get_rng_state(self.device)
            elif self.device.type == "mps":
                state["rng_state"]["mps"] = torch.mps.get_rng_state()
        return state

    def resume(self, path) -> None:
        checkpoint = load_checkpoint(path)
        if "optimizer_state_dict" not in checkpoint:
            raise LabError(f"{path} holds only model weights (an exported model), not a training state: "
                           f"resume from an epoch_N.pth of its run folder")
        for key, mine in (("task", self.config.task), ("model", self.config.model),
                          ("model_kwargs", self.model_kwargs)):
            if checkpoint[key] != mine:
                raise LabError(f"cannot resume from {path}: it was trained with {key}={checkpoint[key]}, "
                               f"this run has {key}={mine}; use the same settings or a new --save_dir")
        if checkpoint["batch_in_epoch"]:
            # Mid-epoch, the rest of the epoch is the tail of a shuffle fixed by seed, batch size and
            # the training images (their number: --limit; their file: --train_data).
            now = self.hyperparams()
            for key, flag in (("batch_size", "--batch_size"), ("seed", "--seed"),
                              ("train_data", "--train_data"), ("train_images", "--limit")):
                if checkpoint["hyperparams"].get(key) != now[key]:
                    raise LabError(f"cannot resume {path} mid-epoch with {flag} {now[key]}: it was trained with "
                                   f"{checkpoint['hyperparams'].get(key)}; use the same value")
        self.model.load_state_dict(model_from_checkpoint(checkpoint, path).state_dict())
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.batch_in_epoch = checkpoint["batch_in_epoch"]
        self.train_losses = list(checkpoint["train_losses"])
        self.valid_losses = [tuple(pair) for pair in checkpoint["valid_losses"]]
        rng = checkpoint["rng_state"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"]))
        random.setstate((3, tuple(rng["python"]), None))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        elif "mps" in rng and self.device.type == "mps":
            torch.mps.set_rng_state(rng["mps"])
        print(f"resumed from {path}: epoch {self.epoch} done, step {self.step}"
              + (f", {self.batch_in_epoch} batches into epoch {self.epoch + 1}" if self.batch_in_epoch else ""))

    # -------------------------------------------------------------- steps
    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of step `step` (0-based): a pure function of the step, so a
        resumed run needs no scheduler state. Cosine decays to 1/20 of --lr at the last step."""
        if self.config.lr_schedule == "constant":
            return self.config.lr
        progress = min(step / max(total_steps - 1, 1), 1.0)
        return self.config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    def epoch_order(self, epoch: int) -> torch.Tensor:
        # The shuffle of each epoch depends only on (seed, epoch), so a resumed run
        # replays exactly the batches an uninterrupted one would.
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.train_data), generator=generator)

    def loss_on(self, images, labels):
        images, labels = images.to(self.device), labels.to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            recon_x, mu, log_var = contract.forward(self.model, images, labels, self.config.latent_dim)
        # The loss itself in fp32: it sums 784 squared errors per image.
        return contract.loss(vae_loss, recon_x.float(), images, mu.float(), log_var.float(), var=self.config.var)

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        total, count = 0.0, 0
        data = self.valid_data
        num = min(self.config.eval_num, len(data)) if self.config.eval_num > 0 else len(data)
        for start in range(0, num, 1024):
            stop = min(start + 1024, num)
            images, labels = data.images[start:stop], data.labels[start:stop]
            total += self.loss_on(images, labels).item() * (stop - start)
            count += stop - start
        self.model.train()
        return total / count

    # -------------------------------------------------------------- files
    def save_epoch_checkpoint(self) -> Path:
        path = self.save_dir / f"epoch_{self.epoch}.pth"
        atomic_torch_save(self.checkpoint(), path)
        # Prune only after the new file is in place, oldest first, never the file just written.
        # Epoch files numbered above this one are leftovers of an earlier run in the same folder:
        # sorting them among ours would prune our newest (and resume would pick theirs).
        ours = [p for p in self.save_dir.glob("epoch_*.pth") if epoch_number(p) <= self.epoch]
        leftovers = [p for p in self.save_dir.glob("epoch_*.pth") if epoch_number(p) > self.epoch]
        old = sorted(ours, key=epoch_number)[:-max(self.config.keep_last, 1)]
        for stale in old + leftovers + [self.save_dir / "interrupted.pth"]:
            if stale != path:
                stale.unlink(missing_ok=True)
        return path

    def save_loss_plot(self, show=False) -> Path:
        # A bare Figure draws without pyplot, so saving never picks (or locks in) a GUI backend;
        # pyplot is imported only to show the figure in a window.
        from matplotlib.figure import Figure
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        ax.plot(range(1, len(self.train_losses) + 1), self.train_losses, lw=0.6, alpha=0.7, label="train (per step)")
        if self.valid_losses:
            steps, losses = zip(*self.valid_losses)
            ax.plot(steps, losses, "o-", ms=3, label="validation (posterior mean)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss per image (negative ELBO + const)")
        ax.set_yscale("log")
        ax.set_title(f"{self.config.task}, latent_dim {self.config.latent_dim}")
        ax.legend()
        fig.tight_layout()
        path = self.save_dir / "loss_curve.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        atomic_write_bytes(path, buffer.getvalue())
        if show:
            import matplotlib.pyplot as plt
            image = plt.imread(io.BytesIO(buffer.getvalue()))
            plt.figure(figsize=(7, 4))
            plt.imshow(image)
            plt.axis("off")
            plt.show()
        return path

    # -------------------------------------------------------------- the loop
    def _request_stop(self, signum, frame):
        self._stop_signal = signal.Signals(signum).name

    def train(self, save_loss_plot=True, show_loss_plot=False):
        """Train until `epochs` epochs are done; return (train_losses, valid_losses)."""
        config = self.config
        batches_per_epoch = math.ceil(len(self.train_data) / config.batch_size)
        # Handlers first: from the moment the run folder appears, a signal means "save and stop".
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.perf_counter()
        images_seen = 0
        try:
            atomic_write_json(self.save_dir / "hyperparams.json", self.hyperparams())
            self.model.train()
            while self.epoch < config.epochs:
                epoch = self.epoch + 1
                order = self.epoch_order(epoch)
                bar = tqdm(range(self.batch_in_epoch, batches_per_epoch), desc=f"epoch {epoch}/{config.epochs}",
                           initial=self.batch_in_epoch, total=batches_per_epoch, leave=True, dynamic_ncols=True)
                for batch in bar:
                    index = order[batch * config.batch_size:(batch + 1) * config.batch_size]
                    loss = self.loss_on(self.train_data.images[index], self.train_data.labels[index])
                    if not torch.isfinite(loss):
                        raise LabError(f"the loss became {loss.item()} at step {self.step + 1} (epoch {epoch}): "
                                       f"lower --lr or raise --var; the last good checkpoint in {self.save_dir} "
                                       f"is kept")
                    for group in self.optimizer.param_groups:
                        group["lr"] = self.lr_at(self.step, batches_per_epoch * config.epochs)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    self.step += 1
                    self.batch_in_epoch = batch + 1
                    images_seen += len(index)
                    self.train_losses.append(loss.item())
                    if config.pred_step > 0 and self.step % config.pred_step == 0:
                        self.valid_losses.append((self.step, self.validate()))
                    postfix = {"loss": f"{loss.item():.2f}"}
                    if self.valid_losses:
                        postfix["valid"] = f"{self.valid_losses[-1][1]:.2f}"
                    bar.set_postfix(postfix)
                    if self._stop_signal:
                        bar.close()
                        path = self.save_dir / "interrupted.pth"
                        atomic_torch_save(self.checkpoint(), path)
                        raise TrainingInterrupted(
                            f"{self._stop_signal}: saved {path} (step {self.step}); resume with the same "
                            f"command plus --load_from_checkpoint")
                bar.close()
                # The last step of an epoch can turn the weights to NaN with a finite loss; checking
                # here keeps such weights out of the epoch checkpoint that replaces the last good one.
                if not all(torch.isfinite(p).all() for p in self.model.parameters()):
                    raise LabError(f"the weights became non-finite at step {self.step} (end of epoch {epoch}): "
                                   f"lower --lr or raise --var; the last good checkpoint in {self.save_dir} "
                                   f"is kept")
                self.epoch, self.batch_in_epoch = epoch, 0
                path = self.save_epoch_checkpoint()
                if save_loss_plot:
                    self.save_loss_plot()
                seconds = time.perf_counter() - started
                tqdm.write(f"epoch {epoch}: train loss {np.mean(self.train_losses[-batches_per_epoch:]):.2f}"
                           + (f", valid loss {self.valid_losses[-1][1]:.2f}" if self.valid_losses else "")
                           + f", {images_seen / seconds:,.0f} images/s (average of this run so far), saved {path}")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        export = export_path(self.save_dir)
        atomic_torch_save(self.checkpoint(with_training_state=False), export)
        print(f"model saved to {export}")
        if show_loss_plot:
            self.save_loss_plot(show=True)
        return self.train_losses, self.valid_losses
