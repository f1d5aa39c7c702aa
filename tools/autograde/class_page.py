"""The class page: OUT.html beside the tables, one self-contained file a TA opens from a file manager
(pictures inlined, no request, no server). One row per student with the grades, each term, the flags, the
notes, the errors and the isolation, and thumbnails of the reconstructions (originals above) and samples;
each student's detail (every picture, and each flag's evidence) opens on demand in a <details>. A few
lines of plain JavaScript sort the table by a column and filter it by flag (also from the address:
OUT.html#flag=copied-samples). Drawn from what the batch kept (the records, evidence.py's pictures, the
similarity pairs with their shared passages), never from a work folder; see write_pages, which writes the
students' feedback files (feedback.py) too."""
from pathlib import Path

from data_utils import atomic_write_bytes
from tasks import TASK_RECORDS, TASKS
from tools.autograde import feedback
from tools.autograde.page_parts import (FLAG_WORDS, document, facts_table, number, picture, readings_table, source_lines,
                                        terms, text)

THUMBNAIL = 2  # the table's pictures at half their size (page_parts.picture's shrink); the detail's whole

SCRIPT = """
const table = document.getElementById("students"), filter = document.getElementById("flag-filter");
function show() {
  let shown = 0;
  for (const student of table.tBodies) {
    const flags = student.dataset.flags.split(" ").filter(Boolean), want = filter.value;
    student.hidden = !(want === "all" || (want === "any" && flags.length > 0) || (want === "none" && !flags.length)
                       || (want === "errors" && student.dataset.errors === "1") || flags.includes(want));
    shown += student.hidden ? 0 : 1;
  }
  document.getElementById("shown").textContent = shown + " of " + table.tBodies.length + " students shown";
}
filter.onchange = () => { location.hash = "flag=" + filter.value; show(); };
const asked = /flag=([a-z-]+)/.exec(location.hash);
if (asked && [...filter.options].some(option => option.value === asked[1])) filter.value = asked[1];
show();
for (const heading of table.tHead.rows[0].cells) heading.onclick = () => {
  const column = heading.cellIndex, up = heading.dataset.order !== "up";
  heading.dataset.order = up ? "up" : "down";
  const key = student => { const cell = student.rows[0].cells[column]; return cell.dataset.sort ?? cell.textContent; };
  const numeric = heading.dataset.type === "number";
  [...table.tBodies].sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");  // blanks last, either way
    const order = numeric ? x - y : x.localeCompare(y);
    return up ? order : -order;
  }).forEach(student => table.append(student));
};
"""

COLUMNS = [("student", "text"), ("total", "number")] + [
    (f"{task} {term}", "number") for task in TASKS
    for term in ("grade", "SSIM", "MSE") + (("FID",) if TASK_RECORDS[task].conditional else ()) + ("bonus",)
] + [("flags", "text"), ("notes", "text"), ("errors", "text"), ("isolation", "text"), ("pictures", "text")]
TERM_KEYS = {"grade": ("score", 2), "SSIM": ("ssim", 4), "MSE": ("mse", 5), "FID": ("fid", 3), "bonus": ("bonus", 3)}


def write_pages(records: list, pictures: dict, report: dict, out: Path, slots: dict) -> list:
    """OUT.html (the class page) and OUT_feedback/<slot>.html (one file per student, feedback.py).
    `pictures`: student -> {task: evidence.task_pictures}; `slots`: student -> the name of their files."""
    page = out.with_suffix(".html")
    atomic_write_bytes(page, class_page(records, pictures, report))
    folder = out.parent / f"{out.stem}_feedback"
    folder.mkdir(parents=True, exist_ok=True)
    written = set()
    for record in records:
        name = f"{slots.get(record['student'], 'student')}.html"
        atomic_write_bytes(folder / name, feedback.student_page(record, pictures.get(record["student"], {})))
        written.add(name)
    for stale in folder.glob("*.html"):  # a student no longer in the class (an earlier run of this --out)
        if stale.name not in written:
            stale.unlink()
    return [page, folder]


