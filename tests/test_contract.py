"""contract.py: the handout's calls, their checks, and the decode fallbacks; the handout's flag
and checkpoint styles; outputs.py never replacing a folder it did not write."""
import argparse
import json
import shutil

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import contract
import outputs
from conftest import ROOT, run
from data_utils import BooleanFlag, LabError
from tasks import TASK_RECORDS


class TinyDecoder(nn.Module):
    """decode(z, labels) = sigmoid(W [z, onehot(labels)]), written in several students' styles."""

    def __init__(self, style, latent_dim=3):
        super().__init__()
        self.style = style
        self.fc = nn.Linear(latent_dim + 10, 784)

    def decode(self, z, label):
        if self.style == "batched":
            onehot = F.one_hot(torch.as_tensor(label).long().reshape(-1).expand(len(z)), 10).float()
        elif self.style == "0dim-mixes-labels":
            # written for one label: with a [B] label every row gets every label's one-hot
            onehot = torch.zeros(1, 10)
            onehot[0, label] = 1
            onehot = onehot.expand(len(z), 10)
        elif self.style == "batch-only":
            onehot = F.one_hot(label, 10).float()  # a 0-dim label gives [10]: torch.cat fails below
        elif self.style == "int-only":
            if isinstance(label, torch.Tensor):
                raise TypeError("label must be an int")
            onehot = F.one_hot(torch.full((len(z),), label), 10).float()
        else:
            raise RuntimeError("broken decoder")
        return torch.sigmoid(self.fc(torch.cat([z, onehot], dim=1)))


def handout_images(model, z, labels):
    """The handout's generation, written independently: one sample at a time, 0-dim label."""
    return torch.stack([model.decode(z[i:i + 1], labels[i]).reshape(28, 28) for i in range(len(z))])


@pytest.mark.parametrize("style, mode", [("batched", "batched"), ("0dim-mixes-labels", "tensor"),
                                         ("batch-only", "batched"), ("int-only", "int")])
def test_decoder_picks_a_call_that_gives_the_handouts_images(style, mode):
    torch.manual_seed(0)
    model = TinyDecoder(style).eval()
    decoder = contract.Decoder(model, latent_dim=3)
    assert decoder.mode == mode
    z, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 7, 8, 9])
    images = decoder(z, labels)
    assert images.shape == (6, 28, 28)
    reference = TinyDecoder("batched")
    reference.load_state_dict(model.state_dict())
    assert torch.allclose(images, handout_images(reference, z, labels), atol=1e-6)


@pytest.mark.parametrize("style, warned", [("batched", False), ("0dim-mixes-labels", False), ("batch-only", True),
                                           ("int-only", True)])
def test_the_lab_says_when_the_handouts_one_sample_call_fails(style, warned):
    """The lab falls back where the handout's inference.py stopped; it grades such a decoder, but says so."""
    decoder = contract.Decoder(TinyDecoder(style).eval(), latent_dim=3)
    if not warned:
        assert decoder.warning is None
        return
    assert decoder.warning.startswith("the handout's one-sample call TinyDecoder.decode(z [1, 3], label tensor(5)) "
                                      "fails (")
    assert decoder.warning.endswith(f"so the original harness would stop there; this lab used {decoder.note}")
    assert ("RuntimeError" if style == "batch-only" else "TypeError: label must be an int") in decoder.warning


def test_a_decoder_that_fails_every_call_is_named():
    with pytest.raises(contract.ContractError, match=r"decode\(z \[1, 3\], label tensor\(5\)\) raised RuntimeError"):
        contract.Decoder(TinyDecoder("broken"), latent_dim=3)


class Shaped(nn.Module):
    def __init__(self, latent_dim=4, recon_shape=(784,), mu_width=None):
        super().__init__()
        self.fc = nn.Linear(784, 2 * latent_dim)
        self.out = nn.Linear(latent_dim, 784)
        self.recon_shape, self.mu_width = recon_shape, mu_width or latent_dim

    def forward(self, x, labels):
        mu, log_var = self.fc(x.view(-1, 784)).chunk(2, dim=1)
        size = 1
        for n in self.recon_shape:
            size *= n
        recon = torch.sigmoid(self.out(mu))[:, :size].reshape(len(x), *self.recon_shape)
        return recon, mu[:, :self.mu_width], log_var[:, :self.mu_width]


