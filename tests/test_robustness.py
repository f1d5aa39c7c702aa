"""Issue 7: never lose a run, never trust a file blindly.

One group of tests per item of the issue, through the scripts' own entry points (conftest.run:
main() as its `__main__` calls it, with exit code, stdout and stderr; real subprocesses where a
signal must reach a process):
  1. interrupt and resume     4. numerical faults
  2. atomic writes, pruning   5. bad input
  3. safe loading             6. determinism
docs/robustness.md maps every failure mode to the test that covers it.
"""
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, run
from data_utils import DATASET_DIR, LabError, MNISTDataset, atomic_torch_save, atomic_write_bytes, load_split
from checkpoint import load_checkpoint, model_from_checkpoint, newest_run_checkpoint
from trainer import Trainer, TrainConfig

pytestmark = pytest.mark.slow  # interrupts, kills and `bash run.sh` with real training runs

# 640 images in batches of 16: 40 steps an epoch, long enough to land a signal inside one.
# Every setting is spelled out: runs compared bit for bit must not depend on train.py's defaults.
TRAIN = ["--task", "Genwithlabel", "--latent_dim", 4, "--batch_size", 16, "--epochs", 3, "--lr", 2e-3,
         "--lr_schedule", "cosine", "--var", 0.02, "--seed", 42, "--keep_last", 5, "--eval_num", 100,
         "--pred_step", 7, "--precision", "fp32", "--device", "cpu", "--no-save_loss_plot"]
BATCHES_PER_EPOCH = 40


