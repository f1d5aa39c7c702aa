"""Crossings of the autograder's trust boundary that need no batch (docs/course.md, "The trust boundary"):
what the lab copy holds, what the train phase is handed, what the two decode processes see, what the CSV
and the logs keep. The crossings that need a graded batch are in test_autograde.py, the hand-in's in
test_intake.py."""
import argparse
import csv
import os
import re
import subprocess
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from data_utils import load_split, resolve_split
from tools import autograde, kit, sandbox
from tools.autograde import cache, orchestration, phases, reports


def test_the_lab_copy_is_the_labs_modules_not_what_lies_in_the_checkout():
    """A TA who keeps the class folder and the grades in the checkout (untracked, not ignored): none of it
    reaches a student's sandbox, wherever the grader runs from."""
    stray = ROOT / f"SUBMISSIONS_{uuid.uuid4().hex[:8]}"
    (stray / "alice").mkdir(parents=True)
    (stray / "alice" / "submission.py").write_text("alice = 1\n")
    top = ROOT / f"grades_{uuid.uuid4().hex[:8]}.py"
    top.write_text("# a TA's scratch file, untracked\n")
    try:
        files = kit.grader_lab_files(ROOT)
        assert not any(name.startswith(stray.name) for name in files) and top.name not in files
        assert any(p.startswith(stray.name) for p in kit.lab_files(ROOT))  # the kit's own listing would take it
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "*.py"], capture_output=True, text=True).stdout
        assert set(files) == {p for p in tracked.split() if "/" not in p}
        assert {"contract.py", "train.py", "trainer.py", "data_utils.py", "submission.py"} <= set(files)
    finally:
        sandbox.remove_tree(stray)
        top.unlink()


def parsed(*flags):
    parser = argparse.ArgumentParser()
    autograde.add_arguments(parser)
    return parser.parse_args(["students", "--out", "g.csv", *map(str, flags)])


def test_the_train_phase_is_handed_exactly_the_budgets_images(tmp_path):
    """Round 3: validation images were handed over besides the budget, and a model trained on them too. The
    validation split the phase gets is made of the budget's own training images."""
    batch = SimpleNamespace(args=parsed("--train_limit", 300, "--eval_num", 120, "--epochs", 2),
                            train_path=resolve_split("valid"))
    orchestration.Batch.write_budget(batch, tmp_path)
    train, valid = load_split(batch.budget_train), load_split(batch.budget_valid)
    assert len(train[0]) == 300 and len(valid[0]) == 120
    handed = {image.tobytes() for image in np.concatenate([train[0], valid[0]])}
    assert handed == {image.tobytes() for image in train[0]}  # no image beyond the training budget
    # CPU: the start and 1 ms per image and epoch, by hand: 10 + 2 * 300 * 0.001
    assert batch.train_cpu_seconds == {"VAE0label": pytest.approx(10.6), "Genwithlabel": pytest.approx(10.6)}
    batch.args = parsed("--train_limit", 300, "--cpu_scale", 3)  # the recipe's epochs, per task
    orchestration.Batch.write_budget(batch, tmp_path)
    from tasks import TASK_RECORDS
    for task, record in TASK_RECORDS.items():
        assert batch.train_cpu_seconds[task] == pytest.approx(3 * (10 + record.epochs * 300 * 1e-3))


def test_the_two_decode_processes_are_handed_the_same_shape_of_everything(tmp_path):
    """The command line, environment, folders and rows of the two decode phases differ only in the numbers a
    process cannot trace back: which is the verified one, and the order they run in, come from the secret."""
    calls = []

    def run_phase(batch, name, command, cpu_seconds, read_only=(), **options):
        calls.append({"name": name, "command": [str(c) for c in command], "cpu": cpu_seconds,
                      "read_only": [str(p) for p in read_only]})
        assert len(list((tmp_path / "base" / "inputs").iterdir())) == 2  # both feeds exist before the first runs
        work = tmp_path / "base" / name
        for task in ("VAE0label", "Genwithlabel"):
            rows = len(np.load(tmp_path / "base" / "inputs" / name / task / "labels.npy"))
            (work / task).mkdir(parents=True)
            np.save(work / task / "decoded.npy", np.zeros((rows, 28, 28), np.uint8))
            (work / task / "done").write_text("")
        return SimpleNamespace(ok=True, error=""), work

    orders = set()
    for secret in (b"a", b"b", b"c", b"d", b"e", b"f"):
        sandbox.remove_tree(tmp_path / "base")
        (tmp_path / "base" / "inputs").mkdir(parents=True)
        student = phases.Student(tmp_path / "hand_in", tmp_path / "base", tmp_path / "logs", print, secret=secret)
        student.running.update({"VAE0label": "v.pth", "Genwithlabel": "g.pth"})
        student.record["tasks"] = {"VAE0label": {"latent_dim": 3}, "Genwithlabel": {"latent_dim": 3}}
        student.run_phase = run_phase
        batch = SimpleNamespace(args=SimpleNamespace(seed=42, cpu_scale=1.0), labels=np.arange(50) % 10)
        calls.clear()
        codes = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
        decoded = phases.Phases(batch, student).decode({"VAE0label": codes, "Genwithlabel": codes})
        first, second = calls
        assert [first["name"], second["name"]] == ["decode_1", "decode_2"]
        same = [c.replace("decode_1", "decode_X") for c in first["command"]]
        assert same == [c.replace("decode_2", "decode_X") for c in second["command"]]
        assert first["cpu"] == second["cpu"]
        for task in ("VAE0label", "Genwithlabel"):
            rows = [np.load(tmp_path / "base" / "inputs" / f"decode_{n}" / task / "labels.npy") for n in (1, 2)]
            assert sorted(rows[0].tolist()) == sorted(rows[1].tolist())
            # both fed before either ran, dated alike: a file's time tells the second phase nothing
            stamps = {os.stat(path).st_mtime for n in (1, 2) for path in
                      (tmp_path / "base" / "inputs" / f"decode_{n}" / task).iterdir()}
            assert stamps == {phases.FEED_TIME}
        assert decoded["Genwithlabel"]["samples"].shape == (10, 100, 28, 28)
        orders.add(student.record["decode_phases"]["verified"])
    assert orders == {"decode_1", "decode_2"}  # the verified decode runs first for some secrets, second for others


