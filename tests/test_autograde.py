"""The sealed autograder (tools/autograde/): honest corpus, one cheat per threat category, --jobs,
--require_isolation, and the integrity measures on their own.

One autograde run (the session's `graded`: tests/autograde_batch.py) grades HONEST + CHEATS + the reference +
two broken submissions with a tiny budget; a second, serial run without isolation re-grades the copy_samples
cheat (which then finds a data file; its honest VAE0label columns equal those of the run with --jobs 2). About
2 minutes on 2 quiet cores (docs/course.md); the phases' process starts (torch imports) dominate."""
import argparse
import csv
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autograde_batch import (BUDGET, CHEATS, CHEATS_DIR, HONEST, ISOLATED, MARKER, SUBMISSIONS, WHY, autograde_cli,
                             checkpoint_of, course_model, load_module, read_run)
from conftest import ROOT
from data_utils import LabError, atomic_torch_save, load_split
from tools import autograde, sandbox
from tools.autograde import cache, intake, integrity, orchestration, phases, policy, reads, reports, similarity
from trainer import TrainConfig

pytestmark = pytest.mark.slow  # whole autograder batches


@pytest.fixture(scope="module")
def serial(graded, tiny_valid, tiny_train):
    """Serial (--threads 1, as --jobs 2 uses) and WITHOUT isolation: copy_samples again, with the same
    checkpoints, which now finds a data file in a folder above its lab copy. Its VAE is honest, so its
    VAE0label columns must be those of the first run. Training runs in bf16 (--precision bf16), where
    class_mean_buffer's GenModel cannot: it must be trained on in fp32, not failed."""
    base = graded["base"] / "serial"
    students = base / "submissions"
    for name, folder in (("copy_samples", CHEATS_DIR), ("class_mean_buffer", SUBMISSIONS)):
        (students / name).mkdir(parents=True)
        shutil.copyfile(folder / f"{name}.py", students / name / "submission.py")
    shutil.copytree(graded["base"] / "submissions" / "copy_samples" / "checkpoints",
                    students / "copy_samples" / "checkpoints")
    shutil.copyfile(tiny_valid, base / "valid_copy.npz")  # a stray split on the grading machine
    out = base / "grades" / "grades.csv"
    # the first run's secret: the same hand-in then gets the same moves, so the same perturbed decode
    (out.parent / "grades_results").mkdir(parents=True)
    shutil.copyfile(graded["out"].parent / "grades_results" / "secret", out.parent / "grades_results" / "secret")
    result = autograde_cli(students, "--out", out, "--data_path", tiny_valid, "--valid_data", tiny_valid,
                           "--train_data", tiny_train, *BUDGET, "--threads", 1, "--no_isolation",
                           "--precision", "bf16", "--work_dir", base / "work")
    rows, records, report = read_run(out)
    return {"rows": rows, "records": records, "report": report, "stdout": result.stdout, "out": out}


def task_flags(row) -> list:
    """The integrity flags of a row that concern its grades (similarity between students is listed apart)."""
    return [flag for flag in row["integrity"].split(";") if ":" in flag]


def recompute(base: Path, name: str, task: str, latent_dim: int, tiny_valid: Path) -> dict:
    """grade.grade_arrays again, on the arrays the grader kept in its work folder, with the draws and
    the shuffle rebuilt from the grader's secret (kept beside its results)."""
    from grade import grade_arrays
    images, labels = load_split(tiny_valid)
    images, labels = images[:200], labels[:200]
    recon = np.load(base / "work" / name / "reconstruct" / task / "recon.npy")
    codes = np.load(base / "work" / name / "reconstruct" / task / "codes.npy")
    secret = (base / "grades" / "grades_results" / "secret").read_bytes()
    record = next(r for r in json.loads((base / "grades" / "grades.json").read_text())["students"]
                  if r["student"] == name)
    key = cache.student_secret(secret, name, record["hand_in_sha256"])
    half = phases.decode_rows(task, codes, labels, key)["moved"]
    moved = np.load(base / "work" / name / record["decode_phases"]["moved"] / task / "decoded.npy")
    return grade_arrays(task, images, labels, recon, phases.split_decoded(moved, half)["samples"], latent_dim)


# ---------------------------------------------------------------- the honest corpus
def test_honest_corpus_is_graded_without_flags(graded, tiny_valid):
    rows, records = graded["rows"], graded["records"]
    flagged = [name for name in HONEST if rows[name]["integrity"]]
    print(f"false-flag rate: {len(flagged)}/{len(HONEST)} honest submissions flagged {flagged}; batch of "
          f"{len(rows)} students graded in {graded['seconds']:.0f} s")
    assert not flagged
    for name in HONEST:
        row, record = rows[name], records[name]
        assert row["errors"] == "", (name, row["errors"])
        for task in ("VAE0label", "Genwithlabel"):
            entry = record["tasks"][task]
            assert row[f"{task}_source"] == "trained here" and entry["graded_from"] == "forward"
            assert row[f"{task}_precision"] == "fp32"  # the default: every student trains alike
            again = recompute(graded["base"], name, task, entry["latent_dim"], tiny_valid)
            assert float(row[f"{task}_grade"]) == again["score"], (name, task)
            assert float(row[f"{task}_ssim"]) == again["ssim"] and float(row[f"{task}_mse"]) == again["mse"]
            if task == "Genwithlabel":
                assert float(row["Genwithlabel_fid"]) == again["fid"]
                assert entry["copy_check"]["fraction"] <= integrity.COPY_FRACTION
        assert float(row["total"]) == pytest.approx(float(row["VAE0label_grade"]) + float(row["Genwithlabel_grade"]))
    # latent_dim is the grader's: the constructor default read from the source (else 8, the cheats' case)
    assert records["decode_batch_only"]["tasks"]["Genwithlabel"]["latent_dim"] == 2
    # the handout's harness would have stopped at decode_batch_only's one-sample decode: a note for the TA
    assert rows["decode_batch_only"]["notes"].startswith("Genwithlabel: the handout's one-sample call GenModel.decode(")
    assert "this lab used batched decode" in rows["decode_batch_only"]["notes"] and rows["decode_int"]["notes"] == ""