@pytest.mark.parametrize("shape", [(784,), (28, 28), (1, 28, 28)])
def test_forward_accepts_every_recon_shape_of_the_handout(shape):
    x, labels = torch.rand(5, 1, 28, 28), torch.arange(5)
    images, mu, _ = contract.reconstruct(Shaped(recon_shape=shape), x, labels, latent_dim=4)
    assert images.shape == (5, 28, 28) and mu.shape == (5, 4)


def test_forward_names_a_code_narrower_than_latent_dim():
    with pytest.raises(contract.ContractError, match=r"mu of shape \[5, 2\], expected \[5, 4\].*latent_dim=4"):
        contract.forward(Shaped(mu_width=2), torch.rand(5, 1, 28, 28), torch.arange(5), latent_dim=4)
    with pytest.raises(contract.ContractError, match="expected 5 images of 784 values"):
        contract.forward(Shaped(recon_shape=(27, 28)), torch.rand(5, 1, 28, 28), torch.arange(5))


def test_a_model_without_parameters_names_the_todo_to_write_first():
    class VAE(nn.Module):
        def __init__(self, latent_dim=8):
            super().__init__()
    with pytest.raises(contract.ContractError, match=r"VAE has no trainable parameters.*section 2\.2\.1"):
        contract.require_parameters(VAE())


def test_check_passes_the_reference_and_names_the_failing_call():
    import types

    import submission
    for task in TASK_RECORDS:
        info = contract.check(submission, task, latent_dim=4)
        assert info["latent_dim"] == 4 and info["decode"] == "batched" and info["parameters"] > 0
    broken = types.SimpleNamespace(VAE=submission.VAE, GenModel=submission.GenModel,
                                   vae_loss=lambda recon_x, x, mu, log_var, var=0.5: (x - recon_x.reshape(x.shape)).sum(1))
    with pytest.raises(contract.ContractError, match="vae_loss returned .*expected a scalar tensor"):
        contract.check(broken, "VAE0label", latent_dim=4)


@pytest.mark.parametrize("words, expected", [([], None), (["--flag"], True), (["--flag", "True"], True),
                                             (["--flag", "False"], False), (["--flag", "false"], False),
                                             (["--flag", "0"], False), (["--no-flag"], False)])
def test_boolean_flags_read_the_handouts_value_style(words, expected):
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", action=BooleanFlag, default=None)
    parser.add_argument("--other", default="x")
    assert parser.parse_args(words + ["--other", "y"]).flag is expected


def test_grade_takes_value_style_task_switches(tmp_path):
    result = run("grade.py", "--Genwithlabel", "False", "--VAEwolabel", "False", "--result_path", tmp_path / "g.json",
                 check=False)
    assert result.returncode == 2 and "nothing to grade" in result.stderr
    result = run("grade.py", "--Genwithlabel", "maybe", check=False)
    assert result.returncode == 2 and "--Genwithlabel True or --Genwithlabel False" in result.stderr


