"""Similarity between students: pairs whose normalised source or handed-in weights are nearly the
same. Listed in the report for a person to judge, never penalised."""
import ast
import difflib
import io
import tokenize
from pathlib import Path

import numpy as np

from tasks import TASKS
from tools.kit import SOLUTION_FILE

SOURCE_SIMILARITY = 0.9   # difflib ratio of the normalised token streams
WEIGHT_SIMILARITY = 0.99  # cosine of the flattened handed-in state dicts


class _Normaliser(ast.NodeTransformer):
    """Canonical names, in order of appearance, for every name the file defines (functions,
    classes, arguments, assigned names and attributes); library names are kept."""

    def __init__(self, defined: set):
        self.defined, self.names = defined, {}

    def rename(self, name):
        if name not in self.defined:
            return name
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_FunctionDef(self, node):
        node.name = self.rename(node.name)
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        node.name = self.rename(node.name)
        return self.generic_visit(node)

    def visit_arg(self, node):
        node.arg, node.annotation = self.rename(node.arg), None
        return node

    def visit_Name(self, node):
        node.id = self.rename(node.id)
        return node

    def visit_Attribute(self, node):
        node.attr = self.rename(node.attr)
        return self.generic_visit(node)

    def visit_keyword(self, node):
        if node.arg:
            node.arg = self.rename(node.arg)
        return self.generic_visit(node)


def _strip_docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]


def _units(tree) -> list:
    """The functions of a module (top-level and methods; nested ones stay in their parent), then
    the rest of the module (imports, assignments, class attributes) as one more unit."""
    units, rest = [], []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            units.append(node)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                (units if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) else rest).append(item)
        else:
            rest.append(node)
    return units + ([ast.Module(body=rest, type_ignores=[])] if rest else [])


def normalised_tokens(text: str) -> list:
    """The source as token streams, one per function (and one for the rest of the module), with
    docstrings and comments dropped and the file's own names (functions, classes, arguments,
    assigned names and attributes) renamed to v0, v1, ... in order of appearance within each unit:
    the result does not depend on names, layout, comments or the order of definitions."""
    tree = ast.parse(text)
    _strip_docstrings(tree)
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            defined.add(node.attr)
    defined -= {"self", "cls"}
    skip = {tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.ENCODING, tokenize.ENDMARKER,
            tokenize.INDENT, tokenize.DEDENT}
    streams = []
    for unit in _units(tree):
        source = ast.unparse(_Normaliser(defined).visit(unit))
        streams.append([t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                        if t.type not in skip])
    return [stream for stream in streams if stream]


def source_similarity(a: list, b: list) -> float:
    """How much of each file's normalised code has a near-identical counterpart in the other: for
    every unit, the best difflib ratio against the other file's units, weighted by length; the
    smaller of the two directions."""
    if not a or not b:
        return 0.0
    ratios = np.zeros((len(a), len(b)))
    for j, v in enumerate(b):
        matcher = difflib.SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(v)
        for i, u in enumerate(a):
            matcher.set_seq1(u)
            if matcher.real_quick_ratio() > 0.5 and matcher.quick_ratio() > 0.5:
                ratios[i, j] = matcher.ratio()
    weights_a, weights_b = np.array([len(u) for u in a]), np.array([len(v) for v in b])
    return float(min(weights_a @ ratios.max(1) / weights_a.sum(), weights_b @ ratios.max(0) / weights_b.sum()))


def weight_vector(path: Path):
    """The handed-in checkpoint's weights as one float64 vector and the list of shapes."""
    import torch
    from checkpoint import load_checkpoint
    state = load_checkpoint(path)["model_state_dict"]
    tensors = [t for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    shapes = [tuple(t.shape) for t in tensors]
    vector = torch.cat([t.detach().double().flatten() for t in tensors]) if tensors else torch.zeros(0)
    return vector.numpy(), shapes


def similarity_report(records: list, folders: dict) -> list:
    """[{kind, students, value}] for every pair above its threshold."""
    tokens, weights = {}, {}
    for record in records:
        name = record["student"]
        try:
            tokens[name] = normalised_tokens((folders[name] / SOLUTION_FILE).read_text())
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            pass
        for task in TASKS:
            path = folders[name] / "checkpoints" / f"{task}.pth"
            if record["tasks"].get(task, {}).get("source") == "handed in":
                try:
                    weights[(name, task)] = weight_vector(path)
                except Exception:
                    pass
    pairs = []
    names = sorted(tokens)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ratio = source_similarity(tokens[a], tokens[b])
            if ratio >= SOURCE_SIMILARITY:
                pairs.append({"kind": "similar-source", "students": [a, b], "value": ratio})
    keys = sorted(weights)
    for i, (a, task) in enumerate(keys):
        for b, other in keys[i + 1:]:
            if other != task or a == b:
                continue
            (va, sa), (vb, sb) = weights[(a, task)], weights[(b, task)]
            if sa != sb or not len(va):
                continue
            norm = np.linalg.norm(va) * np.linalg.norm(vb)
            cosine = float(va @ vb / norm) if norm else 0.0
            if cosine >= WEIGHT_SIMILARITY:
                pairs.append({"kind": "similar-weights", "task": task, "students": [a, b], "value": cosine})
    return pairs
