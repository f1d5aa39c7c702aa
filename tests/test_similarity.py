"""Source similarity between students (tools/autograde/similarity.py): copies are found through renaming,
reordering, new comments and layout, pasted unused code, and rewrites that do not change what the code
computes; honest work and shared starter code are not paired; and no student's file can stop the comparison.
Unit tests: no autograde run."""
import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from tools.autograde import reports, similarity, token_view
from tools.autograde.similarity import SOURCE_SIMILARITY, containment, fingerprints, source_similarity

SUBMISSIONS, CHEATS_DIR = ROOT / "tests" / "submissions", ROOT / "tests" / "cheats"
TEMPLATE = similarity.lab_template()
COPIED_A, COPIED_B = (CHEATS_DIR / "copied_a.py").read_text(), (CHEATS_DIR / "copied_b.py").read_text()
REWRITE = (CHEATS_DIR / "copied_rewrite.py").read_text()

# Unused code a copier might paste in to dilute a copy: helpers of different shapes, none of them MNIST code.
HELPERS = ['''
def scaled_total(values, scale=2):
    total = 0
    for value in values:
        if value > 0:
            total += value * scale
    return total
''', '''
class RunningMean:
    def __init__(self):
        self.count, self.mean = 0, 0.0

    def add(self, x):
        self.count += 1
        self.mean += (x - self.mean) / self.count
''', '''
def clip_all(xs, low=-1.0, high=1.0):
    return [min(max(x, low), high) for x in xs]
''', '''
def describe(tensor):
    shape = "x".join(str(d) for d in tensor.shape)
    return f"{shape} {tensor.dtype} mean={tensor.float().mean().item():.3f}"
''', '''
def pairwise_gaps(items):
    gaps = {}
    for i, a in enumerate(items):
        for j, b in enumerate(items[i + 1:], start=i + 1):
            gaps[(i, j)] = abs(a - b)
    return gaps
''', '''
def smooth(curve, weight=0.9):
    out, last = [], curve[0] if curve else 0.0
    while len(out) < len(curve):
        last = weight * last + (1 - weight) * curve[len(out)]
        out.append(last)
    return out
''', '''
def save_text(path, lines):
    with open(path, "w") as handle:
        handle.write("\\n".join(lines))
    return len(lines)
''', '''
def count_labels(labels):
    try:
        counts = torch.bincount(torch.as_tensor(labels).long(), minlength=10)
    except RuntimeError:
        counts = torch.zeros(10, dtype=torch.long)
    return counts.tolist()
''']


def padding(lines: int) -> str:
    """At least `lines` lines of unused helpers, whole functions, each under a name of its own."""
    out, number = [], 0
    while len(out) < lines:
        helper = HELPERS[number % len(HELPERS)].replace("(", f"_{number}(", 1)
        out += ["", ""] + helper.strip("\n").splitlines()
        number += 1
    return "\n".join(out) + "\n"


def fill(template: str, bodies: dict) -> str:
    """The template with the stubs of `bodies` (qualname -> code) replaced by that code."""
    out = []
    for line in template.splitlines():
        for qualname, body in bodies.items():
            if f"implement {qualname} in" in line:
                indent = line[:len(line) - len(line.lstrip())]
                line = "\n".join(indent + code for code in body.strip("\n").splitlines())
        out.append(line)
    return "\n".join(out) + "\n"


def grade_folders(tmp_path: Path, sources: dict):
    """similarity_report over one folder per student, each holding `sources[name]` (text or bytes)."""
    folders = {}
    for name, source in sources.items():
        folders[name] = tmp_path / name
        folders[name].mkdir(parents=True)
        path = folders[name] / "submission.py"
        path.write_bytes(source if isinstance(source, bytes) else source.encode())
    records = [{"student": name, "tasks": {}} for name in sources]
    return similarity.similarity_report(records, folders, template=TEMPLATE)


# ---------------------------------------------------------------- the parts, on known answers
def test_containment_on_hand_computed_sets():
    a, b = {1, 2, 3, 4}, {3, 4, 5}
    assert containment(a, b) == 2 / 4 and containment(b, a) == 2 / 3
    assert source_similarity(a, b) == source_similarity(b, a) == 2 / 3  # the larger direction
    assert containment(set(), b) == 0.0 and source_similarity(set(), set()) == 0.0
    assert source_similarity({7}, {7, 8, 9, 10}) == 1.0  # all of the small one is in the large one