def test_inference_refuses_a_folder_laid_out_by_the_handouts_scripts(tmp_path):
    """The handout trained into its save_dir and inferred into it too: epoch_1.pth sits beside recon/."""
    folder = tmp_path / "run"
    (folder / "recon").mkdir(parents=True)
    (folder / "recon" / "recon_0.png").write_bytes(b"old")
    (folder / "epoch_1.pth").write_bytes(b"weights")
    (folder / "loss_curve.png").write_bytes(b"curve")
    with pytest.raises(LabError, match="holds 'epoch_1.pth'.*nothing was changed"):
        outputs.check_replaceable(folder)
    # the same names, without a checkpoint, but not marked as written by inference.py
    (folder / "epoch_1.pth").unlink()
    (folder / "hyperparams.json").write_text(json.dumps({"batch_size": 1024}))  # the Trainer's file
    with pytest.raises(LabError, match="not an output folder of inference.py"):
        outputs.check_replaceable(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["hyperparams.json", "loss_curve.png", "recon"]
    (folder / "hyperparams.json").write_text(json.dumps({"written_by": outputs.WRITTEN_BY}))
    outputs.check_replaceable(folder)  # an earlier output, and nothing else: replaceable


def test_inference_reads_a_handout_format_checkpoint(tmp_path, tiny_valid):
    from submission import GenModel
    torch.manual_seed(0)
    model = GenModel(latent_dim=3)
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path / "epoch_3.pth"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               path)
    result = run("inference.py", "--checkpoint_path", path, "--save_dir", tmp_path / "out", check=False)
    assert result.returncode == 2 and "handout's format" in result.stderr and "--task and --latent_dim" in result.stderr
    result = run("inference.py", "--checkpoint_path", path, "--task", "Genwithlabel", "--latent_dim", 3,
                 "--data_path", tiny_valid, "--inf_num", 20, "--save_dir", tmp_path / "out")
    assert "latent_dim 3 come from the flags" in result.stdout
    info = json.loads((tmp_path / "out" / "hyperparams.json").read_text())
    assert info["latent_dim"] == 3 and info["task"] == "Genwithlabel" and info["num_images"] == 20
    model.eval()
    x = torch.from_numpy(__import__("numpy").load(tiny_valid)["images"][:1]).float().div(255).unsqueeze(1)
    label = torch.from_numpy(__import__("numpy").load(tiny_valid)["labels"][:1])
    expected = torch.round(model(x, label)[0].clamp(0, 1) * 255).reshape(28, 28).to(torch.uint8).numpy()
    assert (outputs.read_png(outputs.recon_path(tmp_path / "out", 0)) == expected).all()


def test_small_things_a_new_user_meets(tmp_path):
    """A folder of PNGs as --data_path names the problem, not a rebuild of the splits; a run inside
    the lab records its folder relative to the lab, not a developer's absolute path."""
    from data_utils import ROOT, load_split
    (tmp_path / "pngs").mkdir()
    with pytest.raises(LabError, match="is a folder: the lab reads a split as one .npz file") as raised:
        load_split(tmp_path / "pngs")
    assert "build.py" not in str(raised.value)
    for task in ("VAE0label", "Genwithlabel"):
        shipped = torch.load(ROOT / "checkpoints" / task / "default.pth", weights_only=True)["hyperparams"]
        assert shipped["save_dir"] == f"checkpoints/{task}/run"
    result = run("inference.py", "--help")
    assert "images per forward call" in result.stdout and "auto (cuda, then mps, then cpu; the default)" in result.stdout


LOSS_LINE = "return (kl + reconstruction).mean()"


def lab_copy(folder, line, replacement):
    """The lab's modules and check_submission.py in `folder`, with the reference submission.py's `line` replaced."""
    lab_with(folder, changed((ROOT / "submission.py").read_text(), {line: replacement}))


def lab_with(folder, submission_source):
    """The lab's modules and check_submission.py in `folder`, with `submission_source` as its submission.py."""
    from tools.kit import grader_lab_files
    for name in grader_lab_files(ROOT):
        shutil.copyfile(ROOT / name, folder / name)
    shutil.copyfile(ROOT / "tools" / "check_submission.py", folder / "check_submission.py")
    (folder / "submission.py").write_text(submission_source)


def changed(source, replacements):
    for line, replacement in replacements.items():
        assert source.count(line) == 1, line
        source = source.replace(line, replacement)
    return source