def class_page(records: list, pictures: dict, report: dict) -> bytes:
    flags = sorted({f["flag"] for r in records for f in r.get("flags", [])})
    counts = {flag: sum(1 for r in records if any(f["flag"] == flag for f in r.get("flags", []))) for flag in flags}
    options = [("all", "every student"), ("any", "any flag"), ("none", "no flag"), ("errors", "an error")] + \
        [(flag, f"{flag} ({counts[flag]})") for flag in flags]
    head = "".join(f'<th data-type="{kind}">{text(name)}</th>' for name, kind in COLUMNS)
    body = [f"<h1>Grades of {len(records)} students</h1>",
            f"<p>Isolation: {text(report.get('isolation'))}"
            + ("" if report.get("isolated") else ' <strong class="error">(not enforced: student code ran with the '
               "grader's rights)</strong>") + "</p>",
            '<p><label>Show <select id="flag-filter">'
            + "".join(f'<option value="{text(value)}">{text(words)}</option>' for value, words in options)
            + '</select></label> <span id="shown"></span>. Click a heading to sort by it; '
              "open a student's detail for every picture and each flag's evidence.</p>",
            f'<table id="students"><thead><tr>{head}</tr></thead>']
    body += [student_rows(record, pictures.get(record["student"], {}), report) for record in records]
    body.append("</table>")
    notes = report.get("similarity_notes", [])
    if notes:
        body.append("<h2>Similarity notes</h2><ul>" + "".join(f"<li>{text(n)}</li>" for n in notes) + "</ul>")
    return document(f"Grades of {len(records)} students", "\n".join(body), SCRIPT)


def student_rows(record: dict, pictures: dict, report: dict) -> str:
    """One student: a <tbody> of the table's row and the row of their detail (sorted and hidden as one)."""
    tasks = record.get("tasks", {})
    flags = record.get("flags", [])
    total = sum(tasks.get(task, {}).get("score") or 0.0 for task in TASKS)
    cells = [f'<td data-sort="{text(record["student"])}"><strong>{text(record["student"])}</strong></td>',
             f'<td class="number" data-sort="{total!r}">{total:.2f}</td>']
    for name, _ in COLUMNS[2:-5]:
        task, term = name.split(" ")
        key, digits = TERM_KEYS[term]
        value = tasks.get(task, {}).get(key)
        cells.append(f'<td class="number" data-sort="{"" if value is None else repr(value)}">'
                     f"{number(value, digits)}</td>")
    cells += [f"<td>{flag_badges(flags)}</td>",
              f'<td class="note">{"<br>".join(text(n, 600) for n in record.get("notes", []))}</td>',
              f'<td class="error">{"<br>".join(text(e, 600) for e in record.get("errors", []))}</td>',
              f"<td>{text(record.get('isolation'), 300)}</td>",
              f"<td>{thumbnails(tasks, pictures)}</td>"]
    names = " ".join(sorted({f["flag"] for f in flags}))
    return (f'<tbody class="student" data-flags="{text(names)}" data-errors="{1 if record.get("errors") else 0}">'
            f'<tr class="summary">{"".join(cells)}</tr>'
            f'<tr class="detail"><td colspan="{len(COLUMNS)}"><details><summary>{text(record["student"])}: '
            f"detail</summary>{detail(record, pictures, report)}</details></td></tr></tbody>")


def flag_badges(flags: list) -> str:
    """One badge per kind of flag and task, with its count (a student like three others: 'similar-source x3')."""
    counts = {}
    for flag in flags:
        key = (flag.get("task") or "", flag["flag"])
        counts[key] = counts.get(key, 0) + 1
    return " ".join(f'<span class="flag" title="{text(FLAG_WORDS.get(name, ""))}">'
                    f'{text((task + ": " if task else "") + name)}{f" x{count}" if count > 1 else ""}</span>'
                    for (task, name), count in counts.items())


def graded_images(entry: dict, arrays: dict):
    """The reconstructions the grade came from: forward's, or the decode of the (moved) codes."""
    graded_from = entry.get("graded_from", "forward")
    return arrays["moved"] if graded_from.startswith("perturbed") else \
        arrays["decoded"] if graded_from.startswith("verified") else arrays["reconstructions"]


def thumbnails(tasks: dict, pictures: dict) -> str:
    shown = []
    for task in TASKS:
        arrays = pictures.get(task)
        if not arrays or task not in tasks:
            continue
        shown.append(picture([arrays["originals"], graded_images(tasks[task], arrays)],
                             f"{task}: originals above the graded reconstructions", THUMBNAIL))
        if "samples" in arrays:
            shown.append(picture(list(arrays["samples"]), f"{task}: samples, one row per label", THUMBNAIL))
    return " ".join(shown)


def labelled(rows: list) -> str:
    """A table of (what, images [M, 28, 28]) rows, each its own picture with its name beside it."""
    return "<table>" + "".join(f"<tr><th>{text(what)}</th><td>{picture([images], what)}</td></tr>"
                               for what, images in rows) + "</table>"


