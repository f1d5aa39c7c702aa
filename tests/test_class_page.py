"""The class page (OUT.html) and the feedback files (OUT_feedback/<student>.html) that every autograde batch
writes (tools/autograde/class_page.py, feedback.py): opened in a real browser, headless Chromium driven by
Playwright (one row per student, each flag's evidence, the filter, the sort, no request, a screenshot); a
student's name and notes that hold markup stay text; each feedback file holds only its student's things.

The fast tests draw the pages from a made-up batch that raises every flag; the slow ones read the pages of
the autograder's test batch (conftest.py's `graded`, shared with tests/test_autograde.py)."""
import base64
import html
import io
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from data_utils import load_split
from tools.autograde import class_page, evidence, page_parts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE_NAME = "<script>alert('name')</script>"
HOSTILE_NOTE = "<img src=http://tracker.example/x.png onerror=alert(1)> and </td></tr></table><b>bold</b>"
EVERY_FLAG = ["recon-bypasses-code", "code-beyond-latent-dim", "decode-returns-real-images", "copied-samples",
              "illegible-samples", "similar-source", "similar-weights", "same-checkpoint"]


# ---------------------------------------------------------------- a made-up batch that raises every flag
def made_up_pictures(images: np.ndarray, labels: np.ndarray, offset: int) -> dict:
    """Every picture evidence.task_pictures keeps: the first grading images as the originals, and a student's
    own images, real digits of the grading split from `offset` on (another student's lie elsewhere)."""
    shown, per_label = evidence.SHOWN_RECONSTRUCTIONS, evidence.SHOWN_SAMPLES_PER_LABEL
    originals = images[:shown]
    own = images[offset:offset + 10 * per_label]
    samples = own.reshape(10, per_label, 28, 28)
    train_image = np.random.default_rng(offset).integers(0, 256, (28, 28), dtype=np.uint8)  # not a grading image
    pictures = {"originals": originals, "reconstructions": own[:shown], "decoded": own[8:8 + shown],
                "moved": own[16:16 + shown]}
    return {"VAE0label": dict(pictures),
            "Genwithlabel": dict(pictures, bypass_originals=originals[:3], bypass_forward=own[24:27],
                                 bypass_decoded=own[27:30], samples=samples,
                                 readings=labels[offset:offset + 10 * per_label].reshape(10, per_label).astype(np.int8),
                                 copies=own[30:32], copy_sources=np.stack([train_image, images[190]]))}


def made_up_entry(task: str, score: float) -> dict:
    entry = {"score": score, "score_uncapped": score, "ssim": 0.61, "mse": 0.031, "bonus": 1.19, "latent_dim": 8,
             "source": "trained here", "precision": "fp32", "graded_from": "forward",
             "forward": {"score": score, "ssim": 0.61, "mse": 0.031},
             "verified": {"score": score, "ssim": 0.61, "mse": 0.031},
             "perturbed": {"score": score - 0.01, "ssim": 0.6, "mse": 0.032}}
    if task == "Genwithlabel":
        entry.update(fid=4.5, copy_check={"thresholds": [0.004] * 10, "examples": [
            {"sample": 3, "label": 0, "split": "train", "image": 12, "shift": [0, 0], "distance": 0.0},
            {"sample": 9, "label": 1, "split": "grading", "image": 190, "shift": [1, 0], "distance": 0.001}]})
    return entry


