"""Similarity between students: pairs whose source or handed-in weights are nearly the same. Listed in
the report for a person to judge, never penalised.

Source is compared as MOSS does (Schleimer, Wilkerson and Aiken, "Winnowing: local algorithms for
document fingerprinting", SIGMOD 2003): each file becomes a stream of tokens in which layout, comments,
strings and the file's own names no longer count; hashes of its k-grams are winnowed into a set of
fingerprints; the fingerprints of the starter template are removed; and a pair is as similar as the
larger share of one file's fingerprints found in the other (containment), so that pasting unused code
into a copy does not hide it. A copy rewritten without changing what it computes (its statements
reordered, b + a for a + b, temporaries, loops, conditional expressions) keeps few of the original's
tokens, so each file is also read a second way, the tree view: its syntax tree in a normal form that
such rewrites do not change (see "the tree view" below), fingerprinted the same way; a pair is as
similar as the view that finds it more alike. Nothing here recurses over the code (tokenize, ast.walk,
explicit stacks), a file ast.parse gives up on is compared by its tokens alone, and an error on one
student's file skips that student with a note.
"""
import functools
import hashlib
import io
import tokenize
from pathlib import Path

import numpy as np

from contract import one_line
from tools.autograde.phases import MAX_SUBMISSION_BYTES
from tools.autograde.reads import read_untrusted
from tools.kit import ROOT, SOLUTION_FILE, strip_solution
# The two views, in files of their own (the tree view's rewriting in tree_rewrite.py):
from tools.autograde.token_view import normalised_tokens
from tools.autograde.token_view import normalised_tokens_and_lines
from tools.autograde.tree_view import TREE, TREE_KGRAM, TREE_WINDOW, tree_sequences

# Tokens per k-gram and k-grams per winnowing window: any common run of KGRAM + WINDOW - 1 = 14 tokens
# (about a line of code) is sure to share a fingerprint. Measured for k in 5..12, w in 3..10 on the 14 files
# of tests/submissions, written independently, and the copied pair below: with k <= 6 the highest other
# pair reaches 0.58-0.67 (short library idioms match); with k >= 11 the copied pair falls to 0.76-0.84 and
# its diluted variant to 0.71-0.80 (the copy reorders statements); k from 7 to 10 all keep about 0.3
# between the copy (diluted or not) and the highest other pair, k = 9, w = 6 among the widest (0.32).
KGRAM = 9
WINDOW = 6
# The pair's containment, the larger of its two directions, in the view where it is larger. Measured
# (tokens with k = 9, w = 6; tree with TREE_KGRAM = 14, TREE_WINDOW = 6), tokens / tree: the copied pair
# tests/cheats/copied_a.py, copied_b.py 0.889 / 1.0; copied_c.py (copied_a plus 48 unused lines) against
# copied_b 0.866 / 1.0; a copy of decode_int.py with its imports renamed (`torch as T`, `from torch.nn import
# Linear`) 0.924 / 0.913; copied_rewrite.py (copied_a rewritten without changing the program) 0.375 / 1.0,
# and 0.969 in the tree with 48 unused lines pasted in; the highest pair among the 14 honest files of
# tests/submissions 0.496 / 0.500 (decode_batch_only.py, device_global.py: the same MLP, written apart);
# copied_a (or copied_b, or the rewrite) against an honest file 0.553 / 0.316 at most; the reference
# submission.py against them 0.279 / 0.250 at most. (Before the tree view the rewrite went unflagged.)
SOURCE_SIMILARITY = 0.7
# A file with fewer fingerprints than this, once the template's are removed (about 8 lines of its own
# code), is not judged: two nearly untouched templates would match on their few scraps.
MIN_FINGERPRINTS = 20
WEIGHT_SIMILARITY = 0.99  # cosine of the flattened handed-in state dicts

def tree_kgrams(text: str) -> list:
    """The hashes of each sequence's k-grams, one list per sequence: no k-gram spans two functions."""
    return [kgram_hashes(sequence, TREE_KGRAM) for sequence in tree_sequences(text)]


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
    # on its neighbours, and a student's window around starter code has other neighbours. Both views'.
    tree = {(TREE, value) for hashes in tree_kgrams(template) for value in hashes}
    return frozenset(kgram_hashes(normalised_tokens(template))) | frozenset(tree)


def fingerprints(text: str, template: str = "") -> set:
    """The winnowed fingerprints of `text` that do not occur in `template` (the starter code every
    student was given), of both views: the token view's as ints, the tree view's as (TREE, int). A
    tree view with fewer than MIN_FINGERPRINTS of its own is left out: a few lines read without their
    names match a few lines of anyone's."""
    removed = _template_kgrams(template)
    tokens = winnow(kgram_hashes(normalised_tokens(text))) - removed
    tree = {(TREE, value) for hashes in tree_kgrams(text) for value in winnow(hashes, TREE_WINDOW)} - removed
    return tokens | tree if len(tree) >= MIN_FINGERPRINTS else tokens


