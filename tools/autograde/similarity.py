"""Similarity between students: pairs whose source or handed-in weights are nearly the same. Listed in
the report for a person to judge, never penalised.

Source is compared as MOSS does (Schleimer, Wilkerson and Aiken, "Winnowing: local algorithms for
document fingerprinting", SIGMOD 2003): each file becomes a stream of tokens in which layout, comments,
strings and the file's own names no longer count; hashes of its k-grams are winnowed into a set of
fingerprints; the fingerprints of the starter template are removed; and a pair is as similar as the
larger share of one file's fingerprints found in the other (containment), so that pasting unused code
into a copy does not hide it. Nothing here recurses over the code (tokenize, ast.walk), and an error
on one student's file, such as ast.parse's RecursionError, skips that student with a note.
"""
import ast
import functools
import hashlib
import io
import keyword
import tokenize
from pathlib import Path

import numpy as np

from contract import one_line
from tools.autograde.phases import MAX_SUBMISSION_BYTES, read_untrusted
from tools.kit import ROOT, SOLUTION_FILE, strip_solution

# Tokens per k-gram and k-grams per winnowing window: any common run of KGRAM + WINDOW - 1 = 14 tokens
# (about a line of code) is sure to share a fingerprint. Measured for k in 5..12, w in 3..10 on the 14 files
# of tests/submissions, written independently, and the copied pair below: with k <= 6 the highest other
# pair reaches 0.58-0.67 (short library idioms match); with k >= 11 the copied pair falls to 0.76-0.84 and
# its diluted variant to 0.71-0.80 (the copy reorders statements); k from 7 to 10 all keep about 0.3
# between the copy (diluted or not) and the highest other pair, k = 9, w = 6 among the widest (0.32).
KGRAM = 9
WINDOW = 6
# The pair's containment, the larger of its two directions. Measured with k = 9, w = 6 and imported names
# read as their full paths: the copied pair tests/cheats/copied_a.py, copied_b.py 0.889; copied_c.py
# (copied_a plus 48 unused lines) against copied_b 0.866; a copy of decode_int.py with its imports renamed
# (`torch as T`, `from torch.nn import Linear`) 0.816; the highest other pair 0.553 (copied_a,
# tests/submissions/decode_batch_only.py), the highest among tests/submissions 0.496; the reference
# submission.py against those 0.302 at most. (Before imports were read as paths: 0.881, 0.844, 0.59,
# 0.523, 0.450, 0.289: the renamed copy went unflagged.)
SOURCE_SIMILARITY = 0.7
# A file with fewer fingerprints than this, once the template's are removed (about 8 lines of its own
# code), is not judged: two nearly untouched templates would match on their few scraps.
MIN_FINGERPRINTS = 20
WEIGHT_SIMILARITY = 0.99  # cosine of the flattened handed-in state dicts

STRING, NAME = "<str>", "<name>"  # the placeholders of every string literal and of the file's own names
_LAYOUT = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}  # read, never compared


def import_bindings(text: str) -> dict:
    """{name the file binds by an import: the dotted path it stands for}: `import torch as T` binds T to
    torch, `import torch.nn as nn` nn to torch.nn, `from torch.nn import Linear` Linear to
    torch.nn.Linear; so that every way of writing one library name reads the same. {} when the file
    does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return {}
    bindings = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if alias.name != "*":
                    bindings[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bindings


def defined_names(text: str):
    """(names, attributes) the file itself defines, or None when it does not parse. names: functions,
    classes, arguments, assigned names, caught exceptions; attributes (read after a dot): assigned
    attributes, class attributes and functions (methods). Kept apart so that a local `mean` does not
    hide torch.mean. ast.walk is iterative, but ast.parse may give up on a deeply nested expression."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None
    names, attributes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            attributes.add(node.name)  # methods are read as self.name
            if isinstance(node, ast.ClassDef):  # and so are class attributes
                for statement in node.body:
                    targets = statement.targets if isinstance(statement, ast.Assign) else \
                        [statement.target] if isinstance(statement, ast.AnnAssign) else []
                    attributes.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            attributes.add(node.attr)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names, attributes


