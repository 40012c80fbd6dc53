"""The search page in a real headless Chromium (Debian's, driven by Playwright; `make test`
installs it): type a query and see thumbnails, open a detail view, upload or drop a DICOM, read
errors, keep using the page while a query runs. Screenshots go to test-artifacts/serve/."""

from __future__ import annotations

import base64

import pytest

from cxrtool.embed.shards import image_id
from cxrtool.serve import create_app

from .conftest import REPO
from .serve_helpers import UPLOAD_DICOM, build_workspace, serving

ARTIFACTS = REPO / "test-artifacts" / "serve"
LOADED = "() => { const imgs = [...document.querySelectorAll('.card img')]; " \
         "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model, tiny_model_dir):
    archive, ws = build_workspace(tmp_path_factory, tiny_model)
    app = create_app(ws, model=tiny_model)
    with serving(app) as base:
        yield base, app, archive
    print(f"\nserve screenshots: {ARTIFACTS}")


@pytest.fixture()
def page(browser, site):
    """A fresh page on the site; fails the test if the page logged an error (a CSP violation, say)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site[0] + "/")
    page.wait_for_function("() => document.getElementById('stats').textContent.includes('images')")
    yield page
    context.close()
    assert not [e for e in errors if "400" not in e and "413" not in e], errors  # expected API errors aside


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def test_a_text_query_shows_thumbnails_and_a_detail_view(page, site):
    page.uncheck("#dedupe")  # the tiny random test model puts most images within the near-duplicate cosine
    page.fill("#q", "right lower lobe consolidation")
    page.press("#q", "Enter")
    page.wait_for_function(LOADED)
    cards = page.locator(".card")
    assert cards.count() == 20  # the default k; every thumbnail decoded and shown
    scores = [float(s) for s in page.locator(".card .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    assert "20 images for “right lower lobe consolidation”" in page.inner_text("#status")
    shot(page, "1-text-query-grid")

    first_id = cards.first.get_attribute("data-id")
    cards.first.click()
    dialog = page.locator("#detail")
    dialog.wait_for(state="visible")
    page.wait_for_function("() => { const i = document.getElementById('detail-img'); "
                           "return i.complete && i.naturalWidth >= 512; }")
    page.wait_for_selector("#detail-fields dt")
    page.wait_for_selector("#detail-reports li")
    fields = page.inner_text("#detail-fields")
    assert "path" in fields and "study key" in fields
    assert page.locator("#detail-reports li").count() >= 1
    page.fill("#win-width", "30")
    page.dispatch_event("#win-width", "input")
    assert float(page.get_attribute("#win-r", "slope")) > 3  # the display window narrowed
    shot(page, "2-detail-view")

    page.click("#more-like")  # the image itself comes first (or a lossless twin of it: same pixels, same vector)
    page.wait_for_function("() => /^20 images like [a-z]+\\//.test(document.getElementById('status').textContent)")
    assert page.locator(".card .score").first.inner_text() == "1.000"
    assert not dialog.is_visible() and first_id


def test_a_side_the_model_does_not_tell_is_noted_above_the_results(page, tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.card, "laterality", {"Nodule": {"auroc": 0.34, "low": 0.19, "high": 0.48,
                                                                   "one_sided": 59}})
    page.fill("#q", "left nodule")
    page.press("#q", "Enter")
    page.wait_for_function(LOADED)
    note = page.locator("#note")
    assert note.is_visible() and "side for nodule is not reliable" in note.inner_text()
    shot(page, "6-side-note")
    page.fill("#q", "cardiomegaly")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('for “cardiomegaly” (search')")
    assert not note.is_visible()


def test_uploading_a_dicom_finds_it_first(page, site):
    page.set_input_files("#file", str(site[2] / UPLOAD_DICOM))
    page.wait_for_function("() => document.getElementById('status').textContent.includes('IM000001.dcm (search')")
    page.wait_for_function(LOADED)
    top = page.locator(".card").first
    assert top.get_attribute("data-id") == str(image_id(UPLOAD_DICOM))
    assert top.locator(".score").inner_text() == "1.000"
    assert page.locator("#upload-name").inner_text() == "IM000001.dcm"
    shot(page, "3-dicom-upload")

    page.select_option("#target", "reports")  # the same upload, image -> report
    page.wait_for_selector("#results ol.reports li")
    shot(page, "4-dicom-upload-reports")


def test_a_dropped_file_is_searched_too(page, site):
    """Drag and drop: a real DataTransfer holding the file's bytes, dropped on the zone."""
    dicom = site[2] / "pacs/PAT0001/STUDY0001/SERIES01/IM000001"  # no extension, as PACS exports name them
    data = base64.b64encode(dicom.read_bytes()).decode()
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "IM000001", { type: "" }));
        return dt; }""", data)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function(LOADED)
    page.wait_for_function("() => document.getElementById('status').textContent.includes('like IM000001 (search')")
    assert page.locator(".card").first.get_attribute("data-id") == str(image_id(str(dicom.relative_to(site[2]))))


def test_errors_are_shown_as_readable_messages(page, site, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all\n" * 10)
    page.set_input_files("#file", str(notes))
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "notes.txt: not a readable image" in error.inner_text()
    shot(page, "5-error-message")

    page.click("#clear-upload")
    page.fill("#q", "effusion")
    page.fill("#date-from", "2004-09-01")
    page.fill("#date-to", "2004-08-01")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('images for')")
    assert not page.locator("#error").is_visible()
    assert "no results" in page.inner_text("#results")  # an empty range is an answer, not an error


def test_the_page_stays_usable_while_a_query_runs(page, site):
    app = site[1]
    with app.state.service.images._encode_lock:  # the model is busy: the search waits in its worker thread
        page.fill("#q", "a query held up on purpose")
        page.press("#q", "Enter")
        page.wait_for_selector("#status.busy")
        assert page.evaluate("() => fetch('/api/health').then(r => r.status)") == 200  # the server answers
        page.fill("#q", "still typing")  # and the page takes input
        page.check("#per-study")
        assert page.input_value("#q") == "still typing"
        shot(page, "6-query-running")
    page.wait_for_function("() => !document.getElementById('status').classList.contains('busy')")
    assert page.locator(".card").count() >= 1