@pytest.mark.parametrize("wrong, said", [
    ("return -(kl + reconstruction).mean()", "vae_loss falls as the reconstruction gets worse and as mu leaves 0"),
    ("return (reconstruction + 0 * kl).mean()", "vae_loss does not rise when mu leaves 0"),
    ("return (kl + reconstruction)", "], expected a scalar tensor (the mean over the batch)"),
])
def test_a_loss_of_the_wrong_sign_or_without_a_term_is_named_by_the_check_and_the_first_step(wrong, said, tmp_path,
                                                                                             tiny_valid):
    """A student's `-(kl + rec).mean()` once passed check_submission.py and trained to `train loss -26933.23` and a
    blank loss curve. Both the check and train.py's first step now say what is wrong, in one line."""
    lab_copy(tmp_path, LOSS_LINE, wrong)
    checked = run("check_submission.py", "--task", "VAE0label", folder=tmp_path, check=False)
    assert checked.returncode != 0 and said in checked.stdout + checked.stderr
    trained = run("train.py", "--task", "VAE0label", "--save_dir", tmp_path / "run", "--limit", 64, "--epochs", 1,
                  "--train_data", tiny_valid, "--valid_data", tiny_valid, "--eval_num", 32, "--pred_step", 0,
                  folder=tmp_path, check=False)
    lines = trained.stderr.strip().splitlines()
    assert trained.returncode == 2 and lines[-1].startswith("error: ") and said in lines[-1], trained.stderr
    assert "train loss" not in trained.stdout  # stopped before the first step


def test_a_run_that_fails_before_it_saves_anything_leaves_no_folder(tmp_path, tiny_valid):
    """A training step that raises (here the reparameterisation, in train mode only, where check_submission.py
    would have said so) once left run/ holding only hyperparams.json."""
    lab_copy(tmp_path, "return mu + eps * torch.exp(0.5 * log_var)", 'raise ValueError("forgot to finish this")')
    trained = run("train.py", "--task", "VAE0label", "--save_dir", tmp_path / "run", "--limit", 64, "--epochs", 1,
                  "--train_data", tiny_valid, "--valid_data", tiny_valid, "--eval_num", 32, "--pred_step", 0,
                  folder=tmp_path, check=False)
    lines = trained.stderr.strip().splitlines()
    assert trained.returncode == 2 and "forgot to finish this" in lines[-1], trained.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.pth").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before is the user's: never removed
    run("train.py", "--task", "VAE0label", "--save_dir", tmp_path / "kept", "--limit", 64, "--epochs", 1,
        "--train_data", tiny_valid, "--valid_data", tiny_valid, "--eval_num", 32, "--pred_step", 0,
        folder=tmp_path, check=False)
    assert (tmp_path / "kept").is_dir()


# A student's VAE whose encoder heads are 2 * latent_dim wide (tests/mistakes/encoder_width.py), and the other
# widths students get wrong, made from it: the widths it gets right, one changed at a time.
ENCODER_WIDTH = (ROOT / "tests" / "mistakes" / "encoder_width.py").read_text()
RIGHT_HEADS = {"self.fc_mu = nn.Linear(hidden_dim, 2 * latent_dim)": "self.fc_mu = nn.Linear(hidden_dim, latent_dim)",
               "self.fc_log_var = nn.Linear(hidden_dim, 2 * latent_dim)":
                   "self.fc_log_var = nn.Linear(hidden_dim, latent_dim)"}
CALL = "VAE.forward(x [{B}, 1, 28, 28], labels [{B}])"


