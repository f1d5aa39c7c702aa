"""The result cache: a student's final result is kept under a fingerprint of everything it depends on
(their hand-in as the intake copied it, the settings, what the grader enforced, its code and the data
splits), so that a rerun grades only what changed. Also the grader's secret, kept beside the results
so that a batch's randomness can be reproduced and never read by a student's process."""
import hashlib
import hmac
import io
import json
import os
from pathlib import Path

import numpy as np

from data_utils import atomic_write_bytes, atomic_write_json, resolve_split
from tools.autograde.evidence import flatten, unflatten
from tools.kit import ROOT, grader_lab_files

# Settings that decide where and how fast a batch runs, not what it finds: a rerun that changes only
# these reuses the students already graded (resume). What was enforced (isolation, how CPU and
# processes were counted) is part of the fingerprint instead, and --require_isolation is checked
# against each saved row (load_result).
NOT_IN_RESULTS = ("submissions", "out", "jobs", "backend", "scheduler", "work_dir", "require_isolation")
SECRET_BYTES = 32


def grader_secret(folder: Path) -> bytes:
    """The batch's secret: made once with os.urandom in the grader's results folder (mode 0600), and
    read back on a rerun so that resumed and new rows share one randomness. No phase is handed it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret"
    try:
        secret = path.read_bytes()
        if len(secret) == SECRET_BYTES:
            return secret
    except OSError:
        pass
    secret = os.urandom(SECRET_BYTES)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(secret)
    return secret


def student_secret(secret: bytes, slot: str, handed_in: str) -> bytes:
    """One student's key for the grader's moves, draws and shuffles: the batch's secret mixed with the
    student and the intake's digest of what they handed in. A student who learns their own randomness
    (a decode that prints its rows) learns nothing of a classmate's, nor of their own next hand-in's
    (round 3: one secret for the whole batch and its reruns let a second hand-in undo the moves)."""
    return hmac.new(secret, f"{slot}/{handed_in}".encode(), hashlib.sha256).digest()


def file_digest(path: Path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def results_fingerprint(args, handed_in: str, lab_digest: str, enforced: dict) -> str:
    """What a student's result depends on: their hand-in (`handed_in`, the intake's digest of its copy),
    the settings, what the grader enforced (isolation, how CPU and processes were counted), the grader's
    code and the data splits. Equal fingerprints: the saved result stands."""
    digest = hashlib.sha256(lab_digest.encode())
    settings = {k: v for k, v in vars(args).items() if k not in NOT_IN_RESULTS}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(json.dumps(enforced, sort_keys=True, default=str).encode())
    digest.update(handed_in.encode())
    return digest.hexdigest()


def code_and_data_digest(args) -> str:
    """The grader's code (the lab it copies, the autograder) and the three splits, as one digest."""
    digest = hashlib.sha256()
    code = sorted(set(grader_lab_files(ROOT)) | {str(p.relative_to(ROOT)) for p in (ROOT / "tools").rglob("*.py")})
    for relative in code:
        if (ROOT / relative).is_file():
            digest.update(relative.encode())
            file_digest(ROOT / relative, digest)
    for split in (args.data_path, args.valid_data, args.train_data):
        file_digest(resolve_split(split), digest)
    return digest.hexdigest()


def save_result(folder: Path, slot: str, fingerprint: str, result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vectors = io.BytesIO()
    np.savez(vectors, **{task: vector for task, (vector, _) in result["weights"].items()})
    atomic_write_bytes(folder / f"{slot}.npz", vectors.getvalue())
    pictures = io.BytesIO()  # what the class page shows of them (evidence.py): a few images, compressed
    np.savez_compressed(pictures, **flatten(result.get("pictures", {})))
    atomic_write_bytes(folder / f"{slot}.pictures.npz", pictures.getvalue())
    atomic_write_json(folder / f"{slot}.json", {
        "fingerprint": fingerprint, "record": result["record"], "digests": result["digests"],
        "shapes": {task: shapes for task, (_, shapes) in result["weights"].items()}})


def load_result(folder: Path, slot: str, fingerprint: str, require_isolation: bool = False):
    """The saved result of a student with this fingerprint, or None (none saved, another fingerprint,
    unreadable, or graded without isolation when this run requires it: a Dask worker may have lacked it)."""
    try:
        saved = json.loads((folder / f"{slot}.json").read_text())
        if saved.get("fingerprint") != fingerprint:
            return None
        if require_isolation and saved["record"].get("isolation") != "bubblewrap":
            return None
        with np.load(folder / f"{slot}.npz") as vectors:
            weights = {task: (vectors[task], [tuple(shape) for shape in shapes])
                       for task, shapes in saved["shapes"].items()}
        return {"record": saved["record"], "weights": weights, "digests": saved["digests"],
                "pictures": saved_pictures(folder / f"{slot}.pictures.npz")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def saved_pictures(path: Path) -> dict:
    """The pictures saved with a result, or {} when there are none or they cannot be read: the grade
    stands without them, and the class page says they were not kept."""
    try:
        with np.load(path) as arrays:
            return unflatten({key: arrays[key] for key in arrays.files})
    except (OSError, ValueError, KeyError, EOFError):
        return {}
