"""The autograder's outputs: OUT.csv (one row per student), OUT.md (the same, rounded, with the flags
and the similarity section) and OUT.json (everything, per student)."""
import csv
import html
import io
import json
import re
from pathlib import Path

from data_utils import atomic_write_bytes
from tools.autograde.reads import clean_text

TABLE_COLUMNS = ["student",
                 "VAE0label_ssim", "VAE0label_mse", "VAE0label_grade", "VAE0label_source", "VAE0label_precision",
                 "Genwithlabel_ssim", "Genwithlabel_mse", "Genwithlabel_fid", "Genwithlabel_grade",
                 "Genwithlabel_source", "Genwithlabel_precision", "total", "integrity", "errors", "notes",
                 "isolation", "host"]
METRICS = {"VAE0label": ("ssim", "mse"), "Genwithlabel": ("ssim", "mse", "fid")}


def table_rows(records: list) -> list:
    rows = []
    for record in records:
        row = {"student": clean_text(record["student"], 200), "errors": clean_text("; ".join(record["errors"]), 5000),
               "notes": clean_text("; ".join(record.get("notes", [])), 5000)}
        total = 0.0
        for task, metrics in METRICS.items():
            entry = record["tasks"].get(task, {})
            for metric in metrics:
                row[f"{task}_{metric}"] = entry.get(metric)
            row[f"{task}_grade"] = entry.get("score")
            row[f"{task}_source"] = entry.get("source") if "score" in entry else None
            row[f"{task}_precision"] = entry.get("precision")
            total += entry.get("score") or 0.0
        row["total"] = total
        row["isolation"] = clean_text(record.get("isolation") or "", 300)  # what the grading process enforced
        row["host"] = clean_text(record.get("host") or "", 200)
        row["integrity"] = ";".join(f"{f['task']}:{f['flag']}" if f.get("task") else f["flag"]
                                    for f in record.get("flags", []))
        rows.append(row)
    return rows


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~])")


def text(value) -> str:
    """Text for the Markdown report that Markdown and HTML read as nothing but text: what a student's
    process wrote (quoted in an error, a note, a name) cannot end a row, open a comment, hide a section,
    or become a link or an image (round 3: a remote tracking image and a sign-in link in a note). HTML
    is escaped, then every character Markdown gives a meaning inside a line gets a backslash."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(clean_text(value, 10_000), quote=False))


FORMULA_STARTS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # after leading spaces, tabs, CRs


def spreadsheet_safe(value) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs: text starting like a formula (OWASP's
    CSV-injection characters, and their full-width forms), after any leading spaces, gets a leading
    apostrophe (any Unicode space: a no-break space too). Numbers are written by repr and never pass here."""
    text = "" if value is None else str(value)
    return "'" + text if text.lstrip().startswith(FORMULA_STARTS) else text


def write_tables(records: list, out: Path, report: dict) -> list:
    """OUT.csv (full precision), OUT.md (rounded, with the flags and similarity sections) and OUT.json."""
    rows = table_rows(records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else spreadsheet_safe(v)) for k, v in row.items()})
    csv_path, md_path, json_path = out, out.with_suffix(".md"), out.with_suffix(".json")
    atomic_write_bytes(csv_path, buffer.getvalue().encode())

    def cell(column, value):
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.2f}" if column.endswith("_grade") or column == "total" else f"{value:.4f}"
        return text(value)
    lines = [f"Isolation: {report['isolation']}", ""]
    if not report["isolated"]:
        lines += ["**WARNING: isolation was not enforced**: student code ran with the grader's rights "
                  "(file system, network); the integrity checks below still ran.", ""]
    lines += ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    lines += ["", "## Integrity flags", ""]
    flagged = [(r["student"], f) for r in records for f in r.get("flags", [])]
    lines += [f"- **{text(name)}** {f.get('task', '')} `{f['flag']}`: {text(f['evidence'])}"
              for name, f in flagged] or ["none"]
    lines += ["", "## What the codes carry", "",
              "Each task's grade from decode of its codes, and from decode of the codes moved by a small share of "
              "their spread: an honest decoder barely changes; a code that hides more than its numbers does not "
              "survive the move (`code-beyond-latent-dim`).", ""]
    lines += [f"- {text(r['student'])} {task}: {e['perturbation_check']['verified_score']:.2f} -> "
              f"{e['perturbation_check']['perturbed_score']:.2f} ({-100 * e['perturbation_check']['relative_drop']:+.1f}%)"
              for r in records for task, e in r.get("tasks", {}).items() if "perturbation_check" in e] or ["none graded"]
    lines += ["", "## Similarity between students", ""]
    lines += [f"- {text(' and '.join(p['students']))}: `{p['kind']}`" + (f" ({p['task']})" if p.get("task") else "")
              + f" {p['value']:.3f}" for p in report.get("similarity", [])] or ["none above the thresholds"]
    lines += [f"- note: {text(note)}" for note in report.get("similarity_notes", [])]
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(json_path, (json.dumps(dict(report, students=records), indent=2) + "\n").encode())
    return [csv_path, md_path, json_path]