def made_up_batch(tiny_valid):
    """(records, pictures, report, slots): alice, honest; bob, whose name and notes hold markup and who raises
    every flag (similar-source with carol, whose file he copied); carol, who cannot be imported."""
    images, labels = load_split(tiny_valid)
    hostile_flags = [{"flag": flag, "task": "" if flag in page_parts.PAIR_FLAGS else "Genwithlabel",
                      "evidence": f"evidence of {flag} <b>not bold</b>"
                                  + (" with carol: 0.950" if flag in page_parts.PAIR_FLAGS else "")}
                     for flag in EVERY_FLAG]
    records = [
        {"student": "alice", "tasks": {t: made_up_entry(t, s) for t, s in (("VAE0label", 9.5), ("Genwithlabel", 25.0))},
         "flags": [], "notes": [], "errors": [], "isolation": "bubblewrap", "host": "node1", "seconds": 12.5,
         "hand_in_sha256": "a" * 64, "decode_phases": {"moved": "decode_1", "verified": "decode_2"}},
        {"student": HOSTILE_NAME, "tasks": {t: made_up_entry(t, s) for t, s in (("VAE0label", 3.0), ("Genwithlabel", 7.0))},
         "flags": hostile_flags, "notes": [HOSTILE_NOTE], "errors": ["Genwithlabel decode: <i>crash</i> in decode_2"],
         "isolation": "bubblewrap", "host": "node1", "seconds": 20.0, "hand_in_sha256": "b" * 64},
        {"student": "carol", "tasks": {}, "flags": [{"flag": "similar-source", "task": "",
                                                     "evidence": f"similar-source with {HOSTILE_NAME}: 0.950"}],
         "notes": [], "errors": ["import: SyntaxError: invalid syntax (submission.py, line 3)"],
         "isolation": "bubblewrap", "host": "node2", "seconds": 1.0, "hand_in_sha256": "c" * 64}]
    pictures = {"alice": made_up_pictures(images, labels, 8), HOSTILE_NAME: made_up_pictures(images, labels, 100)}
    report = {"isolation": "bubblewrap: test", "isolated": True, "similarity_notes": ["dave: source not compared"],
              "similarity": [{"kind": "similar-source", "students": [HOSTILE_NAME, "carol"], "value": 0.95,
                              "passages": [{"a": [3, 4], "a_text": "def f(x):\n    return x  # </pre><script>",
                                            "b": [10, 11], "b_text": "def carols_own(y):\n    return y"}]}]}
    slots = {"alice": "alice", HOSTILE_NAME: "script-0123456789ab", "carol": "carol"}
    return records, pictures, report, slots


@pytest.fixture
def made_up_pages(tmp_path, tiny_valid):
    records, pictures, report, slots = made_up_batch(tiny_valid)
    paths = class_page.write_pages(records, pictures, report, tmp_path / "grades.csv", slots)
    return {"records": records, "pictures": pictures, "page": paths[0], "feedback": paths[1], "slots": slots}


# ---------------------------------------------------------------- reading a page back
class Elements(HTMLParser):
    """Every start tag of a page, with its attributes, and its text, as an HTML parser reads them."""

    def __init__(self, page: str):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def pictures_in(page: str) -> list:
    """Every picture of a page, decoded from its data: URI, as uint8 [H, W] arrays."""
    from PIL import Image
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))))
            for uri in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def digits_in(page: str) -> list:
    """The 28 x 28 digits of every picture of a page (page_parts.grid's layout)."""
    step = 28 + page_parts.GAP
    return [picture[top:top + 28, left:left + 28] for picture in pictures_in(page)
            for top in range(0, picture.shape[0], step) for left in range(0, picture.shape[1], step)]


def check_feedback(folder: Path, records: list, pictures: dict, slots: dict, grading_images: np.ndarray,
                   secret: bytes = None):
    """Each student's file: theirs only (no other student's name, no picture of theirs), no grading image but
    their reconstructions' originals and what their own model returned, nothing of the grader's secret."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{slots[r['student']]}.html" for r in records)
    own_digits = {name: {d.tobytes() for arrays in student.values() for array in arrays.values()
                         if array.dtype == np.uint8 for d in array.reshape(-1, 28, 28)} for name, student in pictures.items()}
    grading = {image.tobytes() for image in grading_images}
    for record in records:
        name = record["student"]
        page = (folder / f"{slots[name]}.html").read_text()
        elements = Elements(page)
        assert not any(tag == "script" for tag, _ in elements.tags) and "script-src 'none'" in page
        for other in records:
            if other["student"] != name:
                assert html.escape(other["student"]) not in page and other["student"] not in page, (name, other)
                assert other.get("hand_in_sha256", "-") not in page
        assert "decode_1" not in page and "decode_2" not in page and record.get("hand_in_sha256", "-") not in page
        if secret is not None:
            assert secret.hex() not in page and base64.b64encode(secret).decode() not in page
        digits = digits_in(page)
        assert {d.tobytes() for d in digits} <= own_digits.get(name, set()), name  # nothing of anyone else's
        shown_originals = {d.tobytes() for key in ("originals", "bypass_originals")
                           for arrays in pictures.get(name, {}).values() for d in arrays.get(key, [])}
        returned = own_digits.get(name, set()) - {d.tobytes() for arrays in pictures.get(name, {}).values()
                                                  for key in ("originals", "bypass_originals", "copy_sources")
                                                  for d in arrays.get(key, [])}
        for digit in digits:
            if digit.tobytes() in grading:
                assert digit.tobytes() in shown_originals | returned, name


# ---------------------------------------------------------------- in a browser
def open_in_chromium(page: Path, screenshot: Path = None, fragment: str = ""):
    """(the browser's page, what it requested, the errors it logged, the dialogs it opened, a closer): `page`
    opened in headless Chromium (Debian's, /usr/bin/chromium) through Playwright."""
    if CHROMIUM is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium); the page was not opened in a browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -r requirements-course.txt); the page was not opened")
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    view = browser.new_page(viewport={"width": 1600, "height": 1000})
    requests, errors, dialogs = [], [], []
    view.on("request", lambda request: requests.append(request.url))
    view.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    view.on("pageerror", lambda error: errors.append(str(error)))
    view.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    view.goto(page.resolve().as_uri() + fragment)
    view.wait_for_load_state("load")
    if screenshot is not None:
        view.screenshot(path=str(screenshot), full_page=True)

    def close():
        browser.close()
        playwright.stop()
    return view, requests, errors, dialogs, close