def test_winnowing_picks_each_windows_minimum():
    assert similarity.winnow([5, 3, 8, 1, 9, 4, 7], window=3) == {3, 1, 4}
    assert similarity.winnow([5, 3], window=3) == {3}
    assert similarity.winnow([], window=3) == set()


def test_kgram_hashes_are_stable_across_processes():
    # blake2b, not Python's hash(), which changes with PYTHONHASHSEED: the same value in every process.
    assert similarity.kgram_hashes(["a", "(", "b", ")"], k=4) == [0xc6aab9f8d2d08e77]
    assert len(similarity.kgram_hashes(list("abcdefghij"), k=8)) == 3


def test_tokens_drop_names_strings_comments_and_docstrings_but_keep_library_names():
    text = ('import torch\n\n\ndef scale(x, factor=2):\n    """Doc."""\n    y = torch.relu(x) * factor  # why\n'
            '    mean = y.mean()\n    return y.sum(dim="a" "b") - mean\n')
    name, string = token_view.NAME, token_view.STRING
    assert similarity.normalised_tokens(text) == [
        "import", "torch", "def", name, "(", name, ",", name, "=", "2", ")", ":",
        name, "=", "torch", ".", "relu", "(", name, ")", "*", name,
        name, "=", name, ".", "mean", "(", ")",  # a local `mean` is not the attribute .mean
        "return", name, ".", "sum", "(", name, "=", string, ")", "-", name]  # keywords read as NAME too


def test_imported_names_read_as_their_full_paths():
    """torch.zeros, T.zeros after `import torch as T`, and zeros after `from torch import zeros` are one name;
    so are nn.Linear, Linear and torch.nn.Linear."""
    plain = "import torch\nimport torch.nn as nn\nlayer = nn.Linear(2, 3)\nx = torch.zeros(2)\n"
    aliased = "import torch as T\nfrom torch.nn import Linear\nlayer = Linear(2, 3)\nx = T.zeros(2)\n"
    body = lambda text: similarity.normalised_tokens(text)[-20:]  # the two statements after the imports
    assert body(plain) == body(aliased)
    assert body(plain)[2:9] == ["torch", ".", "nn", ".", "Linear", "(", "2"]


def test_each_view_is_compared_with_its_own_kind():
    tree = similarity.TREE
    a, b = {1, 2, (tree, 5), (tree, 6)}, {3, (tree, 5), (tree, 6), (tree, 7)}
    assert similarity.views(a) == ({1, 2}, {(tree, 5), (tree, 6)})
    assert source_similarity(a, b) == 1.0  # all of a's tree view is in b's, none of its tokens
    assert source_similarity({5, 6}, {(tree, 5), (tree, 6)}) == 0.0  # a token hash never meets a tree hash


def same_normal_form(a: str, b: str) -> bool:
    return sorted(similarity.tree_sequences(a)) == sorted(similarity.tree_sequences(b))