def test_the_reference_answer_is_graded_unflagged_from_its_shipped_checkpoints(graded, tiny_valid):
    """Its eval-mode codes are whitened per class, and decode colours them back: the decode of its own
    codes must reproduce its reconstruction."""
    row, record = graded["rows"]["reference"], graded["records"]["reference"]
    assert row["errors"] == "" and row["integrity"] == ""
    for task in ("VAE0label", "Genwithlabel"):
        entry = record["tasks"][task]
        shipped = TrainConfig.latent_dim  # the shipped checkpoints were trained with train.py's default
        assert row[f"{task}_source"] == "handed in" and entry["latent_dim"] == shipped
        assert row[f"{task}_precision"] == ""  # trained on the student's machine, not here
        assert entry["bypass_check"]["ratio"] == pytest.approx(1.0, abs=0.01)
        assert float(row[f"{task}_grade"]) == recompute(graded["base"], "reference", task, shipped, tiny_valid)["score"]
    assert float(row["VAE0label_grade"]) == 10.0


def test_table_report_and_progress_lines(graded):
    out, rows, stdout, report = graded["out"], graded["rows"], graded["stdout"], graded["report"]
    with open(out, newline="") as handle:
        assert next(csv.reader(handle)) == reports.TABLE_COLUMNS
    assert list(rows) == sorted(rows) and len(rows) == len(HONEST) + len(CHEATS) + 3
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith("Isolation: ") and "## Integrity flags" in markdown
    assert "## Similarity between students" in markdown
    assert re.search(r"^- reference VAE0label: \d+\.\d\d -> \d+\.\d\d \([+-]\d+\.\d%\)$", markdown, re.M)
    n = len(rows)
    # one line per phase, each phase one process for both tasks
    for phase in ("contract", "train", "reconstruct", "decode_1", "decode_2"):
        assert len(re.findall(rf"^\[\d+/{n}\] decode_int: {phase.replace('_', ' ')} ok \(\d+\.\d s\)$", stdout, re.M)) == 1, phase
    assert not re.search(r"^\[\d+/\d+\] reference: train ", stdout, re.M)  # handed in: nothing to train
    assert "it/s" not in stdout and "%|" not in stdout  # no progress bars
    logs = out.parent / "grades_logs" / "decode_int"
    assert {p.name for p in logs.iterdir()} == {"contract.log", "train.log", "reconstruct.log", "decode_1.log",
                                               "decode_2.log"}
    # the two decode processes cannot tell themselves apart: each decodes the 200 codes (as forward gave them,
    # or moved) and, for the task whose grade has an FID term, 10 x 100 draws of its own
    for name in ("decode_1.log", "decode_2.log"):
        assert "Genwithlabel: decoding 1200 codes" in (logs / name).read_text()
        assert "VAE0label: decoding 200 codes" in (logs / name).read_text()
    # each student's draws and shuffles are their own (a probe that prints its rows learns no one else's)
    work = graded["base"] / "work"
    fed = [np.load(work / name / "inputs" / "decode_1" / "Genwithlabel" / "labels.npy") for name in HONEST]
    assert not np.array_equal(fed[0], fed[1])
    assert report["isolated"] == ISOLATED and report["seconds"] > 0
    assert all(r["seconds"] > 0 for name, r in graded["records"].items() if name != "syntax")


def test_broken_submissions_get_clear_errors(graded):
    rows = graded["rows"]
    assert rows["syntax"]["errors"].startswith("import: SyntaxError: ")
    assert "VAE0label contract: VAE has no trainable parameters" in rows["starter"]["errors"]
    assert "write section 3 (GenModel.__init__)" in rows["starter"]["errors"]
    for name in ("syntax", "starter"):
        assert rows[name]["VAE0label_grade"] == "" and float(rows[name]["total"]) == 0.0


# ---------------------------------------------------------------- one cheat per threat
def test_identity_forward_is_graded_from_the_verified_decode(graded):
    row, record = graded["rows"]["identity_forward"], graded["records"]["identity_forward"]
    # (its VAE is pasted into two other cheats, which the similarity section lists too)
    assert task_flags(row) == ["VAE0label:recon-bypasses-code", "Genwithlabel:recon-bypasses-code"]
    for task in ("VAE0label", "Genwithlabel"):
        entry = record["tasks"][task]
        assert entry["forward"]["mse"] == 0.0 and entry["graded_from"] == "verified decode"
        assert entry["score"] == entry["verified"]["score"] < 2 < entry["forward"]["score"]
        assert entry["latent_dim"] == 1 and len(entry["bypass_check"]["most_different"]) == 5
        assert entry["source"] == "handed in"
    evidence = [f["evidence"] for f in record["flags"] if f["flag"] == "recon-bypasses-code"]
    assert len(evidence) == 2 and all("most different images: #" in e for e in evidence)


def test_memorised_samples_are_caught_as_copies(graded):
    row, entry = graded["rows"]["memorised_samples"], graded["records"]["memorised_samples"]["tasks"]["Genwithlabel"]
    assert "Genwithlabel:copied-samples" in row["integrity"].split(";")
    copies = entry["copy_check"]
    assert copies["flagged"] and copies["fraction"] > 0.5 and copies["examples"][0]["split"] == "train"
    assert copies["examples"][0]["distance"] < min(copies["thresholds"])
    from grade import grade
    assert entry["fid_term_zeroed"] and entry["score"] == grade("Genwithlabel", entry["ssim"], entry["mse"],
                                                                entry["latent_dim"], 10.0)


