"""Trainer: Adam on vae_loss, periodic validation, checkpoints, loss curve, resume.

    trainer = Trainer(TrainConfig(task="VAE0label", epochs=10), train_data, valid_data)
    train_losses, valid_losses = trainer.train()

The model is called only the handout's way (contract.py): `model(x, labels)` and `vae_loss`.
Checkpoints and their format live in checkpoint.py.
"""
import contextlib
import dataclasses
import io
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # tqdm.write; the bars are data_utils.progress

import contract
from checkpoint import (CHECKPOINT_FORMAT, INTERRUPTED, capture_rng, export_path, load_checkpoint,
                        model_from_checkpoint, prune, restore_rng)
from data_utils import ROOT, LabError, atomic_torch_save, atomic_write_bytes, atomic_write_json, progress
from hardware import PRECISIONS, pick_autocast_dtype, pick_device, precision_name
from submission import vae_loss
from tasks import LATENT_RANGE, TASK_RECORDS

# The loss curve of a run in progress is redrawn at most this often (Trainer.end_epoch).
PLOT_EVERY_S = 30.0
@dataclass
class TrainConfig:
    """Every training setting; train.py makes one flag per field, with these defaults."""
    task: str = "VAE0label"
    model: str = "submission.VAE"
    latent_dim: int = 24
    batch_size: int = 256
    epochs: int = 0  # 0: the task's recipe (tasks.py), set by __post_init__
    lr: float = 3e-3
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

    def __post_init__(self):
        if self.epochs == 0 and self.task in TASK_RECORDS:
            self.epochs = TASK_RECORDS[self.task].epochs

    def check(self) -> None:
        """Refuse settings that cannot train, with the fix in the message."""
        limits = {  # field: (lowest, highest, why)
            "latent_dim": (*LATENT_RANGE, "a code longer than the 784 pixels compresses nothing"),
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
        if self.precision not in PRECISIONS:
            raise LabError(f"--precision {self.precision}: choose {', '.join(PRECISIONS)}")


class TrainingInterrupted(Exception):
    pass


class Trainer:
    def __init__(self, config: TrainConfig, train_data, valid_data, model=None):
        self.config = config
        self.device = pick_device(config.device)
        self.autocast_dtype = pick_autocast_dtype(config.precision, self.device)
        self.model_kwargs = {"latent_dim": config.latent_dim}
        self.model = (model or contract.build_model(config.model, **self.model_kwargs)).to(self.device)
        parameters = contract.require_parameters(self.model)
        try:  # the fused Adam: the same update, one kernel for all weights instead of a dozen calls each
            self.optimizer = torch.optim.Adam(parameters, lr=config.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # parameters it does not support (an older torch, a dtype)
            self.optimizer = torch.optim.Adam(parameters, lr=config.lr)
        self.train_data, self.valid_data = train_data, valid_data
        self.save_dir = Path(config.save_dir)
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.train_losses, self.valid_losses = [], []  # per step; [step, loss] pairs
        self._stop_signal = None
        self.precision_fallback = None  # what made a run that began in bf16 go on in fp32
        self._plotted_at = None  # perf_counter() of the last loss plot
        self.check_loss_first = True  # check_loss before the first step (the autograder grades what a loss trains)

    # -------------------------------------------------------------- the loop
    def train(self, save_loss_plot=True, show_loss_plot=False):
        """Train until `epochs` epochs are done; return (train_losses, valid_losses)."""
        config = self.config
        batches = math.ceil(len(self.train_data) / config.batch_size)
        self.started, self.images_seen = time.perf_counter(), 0
        if self.step == 0 and self.check_loss_first:
            self.check_loss()
        made_here = not self.save_dir.exists()
        try:
            with self.saved_on_interrupt():
                atomic_write_json(self.save_dir / "hyperparams.json", self.hyperparams())
                self.model.train()
                while self.epoch < config.epochs:
                    epoch = self.epoch + 1
                    order = self.epoch_order(epoch)   # a new shuffle every epoch
                    bar = progress(range(self.batch_in_epoch, batches), desc=f"epoch {epoch}/{config.epochs}",
                                   initial=self.batch_in_epoch, total=batches, dynamic_ncols=True)
                    for batch in bar:
                        index = order[batch * config.batch_size:(batch + 1) * config.batch_size]
                        loss = self.optimise(self.train_data.images[index], self.train_data.labels[index], batches)
                        self.batch_in_epoch = batch + 1
                        if config.pred_step > 0 and self.step % config.pred_step == 0:
                            self.valid_losses.append((self.step, self.validate()))
                        bar.set_postfix(self.progress(loss))
                        self.stop_if_asked(bar)
                    bar.close()
                    self.end_epoch(epoch, batches, save_loss_plot)
        except BaseException:
            # A run that failed before it saved anything leaves no folder behind (an interrupted one keeps
            # its interrupted.pth, and a folder that was there before is never removed).
            if made_here and not any(self.save_dir.glob("*.pth")):
                shutil.rmtree(self.save_dir, ignore_errors=True)
            raise
        self.export()
        if show_loss_plot:
            self.save_loss_plot(show=True)
        return self.train_losses, self.valid_losses

    # -------------------------------------------------------------- one step, one epoch
    def optimise(self, images, labels, batches_per_epoch: int) -> float:
        """One Adam step on one batch; returns its loss."""
        loss = self.fp32_if_autocast_fails(f"training step {self.step + 1}", lambda: self.backward(images, labels))
        if not torch.isfinite(loss):
            raise LabError(f"the loss became {loss.item()} at step {self.step + 1} (epoch {self.epoch + 1}): "
                           f"lower --lr or raise --var; the last good checkpoint in {self.save_dir} is kept")
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step, batches_per_epoch * self.config.epochs)
        self.optimizer.step()
        self.step += 1
        self.images_seen += len(images)
        self.train_losses.append(loss.item())
        return loss.item()

    def end_epoch(self, epoch: int, batches_per_epoch: int, save_loss_plot: bool) -> None:
        # The last step of an epoch can turn the weights to NaN with a finite loss; checking here
        # keeps such weights out of the epoch checkpoint that replaces the last good one.
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise LabError(f"the weights became non-finite at step {self.step} (end of epoch {epoch}): "
                           f"lower --lr or raise --var; the last good checkpoint in {self.save_dir} is kept")
        self.epoch, self.batch_in_epoch = epoch, 0
        path = self.save_epoch_checkpoint()
        # Drawing the curve costs about half a second, which adds up over many short epochs: it is
        # redrawn after the first epoch this process trains, after the last, and at most every
        # PLOT_EVERY_S seconds between.
        if save_loss_plot and (epoch == self.config.epochs or self._plotted_at is None
                               or time.perf_counter() - self._plotted_at >= PLOT_EVERY_S):
            self.save_loss_plot()
            self._plotted_at = time.perf_counter()
        seconds = time.perf_counter() - self.started
        tqdm.write(f"epoch {epoch}: train loss {np.mean(self.train_losses[-batches_per_epoch:]):.2f}"
                   + (f", valid loss {self.valid_losses[-1][1]:.2f}" if self.valid_losses else "")
                   + f", {self.images_seen / seconds:,.0f} images/s (average of this run so far), saved {path}")

    def progress(self, loss: float) -> dict:
        shown = {"loss": f"{loss:.2f}"}
        if self.valid_losses:
            shown["valid"] = f"{self.valid_losses[-1][1]:.2f}"
        return shown

    # -------------------------------------------------------------- Ctrl-C
    @contextlib.contextmanager
    def saved_on_interrupt(self):
        """From the moment the run folder appears, SIGINT or SIGTERM means: finish the step, save
        interrupted.pth, stop (stop_if_asked)."""
        def request_stop(signum, frame):
            self._stop_signal = signal.Signals(signum).name
        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop_if_asked(self, bar) -> None:
        if not self._stop_signal:
            return
        bar.close()
        path = self.save_dir / INTERRUPTED
        atomic_torch_save(self.checkpoint(), path)
        raise TrainingInterrupted(f"{self._stop_signal}: saved {path} (step {self.step}); resume with the same "
                                  f"command plus --load_from_checkpoint")

    # -------------------------------------------------------------- loss and validation
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

    def backward(self, images, labels):
        """The loss of one batch, and its gradients when it is finite."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_on(images, labels)
        if torch.isfinite(loss):
            loss.backward()
        return loss

    def fp32_if_autocast_fails(self, what: str, attempt):
        """attempt() under autocast; if it raises or its loss is not finite, it is undone and run
        again in fp32, and if that works the rest of the run stays in fp32.

        Autocast is the harness's speed-up, so it must never cost a student: a model written and
        tested in fp32 may update an fp32 buffer from bf16 activations, or lose a small difference
        to bf16's 8 bits of mantissa. Undoing means the buffers and random states as they were
        before (the optimiser has not stepped yet), so the fp32 retry is the step an fp32 run
        would have taken. An error that fp32 raises too is the model's own, and is raised."""
        if self.autocast_dtype is None:
            return attempt()
        buffers = {name: buffer.detach().clone() for name, buffer in self.model.named_buffers()}
        rng = capture_rng(self.device)
        try:
            loss = attempt()
            if bool(torch.isfinite(torch.as_tensor(loss))):
                return loss
            reason = f"its loss was {float(torch.as_tensor(loss).detach())}"
        except Exception as error:
            reason = str(error) if isinstance(error, contract.ContractError) else contract.one_line(error, 200)
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        restore_rng(rng, self.device)
        autocast_dtype, self.autocast_dtype = self.autocast_dtype, None
        try:
            loss = attempt()
        except BaseException:
            self.autocast_dtype = autocast_dtype  # the run ends here, in the precision it ran in
            raise
        if not bool(torch.isfinite(torch.as_tensor(loss))):
            self.autocast_dtype = autocast_dtype  # not finite in fp32 either: the caller reports it
            return loss
        self.precision_fallback = (f"{precision_name(autocast_dtype)} autocast failed at {what} ({reason}); "
                                   f"it was run again in fp32, and the run goes on in fp32")
        tqdm.write(f"precision: {self.precision_fallback}")
        atomic_write_json(self.save_dir / "hyperparams.json", self.hyperparams())
        return loss

    def check_loss(self):
        """Before the first step: is vae_loss the handout's loss in sign and terms (contract.check_loss_direction)?
        The model's shapes come from one eval-mode forward of two images; its mode, its running statistics
        (train mode would update them) and every random state are left as they were."""
        rng, was_training = capture_rng(self.device), self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                recon_x, mu, _ = contract.forward(self.model, self.train_data.images[:2].to(self.device),
                                                  self.train_data.labels[:2].to(self.device), self.config.latent_dim)
        finally:
            self.model.train(was_training)
            restore_rng(rng, self.device)
        contract.check_loss_direction(vae_loss, tuple(recon_x.shape), mu.shape[1], self.config.var)

    def loss_on(self, images, labels):
        images, labels = images.to(self.device), labels.to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            recon_x, mu, log_var = contract.forward(self.model, images, labels, self.config.latent_dim)
        # The loss itself in fp32: it sums 784 squared errors per image.
        return contract.loss(vae_loss, recon_x.float(), images, mu.float(), log_var.float(), var=self.config.var)

    def validate(self) -> float:
        self.model.eval()
        try:
            return self.fp32_if_autocast_fails(f"the validation after step {self.step}", self.validation_loss)
        finally:
            self.model.train()

    @torch.no_grad()
    def validation_loss(self) -> float:
        total, count = 0.0, 0
        data = self.valid_data
        num = min(self.config.eval_num, len(data)) if self.config.eval_num > 0 else len(data)
        for start in range(0, num, 1024):
            stop = min(start + 1024, num)
            images, labels = data.images[start:stop], data.labels[start:stop]
            total += self.loss_on(images, labels).item() * (stop - start)
            count += stop - start
        return total / count

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
        params["autocast"] = precision_name(self.autocast_dtype)  # the precision used, not the one asked for
        if self.precision_fallback:
            params["autocast_fallback"] = self.precision_fallback
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
            state["rng_state"] = capture_rng(self.device)
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
        restore_rng(checkpoint["rng_state"], self.device)
        print(f"resumed from {path}: epoch {self.epoch} done, step {self.step}"
              + (f", {self.batch_in_epoch} batches into epoch {self.epoch + 1}" if self.batch_in_epoch else ""))

    # -------------------------------------------------------------- files
    def save_epoch_checkpoint(self) -> Path:
        path = self.save_dir / f"epoch_{self.epoch}.pth"
        atomic_torch_save(self.checkpoint(), path)
        prune(self.save_dir, path, self.epoch, self.config.keep_last)  # only after the new file is in place
        return path

    def export(self) -> Path:
        """The finished model alone, beside the run folder: what inference.py reads."""
        path = export_path(self.save_dir)
        atomic_torch_save(self.checkpoint(with_training_state=False), path)
        print(f"model saved to {path}")
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
