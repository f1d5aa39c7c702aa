"""Grade inference outputs: SSIM, MSE, simplified FID, compression bonus, grade.

    python grade.py                                   # every task whose outputs/<task>/ exists
    python grade.py --Genwithlabel_output_dir outputs/Genwithlabel --no-VAE0label
    python grade.py --test_data_path test             # insist on a split
    python grade.py --extended                        # also evaluation.py's measures (docs/evaluation.md)

By default the split is the one the outputs were made from (their hyperparams.json says which,
with its checksum). Results are printed and merged into grade_result.json.

The grade (latent_dim read from the outputs' hyperparams.json):
    bonus              = 0.2 + (1 - latent_dim / 784)
    VAE0label grade    = min((5 SSIM + 50 max(0.1 - MSE, 0)) * bonus, 10)
    Genwithlabel grade = min((10 SSIM + 100 max(0.1 - MSE, 0) + max(10 - FID, 0)) * bonus, 30)
"""
import argparse
import hashlib
import json
import signal
import time
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while the imports below load stops at once, without a traceback (run_cli)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import numpy as np
from skimage.metrics import structural_similarity

import outputs
from data_utils import (ROOT, IMAGE_PIXELS, NUM_CLASSES, BooleanFlag, LabError, atomic_write_json, cal_fid, ensure_writable_folder, load_split,
                        resolve_split, run_cli, progress)
from tasks import TASK_ALIASES, TASK_RECORDS, TASKS, default_output_dir

GRADE_CAPS = {name: task.cap for name, task in TASK_RECORDS.items()}


def compression_bonus(latent_dim: int) -> float:
    return 0.2 + (1 - latent_dim / IMAGE_PIXELS)


def grade(task: str, ssim: float, mse: float, latent_dim: int, fid: float = None, capped: bool = True) -> float:
    """The lab's grade; capped=False gives the formula without its min(., cap)."""
    record = TASK_RECORDS[task]
    score = record.raw_grade(ssim, mse, fid) * compression_bonus(latent_dim)
    return min(score, record.cap) if capped else score


def grade_task(task: str, output_dir: Path, test_data_path=None) -> dict:
    info = outputs.read_info(output_dir)
    if info.get("task") != task:
        raise LabError(f"{output_dir} holds outputs of task {info.get('task')}, not {task}: "
                       f"pass the right --{task}_output_dir")
    data_file = resolve_split(test_data_path) if test_data_path else Path(info["data_path"])
    images, labels = load_split(data_file)
    if hashlib.sha256(data_file.read_bytes()).hexdigest() != info["data_sha256"]:
        if test_data_path:
            raise LabError(f"{output_dir} was made from {info['data_path']}, not {data_file}: rerun inference.py "
                           f"with --data_path {test_data_path}, or grade without --test_data_path")
        raise LabError(f"{data_file} changed after {output_dir} was made from it (its sha256 differs): "
                       f"rerun inference.py")
    record = TASK_RECORDS[task]
    if record.conditional:  # a missing sample folder is found before minutes of SSIM, not after
        for label in range(NUM_CLASSES):
            count = outputs.count_samples(output_dir, label)
            if count < record.samples_per_label:
                raise LabError(f"{outputs.gen_folder(output_dir, label)} holds {count} samples, expected "
                               f"{record.samples_per_label}: rerun inference.py (it writes gen/0 .. gen/9)")
    num = info["num_images"]
    if not isinstance(num, int) or not 0 < num <= len(images):
        raise LabError(f"{output_dir / 'hyperparams.json'} says num_images {num}, but {data_file} holds "
                       f"{len(images)} images: rerun inference.py")
    recon = outputs.read_recon(output_dir, num, progress=lambda r: progress(r, desc=f"{task}: read recon", leave=False))
    samples = None
    if record.conditional:
        samples = [np.stack([outputs.read_png(f) for f in sorted(outputs.gen_folder(output_dir, label).glob("*.png"))])
                   for label in range(NUM_CLASSES)]
    result = grade_arrays(task, images, labels, recon, samples, int(info["latent_dim"]))
    return dict(result, data_path=str(data_file))