@pytest.mark.skipif(not ISOLATED, reason=f"bubblewrap unusable: {WHY}")
def test_copy_samples_finds_no_split_in_the_sandbox(graded):
    record = graded["records"]["copy_samples"]
    entry = record["tasks"].get("Genwithlabel", {})
    assert "copied-samples" not in graded["rows"]["copy_samples"]["integrity"]
    assert entry.get("copy_check", {"fraction": 0})["fraction"] <= integrity.COPY_FRACTION or \
        "Genwithlabel decode" in graded["rows"]["copy_samples"]["errors"]


def test_copy_samples_without_isolation_is_flagged(serial):
    row, entry = serial["rows"]["copy_samples"], serial["records"]["copy_samples"]["tasks"]["Genwithlabel"]
    assert "Genwithlabel:copied-samples" in row["integrity"]
    assert entry["copy_check"]["examples"][0]["split"] == "grading"
    assert entry["copy_check"]["examples"][0]["distance"] == 0.0
    markdown = serial["out"].with_suffix(".md").read_text()
    assert "WARNING: isolation was not enforced" in markdown
    assert "isolation: NOT ENFORCED" in serial["stdout"]


@pytest.mark.skipif(not ISOLATED, reason=f"bubblewrap unusable: {WHY}")
def test_writes_outside_leaves_no_trace_and_reaches_no_network(graded):
    assert not MARKER.exists()
    assert not (graded["base"] / "work" / "writes_outside" / "vae_lab_cheat_parent_marker").exists()
    if graded["listened"]:
        assert graded["connections"] == []
    row = graded["rows"]["writes_outside"]
    assert row["errors"] == "" and task_flags(row) == [] and float(row["total"]) > 0


def test_tampering_does_not_reach_the_grade(graded, tiny_valid):
    row, record = graded["rows"]["tamper_outputs"], graded["records"]["tamper_outputs"]
    assert row["errors"] == ""
    for task in ("VAE0label", "Genwithlabel"):
        entry = record["tasks"][task]
        assert entry["latent_dim"] == 8 and entry["bonus"] == pytest.approx(0.2 + 1 - 8 / 784)
        assert float(row[f"{task}_grade"]) == recompute(graded["base"], "tamper_outputs", task, 8, tiny_valid)["score"]
    if ISOLATED:  # the lab copy is read-only inside the sandbox
        lab = graded["base"] / "work" / "tamper_outputs" / "lab"
        for name in ("grade.py", "data_utils.py"):
            assert (lab / name).read_bytes() == (ROOT / name).read_bytes()


def test_copied_pair_is_listed_in_the_similarity_section(graded):
    report, rows = graded["report"], graded["rows"]
    pairs = {(p["kind"], tuple(p["students"])) for p in report["similarity"]}
    assert ("similar-source", ("copied_a", "copied_b")) in pairs
    assert ("similar-weights", ("copied_a", "copied_b")) in pairs
    # The cheats share more than copied_a and copied_b: identity_forward's model is pasted nearly verbatim into
    # writes_outside (0.86) and copy_samples (0.71), among other code that no longer dilutes it. No one else is paired.
    assert all(set(students) <= set(CHEATS) for _, students in pairs), pairs
    assert ("similar-source", ("identity_forward", "writes_outside")) in pairs
    # The stripped template, and a file of two lines, have too little of their own to judge.
    assert {note.split(":")[0] for note in report["similarity_notes"]} == {"starter", "syntax"}
    assert "similar-source" in rows["copied_a"]["integrity"] and "similar-source" in rows["copied_b"]["integrity"]
    assert rows["copied_a"]["Genwithlabel_source"] == rows["copied_b"]["VAE0label_source"] == "handed in"
    # copied_c: copied_a diluted by 48 unused lines, and a 600-term sum that crashed the first round's report
    assert ("similar-source", ("copied_a", "copied_c")) in pairs and ("similar-source", ("copied_b", "copied_c")) in pairs
    markdown = graded["out"].with_suffix(".md").read_text()
    assert re.search(r"copied\\_a and copied\\_b: `similar-source` \d\.\d{3}", markdown)
    assert "\n- note: starter: source not compared \\(fingerprints beyond the starter template: 0," in markdown


# ---------------------------------------------------------------- the second round's categories
def test_information_beyond_latent_dim_is_graded_from_the_perturbed_decode(graded):
    """mantissa_code hides a thumbnail in the low bits of its 8 numbers; lookup_bank's one number is the index of
    a grading image held in its checkpoint. Moving each code by 5% of its spread destroys both: the grade comes
    from that decode (honest decoders lose under 1%: the reference), and a decode that looks real images up
    earns no reconstruction term at all."""
    records = graded["records"]
    # lookup_bank's vae_loss has no KL term: check_submission.py would stop there; the autograder grades what
    # the handed-in model does, and says what it found in a note
    assert "VAE0label: vae_loss does not rise when mu leaves 0" in graded["rows"]["lookup_bank"]["notes"]
    for name in ("mantissa_code", "lookup_bank"):
        row = graded["rows"][name]
        for task in ("VAE0label", "Genwithlabel"):
            entry = records[name]["tasks"][task]
            check = entry["perturbation_check"]
            assert f"{task}:code-beyond-latent-dim" in task_flags(row) and check["relative_drop"] > 0.8, (name, check)
            assert entry["graded_from"].startswith("perturbed decode")
            assert entry["score"] < 0.25 * entry["forward"]["score"]
    # the thumbnail's moved codes decode to noise, which is what counts
    for task in ("VAE0label", "Genwithlabel"):
        entry = records["mantissa_code"]["tasks"][task]
        assert entry["score"] == entry["perturbed"]["score"]
    # the index's moved codes decode to other real images, looked up: no reconstruction term; and its samples
    # are grading images: no FID term. It earns nothing.
    lookup = graded["rows"]["lookup_bank"]
    assert {"VAE0label:decode-returns-real-images", "Genwithlabel:decode-returns-real-images",
            "Genwithlabel:copied-samples"} <= set(task_flags(lookup))
    assert float(lookup["VAE0label_grade"]) == float(lookup["Genwithlabel_grade"]) == 0.0
    for task in ("VAE0label", "Genwithlabel"):
        assert records["reference"]["tasks"][task]["perturbation_check"]["relative_drop"] < 0.01


