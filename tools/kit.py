"""What the student's kit holds: the lab's files it copies, what it leaves out and why, and
submission.py with its solution regions stripped to TODO stubs.

tools/course.py writes the kit out; the autograder (tools/autograde/) builds each student's lab
copy from the same files, without the data splits, and discounts the stripped template when it
compares students' code.
"""
import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_utils import LabError  # noqa: E402

SOLUTION_FILE = "submission.py"

# ====================================================================== submission.py stripped
BEGIN_MARKER = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?:[ \t]+(?P<section>\S+))?[ \t]*$")
END_MARKER = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
# The handout's sections, for the stub messages; an unknown section is named by number only.
SECTION_TITLES = {
    "2.2.1": "the network's layers",
    "2.2.2": "the encoder",
    "2.2.3": "the decoder",
    "2.2.4": "reparameterisation and forward",
    "2.3": "the loss",
    "3": "the conditional generator",
}


@dataclass(frozen=True)
class Region:
    """One `# BEGIN SOLUTION` .. `# END SOLUTION` block (0-based line indices, both markers included)."""
    section: str
    begin: int
    end: int
    indent: str
    owner: str      # the enclosing class, or "" at module level / in a plain function
    function: str   # the enclosing function, or "" at module level
    before: str = ""  # at module level: the class or function that follows the region

    @property
    def label(self) -> str:
        title = SECTION_TITLES.get(self.section)
        return f"TODO {self.section}" + (f" ({title})" if title else "")

    @property
    def qualname(self) -> str:
        return ".".join(part for part in (self.owner, self.function) if part)

    @property
    def where(self) -> str:
        """Where the region is, for the kit's table (Markdown): `VAE.encode`, or above `GenModel`."""
        if self.qualname:
            return f"`{self.qualname}`"
        return f"above `{self.before}`" if self.before else "at the end of the file"

    @property
    def constructs(self) -> bool:
        """Constructor and module-level regions become a comment + `pass`, so that importing the
        module and building the classes work; any other region raises when called."""
        return self.function in ("", "__init__")

    def stub(self) -> list:
        if not self.constructs:
            message = f"{self.label}: implement {self.qualname} in {SOLUTION_FILE}"
            return [f"raise NotImplementedError({json.dumps(message)})"]
        if self.function == "__init__":
            return [f"# {self.label}: define the layers and attributes of {self.owner} here.", "pass"]
        return [f"# {self.label}: your own classes, functions and constants, if you want any.", "pass"]


def _enclosing(tree: ast.AST, lineno: int):
    """(class, function) names around 1-based line `lineno`, innermost function."""
    found = ("", "")

    def visit(node, owner):
        nonlocal found
        for child in ast.iter_child_nodes(node):
            if not (hasattr(child, "lineno") and child.lineno <= lineno <= (child.end_lineno or child.lineno)):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found = (owner, child.name)
                visit(child, owner)
            elif isinstance(child, ast.ClassDef):
                visit(child, child.name)
    visit(tree, "")
    return found


def solution_regions(text: str, filename: str = SOLUTION_FILE) -> list:
    """Find and check the solution markers of `text`; raise LabError naming the line on a mistake."""
    try:
        tree = ast.parse(text, filename)
    except SyntaxError as error:
        raise LabError(f"{filename} does not parse (line {error.lineno}: {error.msg}): "
                       f"fix it before stripping") from None
    regions, opened = [], None
    for index, line in enumerate(text.splitlines()):
        begin, end = BEGIN_MARKER.match(line), END_MARKER.match(line)
        if begin:
            if opened is not None:
                raise LabError(f"{filename}:{index + 1}: BEGIN SOLUTION inside the region opened at line "
                               f"{opened[0] + 1}: close that one with '# END SOLUTION' first")
            if not begin["section"]:
                raise LabError(f"{filename}:{index + 1}: '# BEGIN SOLUTION' needs a section number, "
                               f"e.g. '# BEGIN SOLUTION 2.2.2'")
            opened = (index, begin)
        elif end:
            if opened is None:
                raise LabError(f"{filename}:{index + 1}: '# END SOLUTION' without a '# BEGIN SOLUTION' before it")
            start, match = opened
            # The BEGIN line lies inside the enclosing function's line range (its body follows).
            owner, function = _enclosing(tree, start + 1)
            following = [node.name for node in tree.body if node.lineno > index + 1 and hasattr(node, "name")]
            before = following[0] if following and not owner and not function else ""
            regions.append(Region(match["section"], start, index, match["indent"], owner, function, before))
            opened = None
    if opened is not None:
        raise LabError(f"{filename}:{opened[0] + 1}: the region opened here has no '# END SOLUTION'")
    if not regions:
        raise LabError(f"{filename} has no '# BEGIN SOLUTION <section>' markers: nothing to strip")
    return regions