STUDENTS_AND_FLAGS = """() => [...document.querySelectorAll("#students > tbody")].map(student => ({
    name: student.rows[0].cells[0].textContent, hidden: student.hidden, flags: student.dataset.flags,
    evidence: [...student.querySelectorAll("section.evidence")].map(section => ({flag: section.dataset.flag,
        pictures: section.querySelectorAll("img").length, code: section.querySelectorAll("pre").length,
        text: section.textContent.length}))}))"""


def check_in_browser(page: Path, records: list, screenshot: Path):
    """One row per student, each flag with its evidence, the filter (from its menu and from the address), the
    sort, no request but the page itself, no error; a screenshot."""
    view, requests, errors, dialogs, close = open_in_chromium(page, screenshot)
    try:
        students = view.evaluate(STUDENTS_AND_FLAGS)
        assert [s["name"] for s in students] == [r["student"] for r in records]  # one row each, in the table's order
        for student, record in zip(students, records):
            assert set(student["flags"].split()) == {f["flag"] for f in record["flags"]}
            shown = {(e["flag"]): e for e in student["evidence"]}
            for flag in record["flags"]:
                found = shown[flag["flag"]]
                needs = "code" if flag["flag"] == "similar-source" else \
                    "text" if flag["flag"] in ("similar-weights", "same-checkpoint") else "pictures"
                assert found[needs] > 0, (student["name"], flag, found)
        for flag in sorted({f["flag"] for r in records for f in r["flags"]}) + ["none", "errors"]:
            view.select_option("#flag-filter", flag)
            visible = [s["name"] for s in view.evaluate(STUDENTS_AND_FLAGS) if not s["hidden"]]
            expected = [r["student"] for r in records
                        if (not r["flags"] if flag == "none" else bool(r["errors"]) if flag == "errors"
                            else any(f["flag"] == flag for f in r["flags"]))]
            assert visible == expected, flag
            assert view.evaluate("location.hash") == f"#flag={flag}"
        view.locator("#students thead th", has_text="total").click()
        totals = [float(t) for t in view.locator("#students > tbody > tr.summary > td:nth-child(2)").all_text_contents()]
        assert totals == sorted(totals)
        assert all(url == page.resolve().as_uri() or url.startswith("data:") for url in requests), requests
        assert not errors and not dialogs, (errors, dialogs)
    finally:
        close()
    assert screenshot.stat().st_size > 10_000
    flagged = next(f["flag"] for r in records for f in r["flags"])  # the filter from the address alone
    view, requests, _, _, close = open_in_chromium(page, fragment=f"#flag={flagged}")
    try:
        visible = [s["name"] for s in view.evaluate(STUDENTS_AND_FLAGS) if not s["hidden"]]
        assert visible == [r["student"] for r in records if any(f["flag"] == flagged for f in r["flags"])]
        assert view.evaluate("document.getElementById('flag-filter').value") == flagged
    finally:
        close()


# ---------------------------------------------------------------- the made-up batch
def test_every_flag_has_its_evidence_and_markup_from_a_student_stays_text(made_up_pages):
    page = made_up_pages["page"].read_text()
    elements = Elements(page)
    scripts = [attrs for tag, attrs in elements.tags if tag == "script"]
    assert len(scripts) == 1 and not scripts[0]  # ours, inline: no src
    assert not any(tag in ("b", "i") for tag, _ in elements.tags)  # what a student wrote is never markup
    links = [value for _, attrs in elements.tags for name, value in attrs.items()
             if name in ("src", "href", "action", "srcset", "poster", "background")]
    assert links and all(value.startswith("data:image/png;base64,") for value in links)  # no address to fetch
    assert "default-src 'none'" in page
    text = html.unescape("".join(elements.text))
    assert HOSTILE_NAME in text and HOSTILE_NOTE in text and "# </pre><script>" in text
    sections = [attrs["data-flag"] for tag, attrs in elements.tags if tag == "section"]
    assert sorted(sections) == sorted(EVERY_FLAG + ["similar-source"])  # bob's eight, and carol's pair