def test_a_csv_cell_never_starts_a_formula(tmp_path):
    """OWASP's CSV injection: text that a student's process wrote (an error, a note) or a folder name that
    starts like a formula is written as text."""
    hostile = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r@x", "\uff1dcmd", "  =1+1",
               "\u00a0=1+1"]
    records = [{"student": name, "tasks": {}, "errors": [name], "flags": [], "notes": [name]} for name in hostile]
    records.append({"student": "ann", "tasks": {"VAE0label": {"score": -0.5, "ssim": 0.1, "mse": 0.2}},
                    "errors": [], "flags": [], "notes": []})
    paths = reports.write_tables(records, tmp_path / "grades.csv", {"isolation": "test", "isolated": True})
    with open(paths[0], newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows[:-1]:
        for column in ("student", "errors", "notes"):
            assert row[column][:1] == "'" and not row[column][1:2] == "'", (column, row[column])
    assert rows[-1]["VAE0label_grade"] == "-0.5"  # a number is a number


def test_a_phase_log_keeps_its_head_and_tail(tmp_path):
    log = tmp_path / "phase.log"
    log.write_bytes(b"H" * 100 + b"M" * 5000 + b"T" * 100)
    sandbox.trim_log(log, head=100, tail=100)
    kept = log.read_bytes()
    assert kept.startswith(b"H" * 100) and kept.endswith(b"T" * 100) and b"M" not in kept
    assert b"5,000 bytes of this log cut by the grader" in kept
    small = tmp_path / "small.log"
    small.write_bytes(b"short")
    sandbox.trim_log(small, head=100, tail=100)
    assert small.read_bytes() == b"short"


def test_a_markdown_cell_never_becomes_a_link_or_an_image(tmp_path):
    """Round 3: a decode warning of `![](https://...pixel.png) [sign in](https://...)` reached grades.md's notes
    as a remote image and a link. Every character Markdown reads inside a line is escaped."""
    hostile = "![](https://evil.example/pixel.png?who=x) [**Regrade: sign in**](https://evil.example/login) _a_ ~b~"
    records = [{"student": "mallory", "tasks": {}, "errors": [hostile], "flags": [], "notes": [hostile]}]
    markdown = reports.write_tables(records, tmp_path / "grades.csv", {"isolation": "test", "isolated": True})[1]
    text = markdown.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| mallory"))
    assert not re.search(r"(?<!\\)[\[\]()!*_~`]", row)  # every such character escaped: no link, image, emphasis
    assert "\\!\\[\\]\\(https://evil.example/pixel.png?who=x\\)" in row
    assert row.count(" | ") == len(reports.TABLE_COLUMNS) - 1  # no cell broke out of its column


def test_each_student_and_each_hand_in_gets_randomness_of_its_own():
    """Round 3 red team: one secret for the whole batch and its reruns let a probe print its moved rows and
    a second hand-in subtract the moves. The key mixes the student and the intake's digest of the hand-in."""
    secret = bytes(range(32))
    keys = {cache.student_secret(secret, slot, digest) for slot in ("ann", "bob") for digest in ("d1", "d2")}
    assert len(keys) == 4
    assert cache.student_secret(secret, "ann", "d1") == cache.student_secret(secret, "ann", "d1")  # a rerun
    codes = np.zeros((50, 4), np.float32)  # a probe's codes: its moved rows would be the moves themselves
    labels = np.arange(50) % 10
    probe, again = (phases.decode_rows("Genwithlabel", codes, labels, cache.student_secret(secret, "ann", d))
                    for d in ("d1", "d2"))
    for kind in ("verified", "moved"):
        assert not np.array_equal(probe[kind]["order"], again[kind]["order"])
    assert not np.allclose(np.sort(probe["moved"]["codes"], axis=0), np.sort(again["moved"]["codes"], axis=0))


def test_a_sample_copied_from_the_validation_split_is_a_copy(tmp_path, tiny_valid):
    """Round 3 red team: 100 validation digits per label kept in the source, returned for the draws, were no
    copy of the training or grading images (FID 16.2 -> 6.9, unflagged). Every split a student holds is searched."""
    from tools.autograde import integrity
    images, labels = load_split("valid")
    held = tmp_path / "valid_part.npz"
    np.savez(held, images=images[6000:7000], labels=labels[6000:7000])
    train = tmp_path / "train_part.npz"
    train_images, train_labels = load_split("train")
    np.savez(train, images=train_images[:3000], labels=train_labels[:3000])
    batch = orchestration.Batch(parsed("--data_path", tiny_valid, "--valid_data", held, "--train_data", train,
                                       "--inf_num", 100))
    assert [bank.name for bank in batch.banks] == ["train", "grading", "validation"]
    part_images, part_labels = images[6000:7000], labels[6000:7000]
    samples = np.stack([part_images[part_labels == c][:10] for c in range(10)])
    check = integrity.copy_check(samples, batch.banks, batch.copy_thresholds)
    assert check["flagged"] and check["fraction"] == 1.0
    assert {example["split"] for example in check["examples"]} == {"validation"}
    assert not integrity.copy_check(samples, batch.banks[:2], batch.copy_thresholds)["flagged"]  # as before the fix