def detail(record: dict, pictures: dict, report: dict) -> str:
    parts = []
    for task, entry in record.get("tasks", {}).items():
        arrays = pictures.get(task, {})
        facts = terms(task, entry) + [
            ("latent_dim", entry.get("latent_dim")), ("model", entry.get("source")),
            ("precision", entry.get("precision") or ""), ("graded from", entry.get("graded_from", ""))]
        facts += [(f"{kind} grade", number(entry[kind]["score"], 2)) for kind in ("forward", "verified", "perturbed")
                  if kind in entry]
        parts.append(f"<h3>{task}</h3>{facts_table(facts)}")
        if not arrays:
            parts.append("<p>No pictures kept for this task.</p>")
            continue
        parts.append(labelled([("originals", arrays["originals"]), ("forward's reconstructions", arrays["reconstructions"]),
                               ("decode of their codes", arrays["decoded"]),
                               ("decode of the moved codes", arrays["moved"])]))
        if "samples" in arrays:
            parts.append(readings_table(arrays["samples"], arrays["readings"]))
    for flag in record.get("flags", []):
        parts.append(evidence(flag, record, pictures.get(flag.get("task", ""), {}), report))
    facts = [("isolation", record.get("isolation")), ("host", record.get("host")),
             ("seconds", record.get("seconds")), ("hand-in sha256", record.get("hand_in_sha256"))]
    parts.append(facts_table(facts))
    return "\n".join(parts)


def evidence(flag: dict, record: dict, arrays: dict, report: dict) -> str:
    """A flag's evidence: its words, and its pictures or the passages it rests on."""
    name, task = flag["flag"], flag.get("task", "")
    entry = record.get("tasks", {}).get(task, {})
    shown = [f'<section class="evidence" data-flag="{text(name)}" data-task="{text(task)}">',
             f"<h4>{text(name)}{' (' + text(task) + ')' if task else ''}</h4>",
             f"<p>{text(FLAG_WORDS.get(name, ''))}</p><p>{text(flag.get('evidence'), 3000)}</p>"]
    if name == "copied-samples" and "copies" in arrays:
        examples = entry.get("copy_check", {}).get("examples", [])
        thresholds = entry.get("copy_check", {}).get("thresholds", [])
        for example, copy, source in zip(examples, arrays["copies"], arrays["copy_sources"]):
            limit = thresholds[example["label"]] if example["label"] < len(thresholds) else None
            shown.append(f"<figure>{picture([[copy, source]], 'a sample beside its nearest real image')}"
                         f"<figcaption>label {example['label']}: {text(example['split'])} #{example['image']}<br>"
                         f"distance {example['distance']:.5f} (threshold {number(limit, 5)})</figcaption></figure>")
    elif name == "illegible-samples" and "samples" in arrays:
        shown.append(readings_table(arrays["samples"], arrays["readings"]))
    elif name in ("code-beyond-latent-dim", "decode-returns-real-images") and "moved" in arrays:
        shown.append(labelled([("originals", arrays["originals"]), ("decode of the codes", arrays["decoded"]),
                               ("decode of the moved codes", arrays["moved"])]))
    elif name == "recon-bypasses-code" and "bypass_forward" in arrays:
        shown.append(labelled([("originals", arrays["bypass_originals"]), ("forward", arrays["bypass_forward"]),
                               ("the decode that bounds it", arrays["bypass_decoded"])]))
    elif name == "similar-source":
        shown.append(passages(record["student"], report))
    elif name in ("copied-samples", "illegible-samples", "code-beyond-latent-dim", "decode-returns-real-images",
                  "recon-bypasses-code"):
        shown.append("<p>No pictures kept for this task.</p>")
    return "".join(shown) + "</section>"


def passages(student: str, report: dict) -> str:
    """The passages this student's submission.py shares with each similar-source partner's, side by side."""
    shown = []
    for pair in report.get("similarity", []):
        if pair.get("kind") != "similar-source" or student not in pair["students"]:
            continue
        mine = pair["students"].index(student)
        own, other = "ab"[mine], "ab"[1 - mine]
        shown.append(f"<p>with <strong>{text(pair['students'][1 - mine])}</strong>: {pair['value']:.3f}</p>")
        if pair.get("passages_note"):
            shown.append(f"<p>{text(pair['passages_note'])}</p>")
        if not pair.get("passages"):
            shown.append("<p>No passage in the same order in both files (rewritten code, found by the tree view): "
                         "read the two files whole.</p>")
        for passage in pair.get("passages", []):
            shown.append("<table><tr>" + "".join(
                f"<th>{text(pair['students'][i])}, lines {passage[side][0]}-{passage[side][1]}</th>"
                for i, side in ((mine, own), (1 - mine, other))) + "</tr><tr>" + "".join(
                f"<td><pre>{source_lines(passage.get(side + '_text', ''))}</pre></td>" for side in (own, other))
                + "</tr></table>")
    return "".join(shown) or "<p>The pair is not in this batch's similarity section.</p>"