def test_a_reconstruction_better_than_its_decode_on_ssim_is_graded_from_the_decode(graded):
    """grey_corner's forward returns the input with a grey corner: its MSE stays near decode's, its SSIM does not.
    The whole score is bounded by decode's."""
    row, record = graded["rows"]["grey_corner"], graded["records"]["grey_corner"]
    assert task_flags(row) == ["VAE0label:recon-bypasses-code", "Genwithlabel:recon-bypasses-code"]
    for task in ("VAE0label", "Genwithlabel"):
        entry = record["tasks"][task]
        assert entry["forward"]["ssim"] > entry["verified"]["ssim"] + 0.3
        assert entry["graded_from"] == "verified decode" and entry["score"] == entry["verified"]["score"] < 0.5


def test_samples_that_only_match_the_pixel_statistics_earn_no_fid_term(graded):
    """fid_noise draws noise with each label's per-pixel mean and variance: not a digit. Either its FID earns
    nothing anyway (the tiny budget here) or the classifier's verdict zeroes the term."""
    entry = graded["records"]["fid_noise"]["tasks"]["Genwithlabel"]
    assert entry["legibility"]["overall"] < integrity.LEGIBILITY_FLOOR
    assert entry["fid"] >= 10 or "illegible-samples" in entry.get("fid_term_zeroed", [])
    from grade import grade
    assert entry["score"] == grade("Genwithlabel", entry["ssim"], entry["mse"], entry["latent_dim"], 10.0)
    # honest samples read as their label (the reference: 98% on this tiny grading split)
    assert graded["records"]["reference"]["tasks"]["Genwithlabel"]["legibility"]["overall"] >= 0.95


def test_training_past_the_budget_is_stopped_by_the_sandbox(graded):
    """budget_overrun reads the training split named on its command line and trains itself for a minute: it
    finds only the budget's 256 images, and the CPU-time limit stops the phase."""
    row = graded["rows"]["budget_overrun"]
    log = (graded["out"].parent / "grades_logs" / "budget_overrun" / "train.log").read_text()
    assert "budget_overrun: found 256 training images" in log
    assert ("VAE0label training: killed by SIGXCPU (used more CPU time than the limit, 10 s)" in row["errors"]
            or "VAE0label training: its processes together used more CPU time than the limit, 10 s" in row["errors"])
    assert row["VAE0label_grade"] == row["Genwithlabel_grade"] == ""


def test_every_phase_is_metered_not_only_training(graded):
    """optimise_codes' forward optimises each code until its reconstruction is perfect: the reconstruct phase,
    metered like every phase (a start and 1 ms per image), is killed at its CPU limit and earns nothing."""
    row = graded["rows"]["optimise_codes"]
    assert "VAE0label reconstruct: its processes together used more CPU time than the limit" in row["errors"] \
        or "VAE0label reconstruct: killed by SIGXCPU" in row["errors"]
    assert row["VAE0label_grade"] == row["Genwithlabel_grade"] == ""
    phases_run = graded["records"]["optimise_codes"]["phases"]
    assert phases_run["reconstruct"]["cpu_limit"] == pytest.approx(phases.START_CPU_SECONDS + 2 * 200 * 1e-3, abs=0.1)
    assert phases_run["contract"]["cpu_limit"] == 180  # --import_time_limit


def test_the_two_decode_processes_cannot_tell_which_they_are(graded):
    """phase_tell reads its arguments, working folder and environment for a word that says which decode
    process it is in: in both it finds nothing, and its row is graded as any honest one."""
    logs = graded["out"].parent / "grades_logs" / "phase_tell"
    for name in ("decode_1.log", "decode_2.log"):
        assert "phase_tell: this decode process looks like: unknown" in (logs / name).read_text()
    assert graded["rows"]["phase_tell"]["errors"] == "" and not task_flags(graded["rows"]["phase_tell"])


def test_a_flood_of_output_leaves_about_a_mib_per_phase_on_the_grader(graded):
    """log_flood prints 120 MB at every import: each phase's log is kept to its first 64 KiB and last MiB,
    and the student is graded as the honest model it otherwise is."""
    logs = graded["out"].parent / "grades_logs" / "log_flood"
    sizes = {p.name: p.stat().st_size for p in logs.iterdir()}
    assert len(sizes) == 5 and all(size <= sandbox.LOG_KEEP_HEAD + sandbox.LOG_KEEP_TAIL + 200 for size in sizes.values())
    assert "bytes of this log cut by the grader" in (logs / "train.log").read_text()
    assert graded["rows"]["log_flood"]["errors"] == "" and float(graded["rows"]["log_flood"]["total"]) > 0


def test_links_pipes_and_full_disks_cost_only_their_author(graded):
    rows = graded["rows"]
    # link_swap's output folders became links to decode_int's: refused, and decode_int's own row is intact
    assert "VAE0label reconstruct: VAE0label/error.txt: VAE0label is a symbolic link" in rows["link_swap"]["errors"]
    assert rows["decode_int"]["errors"] == "" and float(rows["decode_int"]["total"]) > 0
    # fifo_contract's contract.json became a named pipe: refused without a read, the batch went on
    assert rows["fifo_contract"]["errors"] == "contract check: contract.json is not a regular file; plain files only"
    # disk_fill's train phase wrote 512 MiB in 64 MiB files: killed at the work folder's limit
    assert "training: its files in the work folder took more than 256 MiB of disk" in rows["disk_fill"]["errors"]
    # bomb_checkpoint's checkpoints inflate to more than 1 GiB: refused inside the sandbox before loading
    assert "checkpoints/VAE0label.pth inflates to 1,174,405,120 bytes" in rows["bomb_checkpoint"]["errors"]


