"""The course kit (tools/course.py): the stripped starter, the kit's contents, and batch autograding."""
import csv
import difflib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from data_utils import LabError, atomic_torch_save, load_split
from tools import course

SECTIONS = {"2.2.1", "2.2.2", "2.2.3", "2.2.4", "2.3", "3"}


@pytest.fixture(scope="module")
def solution():
    return (ROOT / "submission.py").read_text()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "kit"
    course.write_starter(out)
    return out


@pytest.fixture(scope="module")
def starter(kit):
    """The kit's submission.py imported under its own module name (the solution stays `submission`)."""
    spec = importlib.util.spec_from_file_location("starter_submission", kit / "submission.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- stripping
def test_stripped_file_differs_from_the_solution_only_inside_the_markers(solution):
    stripped = course.strip_solution(solution)
    regions = course.solution_regions(solution)
    assert {r.section for r in regions} == SECTIONS and len(regions) == 12
    old, new = solution.splitlines(), stripped.splitlines()
    inside = set()
    for region in regions:
        inside.update(range(region.begin, region.end + 1))
    changed = [op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if op[0] != "equal"]
    assert changed
    for _, i1, i2, _, _ in changed:
        assert set(range(i1, i2)) <= inside, f"lines {i1 + 1}..{i2} changed outside the markers"
    outside = [line for i, line in enumerate(old) if i not in inside]
    assert [line for line in new if "TODO" not in line and line.strip() != "pass"] == outside
    assert not any(course.BEGIN_MARKER.match(line) or course.END_MARKER.match(line) for line in new)
    for answer in ("nn.Conv2d", "log_var.exp()", "torch.randn_like", "self.decoder(z, condition)"):
        assert answer in solution and answer not in stripped
    compile(stripped, "submission.py", "exec")


def test_strip_rules_on_a_small_file():
    source = (
        "import os\n"
        "class A:\n"
        "    def __init__(self):\n"
        "        self.keep = 1\n"
        "        # BEGIN SOLUTION 9.1\n"
        "        self.secret = 2\n"
        "        # END SOLUTION\n"
        "\n"
        "    def f(self, x):\n"
        '        """Doc kept."""\n'
        "        # BEGIN SOLUTION 2.3\n"
        "        return x + 1\n"
        "        # END SOLUTION\n"
        "# BEGIN SOLUTION 0\n"
        "CONSTANT = 3\n"
        "# END SOLUTION\n"
    )
    assert course.strip_solution(source) == (
        "import os\n"
        "class A:\n"
        "    def __init__(self):\n"
        "        self.keep = 1\n"
        "        # TODO 9.1: define the layers and attributes of A here.\n"
        "        pass\n"
        "\n"
        "    def f(self, x):\n"
        '        """Doc kept."""\n'
        '        raise NotImplementedError("TODO 2.3 (the loss): implement A.f in submission.py")\n'
        "# TODO 0: your code here.\n"
        "pass\n"
    )
    assert course.strip_solution(source.replace("\n", "\r\n")) == course.strip_solution(source).replace("\n", "\r\n")


@pytest.mark.parametrize("source, message", [
    ("def f():\n    # BEGIN SOLUTION 1\n    return 1\n", "submission.py:2: the region opened here has no"),
    ("def f():\n    return 1\n    # END SOLUTION\n", "submission.py:3: '# END SOLUTION' without"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n",
     "submission.py:2: '# BEGIN SOLUTION' needs a section"),
    ("def f():\n    # BEGIN SOLUTION 1\n    # BEGIN SOLUTION 2\n    return 1\n    # END SOLUTION\n",
     "submission.py:3: BEGIN SOLUTION inside"),
    ("x = 1\n", "no '# BEGIN SOLUTION <section>' markers"),
    ("def f(:\n", "does not parse"),
])
def test_marker_mistakes_are_named(source, message):
    with pytest.raises(LabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        course.strip_solution(source)


# ---------------------------------------------------------------- the starter kit
def test_kit_contents(kit, solution):
    files = {p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()}
    assert (kit / "submission.py").read_text() == course.strip_solution(solution)
    assert {"submission.py", "model.py", "trainer.py", "train.py", "inference.py", "grade.py", "data_utils.py",
            "tasks.py", "dataset/train.npz", "dataset/valid.npz", "dataset/SHA256SUMS", "check_submission.py",
            "STARTER.md"} <= files
    assert not any(f.startswith(("tests/", "tools/", ".ci/", "checkpoints/")) or f.endswith(".pth") for f in files)
    assert "dataset/test.npz" not in files and "docs/derivations.md" not in files
    for name in ("model.py", "tasks.py", "dataset/valid.npz"):
        assert (kit / name).read_bytes() == (ROOT / name).read_bytes()
    # The checksum list still names test.npz; the splits that are there load all the same.
    assert "test.npz" in (kit / "dataset" / "SHA256SUMS").read_text()
    images, labels = load_split(kit / "dataset" / "valid.npz")
    assert images.shape == (10_000, 28, 28) and len(labels) == 10_000
    note = (kit / "STARTER.md").read_text()
    assert "ConvEncoder.forward" in note and "dataset/test.npz" in note and "tests/" in note
    compile((kit / "check_submission.py").read_text(), "check_submission.py", "exec")
    with pytest.raises(LabError, match="not an empty folder"):
        course.write_starter(kit)


def test_starter_imports_builds_and_stubs_name_their_section(starter):
    vae, gen = starter.VAE(latent_dim=8), starter.GenModel(latent_dim=4)   # building works
    starter.ConvEncoder(8), starter.ConvDecoder(8)
    x, z, labels = torch.rand(2, 1, 28, 28), torch.randn(2, 8), torch.tensor([1, 2])
    calls = {
        ("2.2.2", "ConvEncoder.forward"): lambda: vae.encode(x),
        ("2.2.3", "ConvDecoder.forward"): lambda: vae.decode(z, 3),
        ("2.2.4", "VAE.forward"): lambda: vae(x, labels),
        ("2.2.4", "VAE.reparameterize"): lambda: vae.reparameterize(z, z),
        ("2.3", "vae_loss"): lambda: starter.vae_loss(x, x, z, z),
        ("3", "GenModel.encode"): lambda: gen.encode(x, labels),
        ("3", "GenModel.decode"): lambda: gen.decode(z[:, :4], 3),
        ("3", "GenModel.forward"): lambda: gen(x, labels),
        ("3", "GenModel.reparameterize"): lambda: gen.reparameterize(z, z),
    }
    for (section, where), call in calls.items():
        with pytest.raises(NotImplementedError) as raised:
            call()
        assert str(raised.value).startswith(f"TODO {section} (") and where in str(raised.value)
    # Signatures and docstrings are the solution's.
    import submission
    for name in ("VAE", "GenModel", "vae_loss"):
        assert getattr(starter, name).__doc__ == getattr(submission, name).__doc__
    assert starter.GenModel.decode.__doc__ == submission.GenModel.decode.__doc__


# ---------------------------------------------------------------- checkpoints handed in
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def exported_checkpoint(task, latent_dim, path):
    from trainer import Trainer, TrainConfig
    model = course.MODEL_FOR_TASK["submission"][task]
    trainer = Trainer(TrainConfig(task=task, model=model, latent_dim=latent_dim, device="cpu"), None, None)
    atomic_torch_save(trainer.checkpoint(with_training_state=False), path)
    return path


def test_handed_in_checkpoints_load_without_running_code(tmp_path):
    good = exported_checkpoint("Genwithlabel", 4, tmp_path / "gen.pth")
    assert course.check_student_checkpoint(good, "Genwithlabel") == 4
    with pytest.raises(LabError, match=r"checkpoints/VAE0label.pth is a Genwithlabel checkpoint"):
        course.check_student_checkpoint(good, "VAE0label")
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "task": "VAE0label", "x": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(LabError, match=r"refused to load checkpoints/VAE0label.pth"):
        course.check_student_checkpoint(tmp_path / "evil.pth", "VAE0label")
    assert not marker.exists()
    demo = torch.load(good, weights_only=True)
    demo.update(task="VAE0label", model="model.VAE")
    torch.save(demo, tmp_path / "demo.pth")
    with pytest.raises(LabError, match="holds a model.VAE model, not submission.VAE"):
        course.check_student_checkpoint(tmp_path / "demo.pth", "VAE0label")


# ---------------------------------------------------------------- running untrusted code
def test_run_phase_kills_the_whole_process_group_and_names_the_error(tmp_path):
    env = course._sandbox_env()
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, time; child = subprocess.Popen(['sleep', '60']); "
            f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)")
    result = course.run_phase([sys.executable, "-c", code], tmp_path, 5, tmp_path / "hang.log", env)
    assert not result.ok and result.error == "timed out after 5 s (killed)" and 5 <= result.seconds < 15
    status = Path(f"/proc/{pid_file.read_text()}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()  # gone, or a zombie awaiting its reaper
    result = course.run_phase([sys.executable, "-c", "print('working'); raise ValueError('bad shape')"],
                              tmp_path, 30, tmp_path / "crash.log", env)
    assert not result.ok and result.error == "ValueError: bad shape"
    assert "working" in (tmp_path / "crash.log").read_text()


# ---------------------------------------------------------------- batch autograding
IMPORT_LIMIT = 20


@pytest.fixture(scope="module")
def autograded(kit, tiny_valid, tmp_path_factory):
    base = tmp_path_factory.mktemp("autograde")
    students = base / "submissions"
    for name in ("ref", "starter", "syntax", "loops"):
        (students / name).mkdir(parents=True)
    (students / "ref" / "submission.py").write_text((ROOT / "submission.py").read_text())
    (students / "ref" / "checkpoints").mkdir()
    exported_checkpoint("Genwithlabel", 4, students / "ref" / "checkpoints" / "Genwithlabel.pth")
    (students / "starter" / "submission.py").write_text((kit / "submission.py").read_text())
    (students / "syntax" / "submission.py").write_text("import torch\n\nclass VAE(torch.nn.Module:\n    pass\n")
    (students / "loops" / "submission.py").write_text("import time\nwhile True:\n    time.sleep(0.01)\n")
    (students / ".hidden").mkdir()
    out = base / "grades" / "table.csv"
    command = [sys.executable, "-m", "tools.course", "autograde", students, "--out", out,
               "--data_path", tiny_valid, "--valid_data", tiny_valid, "--inf_num", 100,
               "--epochs", 1, "--train_limit", 128, "--batch_size", 64, "--eval_num", 100, "--pred_step", 0,
               "--import_time_limit", IMPORT_LIMIT, "--time_limit", 240, "--work_dir", base / "work"]
    started = time.perf_counter()
    result = subprocess.run(list(map(str, command)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out, newline="") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    records = {r["student"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    return base, out, rows, records, result.stdout, seconds


def test_autograde_table_layout(autograded):
    base, out, rows, records, stdout, _ = autograded
    assert list(rows) == ["loops", "ref", "starter", "syntax"]
    with open(out, newline="") as handle:
        assert next(csv.reader(handle)) == course.TABLE_COLUMNS
    markdown = out.with_suffix(".md").read_text().splitlines()
    assert markdown[0] == "| " + " | ".join(course.TABLE_COLUMNS) + " |" and len(markdown) == 2 + 4
    assert (base / "grades" / "table_logs" / "ref" / "train_VAE0label.log").is_file()
    assert "[2/4] ref: VAE0label: grade" in stdout


def test_autograde_grades_the_reference_like_grade_py(autograded, tiny_valid):
    from grade import GRADE_CAPS, grade_task
    base, _, rows, records, _, _ = autograded
    row, record = rows["ref"], records["ref"]
    assert row["errors"] == "" and record["errors"] == []
    assert record["tasks"]["VAE0label"]["source"] == "trained"
    assert record["tasks"]["Genwithlabel"]["source"] == "handed in"
    for task, latent_dim in (("VAE0label", 8), ("Genwithlabel", 4)):  # class default; the checkpoint's
        again = grade_task(task, base / "work" / "ref" / "outputs" / task, tiny_valid)
        assert again["num_images"] == 100 and again["latent_dim"] == latent_dim
        assert float(row[f"{task}_grade"]) == again["score"]
        assert float(row[f"{task}_ssim"]) == again["ssim"] and float(row[f"{task}_mse"]) == again["mse"]
        ssim, mse = again["ssim"], again["mse"]
        bonus = 0.2 + 1 - latent_dim / 784
        if task == "VAE0label":
            expected = min((5 * ssim + 50 * max(0.1 - mse, 0)) * bonus, 10)
        else:
            assert float(row["Genwithlabel_fid"]) == again["fid"]
            expected = min((10 * ssim + 100 * max(0.1 - mse, 0) + max(10 - again["fid"], 0)) * bonus, 30)
        assert float(row[f"{task}_grade"]) == pytest.approx(expected, rel=1e-12)
        assert 0 < float(row[f"{task}_grade"]) <= GRADE_CAPS[task]


def test_autograde_records_clear_errors_for_broken_submissions(autograded):
    _, _, rows, records, _, _ = autograded
    for name in ("loops", "starter", "syntax"):
        assert all(rows[name][column] == "" for column in course.TABLE_COLUMNS if column not in ("student", "errors"))
    assert "VAE0label contract: VAE.forward(" in rows["starter"]["errors"]
    assert "NotImplementedError: TODO 2.2.4" in rows["starter"]["errors"]
    assert "Genwithlabel contract: GenModel.forward(" in rows["starter"]["errors"]
    assert "NotImplementedError: TODO 3" in rows["starter"]["errors"]
    assert rows["syntax"]["errors"].startswith("import: SyntaxError: ")
    assert rows["syntax"]["errors"].endswith("(submission.py, line 3)")
    assert rows["loops"]["errors"] == f"import: timed out after {IMPORT_LIMIT} s (killed)"
    assert IMPORT_LIMIT <= records["loops"]["contract_seconds"] < IMPORT_LIMIT + 5
