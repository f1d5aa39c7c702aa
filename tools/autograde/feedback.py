"""Each student's feedback file, OUT_feedback/<slot>.html, for the TA to hand back: their grades and each
term, their pictures, their flags, notes and errors in plain words. It holds nothing but what is theirs:
no other student (a pair flag says "another student", never who, and shows none of their code), no image
of the grading split but the originals of their own reconstructions (and what their own model returned),
and nothing of the grader's secret: not OUT_results/secret, not the draws' order, not which decode phase
was which (decode_1 and decode_2 are both called "decode" here), no digest. No script runs in it."""
import re

from tasks import TASK_RECORDS, TASKS
from tools.autograde.page_parts import (FLAG_WORDS, PAIR_FLAGS, document, facts_table, picture, readings_table, terms,
                                        text)

# The first words of an error, in plain words: the phase it came from and what that means for the student.
ERROR_WORDS = [
    (r"^import: ", "Your submission.py could not be imported"),
    (r"^contract check: ", "The check of the handout's contract stopped"),
    (r"^no submission\.py", "There was nothing to grade"),
    (r"^hand-in: ", "Your hand-in folder could not be taken in"),
    (r"^autograder failure: ", "The grader itself failed (not your code): you will be graded again"),
    (r"^--require_isolation: ", "The grader could not isolate your code on its machine: you will be graded again"),
    (r"^(\w+) contract: ", r"\1: one of the handout's calls failed on your model"),
    (r"^(\w+) checkpoint: ", r"\1: your handed-in checkpoint was refused"),
    (r"^(\w+) training: ", r"\1: training your model with the course's budget failed"),
    (r"^(\w+) reconstruct: ", r"\1: reconstructing the grading images failed"),
    (r"^(\w+) decode: ", r"\1: decoding codes failed"),
]
GRADED_FROM = {
    "forward": "from what forward returned",
    "verified decode": "from the decode of your codes, which was lower than forward's reconstructions",
}
PHASE_NAME = re.compile(r"decode_[12]")  # which decode phase was which is the grader's secret


def plain(message: str) -> tuple:
    """(what it means, the message itself) for one error."""
    for pattern, words in ERROR_WORDS:
        found = re.match(pattern, message)
        if found:
            return found.expand(words), message[found.end():]
    return "", message


def own(value, limit: int = 5000) -> str:
    """A student's own text (a note, an error) as HTML, with the decode phases' names left out."""
    return text(PHASE_NAME.sub("decode", str(value)), limit)


def student_page(record: dict, pictures: dict) -> bytes:
    name = record["student"]
    tasks = record.get("tasks", {})
    total = sum(tasks.get(task, {}).get("score") or 0.0 for task in TASKS)
    cap = sum(task.cap for task in TASK_RECORDS.values())
    body = [f"<h1>Your grades, {text(name)}</h1>", f"<p>Total: <strong>{total:.2f} / {cap:g}</strong></p>"]
    flags = record.get("flags", [])
    for task in TASKS:
        body.append(task_section(task, tasks.get(task), pictures.get(task, {}),
                                 [f for f in flags if f.get("task") == task and f["flag"] not in PAIR_FLAGS]))
    pairs = sorted({f["flag"] for f in flags if f["flag"] in PAIR_FLAGS})
    if pairs:
        body.append("<h2>Similarity</h2>" + "".join(f"<p>{text(FLAG_WORDS[flag])}</p>" for flag in pairs))
    errors = [plain(str(e)) for e in record.get("errors", [])]
    if errors:
        body.append("<h2>What went wrong</h2><ul>" + "".join(
            f"<li>{own(words) + ': ' if words else ''}<code>{own(message)}</code></li>" for words, message in errors)
            + "</ul>")
    notes = record.get("notes", [])
    if notes:
        body.append("<h2>Notes (they cost no mark)</h2><ul>" + "".join(f"<li>{own(n)}</li>" for n in notes) + "</ul>")
    return document(f"Feedback: {name}", "\n".join(body))


def task_section(task: str, entry: dict, arrays: dict, flags: list) -> str:
    cap = TASK_RECORDS[task].cap
    if not entry or entry.get("score") is None:
        return f"<h2>{task}: not graded (0 / {cap:g})</h2><p>See what went wrong below.</p>"
    parts = [f"<h2>{task}</h2>" + facts_table(terms(task, entry) + [("latent_dim", entry.get("latent_dim")),
                                                                    ("model", entry.get("source"))])]
    graded_from = entry.get("graded_from", "forward")
    words = GRADED_FROM.get(graded_from, "from the decode of your codes moved a little (see the flags below)")
    parts.append(f"<p>Your reconstructions were graded {words}.</p>")
    if arrays:
        rows = [arrays["originals"], arrays["reconstructions"]]
        parts.append(picture(rows, "grading images above your model's reconstructions")
                     + "<p>Above: grading images; below: your model's reconstructions of them.</p>")
        if "samples" in arrays:
            parts.append("<p>Your samples, one row per label, and the digit the course's classifier read in each:</p>"
                         + readings_table(arrays["samples"], arrays["readings"]))
    for flag in flags:
        parts.append(flag_section(flag, entry, arrays))
    return "\n".join(parts)


def flag_section(flag: dict, entry: dict, arrays: dict) -> str:
    """One of the student's own flags: what it means, its numbers, and their own images behind it."""
    name = flag["flag"]
    parts = [f"<h3>Flag: {text(name)}</h3><p>{text(FLAG_WORDS.get(name, ''))}</p>",
             f"<p>{own(flag.get('evidence'), 3000)}</p>"]
    if name == "copied-samples" and "copies" in arrays:
        for example, copy, source in zip(entry.get("copy_check", {}).get("examples", []), arrays["copies"],
                                         arrays["copy_sources"]):
            # a grading image is never shown: a student's kit does not hold that split
            shown = [copy] if example["split"] == "grading" else [copy, source]
            where = "a grading image (not shown)" if example["split"] == "grading" else \
                f"{text(example['split'])} image #{example['image']}"
            parts.append(f"<figure>{picture([shown], 'your sample beside the real image nearest it')}"
                         f"<figcaption>label {example['label']}: {where}, distance {example['distance']:.5f}"
                         f"</figcaption></figure>")
    elif name in ("code-beyond-latent-dim", "decode-returns-real-images") and "moved" in arrays:
        parts.append(picture([arrays["originals"], arrays["decoded"], arrays["moved"]],
                             "grading images, decode of your codes, decode of your codes moved a little")
                     + "<p>Rows: grading images; decode of your codes; decode of your codes moved a little.</p>")
    elif name == "recon-bypasses-code" and "bypass_forward" in arrays:
        parts.append(picture([arrays["bypass_originals"], arrays["bypass_forward"], arrays["bypass_decoded"]],
                             "grading images, forward's reconstructions, decode of their codes")
                     + "<p>Rows: grading images; what forward returned; decode of the codes forward gave (moved a "
                       "little, if the flag above says so).</p>")
    return "\n".join(parts)