PRELUDE = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
# (what the rewrite does, the original, the rewrite): each pair computes the same, and reads the same.
SAME = [
    ("names", "def f(x, scale):\n    y = x * scale\n    return y.sum() - y.mean()\n",
     "def total(values, k):\n    out = values * k\n    return out.sum() - out.mean()\n"),
    ("operand order", "def f(a, b, c):\n    return 2 * a + b * c - 1\n",
     "def f(a, b, c):\n    return -1 + c * b + a * 2\n"),
    ("x += y", "def f(x, y):\n    x = x + y\n    x = x * y\n    return x\n",
     "def f(x, y):\n    x += y\n    x *= y\n    return x\n"),
    ("temporaries", "def f(self, x):\n    return torch.sigmoid(self.out(F.relu(self.fc(x.view(x.size(0), -1)))))\n",
     "def f(self, x):\n    n = x.size(0)\n    h = self.fc(x.view(n, -1))\n    h = F.relu(h)\n    logits = self.out(h)\n"
     "    return torch.sigmoid(logits)\n"),
    ("conditional expression", "def f(self, mu, s):\n    if self.training:\n        return mu + s\n    return mu\n",
     "def f(self, mu, s):\n    return mu if not self.training else s + mu\n"),
    ("early return", "def f(self, mu, s):\n    if self.training:\n        e = s.exp()\n        return mu + e\n    return mu\n",
     "def f(self, mu, s):\n    if not self.training:\n        return mu\n    e = s.exp()\n    return e + mu\n"),
    ("keywords by position", "def f(x):\n    return torch.sum(x ** 2, dim=1)\n", "def f(x):\n    return torch.sum(x ** 2, 1)\n"),
    ("torch.f(x) as x.f()", "def f(x):\n    return torch.exp(0.5 * x).mean()\n", "def f(x):\n    return (x * 0.5).exp().mean()\n"),
    ("import paths", "def f(x):\n    return F.leaky_relu(x, 0.2)\n",
     "from torch.nn.functional import leaky_relu as act\n\n\ndef f(x):\n    return act(x, .2)\n"),
    ("f-string and format", "def f(n):\n    return f'{n} items'\n", "def f(n):\n    return '{} items'.format(n)\n"),
    ("loop over a literal", "def f(self, h):\n    h = F.relu(self.a(h))\n    h = F.relu(self.b(h))\n    return h\n",
     "def f(self, h):\n    for layer in (self.a, self.b):\n        h = F.relu(layer(h))\n    return h\n"),
    ("comprehension", "def f(xs):\n    return [x * 2 for x in xs if x > 0]\n",
     "def f(xs):\n    out = []\n    for x in xs:\n        if 0 < x:\n            out.append(2 * x)\n    return out\n"),
    ("independent statements", "class M(nn.Module):\n    def __init__(self, d):\n        super().__init__()\n"
     "        self.a = nn.Linear(784, d)\n        self.b = nn.Linear(d, 10)\n        self.d = d\n",
     "class M(nn.Module):\n    def __init__(self, d):\n        super(M, self).__init__()\n        self.d = d\n"
     "        self.out = nn.Linear(d, 10)\n        self.inp = nn.Linear(28 * 28, d)\n"),
    ("methods, docstrings, annotations", "class M:\n    def f(self, x):\n        return x + 1\n\n    def g(self, x):\n        return x * 2\n",
     "class M:\n    \"\"\"Doc.\"\"\"\n\n    def g(self, x: int) -> int:\n        \"\"\"Doc.\"\"\"\n        return 2 * x\n\n"
     "    def f(self, x):\n        pass\n        return (x + 1)\n"),
]
# (what changed, a, b): each pair computes something else, and must not read the same.
DIFFERENT = [
    # (a - b and b - a read the same when a and b are both the file's own names: no view without names
    # can tell them apart, and the token view does not either)
    ("x - m, m - x", "def f(x):\n    return x - x.mean()\n", "def f(x):\n    return x.mean() - x\n"),
    ("x / 2, 2 / x", "def f(x):\n    return x / 2\n", "def f(x):\n    return 2 / x\n"),
    ("arguments swapped", "def f(x):\n    return torch.cat([x, x.exp()])\n", "def f(x):\n    return torch.cat([x.exp(), x])\n"),
    ("another function", "def f(x):\n    return torch.exp(x)\n", "def f(x):\n    return torch.log(x)\n"),
    ("another constant", "def f(x):\n    return F.leaky_relu(x, 0.2)\n", "def f(x):\n    return F.leaky_relu(x, 0.1)\n"),
    ("dependent statements", "def f(x):\n    x = x * 2\n    y = x + 1\n    return x * y\n",
     "def f(x):\n    y = x + 1\n    x = x * 2\n    return x * y\n"),
    ("a branch swapped", "def f(c, x):\n    return x.exp() if c else x\n", "def f(c, x):\n    return x if c else x.exp()\n"),
]


@pytest.mark.parametrize("what, original, rewrite", SAME, ids=[case[0] for case in SAME])
def test_rewrites_that_do_not_change_the_program_read_the_same_in_the_tree_view(what, original, rewrite):
    for text in (original, rewrite):
        assert ast.parse(PRELUDE + text)
    assert same_normal_form(PRELUDE + original, PRELUDE + rewrite)


@pytest.mark.parametrize("what, a, b", DIFFERENT, ids=[case[0] for case in DIFFERENT])
def test_changes_of_the_program_read_apart_in_the_tree_view(what, a, b):
    assert not same_normal_form(PRELUDE + a, PRELUDE + b)