def strip_solution(text: str, filename: str = SOLUTION_FILE) -> str:
    """The starter version of `text`: each marked region, markers included, replaced by its stub
    at the region's indentation. A pure function of the text; lines outside regions are kept."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    out, position = [], 0
    for region in solution_regions(text, filename):
        out.extend(lines[position:region.begin])
        out.extend(f"{region.indent}{stub}{newline}" for stub in region.stub())
        position = region.end + 1
    out.extend(lines[position:])
    stripped = "".join(out)
    try:
        compile(stripped, filename, "exec")
    except SyntaxError as error:
        raise LabError(f"the stripped {filename} does not compile (line {error.lineno}: {error.msg}): a region "
                       f"must hold whole statements of one block") from None
    return stripped



# ====================================================================== the kit's files
# (pattern, why): a pattern ending in "/" is a folder, any other pattern one exact path.
KIT_EXCLUDES = [
    ("checkpoints/", "the reference solution's trained weights"),
    ("tools/", "this course kit: the stripper and the autograder are the instructor's"),
    ("tests/", "the solution's test suite: it tests the reference models (it fails on the stubs) and "
               "checks the derivations numerically; check_submission.py replaces it"),
    (".ci/", "runs that test suite"),
    ("docs/", "the solution's documentation: worked derivations (sections 0 and 1), the reference model's "
              "design, tuning and grades, and the instructors' guide"),
    ("README.md", "the solution's README (the kit has a README of its own)"),
    ("benchmarks/", "benchmarks and measurements of the reference solution"),
    ("sweeps/", "hyper-parameter sweeps of the reference solution"),
    ("outputs/", "inference outputs of the reference solution"),
    ("grade_result.json", "grades of the reference solution"),
    ("dataset/test.npz", "the grading split (see --include_test_split)"),
]
TEST_SPLIT = "dataset/test.npz"


def _excluded(path: str, include_test_split: bool):
    for pattern, why in KIT_EXCLUDES:
        if pattern == TEST_SPLIT and include_test_split:
            continue
        if path.startswith(pattern) if pattern.endswith("/") else path == pattern:
            return why
    return None


def lab_files(root: Path = ROOT) -> list:
    """The lab's files as relative POSIX paths: the working tree's files that git tracks or would
    track (untracked ones that .gitignore does not ignore count: a new module is part of the lab
    before it is committed); without git, every file outside hidden folders and run outputs."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True,
                                check=True, timeout=60).stdout.decode().split("\0")
        files = sorted({p for p in listed if p and (root / p).is_file()})
        if files:
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    skip_dirs = {"__pycache__", "outputs", "sweeps"}
    files = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if path.is_file() and not any(p.startswith(".") or p in skip_dirs for p in parts[:-1]) \
                and path.suffix != ".pyc" and path.name != "grade_result.json":
            files.append(path.relative_to(root).as_posix())
    return sorted(files)


def grader_lab_files(root: Path = ROOT) -> list:
    """The files of each student's lab copy in the autograder: the lab's own top-level Python modules
    as git tracks them (without git: the top-level .py files), never what else lies in the checkout
    (a class folder, grades, outputs, caches), wherever the TA runs from. No data split: a phase is
    handed the splits it needs."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--", "*.py"],
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
        files = sorted(p for p in listed if p and "/" not in p and (root / p).is_file())
        if files:
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    return sorted(path.name for path in root.glob("*.py") if path.is_file())


def kit_manifest(root: Path = ROOT, include_test_split: bool = False):
    """(files to copy, {excluded file: why}), both relative paths."""
    copied, left_out = [], {}
    for path in lab_files(root):
        why = _excluded(path, include_test_split)
        if why:
            left_out[path] = why
        else:
            copied.append(path)
    if SOLUTION_FILE not in copied:
        raise LabError(f"{root} has no {SOLUTION_FILE} to strip")
    return copied, left_out