def views(prints: set) -> tuple:
    """(the token view's fingerprints, the tree view's) of a set fingerprints() made."""
    tree = {value for value in prints if isinstance(value, tuple)}
    return prints - tree, tree


def containment(a: set, b: set) -> float:
    """The share of a's fingerprints that are also b's."""
    return len(a & b) / len(a) if a else 0.0


def source_similarity(a: set, b: set) -> float:
    """The larger of the two containments, in the view that finds the pair more alike: how much of
    the smaller (copied) file is inside the other, which unused code added to either cannot dilute;
    in its tokens, or, when a rewrite changed them and not what the code does, in its normal form."""
    (tokens_a, tree_a), (tokens_b, tree_b) = views(a), views(b)
    return max(containment(tokens_a, tokens_b), containment(tokens_b, tokens_a),
               containment(tree_a, tree_b), containment(tree_b, tree_a))


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
                own = len(views(found)[0])  # judged by its tokens, which every file has (its tree: fingerprints())
                if own >= MIN_FINGERPRINTS:
                    prints[name] = found
                else:
                    why = f"fingerprints beyond the starter template: {own}, fewer than {MIN_FINGERPRINTS}"
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


# ---------------------------------------------------------------- the shared passages, for a TA to read
# At most PASSAGES passages of a pair, each at most PASSAGE_LINES lines of either file: what the class page
# shows beside the flag (grades.json keeps them too), enough to judge by, never a whole long file.
PASSAGES = 8
PASSAGE_LINES = 40


def shared_passages(text_a: str, text_b: str, template: str = None) -> list:
    """The passages two files share in the token view (the view a copy keeps when it renames, re-lays
    out and reorders code): [{"a": [first, last line], "b": [first, last line]}], longest first. Each is
    a run of k-grams (beyond the starter template's) found in the same order in both files, merged with
    the next run when both files go on within two lines. A copy rewritten statement by statement shares
    few runs (the tree view found it): then few or no passages, and the files are to be read whole."""
    template = lab_template() if template is None else template
    removed = _template_kgrams(template)
    (tokens_a, lines_a), (tokens_b, lines_b) = normalised_tokens_and_lines(text_a), normalised_tokens_and_lines(text_b)
    hashes_a, hashes_b = kgram_hashes(tokens_a), kgram_hashes(tokens_b)
    where_b = {}
    for position, value in enumerate(hashes_b):
        if value not in removed:
            where_b.setdefault(value, []).append(position)
    runs, i = [], 0
    while i < len(hashes_a):  # greedy: the longest run of B's that starts with A's k-gram i
        best = (0, 0)
        for start in where_b.get(hashes_a[i], [])[:50]:  # a common idiom's many places: the first 50 do
            length = 1
            while i + length < len(hashes_a) and start + length < len(hashes_b) \
                    and hashes_a[i + length] == hashes_b[start + length]:
                length += 1
            best = max(best, (length, -start))
        if best[0]:
            length, start = best[0], -best[1]
            last = length + KGRAM - 2  # the run's last token, counted from its first
            runs.append([lines_a[i], lines_a[i + last], lines_b[start], lines_b[start + last]])
            i += length
        else:
            i += 1
    passages = []
    for run in runs:
        if passages and 0 <= run[0] - passages[-1][1] <= 2 and 0 <= run[2] - passages[-1][3] <= 2:
            passages[-1][1], passages[-1][3] = max(passages[-1][1], run[1]), max(passages[-1][3], run[3])
        else:
            passages.append(run)
    passages.sort(key=lambda p: (-(p[1] - p[0]), p[0]))
    return [{"a": [a0, min(a1, a0 + PASSAGE_LINES - 1)], "b": [b0, min(b1, b0 + PASSAGE_LINES - 1)]}
            for a0, a1, b0, b1 in passages[:PASSAGES]]


def add_passages(pairs: list, folders: dict) -> None:
    """Give each similar-source pair its shared passages, with their text ({"a": [first, last], "a_text",
    "b", "b_text"}, a and b the pair's students in order), read from the grader's copies of the files
    (`folders`: student -> their copy). A pair whose files cannot be read gets a note instead: the page
    is an extra, and the pair stands."""
    for pair in pairs:
        if pair.get("kind") != "similar-source":
            continue
        try:
            texts = [read_source(folders[name] / SOLUTION_FILE) for name in pair["students"]]
            passages = shared_passages(*texts)
            lines = [text.splitlines() for text in texts]
            for passage in passages:
                for side, file_lines in zip("ab", lines):
                    first, last = passage[side]
                    passage[f"{side}_text"] = "\n".join(file_lines[first - 1:last])
            pair["passages"] = passages
        except Exception as error:  # RecursionError, MemoryError, a file gone: the pair stands without them
            pair["passages_note"] = f"shared passages not found: {one_line(error)}"
