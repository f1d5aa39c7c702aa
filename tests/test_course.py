"""The course kit (tools/course.py): the stripped starter and the kit's contents (autograding: test_autograde.py)."""
import ast
import builtins
import difflib
import importlib.util
import keyword
import re

import pytest
import torch

from conftest import ROOT
from data_utils import LabError, load_split
from tools import course
from tools.kit import BEGIN_MARKER, END_MARKER, solution_regions, strip_solution

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
    stripped = strip_solution(solution)
    regions = solution_regions(solution)
    assert {r.section for r in regions} == SECTIONS and len(regions) == 11
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
    assert not any(BEGIN_MARKER.match(line) or END_MARKER.match(line) for line in new)
    for answer in ("layers(IMAGE_PIXELS, *HIDDEN", "log_var.exp()", "torch.randn_like", "self.code_statistics.update"):
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
    assert strip_solution(source) == (
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
        "# TODO 0: your own classes, functions and constants, if you want any.\n"
        "pass\n"
    )
    assert strip_solution(source.replace("\n", "\r\n")) == strip_solution(source).replace("\n", "\r\n")


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
        strip_solution(source)


# ---------------------------------------------------------------- the starter kit
def test_kit_contents(kit, solution):
    files = {p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()}
    assert (kit / "submission.py").read_text() == strip_solution(solution)
    assert {"submission.py", "model.py", "trainer.py", "train.py", "inference.py", "grade.py", "data_utils.py",
            "tasks.py", "dataset/train.npz", "dataset/valid.npz", "dataset/SHA256SUMS", "check_submission.py",
            course.STARTER_NOTE} <= files
    assert not any(f.startswith(("tests/", "tools/", ".ci/", "checkpoints/")) or f.endswith(".pth") for f in files)
    assert "dataset/test.npz" not in files and "docs/derivations.md" not in files
    for name in ("model.py", "tasks.py", "dataset/valid.npz"):
        assert (kit / name).read_bytes() == (ROOT / name).read_bytes()
    # The checksum list still names test.npz; the splits that are there load all the same.
    assert "test.npz" in (kit / "dataset" / "SHA256SUMS").read_text()
    images, labels = load_split(kit / "dataset" / "valid.npz")
    assert images.shape == (10_000, 28, 28) and len(labels) == 10_000
    note = (kit / course.STARTER_NOTE).read_text()
    assert "| 2.2.2 | `VAE.encode` |" in note and "| 3 | above `GenModel` | optional" in note
    assert "dataset/test.npz" in note and "tests/" in note and "module level" not in note
    compile((kit / "check_submission.py").read_text(), "check_submission.py", "exec")
    with pytest.raises(LabError, match="not an empty folder"):
        course.write_starter(kit)


def test_starter_imports_builds_and_stubs_name_their_section(starter):
    vae, gen = starter.VAE(latent_dim=8), starter.GenModel(latent_dim=4)   # building works
    x, z, labels = torch.rand(2, 1, 28, 28), torch.randn(2, 8), torch.tensor([1, 2])
    calls = {
        ("2.2.2", "VAE.encode"): lambda: vae.encode(x),
        ("2.2.3", "VAE.decode"): lambda: vae.decode(z, 3),
        ("2.2.4", "VAE.forward"): lambda: vae(x, labels),
        ("2.2.4", "VAE.reparameterize"): lambda: vae.reparameterize(z, z),
        ("2.3", "vae_loss"): lambda: starter.vae_loss(x, x, z, z),
        ("3", "GenModel.decode"): lambda: gen.decode(z[:, :4], 3),
        ("3", "GenModel.forward"): lambda: gen(x, labels),
    }
    for (section, where), call in calls.items():
        with pytest.raises(NotImplementedError) as raised:
            call()
        assert str(raised.value).startswith(f"TODO {section} (") and where in str(raised.value)
    # Signatures and docstrings are the solution's.
    import submission
    for name in ("VAE", "GenModel", "vae_loss"):
        assert getattr(starter, name).__doc__ == getattr(submission, name).__doc__
    # The starter's names are the contract's: the solution's own helpers are not there.
    assert {name for name in vars(starter) if not name.startswith("__")} == {"torch", "nn", "VAE", "vae_loss", "GenModel"}


# ---------------------------------------------------------------- the starter gives the design away nowhere
# What the starter may say outside the contract's own words: Python and torch's plumbing of the
# handout's template (`class VAE(nn.Module)`, `super().__init__()`, `-> torch.Tensor`) and words of English.
TEMPLATE_WORDS = {"self", "__init__", "super", "torch", "nn", "module", "tensor"}
ENGLISH = {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "if", "in", "is", "it", "its", "not",
           "of", "on", "or", "that", "the", "them", "this", "to", "with", "s", "i", "b", "n"}


def words(text: str) -> set:
    return {word.lower() for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)}


def solution_region_text(solution: str) -> str:
    lines = solution.splitlines()
    return "\n".join("\n".join(lines[r.begin + 1:r.end]) for r in solution_regions(solution))


def contract_words(solution: str) -> set:
    """The words of the contract as the starter states it: the module docstring (the calls the
    scripts make), vae_loss's docstring (the handout's formula) and the stubs' messages."""
    tree = ast.parse(solution)
    loss = next(node for node in tree.body if getattr(node, "name", "") == "vae_loss")
    stubs = "\n".join(line for region in solution_regions(solution) for line in region.stub())
    return words(ast.get_docstring(tree)) | words(ast.get_docstring(loss)) | words(stubs)


def design_leaks(solution: str) -> set:
    """Words of the solution's regions (names, parameters, docstrings, comments) that the starter
    shows although neither the contract, Python nor plain English needs them."""
    allowed = contract_words(solution) | TEMPLATE_WORDS | ENGLISH | {w.lower() for w in keyword.kwlist + dir(builtins)}
    return (words(solution_region_text(solution)) & words(strip_solution(solution))) - allowed


def unused_imports(source: str) -> set:
    tree = ast.parse(source)
    imported = {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return imported - used


def test_the_starter_holds_the_contract_and_nothing_of_the_reference_design(solution):
    assert design_leaks(solution) == set()
    assert unused_imports(strip_solution(solution)) == set()
    # Each check fails on a leak of the kinds the first starter had.
    gen_model = "class GenModel(nn.Module):\n"
    leaky = [
        solution.replace(gen_model, gen_model + '    """Keeps a mixture of clumps per class."""\n', 1),
        solution.replace("    def __init__(self, latent_dim: int = 24):\n        super().__init__()\n        self.latent_dim = latent_dim\n        # BEGIN SOLUTION 3",
                         "    def __init__(self, latent_dim: int = 24, spread: float = 0.8):\n        super().__init__()\n        self.latent_dim = latent_dim\n        # BEGIN SOLUTION 3", 1),
        solution.replace(gen_model, "def one_hot(labels):\n    return labels\n\n\n" + gen_model, 1),
    ]
    assert [design_leaks(text) for text in leaky] == [{"keeps", "mixture", "clumps"}, {"spread"}, {"one_hot"}]
    assert unused_imports(strip_solution(solution.replace("import torch\n", "import math\nimport torch\n", 1))) == {"math"}


# Checkpoints handed in and batch autograding: tests/test_autograde.py (tools/autograde/).
