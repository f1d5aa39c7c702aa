"""train.py -> inference.py -> grade.py through subprocesses, on a tiny budget."""
import hashlib
import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from conftest import ROOT, TINY_TRAIN, run
from data_utils import cal_fid, load_split
from tasks import TASK_RECORDS, canonical_task


@pytest.fixture(scope="module")
def outputs(trained, tiny_valid, tmp_path_factory):
    """Inference outputs of both tiny models on the 200-image split, and their grades."""
    base = tmp_path_factory.mktemp("outputs")
    for task, (_, checkpoint) in trained.items():
        run("inference.py", "--checkpoint_path", checkpoint, "--data_path", tiny_valid, "--save_dir", base / task)
    result = run("grade.py", "--VAE0label_output_dir", base / "VAE0label",
                 "--Genwithlabel_output_dir", base / "Genwithlabel", "--result_path", base / "grade_result.json")
    return base, json.loads((base / "grade_result.json").read_text()), result.stdout


def test_training_run_files(trained):
    for task, (run_dir, checkpoint) in trained.items():
        assert (run_dir / "epoch_1.pth").is_file() and checkpoint.is_file()
        assert (run_dir / "loss_curve.png").is_file()
        params = json.loads((run_dir / "hyperparams.json").read_text())
        assert params["task"] == task and params["latent_dim"] == {"VAE0label": 6, "Genwithlabel": 4}[task]


def test_inference_writes_the_spec_layout(outputs):
    base, _, _ = outputs
    for task in ("VAE0label", "Genwithlabel"):
        folder = base / task
        assert len(list((folder / "recon").glob("recon_*.png"))) == 200
        for label in range(10):
            assert len(list((folder / "gen" / str(label)).glob("*.png"))) == TASK_RECORDS[task].samples_per_label
        with Image.open(folder / "recon" / "recon_0.png") as image:
            assert image.mode == "L" and image.size == (28, 28)
        for picture in ("samples.png", "recon.png"):
            assert (folder / picture).stat().st_size > 500
        info = json.loads((folder / "hyperparams.json").read_text())
        assert info["task"] == task and info["num_images"] == 200


def test_grade_json_and_bonus_use_the_trained_latent_dim(outputs):
    _, result, stdout = outputs
    for task, latent_dim in (("VAE0label", 6), ("Genwithlabel", 4)):
        entry = result[task]
        assert entry["latent_dim"] == latent_dim
        assert entry["bonus"] == pytest.approx(0.2 + 1 - latent_dim / 784)
        assert {"ssim", "mse", "score"} <= set(entry)
        assert task in stdout
    assert "fid" in result["Genwithlabel"] and "fid" not in result["VAE0label"]


def test_grade_numbers_match_an_independent_computation(outputs, tiny_valid):
    base, result, _ = outputs
    images, labels = load_split(tiny_valid)
    folder = base / "Genwithlabel"
    recon = np.stack([np.array(Image.open(folder / "recon" / f"recon_{i}.png")) for i in range(200)])
    ssim = np.mean([structural_similarity(images[i], recon[i], data_range=255) for i in range(200)])
    mse = np.mean((images / 255.0 - recon / 255.0) ** 2)
    fid = np.mean([cal_fid(images[labels == c] / 255.0,
                           np.stack([np.array(Image.open(p)) for p in (folder / "gen" / str(c)).glob("*.png")]) / 255.0)
                   for c in range(10)])
    entry = result["Genwithlabel"]
    assert entry["ssim"] == pytest.approx(ssim, abs=1e-9) and entry["mse"] == pytest.approx(mse, abs=1e-12)
    assert entry["fid"] == pytest.approx(fid, rel=1e-9)
    bonus = 0.2 + 1 - 4 / 784
    assert entry["score"] == pytest.approx(min((10 * ssim + 100 * max(0.1 - mse, 0) + max(10 - fid, 0)) * bonus, 30))