def test_a_copy_with_its_imports_renamed_is_found():
    """The red-team's variant: decode_int.py with `torch as T`, `from torch.nn import ...`, `.view` for
    `.reshape`: 0.59 before imported names were read as paths, under the flag."""
    original = (ROOT / "tests" / "submissions" / "decode_int.py").read_text()
    renamed = (original.replace("import torch.nn as nn", "from torch.nn import Linear, Module")
               .replace("import torch\n", "import torch as T\n").replace("torch.", "T.")
               .replace("nn.Linear", "Linear").replace("nn.Module", "Module"))
    assert renamed != original and "T.randn_like" in renamed and ast.parse(renamed)
    value = source_similarity(fingerprints(original, TEMPLATE), fingerprints(renamed, TEMPLATE))
    print(f"renamed imports: {value:.3f}")
    assert value >= SOURCE_SIMILARITY


# ---------------------------------------------------------------- copies are found
def test_the_copied_pair_is_found():
    a, b = fingerprints(COPIED_A, TEMPLATE), fingerprints(COPIED_B, TEMPLATE)
    print(f"copied pair {source_similarity(a, b):.3f} ({containment(a, b):.3f} and {containment(b, a):.3f})")
    assert source_similarity(a, b) >= SOURCE_SIMILARITY


def load_cheat(name: str):
    spec = importlib.util.spec_from_file_location(f"cheat_{name}", CHEATS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rewritten_copy_computes_what_the_original_does():
    """copied_rewrite.py is a fair test only if it is still copied_a.py: the same contract and, with the
    original's weights under its own names, the same outputs, bit for bit, in both modes and for every
    form of label."""
    import torch
    original, rewrite = load_cheat("copied_a"), load_cheat("copied_rewrite")
    layers = {"enc_fc": "down", "enc_mu": "to_centre", "enc_logvar": "to_spread", "dec_fc1": "up_a",
              "dec_fc2": "up_b", "dec_out": "up_out"}
    x, labels, z = torch.rand(5, 1, 28, 28), torch.randint(0, 10, (5,)), torch.randn(5, 12)
    for name, args in (("VAE", (x,)), ("GenModel", (x, labels))):
        ours, theirs = getattr(original, name)(), getattr(rewrite, name)()
        assert ours.latent_dim == theirs.latent_dim == 12
        theirs.load_state_dict({layers[key.split(".")[0]] + key[key.index("."):]: value
                                for key, value in ours.state_dict().items()})
        for mode in (ours.train, ours.eval):
            mode(), theirs.train(ours.training)
            torch.manual_seed(1)
            expected = ours(*args)
            torch.manual_seed(1)
            assert all(torch.equal(a, b) for a, b in zip(expected, theirs(*args)))
        for label in ([None] if name == "VAE" else [3, torch.tensor(3), torch.full((5,), 3)]):
            call = (z,) if label is None else (z, label)
            assert torch.equal(ours.decode(*call), theirs.decode(*call))
    recon, mu, log_var = torch.rand(5, 784), torch.randn(5, 12), torch.randn(5, 12)
    assert torch.allclose(original.vae_loss(recon, x, mu, log_var, 0.5), rewrite.vae_loss(recon, x, mu, log_var, 0.5))


def test_a_copy_rewritten_without_changing_the_program_is_found():
    """copied_rewrite.py: copied_a.py with its names, the order of its functions, methods and statements, its
    operands, its temporaries, loops, keyword arguments and conditionals rewritten (see its docstring).
    Its tokens keep 0.375 of the original's (the red team's rewrite 0.146), under the flag; its normal form
    keeps all of it, and pasted unused code does not dilute that."""
    a, rewrite = fingerprints(COPIED_A, TEMPLATE), fingerprints(REWRITE, TEMPLATE)
    (tokens_a, tree_a), (tokens_r, tree_r) = similarity.views(a), similarity.views(rewrite)
    print(f"rewrite: tokens {source_similarity(tokens_a, tokens_r):.3f}, tree {source_similarity(tree_a, tree_r):.3f}")
    assert source_similarity(tokens_a, tokens_r) < SOURCE_SIMILARITY  # what the token view alone missed
    assert source_similarity(a, rewrite) >= 0.95
    assert source_similarity(fingerprints(COPIED_B, TEMPLATE), rewrite) >= 0.95  # and the other disguise of it
    diluted = fingerprints(REWRITE + padding(48), TEMPLATE)
    assert source_similarity(a, diluted) >= 0.9


def test_renaming_comments_docstrings_and_layout_change_nothing():
    tree = ast.parse(COPIED_A)
    functions = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    names = functions | {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)} \
        | {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    attributes = functions | {node.attr for node in ast.walk(tree)
                              if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)}
    new = {old: f"q{number}" for number, old in enumerate(sorted(names | attributes)) if not old.startswith("__")}
    assert {"make_onehot", "enc_fc", "hidden", "log_var", "GenModel", "device"} <= set(new)
    # Every own name renamed (self included), library names and attributes (x.device, F.one_hot) kept.
    renamed = re.sub(r"(?<![.\w])(" + "|".join(n for n in new if n in names) + r")\b", lambda m: new[m[1]], COPIED_A)
    renamed = re.sub(r"(?<=\.)(" + "|".join(n for n in new if n in attributes) + r")\b", lambda m: new[m[1]], renamed)
    renamed = renamed.replace(f"{new['device']}={new['device']}", f"device={new['device']}")  # torch's keyword
    assert "enc_fc" not in renamed and re.search(r"q\d+\.device", renamed) and "torch.randn_like" in renamed
    disguised = re.sub(r"#.*", "# rewritten comment", renamed)                      # comments
    disguised = re.sub(r"(\n(\s*)def [^\n]*:\n)", r'\1\2    """A new docstring."""\n', disguised)  # docstrings
    disguised = disguised.replace(", ", " ,  ").replace(" = ", "=").replace("\n\n", "\n\n\n")  # layout
    disguised = disguised.replace("(0.5 * ", "(\n        0.5\n        * ")
    assert ast.parse(disguised) and disguised.count('"""A new docstring."""') == 12
    assert fingerprints(disguised, TEMPLATE) == fingerprints(COPIED_A, TEMPLATE)


