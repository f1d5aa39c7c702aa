"""bf16 autocast, the path of every CPU with AVX512-BF16 or AMX and of recent GPUs, run on any CPU
(--precision bf16 is emulated where it is not fast, so the sizes stay tiny), and the Trainer's
fallback to fp32 for a model that cannot take it (autocast is the harness's speed-up and must never
cost a student). The corpus under bf16 is in test_corpus.py, the autograder's in test_autograde.py."""
import json

import pytest
import torch
from torch import nn

import hardware
from conftest import run
from data_utils import LabError, MNISTDataset
from submission import ClassCodeStatistics
from trainer import Trainer, TrainConfig

TINY_BF16 = ["--limit", 128, "--epochs", 1, "--batch_size", 64, "--eval_num", 64, "--pred_step", 1,
             "--no-save_loss_plot", "--device", "cpu", "--precision", "bf16"]


# ---------------------------------------------------------------- the choice of precision
@pytest.mark.parametrize("precision, fast, expected", [
    ("auto", True, torch.bfloat16), ("auto", False, None), ("fp32", True, None), ("bf16", False, torch.bfloat16)])
def test_the_precision_asked_for_and_the_hardware_decide_autocast(monkeypatch, precision, fast, expected):
    monkeypatch.setattr(hardware, "has_fast_bf16", lambda device: fast)
    assert hardware.pick_autocast_dtype(precision, torch.device("cpu")) == expected


def test_an_unknown_precision_is_a_one_line_error():
    with pytest.raises(LabError, match=r"--precision fp16: choose auto, fp32, bf16"):
        hardware.pick_autocast_dtype("fp16", torch.device("cpu"))


