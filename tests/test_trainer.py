"""Trainer: learning, hyperparams.json, checkpoints that rebuild the model, resume."""
import json
import platform
import subprocess
import sys

import pytest
import torch

import hardware
from data_utils import ROOT, LabError, MNISTDataset
from checkpoint import load_checkpoint, model_from_checkpoint
from trainer import Trainer, TrainConfig


def make_trainer(tmp_path, epochs, **overrides):
    settings = dict(task="Genwithlabel", model="submission.GenModel", latent_dim=3, batch_size=50, epochs=epochs,
                    lr=2e-3, pred_step=2, eval_num=100, keep_last=2, save_dir=str(tmp_path / "run"), precision="fp32")
    settings.update(overrides)
    config = TrainConfig(**settings)
    config.check()
    torch.manual_seed(config.seed)
    return Trainer(config, MNISTDataset("train", limit=300), MNISTDataset("valid", limit=100))


def test_training_lowers_the_loss_and_writes_its_files(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3)
    before = trainer.validate()
    train_losses, valid_losses = trainer.train(save_loss_plot=True)
    assert len(train_losses) == 3 * 6 and valid_losses[-1][1] < 0.8 * before
    run = tmp_path / "run"
    params = json.loads((run / "hyperparams.json").read_text())
    assert params["latent_dim"] == 3 and params["task"] == "Genwithlabel" and params["batch_size"] == 50
    assert params["trainable_parameters"] == sum(p.numel() for p in trainer.model.parameters())
    # keep_last=2: only the two newest epochs stay
    assert sorted(p.name for p in run.glob("epoch_*.pth")) == ["epoch_2.pth", "epoch_3.pth"]
    assert (run / "loss_curve.png").stat().st_size > 1000

    checkpoint = load_checkpoint(run / "epoch_3.pth")
    assert checkpoint["epoch"] == 3 and checkpoint["step"] == 18 and checkpoint["model_kwargs"] == {"latent_dim": 3}
    rebuilt = model_from_checkpoint(checkpoint).eval()
    exported = model_from_checkpoint(load_checkpoint(tmp_path / "run.pth")).eval()
    trainer.model.eval()
    x, labels = trainer.valid_data.images[:8], trainer.valid_data.labels[:8]
    expected = trainer.model(x, labels)[0]
    assert torch.equal(rebuilt(x, labels)[0], expected) and torch.equal(exported(x, labels)[0], expected)
    z = torch.randn(4, 3)
    assert torch.equal(rebuilt.decode(z, 2), trainer.model.decode(z, 2))  # the running code statistics travel too
    assert "optimizer_state_dict" not in load_checkpoint(tmp_path / "run.pth")


def test_resume_continues_at_the_next_epoch(tmp_path):
    make_trainer(tmp_path, epochs=1).train(save_loss_plot=False)
    resumed = make_trainer(tmp_path, epochs=2)
    resumed.resume(tmp_path / "run" / "epoch_1.pth")
    assert resumed.epoch == 1 and resumed.step == 6 and len(resumed.train_losses) == 6
    assert resumed.optimizer.state_dict()["state"]  # Adam moments came back
    resumed.train(save_loss_plot=False)
    second = load_checkpoint(tmp_path / "run" / "epoch_2.pth")
    assert second["epoch"] == 2 and second["step"] == 12 and len(second["train_losses"]) == 12


def test_resume_refuses_another_models_checkpoint(tmp_path):
    make_trainer(tmp_path, epochs=1).train(save_loss_plot=False)
    other = make_trainer(tmp_path, epochs=2, latent_dim=4)
    with pytest.raises(LabError, match="latent_dim"):
        other.resume(tmp_path / "run" / "epoch_1.pth")


@pytest.mark.parametrize("field,value", [("latent_dim", 0), ("latent_dim", 1000), ("batch_size", 0),
                                         ("epochs", -1), ("lr", 0.0), ("lr", 5.0), ("var", 0.0)])
def test_config_rejects_absurd_values(field, value):
    with pytest.raises(LabError, match=f"--{field}"):
        TrainConfig(**{field: value}).check()


def test_cosine_schedule_ends_at_a_twentieth(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1, lr_schedule="cosine")
    assert trainer.lr_at(0, 100) == pytest.approx(2e-3)
    assert trainer.lr_at(99, 100) == pytest.approx(1e-4)
    assert make_trainer(tmp_path, epochs=1, lr_schedule="constant").lr_at(99, 100) == 2e-3