def start(script, *args, log):
    """Start a repo script in the background; its output goes to files (a full pipe would block it)."""
    out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")
    process = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                               stdout=out, stderr=err, text=True)
    out.close(), err.close()
    return process


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the process ended ({process.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)


def wait_for_batch(log, epoch, batch, process, timeout=120):
    """Wait until the progress bar in `log` shows at least `batch` batches of `epoch` done."""
    pattern = re.compile(rf"epoch {epoch}/\d+: .*?\| *(\d+)/\d+ \[")
    deadline = time.monotonic() + timeout
    while True:
        done = [int(n) for n in pattern.findall(log.read_text())] if log.exists() else []
        if done and max(done) >= batch:
            return
        assert process.poll() is None, f"the process ended ({process.returncode}) before batch {batch} of epoch {epoch}"
        assert time.monotonic() < deadline, f"no progress to batch {batch} of epoch {epoch} within {timeout} s"
        time.sleep(0.01)


def last_line(text):
    """The last line of a stream, where tqdm's carriage returns also end lines."""
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_line_error(result, *fragments):
    """Exit code 2 and exactly one line on stderr, `error: ...` naming the fragments, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assert_error_after_progress(result, *fragments):
    """Exit code 2, no traceback, and the error as the last line, after progress bars."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
    assert "Traceback" not in result.stderr
    message = last_line(result.stderr)
    assert message.startswith("error: "), result.stderr[-1500:]
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def tensors_equal(a, b):
    """Nested dicts / lists of tensors and numbers, compared exactly (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_training(path_a, path_b):
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    weights_a, weights_b = a["model_state_dict"], b["model_state_dict"]
    differing = [k for k in weights_a if not tensors_equal(weights_a[k], weights_b[k])]
    assert not differing, f"{path_a} and {path_b} differ in {differing}"
    assert tensors_equal(a["optimizer_state_dict"], b["optimizer_state_dict"])
    assert a["train_losses"] == b["train_losses"] and a["valid_losses"] == b["valid_losses"]


def folder_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def train_args(tmp_path_factory, tiny_valid):
    """TRAIN on the first 640 training images, saved as their own split (so a run does not
    read the whole training set), validating on the 200-image split."""
    images, labels = load_split("train")
    path = tmp_path_factory.mktemp("data") / "train640.npz"
    np.savez(path, images=images[:640], labels=labels[:640])
    return [*TRAIN, "--train_data", path, "--valid_data", tiny_valid]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, train_args):
    """An uninterrupted run of TRAIN: its run folder (the export is the sibling run.pth)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run("train.py", *train_args, "--save_dir", run_dir)
    return run_dir


@pytest.fixture(scope="module")
def outputs(reference, tiny_valid, tmp_path_factory):
    """inference.py on the reference model and the 200-image split."""
    folder = tmp_path_factory.mktemp("outputs") / "Genwithlabel"
    run("inference.py", "--checkpoint_path", reference.parent / "run.pth", "--data_path", tiny_valid,
        "--save_dir", folder)
    return folder


# ------------------------------------------------------------------ 1. interrupt and resume
def test_sigint_mid_epoch_then_resume_ends_bit_identical(reference, train_args, tmp_path):
    run_dir = tmp_path / "run"
    args = [*train_args, "--save_dir", run_dir]
    process = start("train.py", *args, log=tmp_path / "first")
    # Signal once the bar shows epoch 2 under way: well inside an epoch however fast the machine is.
    wait_for_batch(tmp_path / "first.err", 2, 3, process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    stderr = (tmp_path / "first.err").read_text()
    assert "Traceback" not in stderr
    message = last_line(stderr)
    assert message.startswith("interrupted by SIGINT: saved ") and "--load_from_checkpoint" in message

    saved = load_checkpoint(run_dir / "interrupted.pth")
    assert 0 < saved["batch_in_epoch"] < BATCHES_PER_EPOCH, "the signal should land inside an epoch"
    assert saved["step"] == saved["epoch"] * BATCHES_PER_EPOCH + saved["batch_in_epoch"]
    assert {"model_state_dict", "optimizer_state_dict", "rng_state"} <= set(saved)
    assert f"step {saved['step']}" in message
    assert not (tmp_path / "run.pth").exists()  # an interrupted run exports nothing

    resumed = run("train.py", *args, "--load_from_checkpoint")
    assert f"resumed from {run_dir / 'interrupted.pth'}" in resumed.stdout
    assert not (run_dir / "interrupted.pth").exists()  # superseded by the next epoch checkpoint
    assert_same_training(run_dir / "epoch_3.pth", reference / "epoch_3.pth")
    assert tensors_equal(load_checkpoint(tmp_path / "run.pth")["model_state_dict"],
                         load_checkpoint(reference.parent / "run.pth")["model_state_dict"])


def test_sigterm_during_a_resumed_run_then_resume_again(reference, train_args, tmp_path):
    # A run that itself resumed with --checkpoint: "the same command plus --load_from_checkpoint"
    # must continue from its interrupted.pth, not start over from the --checkpoint file.
    run_dir = tmp_path / "run"
    args = [*train_args, "--save_dir", run_dir, "--checkpoint", reference / "epoch_1.pth"]
    process = start("train.py", *args, log=tmp_path / "log")
    wait_for_batch(tmp_path / "log.err", 2, 2, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130
    stderr = (tmp_path / "log.err").read_text()
    assert "Traceback" not in stderr and last_line(stderr).startswith("interrupted by SIGTERM: saved ")
    assert newest_run_checkpoint(run_dir) == run_dir / "interrupted.pth"
    assert load_checkpoint(run_dir / "interrupted.pth")["step"] > BATCHES_PER_EPOCH

    result = run("train.py", *args, "--load_from_checkpoint", check=False)  # in this process: no startup to wait for
    assert result.returncode == 0 and f"resumed from {run_dir / 'interrupted.pth'}" in result.stdout
    assert_same_training(run_dir / "epoch_3.pth", reference / "epoch_3.pth")


# ------------------------------------------------------------------ 2. atomic writes
def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "hyperparams.json"
    target.write_text('{"old": true}\n')

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(LabError, match="cannot write .*No space left on device.*unchanged"):
        atomic_write_bytes(target, b'{"new": tru')
    monkeypatch.undo()

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"format": 1}, target)
    monkeypatch.undo()
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["hyperparams.json"]  # no temporary file left behind


def test_sigkill_at_any_moment_leaves_only_whole_files(tiny_valid, tmp_path):
    # One step an epoch: the trainer writes and prunes epoch checkpoints, hyperparams.json and
    # loss_curve.png all the time, so the kill lands during or between writes.
    run_dir = tmp_path / "run"
    args = ["--task", "VAE0label", "--latent_dim", 2, "--limit", 32, "--batch_size", 32, "--epochs", 10_000,
            "--eval_num", 32, "--pred_step", 1, "--keep_last", 2, "--precision", "fp32", "--device", "cpu",
            "--valid_data", tiny_valid, "--save_dir", run_dir]
    process = start("train.py", *args, log=tmp_path / "log")
    wait_for(run_dir / "epoch_4.pth", process)
    time.sleep(0.37)
    process.kill()
    process.wait(timeout=60)
    visible = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    epochs = [name for name in visible if name.startswith("epoch_")]
    assert 2 <= len(epochs) <= 3, visible  # keep_last 2, plus one if the kill fell between write and prune
    for name in epochs:
        assert load_checkpoint(run_dir / name)["epoch"] == int(name[6:-4])
    json.loads((run_dir / "hyperparams.json").read_text())
    assert (run_dir / "loss_curve.png").read_bytes().endswith(b"IEND\xaeB`\x82")  # a whole PNG
    assert all(p.name.endswith(".tmp") for p in run_dir.iterdir() if p.name.startswith("."))

    newest = max(load_checkpoint(run_dir / name)["epoch"] for name in epochs)
    args[args.index("--epochs") + 1] = newest + 1
    result = run("train.py", *args, "--load_from_checkpoint", check=False)
    assert result.returncode == 0 and f"epoch {newest} done" in result.stdout
    assert load_checkpoint(run_dir / f"epoch_{newest + 1}.pth")["epoch"] == newest + 1


def test_pruning_never_deletes_the_newest_checkpoint(reference, train_args, tmp_path):
    # A fresh run in a folder that still holds a longer earlier run: the old epoch_7..9 must
    # neither push out the new epoch_1 nor be taken for the newest by a later resume.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for epoch in (7, 8, 9):
        shutil.copy(reference / "epoch_3.pth", run_dir / f"epoch_{epoch}.pth")
    (run_dir / "interrupted.pth").write_bytes(b"stale")
    args = [*train_args, "--save_dir", run_dir, "--keep_last", 1]
    args[args.index("--epochs") + 1] = 1
    refused = run("train.py", *args, check=False)  # the folder holds an unfinished run: not replaced without --overwrite
    assert refused.returncode == 2 and "holds an unfinished run (interrupted.pth)" in refused.stderr
    args.append("--overwrite")
    args[args.index("--batch_size") + 1] = 160
    assert run("train.py", *args, check=False).returncode == 0
    assert sorted(p.name for p in run_dir.glob("*.pth")) == ["epoch_1.pth"]
    assert newest_run_checkpoint(run_dir) == run_dir / "epoch_1.pth"
    assert load_checkpoint(run_dir / "epoch_1.pth")["step"] == 4  # 640 images in batches of 160


def test_resume_skips_a_damaged_checkpoint_for_the_good_one(reference, tmp_path, capsys):
    shutil.copy(reference / "epoch_2.pth", tmp_path / "epoch_2.pth")
    (tmp_path / "interrupted.pth").write_bytes((reference / "epoch_3.pth").read_bytes()[:5000])
    assert newest_run_checkpoint(tmp_path) == tmp_path / "epoch_2.pth"
    assert "interrupted.pth is truncated or corrupt" in capsys.readouterr().err


# ------------------------------------------------------------------ 3. safe loading
class RunsCode:
    """Unpickling this calls os.mkdir(marker): proof of code execution, harmless otherwise."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_checkpoint_that_runs_code_is_refused_not_executed(reference, train_args, tmp_path):
    checkpoint = load_checkpoint(reference.parent / "run.pth")
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save(dict(checkpoint, hyperparams=RunsCode(marker)), evil)  # a torch zip with one poisoned entry
    raw = tmp_path / "raw_pickle.pth"
    raw.write_bytes(pickle.dumps(dict(checkpoint, task=RunsCode(marker)), protocol=2))  # the legacy format

    # The payload is live: an unsafe load runs it.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(RunsCode(proof)))
    assert proof.is_dir()

    result = run("inference.py", "--checkpoint_path", evil, "--save_dir", tmp_path / "out", check=False)
    assert_one_line_error(result, f"refused to load {evil}", "arbitrary pickled code", "GLOBAL posix.mkdir")
    result = run("train.py", *train_args, "--save_dir", tmp_path / "run", "--checkpoint", evil, check=False)
    assert_one_line_error(result, f"refused to load {evil}")
    result = run("inference.py", "--checkpoint_path", raw, "--save_dir", tmp_path / "out", check=False)
    assert_one_line_error(result, f"refused to load {raw}", "arbitrary pickled code", "GLOBAL posix.mkdir")
    assert not marker.exists(), "the pickled code ran"
    assert not (tmp_path / "out").exists()


def test_truncated_and_foreign_checkpoints_are_one_line_errors(reference, train_args, tmp_path):
    data = (reference.parent / "run.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[:len(data) // 2])
    result = run("inference.py", "--checkpoint_path", truncated, "--save_dir", tmp_path / "out", check=False)
    assert_one_line_error(result, f"{truncated} is truncated or corrupt")
    assert not (tmp_path / "out").exists()

    # Another architecture: the weights of a wider decoder than the code builds now.
    checkpoint = load_checkpoint(reference.parent / "run.pth")
    state = dict(checkpoint["model_state_dict"])
    state["cvae.decoder.0.weight"] = torch.zeros(300, state["cvae.decoder.0.weight"].shape[1])
    other = tmp_path / "other_architecture.pth"
    torch.save(dict(checkpoint, model_state_dict=state), other)
    result = run("inference.py", "--checkpoint_path", other, "--save_dir", tmp_path / "out", check=False)
    assert_one_line_error(result, "does not fit submission.GenModel", "retrain")

    # Another latent_dim (or task) than the run being resumed.
    args = [*train_args, "--save_dir", tmp_path / "run"]
    args[args.index("--latent_dim") + 1] = 5
    result = run("train.py", *args, "--checkpoint", reference / "epoch_1.pth", check=False)
    assert_one_line_error(result, "cannot resume", "model_kwargs={'latent_dim': 4}")
    args[args.index("--task") + 1] = "VAE0label"
    result = run("train.py", *args, "--checkpoint", reference / "epoch_1.pth", check=False)
    assert_one_line_error(result, "cannot resume", "task=Genwithlabel")
    result = run("inference.py", "--task", "VAE0label", "--checkpoint_path", reference.parent / "run.pth", check=False)
    assert_one_line_error(result, "--task VAE0label contradicts", "trained for Genwithlabel")
    args[args.index("--task") + 1], args[args.index("--latent_dim") + 1] = "Genwithlabel", 4
    result = run("train.py", *args, "--checkpoint", reference.parent / "run.pth", check=False)
    assert_one_line_error(result, "holds only model weights (an exported model), not a training state")
    # Mid-epoch, another batch size would replay other batches than the interrupted run had left.
    mid_epoch = tmp_path / "interrupted.pth"
    torch.save(dict(load_checkpoint(reference / "epoch_1.pth"), batch_in_epoch=5, step=45), mid_epoch)
    args[args.index("--batch_size") + 1] = 32
    result = run("train.py", *args, "--checkpoint", mid_epoch, check=False)
    assert_one_line_error(result, "cannot resume", "mid-epoch with --batch_size 32: it was trained with 16")
    # ... and so would fewer training images.
    args[args.index("--batch_size") + 1] = 16
    result = run("train.py", *args, "--limit", 320, "--checkpoint", mid_epoch, check=False)
    assert_one_line_error(result, "cannot resume", "mid-epoch with --limit 320: it was trained with 640")
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()

    # Files that are not checkpoints of this lab, or miss a part.
    for name, content in (("empty.pth", None), ("state_dict.pth", checkpoint["model_state_dict"]),
                          ("no_weights.pth", {k: v for k, v in checkpoint.items() if k != "model_state_dict"}),
                          ("bad_kwargs.pth", dict(checkpoint, model_kwargs={"latent_dim": 4, "depth": 3})),
                          ("bad_class.pth", dict(checkpoint, model="os.system"))):
        path = tmp_path / name
        path.write_bytes(b"") if content is None else torch.save(content, path)
        with pytest.raises(LabError) as error:
            model_from_checkpoint(load_checkpoint(path), path)
        assert "\n" not in str(error.value) and str(path) in str(error.value)


# ------------------------------------------------------------------ 4. numerical faults
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(reference, train_args, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(reference / "epoch_1.pth", run_dir / "epoch_1.pth")
    good = (run_dir / "epoch_1.pth").read_bytes()
    checkpoint = load_checkpoint(run_dir / "epoch_1.pth")
    checkpoint["model_state_dict"]["cvae.decoder.0.bias"][0] = float("nan")  # diverged weights
    atomic_torch_save(checkpoint, run_dir / "interrupted.pth")
    checkpoint = load_checkpoint(run_dir / "interrupted.pth")
    assert checkpoint["step"] == BATCHES_PER_EPOCH

    result = run("train.py", *train_args, "--save_dir", run_dir, "--checkpoint",
                 run_dir / "interrupted.pth", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = last_line(result.stderr)
    assert message.startswith(f"error: the loss became nan at step {BATCHES_PER_EPOCH + 1} (epoch 2)"), message
    assert "last good checkpoint" in message
    assert (run_dir / "epoch_1.pth").read_bytes() == good
    assert not (run_dir / "epoch_2.pth").exists() and not (tmp_path / "run.pth").exists()


def small_trainer(tmp_path, model=None, **overrides):
    settings = dict(task="VAE0label", model="submission.VAE", latent_dim=3, batch_size=50, epochs=3, lr=2e-3,
                    pred_step=0, keep_last=5, save_dir=str(tmp_path / "run"), precision="fp32", device="cpu")
    config = TrainConfig(**dict(settings, **overrides))
    config.check()
    torch.manual_seed(config.seed)
    data = MNISTDataset("valid", limit=300)
    return Trainer(config, data, data, model=model)


def test_weights_that_turn_nan_at_an_epoch_end_are_not_saved(tmp_path):
    trainer = small_trainer(tmp_path)

    def poison_after_step_12(optimizer, args, kwargs):  # the last step of epoch 2; its loss was finite
        if trainer.step == 11:
            next(trainer.model.parameters()).data.fill_(float("nan"))

    trainer.optimizer.register_step_post_hook(poison_after_step_12)
    with pytest.raises(LabError, match=r"weights became non-finite at step 12 \(end of epoch 2\).*last good"):
        trainer.train(save_loss_plot=False)
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pth")) == ["epoch_1.pth"]
    saved = load_checkpoint(tmp_path / "run" / "epoch_1.pth")
    assert all(torch.isfinite(t).all() for t in saved["model_state_dict"].values())


def test_log_var_cannot_overflow_silently(tmp_path):
    from model import VAE as DemoVAE
    from submission import VAE, GenModel, vae_loss
    x = MNISTDataset("valid", limit=8).images
    labels = torch.arange(8) % 10
    for model in (VAE(latent_dim=4), GenModel(latent_dim=4), DemoVAE(latent_dim=4)):
        head = {DemoVAE: lambda: model.to_log_var, VAE: lambda: model.encoder[-1],
                GenModel: lambda: model.cvae.encoder[-1]}[type(model)]()
        with torch.no_grad():
            head.bias.fill_(1e4)  # log_var = 1e4 would make exp(log_var) = inf
        recon_x, mu, log_var = model(x, labels)
        assert log_var.max() <= 20
        loss = vae_loss(recon_x, x, mu, log_var, var=0.02)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())

    # A student's encoder without the clamp: exp overflows to inf, and the trainer says so at once.
    class Unclamped(VAE):
        def encode(self, x):
            mu, log_var = super().encode(x)
            return mu, log_var + 200

    trainer = small_trainer(tmp_path, model=Unclamped(latent_dim=3))
    with pytest.raises(LabError, match=r"the loss became (nan|inf) at step 1 \(epoch 1\)"):
        trainer.train(save_loss_plot=False)


# ------------------------------------------------------------------ 5. bad input
def test_absurd_settings_and_unknown_tasks_are_refused_before_anything_is_written(tmp_path):
    result = run("train.py", "--latent_dim", 0, "--save_dir", tmp_path / "run", check=False)
    assert_one_line_error(result, "--latent_dim 0 is out of range", "use a value in [1, 784]")
    result = run("train.py", "--task", "VAE1label", "--save_dir", tmp_path / "run", check=False)
    assert_one_line_error(result, "unknown task 'VAE1label'", "VAE0label", "Genwithlabel")
    for args, fragment in (
            (["--latent_dim", 5000], "--latent_dim 5000 is out of range"),
            (["--batch_size", -5], "--batch_size -5 is out of range"),
            (["--epochs", -1], "--epochs -1 is out of range"),
            (["--epochs", 10**7], "--epochs 10000000 is out of range"),
            (["--lr", "nan"], "--lr nan is out of range"),
            (["--lr", 3], "--lr 3.0 is out of range"),
            (["--var", 0], "--var 0.0 is out of range"),
            (["--var", "inf"], "--var inf is out of range"),
            (["--limit", -1], "--limit -1 is negative")):
        assert_one_line_error(run("train.py", *args, "--save_dir", tmp_path / "run", check=False), fragment)
    result = run("inference.py", "--task", "VAE1label", "--save_dir", tmp_path / "run", check=False)
    assert_one_line_error(result, "unknown task 'VAE1label'")
    result = run("inference.py", "--checkpoint_path", tmp_path / "none.pth", "--save_dir", tmp_path / "run", check=False)
    assert_one_line_error(result, "none.pth not found")
    assert not (tmp_path / "run").exists()


def test_bad_data_files_are_refused(reference, tmp_path, tiny_valid):
    images, labels = load_split(tiny_valid)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(DATASET_DIR / "valid.npz", copy / "valid.npz")
    shutil.copy(DATASET_DIR / "SHA256SUMS", copy / "SHA256SUMS")
    assert len(load_split(copy / "valid.npz")[0]) == 10_000  # an intact copy checks out
    data = bytearray((copy / "valid.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "valid.npz").write_bytes(bytes(data))
    np.savez(tmp_path / "shapes.npz", images=np.zeros((4, 32, 32), np.uint8), labels=np.arange(4))
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(tmp_path / "labels.npz", images=images[:4], labels=np.array([0, 3, 10, 1]))
    cases = {
        tmp_path / "missing.npz": "not found",
        copy / "valid.npz": "is corrupt (its sha256 differs from the one",
        tmp_path / "garbage.npz": "is not a readable .npz with arrays 'images' and 'labels'",
        tmp_path / "shapes.npz": "'images' must be uint8 [N, 28, 28], got uint8 [4, 32, 32]",
        tmp_path / "labels.npz": "labels must lie in 0-9, found 0..10",
    }
    for path, fragment in cases.items():
        if "missing" in path.name or path.name == "valid.npz":
            result = run("train.py", "--train_data", path, "--save_dir", tmp_path / "run", check=False)
        else:
            result = run("train.py", "--train_data", path, "--save_dir", tmp_path / "run", check=False)
        assert_one_line_error(result, str(path), fragment)
    result = run("inference.py", "--checkpoint_path", reference.parent / "run.pth", "--data_path", copy / "valid.npz",
                 "--save_dir", tmp_path / "out", check=False)
    assert_one_line_error(result, "is corrupt")
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_unwritable_output_folders_are_one_line_errors(reference, outputs, train_args, tiny_valid, tmp_path):
    # Root ignores permission bits, so the unwritable folder lies under a regular file.
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run("train.py", *train_args, "--save_dir", blocker / "run", check=False)
    assert_one_line_error(result, f"cannot write into {blocker / 'run'} (a file is in the way of the folder)")
    result = run("inference.py", "--checkpoint_path", reference.parent / "run.pth", "--data_path", tiny_valid,
                 "--inf_num", 10, "--save_dir", blocker / "out", check=False)
    assert_one_line_error(result, f"cannot write into {blocker} (a file", "pass a writable --save_dir")
    result = run("grade.py", "--Genwithlabel_output_dir", outputs, "--no-VAE0label",
                 "--result_path", blocker / "grade_result.json", check=False)
    assert_one_line_error(result, f"cannot write into {blocker} (a file", "pass a writable --result_path")
    assert blocker.read_text() == "not a folder"


def test_grade_refuses_incomplete_outputs(outputs, tmp_path):
    broken = tmp_path / "Genwithlabel"
    shutil.copytree(outputs, broken)
    results = tmp_path / "grade_result.json"
    args = ["--Genwithlabel_output_dir", broken, "--no-VAE0label", "--result_path", results]
    (broken / "gen" / "7" / "42.png").unlink()
    result = run("grade.py", *args, check=False)
    assert_one_line_error(result, f"{broken / 'gen' / '7'} holds 99 samples, expected 100")
    assert not results.exists()
    shutil.copy(outputs / "gen" / "7" / "42.png", broken / "gen" / "7" / "42.png")
    png = broken / "recon" / "recon_5.png"
    png.write_bytes(png.read_bytes()[:40])  # a write cut short
    assert_error_after_progress(run("grade.py", *args, check=False), f"cannot read {png}")
    shutil.copy(outputs / "recon" / "recon_5.png", png)
    info = json.loads((outputs / "hyperparams.json").read_text())
    (broken / "hyperparams.json").write_text(json.dumps(dict(info, num_images=5000)))
    assert_one_line_error(run("grade.py", *args, check=False), "num_images 5000", "holds 200 images")
    del info["data_sha256"]
    (broken / "hyperparams.json").write_text(json.dumps(info))
    assert_one_line_error(run("grade.py", *args, check=False), "lacks data_sha256")
    (broken / "hyperparams.json").unlink()
    assert_one_line_error(run("grade.py", *args, check=False), "hyperparams.json is missing")
    assert not results.exists()
    shutil.rmtree(broken)
    assert_one_line_error(run("grade.py", *args[:-2], "--Genwithlabel", *args[-2:], check=False), "not found")


# ------------------------------------------------------------------ 6. determinism
def test_same_seed_gives_identical_checkpoints_and_outputs(reference, outputs, train_args, tiny_valid, tmp_path):
    run("train.py", *train_args, "--save_dir", tmp_path / "run")
    for epoch in (1, 2, 3):
        assert_same_training(tmp_path / "run" / f"epoch_{epoch}.pth", reference / f"epoch_{epoch}.pth")
    result = run("inference.py", "--checkpoint_path", tmp_path / "run.pth", "--data_path", tiny_valid,
                 "--save_dir", tmp_path / "out", check=False)
    assert result.returncode == 0, result.stderr
    assert folder_digest(tmp_path / "out" / "recon") == folder_digest(outputs / "recon")
    assert folder_digest(tmp_path / "out" / "gen") == folder_digest(outputs / "gen")


def test_run_sh_survives_ctrl_c_refuses_to_start_over_and_resumes(tmp_path, tiny_valid):
    """Ctrl-C in the main job saves the run and says how to resume; a plain rerun refuses to
    replace the unfinished run; RESUME=1 continues it to the end and grades. The job starts in fp32 and
    resumes in bf16 (emulated where the CPU is not fast at it), so run.sh also trains GenModel in bf16.
    PYTHON is this interpreter: the `python` on PATH may be another one, without torch."""
    flags = "--limit 1200 --epochs 2 --batch_size 16 --pred_step 0 --eval_num 50 --latent_dim 3 --no-save_loss_plot"
    env = dict(os.environ, PYTHON=sys.executable, SPLIT=str(tiny_valid), RUN=str(tmp_path / "runs"),
               OUT=str(tmp_path / "out"), THREADS="1", TRAIN_FLAGS=f"{flags} --precision fp32")
    log = tmp_path / "first.log"
    with open(log, "wb") as output:
        job = subprocess.Popen(["bash", str(ROOT / "run.sh")], cwd=tmp_path, env=env, stdout=output,
                               stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while b"epoch 1/2:" not in log.read_bytes() or b"it/s" not in log.read_bytes():
            assert time.monotonic() < deadline and job.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert job.wait(timeout=120) == 130
    text = log.read_text()
    assert "RESUME=1 bash run.sh continues where it stopped" in text
    assert (tmp_path / "runs" / "VAE0label" / "interrupted.pth").is_file()
    rerun = subprocess.run(["bash", str(ROOT / "run.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 2 and "holds an unfinished run (interrupted.pth)" in rerun.stderr
    assert "RESUME=1 bash run.sh" in rerun.stderr
    assert (tmp_path / "runs" / "VAE0label" / "interrupted.pth").is_file()  # still there
    resumed = subprocess.run(["bash", str(ROOT / "run.sh")], cwd=tmp_path,
                             env=dict(env, RESUME="1", TRAIN_FLAGS=f"{flags} --precision bf16"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "training took" in resumed.stdout
    grades = json.loads((tmp_path / "out" / "grade_result.json").read_text())
    assert set(grades) == {"VAE0label", "Genwithlabel"}
    for task in grades:
        params = json.loads((tmp_path / "runs" / task / "hyperparams.json").read_text())
        assert params["autocast"] == "bf16" and "autocast_fallback" not in params
    # A plain rerun after the runs finished keeps them: it only infers and grades again.
    models = {task: (tmp_path / "runs" / f"{task}.pth").read_bytes() for task in grades}
    again = subprocess.run(["bash", str(ROOT / "run.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already trained: ") == 2 and "FRESH=1 bash run.sh trains it again" in again.stdout
    assert all((tmp_path / "runs" / f"{task}.pth").read_bytes() == model for task, model in models.items())


RUN_SH_INTERRUPTED = "interrupted: the training done so far is saved; RESUME=1 bash run.sh continues where it stopped"


def session_commands(session):
    """{pid: command line} of the live processes of a session (a job started with start_new_session=True)."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat, open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                fields = stat.read().rsplit(")", 1)[1].split()  # after the command name: state ppid pgrp session
                if int(fields[3]) == session:
                    found[int(entry)] = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):  # not a process, or one that just ended
            continue
    return found