def _code_tokens(text: str) -> list:
    """(type, string) of the file's tokens but comments, blank lines and the encoding; a file that
    stops tokenizing (an unclosed bracket or string) keeps the tokens before the error."""
    tokens = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING) \
                    or token.type == tokenize.ERRORTOKEN and token.string.isspace():
                continue
            tokens.append((token.type, token.string))
    except (tokenize.TokenError, SyntaxError):
        pass
    return tokens


def normalised_tokens(text: str) -> list:
    """The file as a list of token strings that does not depend on layout, comments, docstrings,
    string contents or the names the file defines: those names all become NAME (library names such
    as torch, nn.Linear, F.relu stay), every string literal STRING, and a statement that is only a
    string (a docstring) is dropped. In a file that does not parse every identifier becomes NAME."""
    defined = defined_names(text)
    bindings = import_bindings(text)
    tokens = _code_tokens(text)
    out, previous, i = [], (tokenize.NEWLINE, ""), 0
    while i < len(tokens):
        kind, string = tokens[i]
        if kind == tokenize.STRING:
            end = i + 1
            while end < len(tokens) and tokens[end][0] == tokenize.STRING:
                end += 1
            alone = previous[0] in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) \
                and (end == len(tokens) or tokens[end][0] in (tokenize.NEWLINE, tokenize.ENDMARKER))
            if not alone:
                out.append(STRING)  # implicitly joined strings are one literal
            previous, i = tokens[end - 1], end
            continue
        if kind == tokenize.NAME and not keyword.iskeyword(string):
            if previous[1] != "." and string in bindings and (defined is None or string not in defined[0]):
                # an imported name as its full path: T.zeros, torch.zeros; Linear, nn.Linear, torch.nn.Linear
                path = bindings[string].split(".")
                out.extend(token for part in path for token in (part, "."))
                out.pop()
            elif defined is None:
                out.append(NAME)
            elif previous[1] in ("(", ",") and i + 1 < len(tokens) and tokens[i + 1][1] == "=":
                # a keyword argument, the callee's parameter: `device=device` must read as `device=dev`
                # once a copy renames its own argument, and a copy renames its own functions' keywords
                out.append(NAME)
            else:
                names, attributes = defined
                out.append(NAME if string in (attributes if previous[1] == "." else names) else string)
        elif kind not in _LAYOUT:
            out.append(string)
        previous, i = tokens[i], i + 1
    return out


def kgram_hashes(tokens: list, k: int = KGRAM) -> list:
    """A stable 64-bit hash of every run of k consecutive tokens (not Python's hash(), which changes
    from one process to the next)."""
    return [int.from_bytes(hashlib.blake2b("\x00".join(tokens[i:i + k]).encode(), digest_size=8).digest(), "big")
            for i in range(len(tokens) - k + 1)]


def winnow(hashes: list, window: int = WINDOW) -> set:
    """The smallest hash of every `window` consecutive hashes (of all of them in a shorter stream):
    any run of `window` hashes that two files share gives both the same pick."""
    if not hashes:
        return set()
    return {min(hashes[start:start + window]) for start in range(max(len(hashes) - window + 1, 1))}


@functools.lru_cache(maxsize=4)
def _template_kgrams(template: str) -> frozenset:
    # Every k-gram of the template, not only its winnowed ones: which k-gram a window picks depends
    # on its neighbours, and a student's window around starter code has other neighbours.
    return frozenset(kgram_hashes(normalised_tokens(template)))


def fingerprints(text: str, template: str = "") -> set:
    """The winnowed fingerprints of `text` that do not occur in `template` (the starter code every
    student was given)."""
    return winnow(kgram_hashes(normalised_tokens(text))) - _template_kgrams(template)