def folder_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_inference_is_seeded_and_alias_accepted(trained, tiny_valid, outputs, tmp_path):
    base, _, _ = outputs
    run("inference.py", "--task", "VAEOlabel", "--checkpoint_path", trained["VAE0label"][1],
        "--data_path", tiny_valid, "--save_dir", tmp_path / "again")
    assert folder_digest(tmp_path / "again") == folder_digest(base / "VAE0label")


def test_task_names_and_aliases():
    assert canonical_task("VAEwolabel") == canonical_task("VAEOlabel") == "VAE0label"
    result = run("train.py", "--task", "VAE1label", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown task 'VAE1label'" in result.stderr and "VAE0label" in result.stderr and "Genwithlabel" in result.stderr


def test_bool_flags_work_both_ways(tmp_path, tiny_valid):
    for flag, folder in (("--no-save_loss_plot", "off"), ("--save_loss_plot", "on")):
        run("train.py", "--task", "VAEwolabel", "--model", "demo", "--latent_dim", 2, "--save_dir", tmp_path / folder,
            "--valid_data", tiny_valid, flag, *TINY_TRAIN)
    assert (tmp_path / "off" / "epoch_1.pth").is_file() and not (tmp_path / "off" / "loss_curve.png").exists()
    assert (tmp_path / "on" / "loss_curve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "off" / "hyperparams.json").read_text())["model"] == "model.VAE"
    # grade.py's task switches take the aliases too, both ways
    result = run("grade.py", "--no-VAEwolabel", "--no-Genwithlabel", check=False)
    assert result.returncode == 2 and "nothing to grade" in result.stderr


def test_inference_never_replaces_a_folder_it_did_not_write(trained, tiny_valid, tmp_path):
    precious = tmp_path / "my_documents"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    result = run("inference.py", "--checkpoint_path", trained["VAE0label"][1], "--data_path", tiny_valid,
                 "--save_dir", precious, check=False)
    assert result.returncode == 2 and "holds 'thesis.txt'" in result.stderr and "nothing was changed" in result.stderr
    assert (precious / "thesis.txt").read_text() == "years of work"
    if torch.cuda.is_available():
        return  # the --device check below is about a machine without CUDA
    result = run("inference.py", "--checkpoint_path", trained["VAE0label"][1], "--device", "cuda:7",
                 "--save_dir", tmp_path / "out", check=False)
    assert result.returncode == 2 and "--device cuda:7" in result.stderr and "Traceback" not in result.stderr


def test_inference_refuses_a_contradicting_latent_dim(trained, tmp_path):
    result = run("inference.py", "--checkpoint_path", trained["Genwithlabel"][1], "--latent_dim", 20,
                 "--save_dir", tmp_path / "out", check=False)
    assert result.returncode == 2 and "--latent_dim 20 contradicts" in result.stderr and "latent_dim 4" in result.stderr
    assert not (tmp_path / "out").exists()
    result = run("inference.py", "--checkpoint_path", trained["Genwithlabel"][1], "--task", "VAE0label",
                 "--save_dir", tmp_path / "out", check=False)
    assert result.returncode == 2 and "trained for Genwithlabel" in result.stderr


def test_grade_names_a_missing_png_and_keeps_old_results(outputs, tmp_path):
    base, _, _ = outputs
    broken = tmp_path / "Genwithlabel"
    shutil.copytree(base / "Genwithlabel", broken)
    (broken / "recon" / "recon_17.png").unlink()
    results = tmp_path / "grade_result.json"
    results.write_text('{"keep": 1}')
    result = run("grade.py", "--Genwithlabel_output_dir", broken, "--no-VAE0label", "--result_path", results, check=False)
    assert result.returncode == 2 and "recon_17.png" in result.stderr and "Traceback" not in result.stderr
    assert results.read_text() == '{"keep": 1}'
    shutil.rmtree(broken / "gen" / "3")
    (broken / "recon" / "recon_17.png").write_bytes((base / "Genwithlabel" / "recon" / "recon_17.png").read_bytes())
    result = run("grade.py", "--Genwithlabel_output_dir", broken, "--no-VAE0label", "--result_path", results, check=False)
    assert result.returncode == 2 and "gen/3" in result.stderr


def test_nothing_to_grade_says_what_happened(outputs, tmp_path):
    """With VAE0label's folder present and the task switched off, the message names the switch, not a missing
    folder; with both switched off it says so; a missing folder is named by its path."""
    base, _, _ = outputs
    missing = tmp_path / "nowhere"
    result = run("grade.py", "--VAEwolabel", "False", "--VAE0label_output_dir", base / "VAE0label",
                 "--Genwithlabel_output_dir", missing, "--result_path", tmp_path / "r.json", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: nothing to grade: VAE0label is switched off (--VAE0label False); "
                                     f"Genwithlabel has no output folder {missing}; run inference.py first or pass "
                                     f"--<task>_output_dir")
    result = run("grade.py", "--VAEwolabel", "False", "--Genwithlabel", "False", "--result_path", tmp_path / "r.json",
                 check=False)
    assert result.stderr.strip() == "error: nothing to grade: every task is switched off; leave out --<task> False"
    assert not (tmp_path / "r.json").exists()


def test_grade_refuses_outputs_of_another_split(outputs, tmp_path):
    base, _, _ = outputs
    result = run("grade.py", "--VAE0label_output_dir", base / "VAE0label", "--no-Genwithlabel",
                 "--test_data_path", "test", "--result_path", tmp_path / "g.json", check=False)
    assert result.returncode == 2 and "was made from" in result.stderr and not (tmp_path / "g.json").exists()


def test_grade_and_the_task_list_start_without_torch():
    """grade.py needs no torch, and run.sh reads the task names from tasks.py: importing torch would add
    seconds to every grading and every run.sh."""
    probe = "import sys, grade, tasks; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


def test_the_race_benchmark_measures_on_the_device_it_is_given():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import race
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cpu = torch.device("cpu")
    assert race.matmul_limit(torch.float32, cpu, seconds=0.05) > 0.1  # GFLOP/s: any machine does more
    assert race.device_name(cpu).endswith("CPU threads")
    if torch.cuda.is_available():
        return  # the refusal below is about a machine without CUDA
    result = run("benchmarks/race.py", "--device", "cuda", check=False)
    assert result.returncode == 2 and "--device cuda" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.filterwarnings("ignore:GenModel. latent_dim")  # counted inside; inference.py builds the model again
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_every_latent_dim_the_handout_allows_trains_infers_and_grades(latent_dim, tiny_valid, tmp_path):
    """A code of 1 or 2 numbers: the classic picture of a VAE, and what a student chasing the compression
    bonus tries. The reference's GenModel keeps one Gaussian per class then, and says so in one line."""
    outputs = {}
    for task in ("VAE0label", "Genwithlabel"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run("train.py", "--task", task, "--latent_dim", latent_dim, "--save_dir", tmp_path / task,
                "--valid_data", tiny_valid, *TINY_TRAIN, "--no-save_loss_plot")
        said = {str(w.message) for w in caught if "one Gaussian per class" in str(w.message)}
        assert len(said) == (1 if task == "Genwithlabel" else 0), said  # one message, however often it is built
        run("inference.py", "--checkpoint_path", tmp_path / f"{task}.pth", "--data_path", tiny_valid,
            "--save_dir", tmp_path / "out" / task, "--no-pictures")
        outputs[task] = tmp_path / "out" / task
    run("grade.py", "--VAE0label_output_dir", outputs["VAE0label"], "--Genwithlabel_output_dir",
        outputs["Genwithlabel"], "--result_path", tmp_path / "grade_result.json")
    result = json.loads((tmp_path / "grade_result.json").read_text())
    for task in ("VAE0label", "Genwithlabel"):
        assert result[task]["latent_dim"] == latent_dim
        assert result[task]["bonus"] == pytest.approx(0.2 + 1 - latent_dim / 784)
        assert result[task]["score"] > 0
    assert np.isfinite(result["Genwithlabel"]["fid"])


@pytest.mark.parametrize("script, flags, typo", [("train.py", ["--epoch", "3"], "--epoch"),
                                                 ("inference.py", ["--checkpoint", "x.pth"], "--checkpoint"),
                                                 ("grade.py", ["--result", "r.json"], "--result")])
def test_a_shortened_flag_is_an_error_not_another_flag(script, flags, typo):
    """`train.py --epoch 3` once meant --epochs 3 (argparse's prefix matching) and replaced a student's finished
    run; every command line now takes a flag only by its full name."""
    result = run(script, *flags, check=False)
    assert result.returncode == 2
    assert f"unrecognized arguments: {typo}" in result.stderr


def test_a_damaged_checkpoint_says_what_the_file_is_and_what_to_pass(tmp_path):
    """torch's own words for a file cut short were cut mid-word (`... This is an internal miniz error. If yo`),
    and for a text file a bare `(101)`: the error now says what the file is and what to do, in one line."""
    data = (ROOT / "checkpoints" / "VAE0label" / "default.pth").read_bytes()
    cases = {"cut.pth": (data[:len(data) // 2], "the start of a zip archive (torch's format) cut short at"),
             "notes.pth": (b"my notes: lr 3e-3 worked best\n", "a text file, not a checkpoint (it begins 'my notes"),
             "empty.pth": (b"", "it is empty (0 bytes)")}
    for name, (content, said) in cases.items():
        (tmp_path / name).write_bytes(content)
        result = run("inference.py", "--checkpoint_path", tmp_path / name, "--save_dir", tmp_path / "out", check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert said in lines[0] and "Pass a .pth that train.py wrote" in lines[0] and "retrain" in lines[0]
        assert "miniz" not in lines[0] and not (tmp_path / "out").exists()


def test_progress_is_lines_not_bars_where_the_output_is_not_a_terminal(tmp_path, tiny_valid):
    """A redirected `bash run.sh` once logged 561 KB of progress bars redrawn in place. Where the output is
    not a terminal, progress is a line now and then (at most every data_utils.PROGRESS_SECONDS, and at the
    end of each loop), never a carriage return."""
    trained = run("train.py", "--task", "VAE0label", "--save_dir", tmp_path / "run", "--valid_data", tiny_valid,
                  "--limit", 640, "--epochs", 2, "--batch_size", 32, "--eval_num", 64, "--pred_step", 0,
                  "--no-save_loss_plot")
    inferred = run("inference.py", "--checkpoint_path", tmp_path / "run.pth", "--data_path", tiny_valid,
                   "--save_dir", tmp_path / "out", "--no-pictures")
    for result in (trained, inferred):
        assert "\r" not in result.stderr and "\x1b[" not in result.stderr
    bars = [line for line in trained.stderr.splitlines() if line.startswith("epoch ")]
    assert 2 <= len(bars) <= 6, bars  # 20 batches an epoch: its start and its end, not one line per batch
    assert all(len(line) <= 100 for line in bars)


def test_a_finished_run_is_never_replaced_without_overwrite(tmp_path, tiny_valid):
    """After a finished run, `train.py --epoch 3` (read as --epochs 3) once reused its folder, deleted epochs and
    overwrote the exported model. A finished run is a result: a new run is refused in one line saying how."""
    flags = ["--task", "VAE0label", "--save_dir", tmp_path / "run", "--valid_data", tiny_valid, "--limit", 128,
             "--batch_size", 64, "--eval_num", 64, "--pred_step", 0, "--no-save_loss_plot"]
    run("train.py", *flags, "--epochs", 2)
    before = {path.name: path.read_bytes() for path in [tmp_path / "run.pth", *(tmp_path / "run").iterdir()]}
    again = run("train.py", *flags, "--epochs", 1, check=False)  # a quick try, in the same folder
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1, again.stderr
    assert lines[0] == (f"error: {tmp_path / 'run'} holds a finished run (epoch_2.pth and run.pth): choose another "
                        f"--save_dir for a new run (bash run.sh: RUN=name bash run.sh), or pass --overwrite to replace "
                        f"it (FRESH=1 bash run.sh)")
    assert {path.name: path.read_bytes() for path in [tmp_path / "run.pth", *(tmp_path / "run").iterdir()]} == before
    run("train.py", *flags, "--epochs", 1, "--overwrite")  # said so: replaced