def test_the_class_code_statistics_stay_fp32_under_autocast():
    """Under bf16 autocast the per-class products would come out in bf16 (and lerp_ into the fp32
    buffers refused them): the statistics must be exactly those computed without autocast."""
    torch.manual_seed(0)
    batches = [(torch.randn(64, 5), torch.randint(0, 10, (64,))) for _ in range(2)]
    plain, autocast = ClassCodeStatistics(5, 10, momentum=0.5), ClassCodeStatistics(5, 10, momentum=0.5)
    plain_bf16_codes = ClassCodeStatistics(5, 10, momentum=0.5)
    for codes, labels in batches:  # the first batch of each class, then a running update
        plain.update(codes, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast.update(codes.bfloat16(), labels)  # what an encoder under autocast hands over
        plain_bf16_codes.update(codes.bfloat16().float(), labels)
    for name in ("count", "total", "total_outer"):
        assert getattr(autocast, name).dtype == torch.float32
        assert torch.equal(getattr(autocast, name), getattr(plain_bf16_codes, name))
    # and the sums are those of the codes: class 3's codes of both batches, the older half weighted
    (first, first_labels), (second, second_labels) = batches
    expected = 0.5 * first[first_labels == 3].sum(0) + 0.5 * second[second_labels == 3].sum(0)
    assert torch.allclose(plain.total[3].sum(0), expected, atol=1e-5)


# ---------------------------------------------------------------- the reference models and the demo, end to end
@pytest.mark.parametrize("task, model", [("VAE0label", "submission"), ("Genwithlabel", "submission"),
                                         ("Genwithlabel", "demo")])
def test_train_export_infer_and_grade_under_bf16(tmp_path, tiny_valid, task, model):
    run("train.py", "--task", task, "--model", model, "--latent_dim", 4, "--save_dir", tmp_path / "run",
        "--valid_data", tiny_valid, *TINY_BF16)
    params = json.loads((tmp_path / "run" / "hyperparams.json").read_text())
    assert params["autocast"] == "bf16" and "autocast_fallback" not in params  # it trained in bf16 throughout
    exported = torch.load(tmp_path / "run.pth", weights_only=True)
    assert exported["hyperparams"]["autocast"] == "bf16"
    assert all(value.dtype != torch.bfloat16 for value in exported["model_state_dict"].values())
    run("inference.py", "--checkpoint_path", tmp_path / "run.pth", "--data_path", tiny_valid, "--inf_num", 60,
        "--save_dir", tmp_path / "out", "--device", "cpu", "--no-pictures")
    result = run("grade.py", f"--{task}_output_dir", tmp_path / "out",
                 f"--{'Genwithlabel' if task == 'VAE0label' else 'VAE0label'}", "False",
                 "--result_path", tmp_path / "grade_result.json")
    grades = json.loads((tmp_path / "grade_result.json").read_text())
    assert set(grades) == {task} and grades[task]["score"] > 0, result.stdout
    assert grades[task]["latent_dim"] == 4


@pytest.mark.parametrize("first, then", [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_run_resumes_in_the_other_precision(tmp_path, tiny_valid, first, then):
    common = ["--task", "Genwithlabel", "--latent_dim", 3, "--save_dir", tmp_path / "run", "--valid_data", tiny_valid,
              "--limit", 128, "--batch_size", 64, "--eval_num", 64, "--pred_step", 1, "--no-save_loss_plot",
              "--device", "cpu"]
    run("train.py", *common, "--epochs", 1, "--precision", first)
    assert json.loads((tmp_path / "run" / "hyperparams.json").read_text())["autocast"] == first
    resumed = run("train.py", *common, "--epochs", 2, "--precision", then, "--load_from_checkpoint")
    assert "resumed from" in resumed.stdout and "epoch 1 done, step 2" in resumed.stdout
    params = json.loads((tmp_path / "run" / "hyperparams.json").read_text())
    assert params["autocast"] == then and params["epochs"] == 2
    checkpoint = torch.load(tmp_path / "run" / "epoch_2.pth", weights_only=True)
    assert checkpoint["step"] == 4 and len(checkpoint["train_losses"]) == 4
    assert checkpoint["hyperparams"]["autocast"] == then
    again = run("train.py", *common, "--epochs", 2, "--precision", then, "--load_from_checkpoint")
    assert "nothing to train: " in again.stdout and "has 2 epochs done and --epochs is 2" in again.stdout


# ---------------------------------------------------------------- the fallback
class StatisticsInBuffers(nn.Module):
    """A small VAE-shaped model that counts images and sums codes in fp32 buffers, as students write
    running statistics, and draws its reparameterisation noise from torch's generator. How it breaks
    under autocast is chosen per test (`fail`): 'raise' adds its bf16 codes with index_add_, which
    refuses them, after the count was already updated; 'nan' returns a non-finite mu under autocast
    from training step `from_step` on; 'eval' raises under autocast in eval mode only."""

    def __init__(self, fail="raise", from_step=1):
        super().__init__()
        self.fail, self.from_step = fail, from_step
        self.encoder = nn.Linear(784, 6)
        self.decoder = nn.Linear(3, 784)
        self.register_buffer("images_seen", torch.zeros(()))
        self.register_buffer("code_sum", torch.zeros(1, 3))

    def forward(self, x, labels):
        mu, log_var = self.encoder(x.reshape(len(x), -1)).chunk(2, dim=1)
        autocast = torch.is_autocast_enabled("cpu")
        if self.training:
            self.images_seen += len(x)
            codes = mu.detach() if self.fail == "raise" else mu.detach().float()
            self.code_sum.index_add_(0, torch.zeros(len(x), dtype=torch.long), codes)
            if self.fail == "nan" and autocast and self.images_seen > 50 * (self.from_step - 1):
                mu = mu * float("inf")
        elif self.fail == "eval" and autocast:
            raise RuntimeError("this eval path needs fp32")
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        return torch.sigmoid(self.decoder(z)), mu, log_var


def fallback_trainer(tmp_path, precision, model, name="run", epochs=1, pred_step=0):
    config = TrainConfig(task="VAE0label", model="submission.VAE", latent_dim=3, batch_size=50, epochs=epochs,
                         lr=1e-3, pred_step=pred_step, eval_num=50, keep_last=1, device="cpu", precision=precision,
                         save_dir=str(tmp_path / name))
    torch.manual_seed(config.seed)
    return Trainer(config, MNISTDataset("train", limit=300), MNISTDataset("valid", limit=50), model=model)


def trained_state(trainer):
    trainer.train(save_loss_plot=False)
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}, list(trainer.train_losses)


def test_a_model_that_raises_under_bf16_trains_exactly_as_it_would_in_fp32(tmp_path, capsys):
    """Its first bf16 step raises half way through its forward: the step is undone (buffers, random
    state, no optimiser step) and taken again in fp32, so the whole run equals an fp32 run bit for bit."""
    torch.manual_seed(1)
    model = StatisticsInBuffers("raise")
    fp32_model = StatisticsInBuffers("raise")
    fp32_model.load_state_dict(model.state_dict())
    fallback = fallback_trainer(tmp_path, "bf16", model, "bf16")
    state, losses = trained_state(fallback)
    fp32_state, fp32_losses = trained_state(fallback_trainer(tmp_path, "fp32", fp32_model, "fp32"))
    assert losses == fp32_losses and len(losses) == 6
    for key, value in fp32_state.items():
        assert torch.equal(state[key], value), key
    assert state["images_seen"].item() == 300  # the failed attempt's count was undone
    notice = [line for line in capsys.readouterr().out.splitlines() if "autocast failed" in line]
    assert len(notice) == 1 and "at training step 1 (" in notice[0] and "index_add_" in notice[0]
    params = json.loads((tmp_path / "bf16" / "hyperparams.json").read_text())
    assert params["autocast"] == "fp32" and "training step 1" in params["autocast_fallback"]
    assert torch.load(tmp_path / "bf16.pth", weights_only=True)["hyperparams"]["autocast"] == "fp32"


def test_a_loss_not_finite_under_bf16_is_taken_again_in_fp32(tmp_path, capsys):
    """From step 3 on, the model's bf16 loss is infinite where its fp32 loss is not. Steps 1-2 stay bf16;
    step 3 is undone and retaken in fp32 with the same noise, which is what a run that switched to fp32
    by itself after step 2 computes."""
    torch.manual_seed(1)
    model = StatisticsInBuffers("nan", from_step=3)
    twin = StatisticsInBuffers("none")
    twin.load_state_dict(model.state_dict())
    state, losses = trained_state(fallback_trainer(tmp_path, "bf16", model, "fallback"))
    switched = fallback_trainer(tmp_path, "bf16", twin, "switched")
    optimise = switched.optimise

    def optimise_then_switch(*args):  # fp32 from step 3 on, without any failed attempt
        if switched.step == 2:
            switched.autocast_dtype = None
        return optimise(*args)
    switched.optimise = optimise_then_switch
    twin_state, twin_losses = trained_state(switched)
    assert losses == twin_losses and all(map(torch.isfinite, map(torch.tensor, losses)))
    for key, value in twin_state.items():
        assert torch.equal(state[key], value), key
    notice = [line for line in capsys.readouterr().out.splitlines() if "autocast failed" in line]
    assert len(notice) == 1 and "at training step 3 (its loss was nan)" in notice[0]


def test_a_model_whose_eval_path_fails_under_bf16_is_validated_in_fp32(tmp_path, capsys):
    trainer = fallback_trainer(tmp_path, "bf16", StatisticsInBuffers("eval"), pred_step=2)
    trainer.train(save_loss_plot=False)
    assert len(trainer.valid_losses) == 3 and trainer.autocast_dtype is None
    out = capsys.readouterr().out
    assert "bf16 autocast failed at the validation after step 2 (StatisticsInBuffers.forward(x [50, 1, 28, 28], " \
           "labels [50]) raised RuntimeError: this eval path needs fp32)" in out
    params = json.loads((tmp_path / "run" / "hyperparams.json").read_text())
    assert params["autocast"] == "fp32"
    checkpoint = torch.load(tmp_path / "run" / "epoch_1.pth", weights_only=True)
    # steps 1-2 were taken in bf16: the fallback changed nothing that had been done
    assert checkpoint["step"] == 6 and checkpoint["hyperparams"]["autocast"] == "fp32"


def test_an_error_fp32_raises_too_is_the_models_own(tmp_path, capsys):
    class Broken(StatisticsInBuffers):
        def forward(self, x, labels):
            raise ValueError("forgot to write forward")
    trainer = fallback_trainer(tmp_path, "bf16", Broken())
    with pytest.raises(LabError, match="raised ValueError: forgot to write forward"):
        trainer.train(save_loss_plot=False)
    assert "autocast failed" not in capsys.readouterr().out
    # the loss's check before the first step met the error first: nothing of the run was written
    assert not (tmp_path / "run" / "hyperparams.json").exists()


def test_a_loss_not_finite_in_fp32_either_stops_the_run_as_before(tmp_path, capsys):
    class Diverged(StatisticsInBuffers):
        def forward(self, x, labels):
            recon_x, mu, log_var = super().forward(x, labels)
            return recon_x, mu * float("nan"), log_var
    trainer = fallback_trainer(tmp_path, "bf16", Diverged("none"))
    with pytest.raises(LabError, match=r"the loss became nan at step 1 \(epoch 1\)"):
        trainer.train(save_loss_plot=False)
    assert "autocast failed" not in capsys.readouterr().out
