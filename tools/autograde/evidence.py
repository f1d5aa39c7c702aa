"""The pictures a TA and a student see of one graded task, kept by the process that graded it (this one, or
a Dask worker): a few images of each array the grade came from, and of the evidence behind each flag, as
small uint8 arrays. They travel back with the student's result and are saved beside it (cache.py), so that
the class page and the feedback files (class_page.py, feedback.py) are drawn from what the batch kept,
without the work folders, which are temporary and on a cluster lie on other machines.

Per task, every array uint8 [M, 28, 28] unless said:
    originals        the first SHOWN_RECONSTRUCTIONS grading images
    reconstructions  forward's reconstructions of them
    decoded          decode of their codes (the verified reconstruction)
    moved            decode of their codes moved by integrity.PERTURBATION x their spread
    bypass_*         (recon-bypasses-code) originals, forward, and the decode that bounded the grade, of the
                     images where forward and decode differ most (bypass_check's most_different, in its order)
    samples          uint8 [10, SHOWN_SAMPLES_PER_LABEL, 28, 28]: the first samples of each label
    readings         int8 [10, SHOWN_SAMPLES_PER_LABEL]: the label the classifier read in each of them
    copies           the near-copies among the samples (copy_check's examples, in their order)
    copy_sources     the real image nearest each of them (copy_check names its split and index)
"""
import numpy as np

SHOWN_RECONSTRUCTIONS = 8
SHOWN_SAMPLES_PER_LABEL = 8


def task_pictures(entry: dict, recon: np.ndarray, decoded: dict, batch) -> dict:
    """The pictures of one graded task (see above) from policy.grade_task's `entry` (its checks name the
    images of the evidence), forward's reconstructions, split_decoded's arrays and the batch's data."""
    shown = slice(0, min(SHOWN_RECONSTRUCTIONS, len(recon)))
    pictures = {"originals": batch.images[shown], "reconstructions": recon[shown],
                "decoded": decoded["verified"][shown], "moved": decoded["perturbed"][shown]}
    bypass = entry.get("bypass_check", {})
    if bypass.get("flagged"):
        # the decode the grade was bounded by: of the moved codes once they were caught carrying more
        bounded_by = decoded["perturbed"] if entry.get("perturbation_check", {}).get("flagged") else decoded["verified"]
        # where forward and decode differ most; none when they differ nowhere, and the bound came from the moved
        # codes' decode (a decode that looks grading images up): then the first images
        different = [d["image"] for d in bypass.get("most_different", [])] or list(range(shown.stop))
        pictures.update(bypass_originals=batch.images[different], bypass_forward=recon[different],
                        bypass_decoded=bounded_by[different])
    samples = decoded.get("samples")
    if samples is not None:
        from classifier import classify
        kept = samples[:, :SHOWN_SAMPLES_PER_LABEL]
        _, read = classify(batch.classifier, kept.reshape(-1, *kept.shape[2:]))  # each image read alone
        pictures.update(samples=kept, readings=read.reshape(kept.shape[:2]).astype(np.int8))
        examples = entry.get("copy_check", {}).get("examples", [])
        if examples:
            banks = {bank.name: bank for bank in batch.banks}
            flat = samples.reshape(-1, *samples.shape[2:])
            pictures["copies"] = flat[[e["sample"] for e in examples]]
            pictures["copy_sources"] = np.stack([bank_image(banks[e["split"]], e["image"]) for e in examples])
    return {name: np.ascontiguousarray(array) for name, array in pictures.items()}


def bank_image(bank, index: int) -> np.ndarray:
    """Image `index` of an integrity.ImageBank (kept as 0-1 floats of uint8 pixels) as uint8 [28, 28]."""
    return (bank.images[index].numpy() * 255).round().astype(np.uint8).reshape(28, 28)


def flatten(pictures: dict) -> dict:
    """{task: {name: array}} as one level, {"task/name": array}, for an .npz file."""
    return {f"{task}/{name}": array for task, arrays in pictures.items() for name, array in arrays.items()}


def unflatten(arrays) -> dict:
    """flatten's inverse."""
    pictures = {}
    for key in arrays:
        task, name = key.split("/", 1)
        pictures.setdefault(task, {})[name] = arrays[key]
    return pictures