def importing(words, library):
    """A moment: a process of the job whose command line holds `words` has `library` (a path fragment)
    mapped, so it is past its first line and inside the imports that load that library."""
    def moment(session, log):
        for pid, command in session_commands(session).items():
            try:
                if words in command and library in open(f"/proc/{pid}/maps").read():
                    return True
            except OSError:
                pass
        return False
    return moment


def printed(words):
    return lambda session, log: words in log


def ctrl_c_in_run_sh(tmp_path, env, name, moment, timeout=300):
    """`bash run.sh` as a student starts it, and Ctrl-C (SIGINT to its whole process group, as a terminal
    sends it) once moment(session, output so far) holds; returns (exit code, output)."""
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as output:
        job = subprocess.Popen(["bash", str(ROOT / "run.sh")], cwd=tmp_path, env=env, stdout=output,
                               stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not moment(job.pid, log.read_text()):
            assert job.poll() is None and time.monotonic() < deadline, f"{name}: {log.read_text()[-2000:]}"
            time.sleep(0.005)
        os.killpg(job.pid, signal.SIGINT)
        code = job.wait(timeout=120)
    return code, log.read_text()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the moment to press Ctrl-C through /proc")
def test_ctrl_c_anywhere_in_run_sh_ends_with_one_line_that_says_how_to_resume(tmp_path, tiny_valid):
    """A Ctrl-C while the next task imported torch printed a 45-line KeyboardInterrupt traceback from inside
    torch, with no hint that the run was saved. Ctrl-C lands at a moment of each kind (Python importing
    numpy or torch before any step, after a finished task, during inference and grading): each time
    the job's last line is run.sh's, with exit code 130, no traceback, nothing half-written."""
    flags = "--limit 256 --epochs 1 --batch_size 64 --pred_step 0 --eval_num 50 --latent_dim 3 --no-save_loss_plot"
    env = dict(os.environ, PYTHON=sys.executable, SPLIT=str(tiny_valid), RUN=str(tmp_path / "runs"),
               OUT=str(tmp_path / "out"), THREADS="1", TRAIN_FLAGS=f"{flags} --precision fp32")
    runs, out = tmp_path / "runs", tmp_path / "out"
    moments = [  # (name, the moment of the Ctrl-C, what must exist afterwards, what must not)
        ("tasks", importing("from tasks import", "numpy"), [], [runs]),
        ("first train", importing("--task VAE0label", "torch/lib"), [], [runs]),
        ("next train", importing("--task Genwithlabel", "torch/lib"), [runs / "VAE0label.pth"], [runs / "Genwithlabel"]),
        ("inference", importing("inference.py", "torch/lib"), [runs / "Genwithlabel.pth"], [out]),
        ("reconstruct", printed("reconstructing"), [], [out / "VAE0label"]),
        ("grade", importing("grade.py", "numpy"), [out / "Genwithlabel" / "hyperparams.json"],
         [out / "grade_result.json"]),
    ]
    for name, moment, kept, absent in moments:
        code, text = ctrl_c_in_run_sh(tmp_path, env, name, moment)
        assert code == 130, f"{name}: exit {code}\n{text[-3000:]}"
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, f"{name}:\n{text[-3000:]}"
        assert last_line(text) == RUN_SH_INTERRUPTED, f"{name}:\n{text[-3000:]}"
        assert all(path.exists() for path in kept) and not any(path.exists() for path in absent), name
        assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob(".*.tmp")), name

    # train.py on its own, stopped inside torch's import: exit by SIGINT, as any program, and nothing said
    with open(tmp_path / "alone.err", "w") as errors:
        alone = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--save_dir", tmp_path / "alone"],
                                 cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True)
        while not importing("train.py", "torch/lib")(alone.pid, ""):
            assert alone.poll() is None
            time.sleep(0.005)
        os.killpg(alone.pid, signal.SIGINT)
        assert alone.wait(timeout=60) == -signal.SIGINT
    assert (tmp_path / "alone.err").read_text() == "" and not (tmp_path / "alone").exists()
