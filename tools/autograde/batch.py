"""What every student's grading shares, made once per grading process (this one, or each Dask worker):
the settings, the lab's files, the grader's copies of the data (the grading split, the copy check's
banks and thresholds, the classifier) and the budget's images for the train phase."""
import atexit
import json
import tempfile
import threading
from pathlib import Path

import numpy as np

from data_utils import load_split, resolve_split
from tasks import TASK_RECORDS
from tools import sandbox
from tools.autograde.integrity import ImageBank, copy_thresholds
from tools.autograde.phases import START_CPU_SECONDS, TRAIN_CPU_PER_IMAGE_EPOCH
from tools.kit import ROOT, SOLUTION_FILE, grader_lab_files


class Batch:
    """What every student's grading shares: settings, the lab files, the grader's copies of the data."""

    def __init__(self, args):
        self.args = args
        self.grading_path = resolve_split(args.data_path).resolve()
        self.valid_path = resolve_split(args.valid_data).resolve()
        self.train_path = resolve_split(args.train_data).resolve()
        images, labels = load_split(self.grading_path)  # a missing or corrupt split stops the batch now
        self.num = min(args.inf_num, len(images)) if args.inf_num else len(images)
        self.images, self.labels = images[:self.num], labels[:self.num]
        valid_images, valid_labels = load_split(self.valid_path)
        train_images, _ = load_split(self.train_path)
        # Every split a student may hold: a sample copied from the validation split is as much a copy
        # (round 3: 100 validation digits per label kept in the source, FID 16.2 -> 6.9, unflagged).
        self.banks = [ImageBank("train", train_images), ImageBank("grading", images),
                      ImageBank("validation", valid_images)]
        # How near real digits the students never generated come to the training images, per label: the
        # copy check's thresholds (the validation split is held out from the training split).
        self.copy_thresholds = copy_thresholds(valid_images, valid_labels, self.banks[0])
        from classifier import load_classifier
        self.classifier, _ = load_classifier()
        # The lab's own modules, whatever else lies in the checkout (class folders, grades, outputs): no
        # data split, no other student's file; a phase sees only the splits it is given.
        self.lab_paths = [p for p in grader_lab_files(ROOT) if p != SOLUTION_FILE]
        self.isolate = not args.no_isolation and sandbox.isolation()[0]
        env = {"TQDM_DISABLE": "1"}
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        self.env = env

    def read_only_split(self, path: Path) -> list:
        sums = path.parent / "SHA256SUMS"
        return [path] + ([sums] if sums.is_file() else [])

    def limits(self, seconds: float, file_bytes: int = 512 << 20, cpu_seconds: float = None):
        return sandbox.Limits(seconds=seconds, memory_bytes=int(self.args.memory_gb * sandbox.GiB),
                              processes=self.args.processes, file_bytes=file_bytes,
                              memory_rlimit="AS" if self.args.device == "cpu" else "DATA",
                              work_bytes=int(self.args.phase_disk_gb * sandbox.GiB), cpu_seconds=cpu_seconds)

    def write_budget(self, folder: Path) -> None:
        """The training budget's images as a split of its own in `folder` (the grader's): the first
        --train_limit training images; the validation split the train phase gets is the first --eval_num
        of THOSE images, so that the phase is handed exactly the budget's distinct images and cannot
        train on more. Also each task's CPU time for training (the start, and 1 ms per image and epoch)."""
        args = self.args
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = load_split(self.train_path)
        if args.train_limit:
            images, labels = images[:args.train_limit], labels[:args.train_limit]
        np.savez(folder / "train.npz", images=images, labels=labels)
        count = args.eval_num or len(images)
        np.savez(folder / "valid.npz", images=images[:count], labels=labels[:count])
        self.budget_train, self.budget_valid = folder / "train.npz", folder / "valid.npz"
        self.train_cpu_seconds = {
            task: args.train_cpu_seconds or args.cpu_scale * (
                START_CPU_SECONDS + (args.epochs or record.epochs) * len(images) * TRAIN_CPU_PER_IMAGE_EPOCH)
            for task, record in TASK_RECORDS.items()}


_batches, _batches_lock = {}, threading.Lock()


def process_batch(args) -> Batch:
    """This process's Batch for `args`, made once: a Dask worker loads the data, the classifier and the
    budget's splits itself, from the paths the TA gave (which must be readable where it runs)."""
    key = json.dumps(vars(args), sort_keys=True, default=str)
    with _batches_lock:
        if key not in _batches:
            batch = Batch(args)
            budget = Path(tempfile.mkdtemp(prefix="autograde-budget."))
            atexit.register(sandbox.remove_tree, budget)
            batch.write_budget(budget)
            _batches[key] = batch
        return _batches[key]