def test_the_grader_never_loads_a_students_checkpoint_itself():
    """A checkpoint can be a bomb (or need a pickle): only the sandboxed phases load one. The grader's package
    has no call that could."""
    for path in (ROOT / "tools" / "autograde").glob("*.py"):
        if path.name == "inside.py":  # the phase script: it runs inside the sandbox, the only place that loads one
            continue
        text = path.read_text()
        if "def calibrate(" in text:  # the TA's own tool, run on a model the TA trained
            text = text[:text.index("def calibrate(")]
        assert "load_checkpoint" not in text and "torch.load" not in text, path.name


# ---------------------------------------------------------------- parallel and isolation
def test_jobs_2_gives_the_rows_of_a_serial_run(graded, serial):
    parallel, alone = graded["rows"]["copy_samples"], serial["rows"]["copy_samples"]
    # its VAE is honest; its GenModel's decode returns real digits wherever it finds a split (without isolation),
    # for the codes as for the draws, so that task's columns differ, and are caught there (copied samples, and
    # when the moved codes' decode falls far enough, real images looked up)
    columns = [c for c in reports.TABLE_COLUMNS if c.startswith("VAE0label")]
    assert len(columns) == 5 and parallel["VAE0label_grade"] != ""
    assert {c: alone[c] for c in columns} == {c: parallel[c] for c in columns}
    assert "Genwithlabel:copied-samples" in alone["integrity"]


CLUSTER_BATCH = ["decode_int", "mantissa_code", "reference", "syntax"]


@pytest.fixture(scope="module")
def through_dask(graded, tiny_valid, tiny_train):
    """Four of the batch's students (an honest one that trains, a cheat, the reference, a broken one)
    graded again through a Dask cluster: a LocalCluster of 2 worker processes, with the settings of the
    local run (--jobs 2: one torch thread per phase)."""
    pytest.importorskip("distributed", reason="dask.distributed is a course extra (requirements-course.txt)")
    base = graded["base"] / "dask"
    for name in CLUSTER_BATCH:
        shutil.copytree(graded["base"] / "submissions" / name, base / "submissions" / name, symlinks=True)
    out = base / "grades" / "grades.csv"
    flags = [base / "submissions", "--out", out, "--data_path", tiny_valid, "--valid_data", tiny_valid,
             "--train_data", tiny_train, *BUDGET]
    # the local run's secret: the same moves, shuffles and draws, so the same table
    (out.parent / "grades_results").mkdir(parents=True)
    shutil.copyfile(graded["out"].parent / "grades_results" / "secret", out.parent / "grades_results" / "secret")
    result = autograde_cli(*flags, "--backend", "dask", "--jobs", 2)
    rows, records, report = read_run(out)
    return {"flags": flags, "out": out, "rows": rows, "records": records, "report": report, "stdout": result.stdout,
            "base": base}


def test_a_dask_cluster_grades_students_as_the_local_backend_does(graded, through_dask):
    rows = through_dask["rows"]
    assert sorted(rows) == CLUSTER_BATCH and through_dask["report"]["backend"] == "dask"
    for name in CLUSTER_BATCH:
        here, there = graded["rows"][name], rows[name]
        same = [c for c in reports.TABLE_COLUMNS if c != "integrity"]  # similarity pairs depend on the batch
        assert {c: there[c] for c in same} == {c: here[c] for c in same}, name
        assert task_flags(there) == task_flags(here), name
    assert rows["decode_int"]["VAE0label_grade"] != "" and "mantissa_code" in rows
    # each row says what its worker enforced, checked on the worker
    assert rows["decode_int"]["isolation"] == ("bubblewrap" if ISOLATED else f"none: {WHY}")
    assert rows["decode_int"]["host"] == socket.gethostname()


def test_a_rerun_grades_only_what_changed(through_dask):
    flags, out = through_dask["flags"], through_dask["out"]
    before = out.read_text()
    again = autograde_cli(*flags, "--jobs", 2)  # the same batch, now on the local backend
    assert "resumed: 4 of 4 students already graded" in again.stdout and "grading 0" in again.stdout
    assert out.read_text() == before
    broken = through_dask["base"] / "submissions" / "syntax" / "submission.py"
    broken.write_text(broken.read_text() + "\n# handed in again\n")
    third = autograde_cli(*flags, "--jobs", 2)
    assert "resumed: 3 of 4" in third.stdout and re.search(r"^\[4/4\] syntax: done in", third.stdout, re.M)
    assert not re.search(r"^\[1/4\] decode_int: done in", third.stdout, re.M)
    assert out.read_text() == before  # its row is the same: a syntax error is a syntax error


def test_the_fingerprint_follows_the_hand_in_settings_enforcement_code_and_data(tmp_path):
    folder = tmp_path / "ann"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "submission.py").write_text("import torch\n")
    parser = argparse.ArgumentParser()
    autograde.add_arguments(parser)
    flags = [str(tmp_path), "--out", str(tmp_path / "grades.csv")]
    enforced = {"isolation": True, "cpu": "by a cgroup", "processes": "pids cgroup"}

    def fingerprint(*change, lab="lab", enforced=enforced):
        store = tmp_path / f"store{len(list(tmp_path.glob('store*')))}"
        handed_in = intake.take_in(folder, store)
        return cache.results_fingerprint(parser.parse_args(flags + list(change)), handed_in, lab, enforced)
    first = fingerprint()
    assert fingerprint() == first
    for change in (["--inf_num", "100"], ["--no_isolation"], ["--seed", "1"], ["--precision", "bf16"],
                   ["--threads", "1"], ["--epochs", "2"], ["--cpu_scale", "2"]):
        assert fingerprint(*change) != first, change
    for change in (["--jobs", "7"], ["--backend", "dask"], ["--work_dir", "/tmp/elsewhere"],
                   ["--require_isolation"]):
        assert fingerprint(*change) == first, change
    assert fingerprint(lab="lab changed") != first
    assert fingerprint(enforced=dict(enforced, isolation=False)) != first  # graded under weaker rules: again
    assert fingerprint(enforced=dict(enforced, cpu="by the process tree")) != first
    (folder / "checkpoints" / "VAE0label.pth").write_bytes(b"weights")
    assert fingerprint() != first
    (folder / "checkpoints" / "VAE0label.pth").unlink()
    (folder / "notes" / "a").mkdir(parents=True)  # an empty folder is part of the hand-in too
    assert fingerprint() != first


