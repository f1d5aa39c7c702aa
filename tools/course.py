"""Course kit: the student starter generated from the solution, and batch autograding.

    python -m tools.course starter OUT_DIR                        # the kit students get
    python -m tools.course strip [submission.py]                  # print the stripped submission.py
    python -m tools.course autograde SUBMISSIONS --out grades.csv # one row per student

starter   copies the lab's files (those git tracks or would track) into OUT_DIR, leaving out what a student
          must not see (KIT_EXCLUDES says what and why), with submission.py stripped: every
          region between `# BEGIN SOLUTION <section>` and `# END SOLUTION` becomes a TODO stub.
          The kit also gets check_submission.py (the contract check the autograder runs) and
          a README.md of its own, written for students.
autograde grades SUBMISSIONS/<student>/ folders into OUT.csv, OUT.md and OUT.json, each student's
          code only in sandboxed phases: tools/autograde/.

See docs/course.md.
"""
import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils import LabError, run_cli  # noqa: E402
from tools.kit import KIT_EXCLUDES, SOLUTION_FILE, kit_manifest, solution_regions, strip_solution  # noqa: E402

CHECK_SCRIPT = "check_submission.py"
STARTER_NOTE = "README.md"  # the kit's own README, written for students


# ====================================================================== the starter kit
def left_out_by_rule(left_out: dict) -> list:
    """[(pattern, why)] for the KIT_EXCLUDES rules that left something out, in their order."""
    reasons = set(left_out.values())
    return [(pattern, why) for pattern, why in KIT_EXCLUDES if why in reasons]


def check_script_source() -> str:
    """check_submission.py: tools/check_submission.py as it is (it runs contract.py's check)."""
    return (ROOT / "tools" / CHECK_SCRIPT).read_text()


def starter_note(regions: list, left_out: dict, include_test_split: bool) -> str:
    def stub(region) -> str:
        if not region.constructs:
            return "raises NotImplementedError until written"
        if region.function:
            return "fill in (the class constructs while it is empty)"
        return "optional: room for classes, functions and constants of your own"
    todo = "\n".join(f"| {r.section} | {r.where} | {stub(r)} |" for r in regions)
    reasons = "\n".join(f"- `{pattern}`: {why}" for pattern, why in left_out_by_rule(left_out))
    split = ("`dataset/test.npz` is included." if include_test_split else
             "There is no `dataset/test.npz`: the course grades on a test split you do not get. Choose your "
             "hyper-parameters on the validation split (`--data_path valid`, the default of inference.py).")
    return f"""# The VAE lab: starter kit

You write one file, `submission.py`: a VAE and its loss (section 2) and a label-conditional
generator (section 3). Everything else (data, trainer, inference, grading) is provided and runs
as it is. Each unwritten part of `submission.py` is a stub that raises `NotImplementedError`
naming its section, and every command below names the section to write when it meets one.

## What to write, in this order

| section | where | stub |
|---|---|---|
{todo}

Sections 2.x make `VAE` and `vae_loss` work (task `VAE0label`); section 3 makes `GenModel` work
(task `Genwithlabel`). You may change anything inside `submission.py` (other layers, helper
classes), as long as the calls at its top keep working: the scripts call `VAE(latent_dim=N)`,
`GenModel(latent_dim=N)`, `model(x, labels)`, `model.decode(z, label)` and `vae_loss(...)` and
nothing else (`contract.py` defines these calls).

## Check, train, look, grade

```bash
python check_submission.py             # each call the scripts make, once; names the section to write
python train.py --task VAE0label       # writes checkpoints/VAE0label/run.pth (Ctrl-C saves; see --help)
python inference.py --checkpoint_path checkpoints/VAE0label/run.pth     # writes outputs/VAE0label/
python grade.py --VAE0label_output_dir outputs/VAE0label --no-Genwithlabel
```

and the same with `Genwithlabel`. `outputs/<task>/` also holds pictures to look at:
`recon.png` (digits above their reconstructions) and `samples.png` (generated digits, one row per
label). `python train.py --help` lists the hyper-parameters; `--limit 5000 --epochs 2` makes a
quick first try. {split}

## What to hand in

A folder with your `submission.py`, and optionally your trained models as
`checkpoints/VAE0label.pth` and `checkpoints/Genwithlabel.pth` (copies of
`checkpoints/<task>/run.pth`). Without a model, the course trains yours itself with a fixed budget.
The course runs your code with its own copy of every other file, so change only `submission.py`.

## Left out of this kit

{reasons}
"""


def write_starter(out_dir: Path, root: Path = ROOT, include_test_split: bool = False) -> list:
    """Write the starter kit into out_dir (which must not exist or be empty); return the files written."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LabError(f"{out_dir} exists and is not an empty folder: choose a new folder or remove it")
    copied, left_out = kit_manifest(root, include_test_split)
    solution = (root / SOLUTION_FILE).read_text()
    stripped = strip_solution(solution)
    regions = solution_regions(solution)
    partial = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for path in copied:
            target = partial / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if path == SOLUTION_FILE:
                target.write_text(stripped)
            else:
                shutil.copy2(root / path, target)
        (partial / CHECK_SCRIPT).write_text(check_script_source())
        (partial / STARTER_NOTE).write_text(starter_note(regions, left_out, include_test_split))
        if out_dir.exists():
            out_dir.rmdir()
        partial.rename(out_dir)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise LabError(f"cannot write the kit into {out_dir} ({error.strerror or error}): "
                       f"choose a writable folder") from None
    return sorted(copied + [CHECK_SCRIPT, STARTER_NOTE])


# ====================================================================== CLI
def parse_args(argv=None):
    from tools import autograde
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    starter = commands.add_parser("starter", allow_abbrev=False, help="write the student starter kit into OUT_DIR")
    starter.add_argument("out_dir", type=Path, help="a new or empty folder for the kit")
    starter.add_argument("--include_test_split", action="store_true",
                         help="ship dataset/test.npz too (by default graders keep it)")

    strip = commands.add_parser("strip", allow_abbrev=False, help="print submission.py with its solution regions stripped")
    strip.add_argument("path", type=Path, nargs="?", default=ROOT / SOLUTION_FILE,
                       help="the file to strip (default: the lab's submission.py)")

    grade = commands.add_parser("autograde", allow_abbrev=False, help="grade SUBMISSIONS/<student>/ folders into one table "
                                                  "(tools/autograde.py)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    autograde.add_arguments(grade)
    return parser.parse_args(argv)


def main(argv=None):
    from tools import autograde
    args = parse_args(argv)
    if args.command == "starter":
        files = write_starter(args.out_dir, ROOT, args.include_test_split)
        _, left_out = kit_manifest(ROOT, args.include_test_split)
        print(f"wrote {len(files)} files to {args.out_dir.resolve()} (see its {STARTER_NOTE}); left out:")
        for pattern, why in left_out_by_rule(left_out):
            count = sum(1 for reason in left_out.values() if reason == why)
            files = f" ({count} file{'s' * (count != 1)})" if pattern.endswith("/") else ""
            print(f"  {pattern}{files}: {why}")
    elif args.command == "strip":
        if not args.path.is_file():
            raise LabError(f"{args.path} not found")
        sys.stdout.write(strip_solution(args.path.read_text(), args.path.name))
    else:
        autograde.autograde(args)


if __name__ == "__main__":
    run_cli(main)