def test_the_pages_open_in_a_browser_with_every_flag_filtered_and_no_request(made_up_pages, tmp_path):
    check_in_browser(made_up_pages["page"], made_up_pages["records"], tmp_path / "made_up_class_page.png")
    view, requests, errors, dialogs, close = open_in_chromium(made_up_pages["page"])
    try:  # markup in a name or a note is shown as what it is, and runs nothing
        assert view.locator("#students > tbody > tr.summary > td:first-child").all_text_contents()[1] == HOSTILE_NAME
        assert HOSTILE_NOTE in view.locator("#students > tbody td.note").all_text_contents()
        assert not dialogs and not errors
    finally:
        close()
    feedback_page = made_up_pages["feedback"] / "script-0123456789ab.html"
    view, requests, errors, dialogs, close = open_in_chromium(feedback_page, tmp_path / "made_up_feedback.png")
    try:
        assert view.locator("h1").text_content() == f"Your grades, {HOSTILE_NAME}"
        assert all(url == feedback_page.resolve().as_uri() or url.startswith("data:") for url in requests)
        assert not dialogs and not errors
    finally:
        close()


def test_each_feedback_file_holds_only_its_students_things(made_up_pages, tiny_valid):
    records, pictures, slots = made_up_pages["records"], made_up_pages["pictures"], made_up_pages["slots"]
    check_feedback(made_up_pages["feedback"], records, pictures, slots, load_split(tiny_valid)[0])
    bob = (made_up_pages["feedback"] / "script-0123456789ab.html").read_text()
    assert "carol" not in bob and "carols_own" not in bob and "another student" in bob  # the pair, unnamed
    assert "decoding codes failed" in bob and "crash</i> in decode" not in bob  # plain words, escaped
    carol = (made_up_pages["feedback"] / "carol.html").read_text()
    assert "Your submission.py could not be imported" in carol and "not graded (0 / 10)" in carol


def test_a_page_that_cannot_be_drawn_costs_the_tables_nothing(tmp_path, monkeypatch, capsys):
    """The pages are extras: a failure is one warning line, after the tables are written."""
    from tools.autograde import orchestration
    monkeypatch.setattr(orchestration, "write_pages", lambda *args: 1 / 0)
    lines = []
    monkeypatch.setattr(orchestration, "_print", lines.append)
    records = [{"student": "ann", "tasks": {}, "flags": [], "notes": [], "errors": ["x"], "isolation": "none"}]
    paths = orchestration.write_outputs(records, {}, {"isolation": "test", "isolated": True},
                                        tmp_path / "grades.csv", {"ann": "ann"})
    assert [p.name for p in paths] == ["grades.csv", "grades.md", "grades.json"]
    assert lines == ["warning: the class page and the feedback files were not written: "
                     "ZeroDivisionError: division by zero"]


# ---------------------------------------------------------------- the test batch's pages
@pytest.mark.slow
def test_the_batchs_class_page_in_a_browser(graded, tmp_path):
    page = graded["out"].with_suffix(".html")
    records = graded["report"]["students"]
    flags = {f["flag"] for r in records for f in r["flags"]}
    assert {"copied-samples", "code-beyond-latent-dim", "recon-bypasses-code", "similar-source"} <= flags
    check_in_browser(page, records, tmp_path / "class_page.png")
    print(f"class page: {page.stat().st_size:,} bytes for {len(records)} students; screenshot {tmp_path / 'class_page.png'}")


@pytest.mark.slow
def test_the_batchs_feedback_files_hold_only_their_students_things(graded, tiny_valid):
    from tools.autograde import cache
    from tools.autograde.orchestration import student_slot
    results = graded["out"].parent / "grades_results"
    records = graded["report"]["students"]
    slots = {r["student"]: student_slot(r["student"]) for r in records}
    pictures = {r["student"]: cache.saved_pictures(results / f"{slots[r['student']]}.pictures.npz") for r in records}
    assert pictures["decode_int"]["Genwithlabel"]["samples"].shape == (10, evidence.SHOWN_SAMPLES_PER_LABEL, 28, 28)
    check_feedback(graded["out"].parent / "grades_feedback", records, pictures, slots,
                   load_split(tiny_valid)[0][:200], secret=(results / "secret").read_bytes())