def containment(a: set, b: set) -> float:
    """The share of a's fingerprints that are also b's."""
    return len(a & b) / len(a) if a else 0.0


def source_similarity(a: set, b: set) -> float:
    """The larger of the two containments: how much of the smaller (copied) file is inside the
    other, which unused code added to either cannot dilute."""
    return max(containment(a, b), containment(b, a))


@functools.lru_cache(maxsize=1)
def lab_template() -> str:
    """The starter submission.py of the student's kit: the lab's with its solutions stripped."""
    return strip_solution((ROOT / SOLUTION_FILE).read_text())


def read_source(path: Path) -> str:
    """A student's submission.py as the grader reads a hand-in (no link at any level, a regular file, at
    most MAX_SUBMISSION_BYTES), decoded as Python decodes it (its coding line, else UTF-8)."""
    raw = read_untrusted(path, path.parent.parent, MAX_SUBMISSION_BYTES, f"{SOLUTION_FILE} (source code is expected)")
    if raw is None:
        raise FileNotFoundError(f"no {SOLUTION_FILE}")
    encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    return raw.decode(encoding)


def similarity_report(records: list, folders: dict, weights: dict = None, digests: dict = None, *,
                      template: str = None) -> tuple:
    """([{kind, students, value}] for every pair at or above its threshold, [notes]). `weights`:
    {(student, task): (handed-in weights as one vector, their shapes)}, as the contract phase read them
    out of the checkpoints (the grader never loads one); since that process runs the student's code,
    `digests` {(student, task): sha256 of the handed-in file, computed by the grader} catches identical
    files whatever that process wrote. `template` is the starter submission.py
    (default: the lab's, stripped). A student whose source cannot be read or fingerprinted, or is too
    short to judge, is left out of the source comparison with a note."""
    notes, prints, weights = [], {}, dict(weights or {})
    try:
        template = lab_template() if template is None else template
        _template_kgrams(template)
        compare_source = True
    except Exception as error:  # comparing without the template would pair every student who kept it
        notes.append(f"no source compared: the starter template failed ({one_line(error)})")
        compare_source = False
    for record in records:
        name = record["student"]
        if compare_source:
            why = ""
            try:
                found = fingerprints(read_source(folders[name] / SOLUTION_FILE), template)
                if len(found) >= MIN_FINGERPRINTS:
                    prints[name] = found
                else:
                    why = f"fingerprints beyond the starter template: {len(found)}, fewer than {MIN_FINGERPRINTS}"
            except Exception as error:  # RecursionError, MemoryError, UnicodeDecodeError, ...: this student only
                why = one_line(error)
            if why:
                notes.append(f"{name}: source not compared ({why})")
    pairs = []
    names = sorted(prints)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            value = source_similarity(prints[a], prints[b])
            if value >= SOURCE_SIMILARITY:
                pairs.append({"kind": "similar-source", "students": [a, b], "value": value})
    keys = sorted(weights)
    for i, (a, task) in enumerate(keys):
        for b, other in keys[i + 1:]:
            if other != task or a == b:
                continue
            (va, sa), (vb, sb) = weights[(a, task)], weights[(b, task)]
            va, vb = np.asarray(va, np.float64), np.asarray(vb, np.float64)
            if sa != sb or not len(va):
                continue
            norm = np.linalg.norm(va) * np.linalg.norm(vb)
            cosine = float(va @ vb / norm) if norm else 0.0
            if cosine >= WEIGHT_SIMILARITY:
                pairs.append({"kind": "similar-weights", "task": task, "students": [a, b], "value": cosine})
    by_digest = {}
    for (name, task), digest in sorted((digests or {}).items()):
        by_digest.setdefault((task, digest), []).append(name)
    for (task, _), names in sorted(by_digest.items()):
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs.append({"kind": "same-checkpoint", "task": task, "students": [a, b], "value": 1.0})
    return pairs, notes