def test_reordering_functions_and_methods_keeps_the_copy_above_the_threshold():
    lines = COPIED_A.splitlines()
    tree = ast.parse(COPIED_A)

    def block(node):
        return "\n".join(lines[node.lineno - 1:node.end_lineno])
    blocks = []
    for node in reversed(tree.body):
        if isinstance(node, ast.ClassDef):
            methods = [block(m) for m in reversed(node.body)]
            blocks.append(lines[node.lineno - 1] + "\n" + "\n\n".join(methods))
        else:
            blocks.append(block(node))
    reordered = "\n\n\n".join(blocks) + "\n"
    assert ast.parse(reordered) and reordered.index("class GenModel") < reordered.index("def make_onehot")
    value = source_similarity(fingerprints(reordered, TEMPLATE), fingerprints(COPIED_A, TEMPLATE))
    print(f"reordered copy {value:.3f}")
    assert value >= 0.9


@pytest.mark.parametrize("lines", [48, 200])
def test_unused_lines_appended_to_a_copy_do_not_dilute_it(lines):
    diluted = COPIED_A + padding(lines)
    assert ast.parse(diluted) and diluted.count("\n") >= COPIED_A.count("\n") + lines
    a, b, d = (fingerprints(text, TEMPLATE) for text in (COPIED_A, COPIED_B, diluted))
    print(f"copied_a + {lines} lines against copied_b {source_similarity(d, b):.3f}")
    assert len(d) > len(a) + lines // 5  # the pasted lines count
    assert containment(d, b) < SOURCE_SIMILARITY  # and would hide the copy in the diluted direction,
    assert containment(b, d) == pytest.approx(containment(b, a), abs=0.02)  # but not in the other
    assert source_similarity(d, b) >= SOURCE_SIMILARITY


# ---------------------------------------------------------------- honest work is not paired
def test_the_honest_corpus_and_the_reference_stay_below_the_threshold():
    honest = {p.stem: fingerprints(p.read_text(), TEMPLATE) for p in sorted(SUBMISSIONS.glob("*.py"))}
    assert len(honest) == 14
    pairs = {(a, b): source_similarity(honest[a], honest[b]) for a in honest for b in honest if a < b}
    highest = max(pairs, key=pairs.get)
    reference = fingerprints((ROOT / "submission.py").read_text(), TEMPLATE)
    against_reference = {name: source_similarity(reference, prints) for name, prints in honest.items()}
    print(f"highest honest pair {highest} {pairs[highest]:.3f}, "
          f"reference at most {max(against_reference.values()):.3f}")
    assert pairs[highest] < SOURCE_SIMILARITY - 0.15
    assert max(against_reference.values()) < SOURCE_SIMILARITY - 0.15


