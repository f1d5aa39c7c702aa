"""What the class page (class_page.py) and the feedback files (feedback.py) share: text made safe for
HTML, pictures drawn from arrays, the terms of a grade, and the flags in plain words.

Everything a student controls (a name, a note, an error, a log line, a line of source) is untrusted: it
enters a page only through `text` or `source_lines`, escaped, never as markup. Pictures are encoded here
from the uint8 arrays the grader kept (evidence.py), never copied from a hand-in. A page makes no
request: its pictures are data: URIs and its Content-Security-Policy allows nothing else."""
import base64
import html

import numpy as np

from outputs import png_bytes
from tasks import TASK_RECORDS
from tools.autograde.reads import clean_text

# Nothing but what the page holds: no fetch, font, frame or form anywhere; inline style, pictures as data:,
# and (the class page only) its own inline script.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {script}; form-action 'none'"
GAP = 2  # pixels between the digits of a picture, drawn in GAP_GREY
GAP_GREY = 96

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img.digits { image-rendering: pixelated; background: #606060; }
.flag { display: inline-block; background: #fde2e1; border: 1px solid #e0a0a0; border-radius: 3px;
        padding: 0 4px; margin: 1px; font-size: 12px; white-space: nowrap; }
.error { color: #a00000; }
.note { color: #555; }
td.note, td.error { min-width: 16em; max-width: 26em; font-size: 12px; overflow-wrap: anywhere; }
pre { background: #f6f6f6; padding: 4px; overflow-x: auto; font-size: 12px; margin: 0; }
figure { display: inline-block; margin: 4px 12px 4px 0; text-align: center; font-size: 12px; }
.wrong { color: #c00000; font-weight: bold; }
"""

# Each flag in plain words: what it means for the grade. The numbers behind it are in the flag's evidence.
FLAG_WORDS = {
    "recon-bypasses-code": "The reconstructions that forward returned are clearly better than what decode makes of "
                           "their own codes: they did not come through the code. The lower of the two counts.",
    "code-beyond-latent-dim": "Moving each code a little (5% of its spread) spoils the decoded images far more than an "
                              "honest decoder's: the codes carry more than their numbers' worth. The grade comes from "
                              "the decode of the moved codes.",
    "decode-returns-real-images": "Decode of the moved codes returns real images, looked up rather than decoded: the "
                                  "reconstruction terms (SSIM and MSE) count 0.",
    "copied-samples": "More than 5% of the generated samples are near-copies of real digits: the FID term counts 0.",
    "illegible-samples": "The course's digit classifier reads fewer than half of the samples as the label they were "
                         "drawn for, while their FID pays: the FID term counts 0.",
    "similar-source": "Your submission.py shares long passages with another student's. Nothing is deducted; a TA "
                      "reads both files.",
    "similar-weights": "Your handed-in weights are nearly the same as another student's. Nothing is deducted; a TA "
                       "looks into it.",
    "same-checkpoint": "Your handed-in checkpoint is byte for byte another student's. Nothing is deducted; a TA "
                       "looks into it.",
}
PAIR_FLAGS = ("similar-source", "similar-weights", "same-checkpoint")  # their evidence names another student


def text(value, limit: int = 5000) -> str:
    """Untrusted text as HTML text: cleaned (clean_text: no control characters, every character
    encodable, at most `limit`), then escaped, quotes too, so it is safe in an attribute as well."""
    return html.escape(clean_text("" if value is None else value, limit), quote=True)


def source_lines(source: str, limit: int = 300) -> str:
    """Lines of a student's source as the text of a <pre>: each line cleaned and escaped alone."""
    return "\n".join(text(line.replace("\t", "    "), limit) for line in source.split("\n"))


def number(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def grid(rows: list, columns: int = None) -> np.ndarray:
    """One picture of rows of digits: each row a uint8 [M, 28, 28] array (M may differ), GAP pixels apart."""
    columns = columns or max(len(row) for row in rows)
    height, width = 28 * len(rows) + GAP * (len(rows) - 1), 28 * columns + GAP * (columns - 1)
    out = np.full((height, width), GAP_GREY, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row[:columns]):
            top, left = r * (28 + GAP), c * (28 + GAP)
            out[top:top + 28, left:left + 28] = image
    return out


def png_uri(picture: np.ndarray) -> str:
    """A uint8 [H, W] array as a data: URI of a grey PNG."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture, optimize=True)).decode("ascii")


def picture(rows: list, title: str, shrink: int = 1, columns: int = None) -> str:
    """An <img> of rows of digits (see grid), `title` (our own words) as its alt text and tooltip; a
    thumbnail (shrink 2) is drawn at half the size (each 2 x 2 pixels averaged), in a quarter of the bytes."""
    array = grid(rows, columns)
    if shrink > 1:
        height, width = (size // shrink * shrink for size in array.shape)
        array = array[:height, :width].reshape(height // shrink, shrink, width // shrink, shrink).mean(axis=(1, 3))
        array = array.round().astype(np.uint8)
    height, width = array.shape
    return (f'<img class="digits" src="{png_uri(array)}" width="{width}" height="{height}" '
            f'alt="{html.escape(title)}" title="{html.escape(title)}">')


def terms(task: str, entry: dict) -> list:
    """[(name, value as text)] of one task's grade: the grade out of its cap, then each term."""
    cap = TASK_RECORDS[task].cap
    rows = [("grade", "" if entry.get("score") is None else f"{entry['score']:.2f} / {cap:g}"),
            ("SSIM", number(entry.get("ssim"))), ("MSE", number(entry.get("mse"), 5))]
    if TASK_RECORDS[task].conditional:
        rows.append(("FID", number(entry.get("fid"), 3)))
    rows.append(("bonus", number(entry.get("bonus"), 3)))
    return rows


def facts_table(facts) -> str:
    """(name, value) rows as a two-column table; names and values are escaped alike."""
    return "<table>" + "".join(f"<tr><th>{text(name)}</th><td>{text(value)}</td></tr>" for name, value in facts) + "</table>"


def readings_table(samples: np.ndarray, readings: np.ndarray) -> str:
    """The samples, one row per label, each beside what the classifier read in it (misread: in red)."""
    rows = []
    for label, (row, read) in enumerate(zip(samples, readings)):
        words = " ".join(f'<span class="wrong">{int(r)}</span>' if int(r) != label else str(int(r)) for r in read)
        rows.append(f"<tr><td>{label}</td><td>{picture([row], f'samples drawn for label {label}')}</td>"
                    f"<td><code>{words}</code></td></tr>")
    share = float(np.mean(readings == np.arange(len(readings))[:, None])) if readings.size else 0.0
    return (f"<table><tr><th>label</th><th>samples</th><th>read as ({100 * share:.0f}% right)</th></tr>"
            + "".join(rows) + "</table>")


def document(title: str, body: str, script: str = "") -> bytes:
    """A whole HTML page: its policy allows only what it holds (and its own script, when it has one)."""
    policy = POLICY.format(script="'unsafe-inline'" if script else "'none'")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{text(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            + (f"<script>{script}</script>\n" if script else "") + "</body></html>\n")
    return page.encode("utf-8", errors="replace")