@pytest.mark.parametrize("replacements, failing_line, said", [
    ({}, "h = F.relu(self.fc3(z))",
     CALL + " failed at submission.py:{line} (in VAE.decode): RuntimeError: mat1 and mat2 shapes cannot be multiplied "
            "({B}x48 and 24x256); the contract wants mu and log_var [{B}, 24] (the model was built with latent_dim=24) "
            "and recon_x with 784 values per image: check each layer's width against these"),
    ({"self.fc3 = nn.Linear(latent_dim, hidden_dim)": "self.fc3 = nn.Linear(2 * latent_dim, hidden_dim)"}, None,
     CALL + " returned mu of shape [{B}, 48], expected [{B}, 24] (the model was built with latent_dim=24)"),
    ({**RIGHT_HEADS, "self.fc5 = nn.Linear(512, 784)": "self.fc5 = nn.Linear(512, 748)"}, None,
     CALL + " returned recon_x of shape [{B}, 748], expected {B} images of 784 values ([{B}, 784], [{B}, 28, 28] or "
            "[{B}, 1, 28, 28])"),
    ({**RIGHT_HEADS, "(x.view(len(x), -1) - recon_x.view(len(x), -1))": "(x - recon_x)"}, "reconstruction = ",
     "vae_loss(recon_x [{B}, 784], x [{B}, 1, 28, 28], mu [{B}, 24], log_var [{B}, 24], var=0.5) failed at "
     "submission.py:{line} (in vae_loss): RuntimeError: The size of tensor a (28) must match the size of tensor b "
     "(784) at non-singleton dimension 3; the contract wants vae_loss to take recon_x as forward returns it, beside "
     "x [{B}, 1, 28, 28], and return a scalar tensor: reshape them alike before comparing them"),
], ids=["encoder-heads", "mu-returned", "recon-returned", "loss-reshape"])
def test_a_width_that_does_not_fit_the_contract_is_named_with_the_shape_it_should_have(replacements, failing_line, said,
                                                                                      tmp_path, tiny_valid):
    """An encoder returning [B, 48] for latent_dim 24 got `VAE.forward(x [8, 1, 28, 28], labels [8]) raised
    RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x48 and 24x256)`: no word of which part, or of the
    shape expected. The check and train.py (its check before the first step on 2 images, or with --no-check_loss
    the first step itself) now name the line of submission.py where it failed and the shapes the contract fixes;
    an output of the wrong shape is named with the shape it should have."""
    source = changed(ENCODER_WIDTH, replacements)
    line = next(n for n, text in enumerate(source.splitlines(), 1) if failing_line in text) if failing_line else None
    lab_with(tmp_path, source)
    checked = run("check_submission.py", "--task", "VAE0label", folder=tmp_path, check=False)
    assert checked.returncode == 1 and f"VAE0label: {said.format(B=8, line=line)}" in checked.stdout.splitlines(), \
        checked.stdout
    for flags, batch in (([], 2), (["--no-check_loss"], 64)):
        trained = run("train.py", "--task", "VAE0label", "--save_dir", tmp_path / "run", "--limit", 64, "--epochs", 1,
                      "--var", 0.5, "--train_data", tiny_valid, "--valid_data", tiny_valid, "--eval_num", 32,
                      "--pred_step", 0, *flags, folder=tmp_path, check=False)
        lines = trained.stderr.strip().splitlines()  # the first step's progress bar, then the error
        assert trained.returncode == 2 and lines[-1] == f"error: {said.format(B=batch, line=line)}", trained.stderr
        assert "Traceback" not in trained.stderr and (flags or len(lines) == 1)
        assert not (tmp_path / "run").exists()


class ForgetsTheLabel(TinyDecoder):
    def decode(self, z, label):
        return torch.sigmoid(self.fc(z))  # self.fc takes z beside the one-hot label: 3 + 10 wide


def test_a_decode_that_fails_on_a_shape_is_named_with_the_shapes_of_the_contract():
    with pytest.raises(contract.ContractError) as raised:
        contract.Decoder(ForgetsTheLabel("batched").eval(), latent_dim=3)
    line = ForgetsTheLabel.decode.__code__.co_firstlineno + 1
    assert str(raised.value) == (
        f"ForgetsTheLabel.decode(z [1, 3], label tensor(5)) failed at test_contract.py:{line} (in "
        f"ForgetsTheLabel.decode): RuntimeError: mat1 and mat2 shapes cannot be multiplied (1x3 and 13x784) (the "
        f"batched call decode(z [3, 3], labels [3]) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied "
        f"(3x3 and 13x784)); the contract wants decode to take z [1, 3] (the model was built with latent_dim=3) and "
        f"return 784 values per image: check each layer's width against these")
