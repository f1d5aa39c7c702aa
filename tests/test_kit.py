"""The student's side: the starter kit worked through the way its README says, from the stubs to
a graded submission, with every failure on the way naming the section to write."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run
from tools import course
from tools.kit import strip_solution

pytestmark = pytest.mark.slow  # the starter kit worked through to a graded submission


def in_kit(kit, script, *args):
    """`python script args...` in the kit folder, with the kit's files only (conftest.run)."""
    return run(script, *args, check=False, folder=kit)


def in_kit_process(kit, script, *args):
    """The same in a fresh interpreter with a bare environment, as a student's first command runs."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=kit, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "2"})


def solution_with_sections_written(sections) -> str:
    """submission.py as a student has it after writing `sections`: the other regions stay stubs."""
    lines = (ROOT / "submission.py").read_text().splitlines(keepends=True)
    kept, open_section = [], None
    for line in lines:
        begin = re.match(r"\s*# BEGIN SOLUTION (\S+)", line)
        if begin:
            open_section = begin.group(1)
            if open_section in sections:
                continue  # written by the student: drop the markers, keep the code
        elif re.match(r"\s*# END SOLUTION", line):
            written, open_section = open_section in sections, None
            if written:
                continue
        kept.append(line)
    text = "".join(kept)
    return strip_solution(text) if "# BEGIN SOLUTION" in text else text


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("student") / "kit"
    course.write_starter(folder)
    return folder


def test_the_kit_has_its_own_readme_and_no_answers(kit):
    readme = (kit / "README.md").read_text()
    assert "# The VAE lab: starter kit" in readme and "What to hand in" in readme
    assert not (kit / "docs").exists() and not (kit / "benchmarks").exists() and not (kit / "tests").exists()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):  # every link of the README exists in the kit
        assert (kit / target).exists(), target
    for script in re.findall(r"^python (\S+\.py)", readme, flags=re.M):  # every command's script too
        assert (kit / script).is_file(), script
    solution = (ROOT / "submission.py").read_text()
    # the reference's generation trick is part of the answer: not in the kit
    for answer in ("class ConditionalVAE", "class ClassCodeStatistics"):
        assert answer in solution and answer not in (kit / "submission.py").read_text()


def test_from_stubs_to_a_graded_submission_in_the_readmes_order(kit, tiny_valid):
    # 1. Untouched stubs: the check and training name the first section to write, in one line.
    check = in_kit_process(kit, "check_submission.py")
    assert check.returncode == 1 and "write section 2.2.1" in check.stdout and "Traceback" not in check.stdout
    train = in_kit(kit, "train.py", "--task", "VAE0label", "--limit", 64, "--epochs", 1)
    assert train.returncode == 2 and train.stderr.strip().count("\n") == 0 and "section 2.2.1" in train.stderr
    # 2. Only the layers written: the next unwritten section is named.
    (kit / "submission.py").write_text(solution_with_sections_written({"2.2.1"}))
    check = in_kit(kit, "check_submission.py", "--task", "VAE0label")
    assert check.returncode == 1 and "raised NotImplementedError: TODO 2.2.4" in check.stdout
    # 3. Section 2 written: VAE0label passes, Genwithlabel names section 3.
    (kit / "submission.py").write_text(solution_with_sections_written({"2.2.1", "2.2.2", "2.2.3", "2.2.4", "2.3"}))
    check = in_kit(kit, "check_submission.py")
    assert "VAE0label: ok" in check.stdout and "section 3 (GenModel.__init__)" in check.stdout
    # 4. Everything written: the README's commands train, infer and grade both tasks.
    (kit / "submission.py").write_text(solution_with_sections_written({"2.2.1", "2.2.2", "2.2.3", "2.2.4", "2.3", "3"}))
    check = in_kit(kit, "check_submission.py")
    assert check.returncode == 0 and "Genwithlabel: ok" in check.stdout, check.stdout
    for task in ("VAE0label", "Genwithlabel"):
        result = in_kit(kit, "train.py", "--task", task, "--limit", 256, "--epochs", 1, "--batch_size", 64,
                        "--valid_data", tiny_valid, "--eval_num", 64, "--pred_step", 0, "--threads", 1)
        assert result.returncode == 0, result.stderr[-2000:]
        # the run says at start which precision it trains in, and uses the threads asked for
        assert re.search(r"^precision: (fp32|bf16 autocast) on cpu", result.stdout, flags=re.M)
        assert "; 1 CPU threads" in result.stdout
        result = in_kit(kit, "inference.py", "--checkpoint_path", f"checkpoints/{task}/run.pth",
                        "--data_path", tiny_valid, "--inf_num", 50)
        assert result.returncode == 0, result.stderr[-2000:]
    result = in_kit(kit, "grade.py")
    assert result.returncode == 0 and "VAE0label:" in result.stdout and "Genwithlabel:" in result.stdout