def test_every_epoch_reshuffles_and_covers_every_image(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3)
    orders = [trainer.epoch_order(epoch) for epoch in (1, 2, 3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(300))  # a permutation: each image once per epoch
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert torch.equal(orders[1], make_trainer(tmp_path, epochs=3).epoch_order(2))  # fixed by seed and epoch


def test_validation_runs_in_eval_mode_without_gradients(tmp_path):
    """The validation loss is the loss of the posterior mean (eval mode), computed here independently,
    and the model is back in train mode afterwards."""
    from submission import vae_loss
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.model.train()
    model, data = trainer.model, trainer.valid_data
    with torch.no_grad():
        model.eval()
        recon_x, mu, log_var = model(data.images[:100], data.labels[:100])
        expected = vae_loss(recon_x, data.images[:100], mu, log_var, var=trainer.config.var).item()
        model.train()
    assert trainer.validate() == pytest.approx(expected, rel=1e-5)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_the_learning_rate_schedule_by_hand(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1, lr=2e-3, lr_schedule="cosine")
    # cosine from lr at step 0 to lr/20 at the last step (of 11): 2e-3, then the midpoint
    assert trainer.lr_at(0, 11) == pytest.approx(2e-3)
    assert trainer.lr_at(10, 11) == pytest.approx(1e-4)
    assert trainer.lr_at(5, 11) == pytest.approx((2e-3 + 1e-4) / 2)
    assert make_trainer(tmp_path, epochs=1, lr_schedule="constant").lr_at(7, 11) == pytest.approx(2e-3)


@pytest.mark.parametrize("every_s, plotted_after", [(1e9, [1, 4]), (0.0, [1, 2, 3, 4])])
def test_the_loss_curve_is_redrawn_after_the_first_and_last_epoch_and_at_most_every_plot_every_s(
        tmp_path, monkeypatch, every_s, plotted_after):
    import trainer as trainer_module
    monkeypatch.setattr(trainer_module, "PLOT_EVERY_S", every_s)
    trainer = make_trainer(tmp_path, epochs=4, pred_step=0)
    plotted = []
    monkeypatch.setattr(trainer, "save_loss_plot", lambda show=False: plotted.append(trainer.epoch))
    trainer.train(save_loss_plot=True)
    assert plotted == plotted_after


def test_the_trainer_uses_the_fused_adam_and_falls_back_where_torch_refuses_it(tmp_path, monkeypatch):
    assert make_trainer(tmp_path, epochs=1).optimizer.defaults["fused"] is True
    plain_adam = torch.optim.Adam

    def adam_without_fused(parameters, fused=None, **settings):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return plain_adam(parameters, **settings)
    monkeypatch.setattr(torch.optim, "Adam", adam_without_fused)
    trainer = make_trainer(tmp_path, epochs=1)
    assert not trainer.optimizer.defaults.get("fused")
    trainer.train(save_loss_plot=False)   # and it trains
    assert trainer.step == 6


# Ten rounds of allocating and freeing blocks of these sizes (MiB of float32), in a fresh process.
CHURN_MIB = (3, 6, 12, 20, 3, 6)
CHURN_SCRIPT = f"""
import resource
import torch
import hardware
print(hardware.keep_freed_memory())
def churn():
    blocks = [torch.ones(mib << 18) for mib in {CHURN_MIB}]
    del blocks
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_keep_freed_memory_makes_freed_blocks_reusable_without_page_faults():
    result = subprocess.run([sys.executable, "-c", CHURN_SCRIPT], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    applied, *rounds = result.stdout.split()
    assert applied == "True"
    # Each round touches 50 MiB; fresh memory would fault once per 4 KiB page: 12,800 faults a round. The heap
    # settles into its layout over the first rounds, at a time that depends on what the process allocated
    # before: the typical (median) round must reuse its blocks.
    fresh_pages = sum(CHURN_MIB) * 2**20 // 4096
    median = sorted(map(int, rounds))[len(rounds) // 2]
    assert median < 0.25 * fresh_pages, f"{rounds} page faults per round: the freed blocks were not reused"


class LibraryWithoutMallopt:  # macOS's C library, seen through ctypes
    pass


@pytest.mark.parametrize("opened", [OSError("no C library here"), TypeError("expected str, not NoneType"),
                                    LibraryWithoutMallopt()])
def test_keep_freed_memory_changes_nothing_without_mallopt_and_the_trainer_still_trains(tmp_path, monkeypatch, opened):
    def open_library(name):
        if isinstance(opened, Exception):
            raise opened
        return opened
    monkeypatch.setattr(hardware.ctypes, "CDLL", open_library)
    assert hardware.keep_freed_memory() is False
    hardware.configure_process(threads=0)  # what train.py calls: it must not fail either
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.train(save_loss_plot=False)
    assert trainer.step == 6