def test_a_saved_result_comes_back_only_for_its_own_fingerprint(tmp_path):
    vector = np.arange(6, dtype=np.float32)
    result = {"record": {"student": "ann", "tasks": {"VAE0label": {"score": 9.5}}, "errors": [], "flags": []},
              "weights": {"VAE0label": (vector, [(2, 3)])}, "digests": {"VAE0label": "ab" * 32}}
    cache.save_result(tmp_path, "ann", "f1", result)
    back = cache.load_result(tmp_path, "ann", "f1")
    assert back["record"] == result["record"] and back["digests"] == result["digests"]
    assert back["weights"]["VAE0label"][1] == [(2, 3)]  # shapes as tuples, as similarity compares them
    assert np.array_equal(back["weights"]["VAE0label"][0], vector)
    assert cache.load_result(tmp_path, "ann", "f2") is None  # another fingerprint: graded again
    assert cache.load_result(tmp_path, "bob", "f1") is None
    # a row graded without isolation (on a Dask worker without bubblewrap) is never kept under --require_isolation
    assert cache.load_result(tmp_path, "ann", "f1", require_isolation=True) is None
    cache.save_result(tmp_path, "ann", "f1", dict(result, record=dict(result["record"], isolation="bubblewrap")))
    assert cache.load_result(tmp_path, "ann", "f1", require_isolation=True)["record"]["isolation"] == "bubblewrap"
    (tmp_path / "ann.npz").write_bytes(b"torn")  # a half-written pair: graded again, not a crash
    assert cache.load_result(tmp_path, "ann", "f1") is None


def test_a_job_lost_on_its_worker_gives_an_error_row_that_a_rerun_grades_again(tmp_path, monkeypatch, tiny_valid):
    students = tmp_path / "submissions"
    for name in ("a", "b"):
        (students / name).mkdir(parents=True)
        (students / name / "submission.py").write_text("import torch\n")

    def lose_every_job(function, items, on_done, **_):
        for index, _ in enumerate(items):
            on_done(index, None, RuntimeError("worker tcp://10.0.0.7:40123 died"))
    monkeypatch.setattr(orchestration, "run_jobs", lose_every_job)
    out = tmp_path / "grades.csv"
    parser = argparse.ArgumentParser()
    autograde.add_arguments(parser)
    args = [str(students), "--out", str(out), "--data_path", str(tiny_valid), "--valid_data", str(tiny_valid),
            "--train_data", str(tiny_valid)]
    records = autograde.autograde(parser.parse_args(args))
    rows, _, _ = read_run(out)
    assert sorted(rows) == ["a", "b"] and [r["tasks"] for r in records] == [{}, {}]
    assert rows["a"]["errors"] == ("autograder failure: the job was lost on its worker "
                                   "(RuntimeError: worker tcp://10.0.0.7:40123 died)")
    assert not list((tmp_path / "grades_results").glob("*.json"))  # not final: nothing saved
    calls = []
    monkeypatch.setattr(orchestration, "run_jobs", lambda function, items, on_done, **_: calls.append(len(items)))
    autograde.autograde(parser.parse_args(args))
    assert calls == [2]  # both are graded again


def test_a_model_that_cannot_take_bf16_is_trained_in_fp32_and_graded(serial):
    row, record = serial["rows"]["class_mean_buffer"], serial["records"]["class_mean_buffer"]
    assert row["errors"] == "" and row["integrity"] == ""
    assert row["VAE0label_precision"] == "bf16" and row["Genwithlabel_precision"] == "fp32 (bf16 failed)"
    assert float(row["VAE0label_grade"]) > 0 and float(row["Genwithlabel_grade"]) > 0
    train_log = (serial["out"].parent / "grades_logs" / "class_mean_buffer" / "train.log").read_text()
    assert "bf16 autocast failed at training step 1" in train_log
    assert record["tasks"]["Genwithlabel"]["precision"] == "fp32 (bf16 failed)"


def test_require_isolation_refuses_in_one_line(monkeypatch, tmp_path, tiny_valid):
    (tmp_path / "subs" / "alice").mkdir(parents=True)
    (tmp_path / "subs" / "alice" / "submission.py").write_text("x = 1\n")
    monkeypatch.setattr(sandbox, "isolation", lambda: (False, "bubblewrap (bwrap) is not installed (simulated)"))
    with pytest.raises(LabError) as raised:
        autograde.main([str(tmp_path / "subs"), "--out", str(tmp_path / "g.csv"), "--data_path", str(tiny_valid),
                        "--require_isolation"])
    assert "\n" not in str(raised.value) and "--require_isolation" in str(raised.value)
    assert "not installed (simulated)" in str(raised.value) and not (tmp_path / "g.csv").exists()


def phase_stub(tmp_path, outcome, failures, running):
    """A Student whose phases all end with `outcome`, their work in tmp_path/work, failures collected."""
    student = phases.Student(tmp_path / "student", tmp_path, tmp_path / "logs", failures.append)
    student.running.update(running)
    student.fail = failures.append
    student.run_phase = lambda *args, **kwargs: (outcome, tmp_path / "work")
    return student