def grade_arrays(task: str, images: np.ndarray, labels: np.ndarray, recon: np.ndarray, samples, latent_dim: int,
                 progress=progress) -> dict:
    """The lab's measures and grade from pixels: real uint8 images [N,28,28] and their labels,
    uint8 reconstructions of the first len(recon) of them, and (Genwithlabel) uint8 samples per
    label, samples[c] of shape [K,28,28]. `progress` wraps the SSIM loop (data_utils.progress's signature; the
    autograder, which prints one line per phase, passes one that draws nothing)."""
    num = len(recon)
    real = images[:num].astype(np.float64)
    mse = float(np.mean(((real - recon) / 255.0) ** 2))
    ssim = float(np.mean([structural_similarity(images[i], recon[i], data_range=255)
                          for i in progress(range(num), desc=f"{task}: SSIM", leave=False)]))
    result = {"ssim": ssim, "mse": mse, "latent_dim": latent_dim, "bonus": compression_bonus(latent_dim),
              "num_images": num}
    fid = None
    if TASK_RECORDS[task].conditional:  # the FID compares samples with real digits label by label
        fids = [cal_fid(images[labels == label] / 255.0, samples[label] / 255.0) for label in range(NUM_CLASSES)]
        fid = float(np.mean(fids))
        result["fid"] = fid
        result["fid_per_label"] = fids
    result["score"] = grade(task, ssim, mse, latent_dim, fid)
    result["score_uncapped"] = grade(task, ssim, mse, latent_dim, fid, capped=False)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for task in TASKS:
        aliases = [alias for alias, name in TASK_ALIASES.items() if name == task]
        parser.add_argument(*(f"--{name}" for name in [task, *aliases]), dest=task,
                            action=BooleanFlag, default=None,
                            help=f"grade {task} (default: if its output folder exists)")
        parser.add_argument(*(f"--{name}_output_dir" for name in [task, *aliases]), dest=f"{task}_output_dir",
                            type=Path, default=default_output_dir(task),
                            help=f"inference outputs of {task} (default outputs/{task})")
    parser.add_argument("--test_data_path", default=None,
                        help="split to grade against (default: the one the outputs were made from)")
    parser.add_argument("--result_path", type=Path, default=ROOT / "grade_result.json",
                        help="JSON file the results are merged into (default grade_result.json)")
    parser.add_argument("--extended", action=BooleanFlag, default=False,
                        help="also label accuracy, classifier FID, diversity and likelihood (evaluation.py), "
                             "stored under <task>.extended; the lab's grade is unchanged")
    parser.add_argument("--extended_num", type=int, default=1000,
                        help="--extended: images the likelihood is estimated on, a random subset of the split "
                             "(0: all; default 1000)")
    parser.add_argument("--extended_k", type=int, default=100,
                        help="--extended: importance samples per image for the likelihood bound (default 100)")
    parser.add_argument("--classifier_path", type=Path, default=None,
                        help="--extended: the digit classifier (default checkpoints/classifier.pth)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    chosen, why_not = {}, []
    for task in TASKS:
        wanted, folder = getattr(args, task), getattr(args, f"{task}_output_dir")
        if wanted or (wanted is None and folder.is_dir()):
            if not folder.is_dir():
                raise LabError(f"output folder {folder} of {task} not found: run "
                               f"`python inference.py --task {task}` first")
            chosen[task] = folder
        else:
            why_not.append(f"{task} is switched off (--{task} False)" if wanted is False
                           else f"{task} has no output folder {folder}")
    if not chosen:
        off = all(getattr(args, task) is False for task in TASKS)
        raise LabError("nothing to grade: " + ("every task is switched off; leave out --<task> False"
                                               if off else "; ".join(why_not)
                                               + "; run inference.py first or pass --<task>_output_dir"))
    ensure_writable_folder(args.result_path.parent, "--result_path")  # before grading, not after
    results = {}
    for task, folder in chosen.items():
        started = time.perf_counter()
        results[task] = grade_task(task, folder, args.test_data_path)
        results[task]["seconds"] = round(time.perf_counter() - started, 2)
        r = results[task]
        print(f"{task:>12}: SSIM {r['ssim']:.4f}  MSE {r['mse']:.5f}"
              + (f"  FID {r['fid']:.3f}" if "fid" in r else "")
              + f"  latent_dim {r['latent_dim']}  bonus {r['bonus']:.4f}"
              + f"  grade {r['score']:.2f} / {GRADE_CAPS[task]:g} (uncapped {r['score_uncapped']:.2f})"
              + f"  [{r['num_images']} images of {Path(r['data_path']).name}, {r['seconds']} s]")
        if args.extended:
            import evaluation  # loaded only when asked for: the classifier and its metrics
            r["extended"] = evaluation.extended_metrics(task, folder, r["data_path"], args.extended_num,
                                                        args.extended_k, args.classifier_path)
            print(evaluation.report(task, r["extended"]))
    previous = {}
    if args.result_path.is_file():
        try:
            previous = json.loads(args.result_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if not isinstance(previous, dict):
            raise LabError(f"{args.result_path} is not a JSON object of earlier results: move it away or pass "
                           f"another --result_path (it is left as it is)")
    atomic_write_json(args.result_path, {**previous, **results})
    print(f"results merged into {args.result_path}")


if __name__ == "__main__":
    run_cli(main)