def test_in_each_view_honest_work_stays_apart_and_so_do_the_copies_from_it():
    """The tree view reads every file without its names, so it could pair honest files that only do the
    same thing: in each view on its own, the highest honest pair stays as far under the threshold as the two
    views together must, and copied_a (and its disguises) stays apart from every honest file."""
    honest = {p.stem: similarity.views(fingerprints(p.read_text(), TEMPLATE)) for p in sorted(SUBMISSIONS.glob("*.py"))}
    assert all(len(tree) >= similarity.MIN_FINGERPRINTS for _, tree in honest.values())  # every file has both views
    for view, name in ((0, "tokens"), (1, "tree")):
        pairs = {(a, b): source_similarity(honest[a][view], honest[b][view]) for a in honest for b in honest if a < b}
        highest = max(pairs, key=pairs.get)
        print(f"{name}: highest honest pair {highest} {pairs[highest]:.3f}")
        assert pairs[highest] < SOURCE_SIMILARITY - 0.15
    for copy in (COPIED_A, COPIED_B, REWRITE):
        prints = fingerprints(copy, TEMPLATE)
        assert max(source_similarity(prints, set().union(*views)) for views in honest.values()) < SOURCE_SIMILARITY - 0.1


def test_the_starter_template_does_not_make_students_similar(tmp_path):
    # Both keep the whole template and write the loss and forward, each in a style of their own.
    mine = fill(TEMPLATE, {"VAE.forward": """
mu, log_var = self.encode(x)
z = self.reparameterize(mu, log_var)
return self.decode(z), mu, log_var
""", "vae_loss": """
batch = x.size(0)
recon = torch.sum((recon_x.view(batch, -1) - x.view(batch, -1)) ** 2, dim=1) / (2 * var)
kl = 0.5 * torch.sum(-1 + torch.exp(log_var) + mu ** 2 - log_var, dim=1)
return torch.mean(recon + kl)
"""})
    theirs = fill(TEMPLATE, {"VAE.forward": """
mu, log_var = self.encode(x, labels)
return self.decode(self.reparameterize(mu, log_var)), mu, log_var
""", "vae_loss": """
b = x.size(0)
kl = 0.5 * (log_var.exp() + mu.square() - 1.0 - log_var).sum(dim=1)
nll = (recon_x.reshape(b, -1) - x.reshape(b, -1)).square().sum(dim=1) / (2.0 * var)
return (kl + nll).mean()
"""})
    a, b = fingerprints(mine, TEMPLATE), fingerprints(theirs, TEMPLATE)
    assert min(len(a), len(b)) >= similarity.MIN_FINGERPRINTS  # judged, not skipped
    assert source_similarity(a, b) < 0.4
    # Without the discount the template alone (imports, signatures, docstrings) makes them half alike.
    assert source_similarity(fingerprints(mine, ""), fingerprints(theirs, "")) > 0.5
    assert fingerprints(TEMPLATE, TEMPLATE) == set()

    # Two who wrote the same two lines of reparameterize into the template have too little of their own to judge.
    tiny = fill(TEMPLATE, {"VAE.reparameterize": "std = torch.exp(0.5 * log_var)\n"
                                                 "return mu + std * torch.randn_like(std)"})
    pairs, notes = grade_folders(tmp_path, {"mine": mine, "theirs": theirs, "tiny1": tiny, "tiny2": tiny,
                                            "starter": TEMPLATE})
    assert pairs == []
    assert sorted(note.split(":")[0] for note in notes) == ["starter", "tiny1", "tiny2"]
    assert all("fingerprints beyond the starter template" in note for note in notes)