def test_a_task_failing_in_a_phase_leaves_the_other_task_graded(tmp_path, monkeypatch):
    """Both tasks share each phase's process: a task whose work raises gets its one-line error and is dropped;
    the other goes on. A phase killed before a task was done fails that task with the phase's error."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the phase script puts its own folder first
    phases_script = phase_script()

    def work(task, value, folder):
        if task == "VAE0label":
            raise RuntimeError(f"out of memory (simulated) at {value}")
        (folder / "recon.npy").write_text(value)
    phases_script.for_each_task([("VAE0label", "a"), ("Genwithlabel", "b")], tmp_path / "work", work)
    assert (tmp_path / "work" / "VAE0label" / "error.txt").read_text() == "RuntimeError: out of memory (simulated) at a"
    assert not (tmp_path / "work" / "VAE0label" / "done").exists()
    assert (tmp_path / "work" / "Genwithlabel" / "done").is_file()

    class Result:
        def __init__(self, ok, error=None):
            self.ok, self.error = ok, error
    failures = []
    batch = SimpleNamespace(args=SimpleNamespace(time_limit=2, cpu_scale=1.0))
    for outcome, expected in ((Result(True), "RuntimeError: out of memory (simulated) at a"),
                              (Result(False, "killed: wall-clock limit of 2 s"), "killed: wall-clock limit of 2 s")):
        if not outcome.ok:  # the process died after Genwithlabel: VAE0label has neither done nor error.txt
            (tmp_path / "work" / "VAE0label" / "error.txt").unlink()
        student = phase_stub(tmp_path, outcome, failures, {"VAE0label": "v.pth", "Genwithlabel": "g.pth"})
        running = student.running
        finished = phases.Phases(batch, student)._run("reconstruct", "reconstruct", ["VAE0label", "Genwithlabel"], [], [],
                                                                 cpu_seconds=5)
        assert finished == {"Genwithlabel": tmp_path / "work" / "Genwithlabel"}
        assert running == {"Genwithlabel": "g.pth"} and failures.pop() == f"VAE0label reconstruct: {expected}"
    # What a phase writes is read without following links: they would lead outside its sandbox.
    secret = tmp_path / "grader_only.txt"
    secret.write_text("the grader's own file")
    (tmp_path / "work" / "VAE0label" / "error.txt").symlink_to(secret)
    student = phase_stub(tmp_path, Result(True), failures, {"VAE0label": "v.pth"})
    assert phases.Phases(batch, student)._run("decode", "decode", ["VAE0label"], [], [], cpu_seconds=5) == {}
    assert student.running == {}
    assert failures.pop() == "VAE0label decode: VAE0label/error.txt is a symbolic link; plain files only"
    (tmp_path / "work" / "Genwithlabel" / "recon.npy").unlink()
    (tmp_path / "work" / "Genwithlabel" / "recon.npy").symlink_to(secret)
    with pytest.raises(LabError, match="recon.npy is a symbolic link"):
        reads.load_array(tmp_path / "work" / "Genwithlabel" / "recon.npy", tmp_path / "work", np.uint8, (1, 28, 28),
                           "reconstruct")


# ---------------------------------------------------------------- the measures on their own
def test_source_latent_dim_reads_the_constructor_default_without_running_code():
    read = policy.source_latent_dim
    assert read("class VAE:\n    def __init__(self, latent_dim=12, h=3): pass\n", "VAE") == 12
    assert read("class VAE:\n    def __init__(self, *, latent_dim: int = 5): pass\n", "VAE") == 5
    assert read("class VAE:\n    def __init__(self, latent_dim=None): pass\n", "VAE") is None
    assert read("class A:\n    def __init__(self, latent_dim=3): pass\nclass G(A):\n    pass\n", "G") == 3
    assert read("class CVAE:\n    def __init__(self, latent_dim=6): pass\nGenModel = CVAE\n", "GenModel") == 6
    assert read("import os\nos.system('touch /tmp/x')\n", "VAE") is None
    assert read("class VAE:\n    def __init__(self, latent_dim=2 ** 10): pass\n", "VAE") is None
    # round 5 red team: a module constant was not followed, and an honest model trained at the fallback, 8
    assert read("LATENT_DIM = 24\nclass VAE:\n    def __init__(self, latent_dim: int = LATENT_DIM): pass\n", "VAE") == 24
    assert read("D: int = 5\nclass VAE:\n    def __init__(self, latent_dim=D): pass\n", "VAE") == 5
    assert read("D = 5\nD = 6\nclass VAE:\n    def __init__(self, latent_dim=D): pass\n", "VAE") is None  # set twice


def test_similarity_separates_the_copied_pair_from_the_honest_corpus():
    template = similarity.lab_template()
    prints = {p.stem: similarity.fingerprints(p.read_text(), template)
              for p in [*SUBMISSIONS.glob("*.py"), CHEATS_DIR / "copied_a.py", CHEATS_DIR / "copied_b.py"]}
    copied = similarity.source_similarity(prints["copied_a"], prints["copied_b"])
    honest = max(similarity.source_similarity(prints[a], prints[b]) for a in prints for b in prints
                 if a < b and {a, b} != {"copied_a", "copied_b"})
    print(f"copied pair {copied:.3f}, most similar other pair {honest:.3f}")
    assert copied >= similarity.SOURCE_SIMILARITY > honest


# ---------------------------------------------------------------- checkpoints handed in
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def phase_script():
    return load_module(ROOT / "tools" / "autograde" / "inside.py", "phases_under_test")


def test_checkpoints_are_inspected_without_running_code_and_hold_only_what_the_class_creates(tmp_path, monkeypatch):
    """inspect_checkpoint runs inside a sandboxed phase (the grader never loads a student's checkpoint); here it
    runs in the test's process on the reference submission.py."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the phase script puts its own folder first
    script = phase_script()
    from trainer import Trainer, TrainConfig
    trainer = Trainer(TrainConfig(task="Genwithlabel", model=course_model("Genwithlabel"), latent_dim=4,
                                  device="cpu"), None, None)
    good = tmp_path / "gen.pth"
    atomic_torch_save(trainer.checkpoint(with_training_state=False), good)
    model, latent_dim, facts = script.inspect_checkpoint(good, "Genwithlabel")
    assert latent_dim == 4 and facts["latent_dim"] == 4 and facts["precision"] in ("fp32", "bf16")
    assert torch.equal(model.state_dict()["cvae.decoder.0.weight"], trainer.model.state_dict()["cvae.decoder.0.weight"])
    with pytest.raises(LabError, match=r"has latent_dim 4, not 8"):
        script.inspect_checkpoint(good, "Genwithlabel", latent_dim=8)
    with pytest.raises(LabError, match=r"checkpoints/VAE0label.pth is a Genwithlabel checkpoint"):
        script.inspect_checkpoint(good, "VAE0label")
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "task": "VAE0label", "x": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(LabError, match=r"refused to load checkpoints/VAE0label.pth"):
        script.inspect_checkpoint(tmp_path / "evil.pth", "VAE0label")
    assert not marker.exists()
    saved = torch.load(good, weights_only=True)
    for change, message in (
            (dict(task="VAE0label", model="model.VAE"), "holds a model.VAE model, not submission.VAE"),
            (dict(model_state_dict=dict(saved["model_state_dict"], bank=torch.zeros(200, 784))),
             r"does not hold the tensors GenModel\(latent_dim=4\) creates \(extra: \['bank'\]"),
            (dict(model_state_dict=dict(saved["model_state_dict"], **{"cvae.decoder.0.weight": torch.zeros(300, 12)})),
             r"cvae.decoder.0.weight is torch.float32 \[300, 12\], GenModel creates torch.float32 \[256, 12\]")):
        torch.save(dict(saved, **change), tmp_path / "changed.pth")
        task = change.get("task", "Genwithlabel")
        with pytest.raises(LabError, match=message):
            script.inspect_checkpoint(tmp_path / "changed.pth", task)
    # A checkpoint that inflates beyond the limit is refused before it is loaded (a deflate bomb: 8 MB on disk,
    # 2 GiB in memory); the limit is lowered here so that the test need not build a 1 GiB archive.
    monkeypatch.setattr(script, "MAX_INFLATED_BYTES", 1 << 20)
    with pytest.raises(LabError, match=r"inflates to [\d,]+ bytes \(at most 1,048,576\)"):
        script.inspect_checkpoint(good, "Genwithlabel")


def test_a_class_that_keeps_a_data_set_in_a_buffer_is_refused(tmp_path, monkeypatch):
    """The tensors must be those the class creates, and its buffers no larger than its trainable parameters:
    a class that sizes a buffer for the public test set (a lookup table) cannot hand it in."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = phase_script()

    class Lookup(torch.nn.Module):
        def __init__(self, latent_dim=1):
            super().__init__()
            self.encoder = torch.nn.Linear(784, latent_dim)
            self.register_buffer("bank", torch.zeros(200, 784))
    monkeypatch.setitem(sys.modules, "submission", SimpleNamespace(VAE=Lookup))
    model = Lookup()
    checkpoint = checkpoint_of(model, "VAE0label", 1)
    atomic_torch_save(checkpoint, tmp_path / "lookup.pth")
    with pytest.raises(LabError, match=r"keeps 156,800 numbers beyond its 785 trainable parameters"):
        script.inspect_checkpoint(tmp_path / "lookup.pth", "VAE0label")


def test_what_a_phase_wrote_is_read_without_links_blocking_files_or_unbounded_sizes(tmp_path):
    """Every read of a phase's output: a link at any component below the work folder (a task folder replaced by
    a link to another student's), a named pipe (which would block the grader), a file over its size."""
    work = tmp_path / "work"
    (work / "Genwithlabel").mkdir(parents=True)
    other = tmp_path / "other_student" / "reconstruct" / "VAE0label"
    other.mkdir(parents=True)
    np.save(other / "recon.npy", np.zeros((1, 28, 28), np.uint8))
    (work / "VAE0label").symlink_to(other)
    with pytest.raises(LabError, match="VAE0label/recon.npy: VAE0label is a symbolic link or not a folder"):
        reads.load_array(work / "VAE0label" / "recon.npy", work, np.uint8, (1, 28, 28), "reconstruct")
    os.mkfifo(work / "Genwithlabel" / "contract.json")
    started = time.perf_counter()
    with pytest.raises(LabError, match="Genwithlabel/contract.json is not a regular file"):
        reads.read_untrusted(work / "Genwithlabel" / "contract.json", work, 1000)
    assert time.perf_counter() - started < 1
    (work / "Genwithlabel" / "big.txt").write_bytes(b"x" * 5000)
    with pytest.raises(LabError, match="big.txt is 5,000 bytes, expected at most 1,000"):
        reads.read_untrusted(work / "Genwithlabel" / "big.txt", work, 1000)
    assert reads.read_untrusted(work / "Genwithlabel" / "absent.txt", work, 1000) is None


def test_text_a_students_process_wrote_cannot_break_the_tables(tmp_path):
    """A lone surrogate once stopped the batch when the tables were written; a carriage return and an unclosed
    HTML comment hid every other row of the Markdown report."""
    assert phases.clean_text("a\rb\nc\u200ed\udc80") == "a b c d\\udc80"
    assert phases.clean_text("x" * 400).endswith("...") and len(phases.clean_text("x" * 400)) == 300
    hostile = "ok\r\n## Integrity flags\n\nnone\n<!-- | \udc80"
    records = [{"student": "mallory", "tasks": {}, "errors": [hostile], "flags": [], "notes": [hostile]},
               {"student": "alice", "tasks": {}, "errors": [], "flags": [], "notes": []}]
    paths = reports.write_tables(records, tmp_path / "grades.csv", {"isolation": "test", "isolated": True})
    markdown = paths[1].read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| mallory") or line.startswith("| alice")]
    assert len(rows) == 2 and "<!--" not in markdown and "&lt;\\!--" in rows[0]
    # the injected heading stays inside its cell: one line begins with it, the report's own
    assert [line for line in markdown.splitlines() if line.startswith("## Integrity flags")] == ["## Integrity flags"]
    with open(paths[0], newline="") as handle:
        assert [row["student"] for row in csv.DictReader(handle)] == ["mallory", "alice"]