# ---------------------------------------------------------------- no file stops the comparison
@pytest.mark.parametrize("terms", [600, 5000])
def test_a_deeply_nested_line_does_not_raise(tmp_path, terms):
    nested = COPIED_A + "\n\nTOTAL = " + " + ".join(f"a{i}" for i in range(terms)) + "\n"
    # ast.parse takes the 600 terms (and Python compiles them) but gives up on 5000 (RecursionError in 3.11):
    # that file is compared with every identifier renamed, which keeps library names apart no more.
    assert (token_view.defined_names(nested) is None) == (terms == 5000)
    pairs, notes = grade_folders(tmp_path, {"nested": nested, "copied_b": COPIED_B})
    assert notes == []
    if terms == 600:  # the copy is still found, the sum being one more dilution
        assert [p["students"] for p in pairs] == [["copied_b", "nested"]]


def nested_ifs(levels: int) -> str:
    lines = ["def deep(x):"] + [" " * (i + 1) + f"if x > {i}:" for i in range(levels)] + [" " * (levels + 1) + "return x"]
    return "\n".join(lines) + "\n    return 0\n"


DEEP = {  # (what is appended to the rewritten copy, whether ast.parse takes the file)
    "3000 nested parentheses": ("Y = " + "(" * 3000 + "1" + ")" * 3000, False),  # the parser stops at 200
    "600-term sum": ("TOTAL = " + " + ".join(f"a{i}" for i in range(600)), True),
    # 2,000 deep, twice the default recursion limit, which ast.parse still takes (its own limit is about three
    # times what is left of Python's): a normal form that recursed over the tree would raise here
    "2000-term difference": ("TOTAL = " + " - ".join(f"a{i}" for i in range(2000)), True),
    "2000 chained calls": ("Y = f" + "()" * 2000, True),
    "2000 nots": ("Y = " + "not " * 2000 + "x", True),
    "98 nested ifs": (nested_ifs(98), True),
    "100 nested ifs": (nested_ifs(100), False),  # too many levels of indentation for the parser
    "a 400-digit number": ("BIG = " + "9" * 400, True),  # beyond any float
}


@pytest.mark.parametrize("what", DEEP)
def test_deep_nesting_does_not_stop_the_tree_view(tmp_path, what):
    tail, parses = DEEP[what]
    nested = REWRITE + "\n\n" + tail + "\n"
    assert sys.getrecursionlimit() <= 1000  # the deep cases above are deeper than Python's frames
    assert bool(similarity.tree_sequences(nested)) == parses
    pairs, notes = grade_folders(tmp_path, {"nested": nested, "copied_a": COPIED_A})
    assert notes == []
    # with its tree view the rewrite is still found; without it, only its tokens are compared (0.38)
    assert [p["students"] for p in pairs] == ([["copied_a", "nested"]] if parses else [])


def test_a_student_whose_source_fails_is_left_out_with_a_note(tmp_path, monkeypatch):
    pairs, notes = grade_folders(tmp_path, {"binary": b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x81 not text",
                                            "copied_a": COPIED_A, "copied_b": COPIED_B})
    assert [p["students"] for p in pairs] == [["copied_a", "copied_b"]]
    assert len(notes) == 1 and notes[0].startswith("binary: source not compared (")

    real = similarity.fingerprints

    def recursing(text, template=""):
        if "DEEP" in text:
            raise RecursionError("maximum recursion depth exceeded")
        return real(text, template)
    monkeypatch.setattr(similarity, "fingerprints", recursing)
    pairs, notes = grade_folders(tmp_path / "second", {"deep": COPIED_A + "DEEP = 1\n", "copied_a": COPIED_A,
                                                       "copied_b": COPIED_B})
    assert [p["students"] for p in pairs] == [["copied_a", "copied_b"]]
    assert notes == ["deep: source not compared (RecursionError: maximum recursion depth exceeded)"]


def test_notes_are_listed_in_the_similarity_section(tmp_path):
    report = {"isolation": "bubblewrap: test", "isolated": True,
              "similarity": [{"kind": "similar-source", "students": ["a", "b"], "value": 0.8}],
              "similarity_notes": ["c: source not compared (RecursionError: too deep)"]}
    reports.write_tables([], tmp_path / "grades.csv", report)
    section = (tmp_path / "grades.md").read_text().split("## Similarity between students")[1]
    assert section.strip().splitlines() == ["- a and b: `similar-source` 0.800",
                                            "- note: c: source not compared \\(RecursionError: too deep\\)"]
