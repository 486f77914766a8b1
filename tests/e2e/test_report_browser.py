"""The generated HTML report, opened in headless Chromium under Playwright (tests/support/browser.py).

The reports come from real pipeline runs (no Airflow) against APIs on loopback: the built-in demo
API, and a tiny server whose records carry script and img markup in a field name and its values.
The browser checks what a reviewer sees: the sections render, every figure loads, nothing errors,
nothing is fetched from anywhere, and hostile API data shows up as text, never as markup.
Every test gets a fresh page of one browser (the ``page`` and ``page_events`` fixtures, from
tests/e2e/conftest.py). Without Chromium the tests skip (they fail when CI is set);
scripts/ensure_chromium.sh installs it.
"""

from __future__ import annotations

import base64
import random
import struct
from pathlib import Path

import pytest
from browser import PageEvents, screenshot
from http_fixtures import ApiServer
from PIL import Image
from playwright.sync_api import Page, expect

from anomaly_detection.config import load_config
from anomaly_detection.pipeline.run import run_pipeline
from devtools.demo_api import DemoDataset, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "var" / "screenshots" / "report-first-screen.png"
SECTIONS = ("verdict", "top", "time", "history", "best", "models", "figures", "data", "run", "logs")
#: Sections every report has (the time view needs a time column).
CORE_SECTIONS = tuple(s for s in SECTIONS if s != "time")
HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = "<img src=x onerror=alert(2)>"


def _run(config_path: Path | None, run_id: str, out: Path, **overrides: object) -> Path:
    config = load_config(
        config_path,
        {"output.runs_dir": str(out / "runs"), "output.reports_dir": str(out / "reports"), **overrides},
    )
    outcome = run_pipeline(config, run_id=run_id)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.paths.report.is_file()
    return outcome.paths.report


@pytest.fixture(scope="module")
def demo_report(chromium, tmp_path_factory) -> Path:
    """The report of the second of two runs of configs/demo.yaml against the demo API (3,000 rows,
    served in a thread) whose m01 and m02 move by half a standard deviation per run, as `make demo`
    serves it: the report has every section, the drift and the trend included."""
    server, base = serve_in_thread(DemoDataset.generate(rows=3000, seed=11), drift_per_run=0.5)
    out = tmp_path_factory.mktemp("demo")
    # two more detectors than the default, so the model table and figure have something to compare
    overrides = {
        "source.url": f"{base}/records",
        "modeling.algorithms": ["ensemble", "isolation_forest", "kmeans"],
    }
    try:
        _run(ROOT / "configs" / "demo.yaml", "browser-demo-1", out, **overrides)
        return _run(ROOT / "configs" / "demo.yaml", "browser-demo-2", out, **overrides)
    finally:
        server.shutdown()
        server.server_close()


def _foreign_requests(events: PageEvents, report: Path) -> list[str]:
    """Every request but the report file itself and inline data: URIs."""
    own = report.resolve().as_uri()
    return [url for url in events.requests if url.split("#")[0] != own and not url.startswith("data:")]


def test_report_renders_its_sections_and_figures_offline(demo_report, page: Page, page_events: PageEvents):
    page.goto(demo_report.as_uri())

    for section in SECTIONS:
        shown = page.evaluate(
            f"""(() => {{
                const el = document.getElementById({section!r});
                if (!el) return "missing";
                const r = el.getBoundingClientRect();
                if (!el.checkVisibility({{checkOpacity: true, checkVisibilityCSS: true}}) || !r.width || !r.height) return "hidden";
                const h2 = el.querySelector("h2");
                return h2 && h2.innerText.trim() ? "ok" : "no heading";
            }})()"""
        )
        assert shown == "ok", f"section #{section}: {shown}"

    images = page.evaluate(
        """[...document.images].map(img => ({src: img.src.slice(0, 40), complete: img.complete,
              width: img.naturalWidth, height: img.naturalHeight, shown: img.getBoundingClientRect().width}))"""
    )
    assert images, "the report has no images"
    broken = [
        img
        for img in images
        if not (img["complete"] and img["width"] > 0 and img["height"] > 0 and img["shown"] > 0)
    ]
    assert not broken, f"images that did not load or render: {broken}"
    assert page.locator("#figures img").count() >= 1

    assert page_events.console_errors == []
    assert page_events.dialogs == []
    assert demo_report.resolve().as_uri() in page_events.requests, "the report itself was not requested"
    assert _foreign_requests(page_events, demo_report) == []

    SCREENSHOT.unlink(missing_ok=True)
    screenshot(page, SCREENSHOT)
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (1366, 900)
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes"
    with Image.open(SCREENSHOT) as shot:
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours and len(colours) > 50, "the screenshot is (nearly) blank"
    top_colour = max(colours)[0] / (1366 * 900)
    assert top_colour < 0.9, f"one colour covers {top_colour:.0%} of the screenshot"


def test_the_first_screen_shows_the_verdict_and_the_review_banner(demo_report, page: Page):
    page.goto(demo_report.as_uri())
    in_view = page.evaluate(
        """["decision", "verdict"].map(id => {
             const r = document.getElementById(id).getBoundingClientRect();
             return r.top >= 0 && r.bottom <= window.innerHeight;
           })"""
    )
    assert in_view == [True, True], "the banner and the verdict must fit the first screen"
    verdict = page.locator("#verdict").inner_text()
    for words in (
        "rows analysed",
        "anomalies",
        "best model",
        "Why this model",
        "Data quality",
        "Against the previous run",
    ):
        assert words in verdict
    banner = page.locator("#decision").inner_text()  # a CLI run: how to review without Airflow
    assert "without Airflow" in banner and "anomalies.csv" in banner and "--rerun-of" in banner


def test_tables_sort_on_a_header_click(demo_report, page: Page, page_events: PageEvents):
    page.goto(demo_report.as_uri())
    column = "[...document.querySelectorAll('#models tbody tr')].map(r => parseFloat(r.cells[3].innerText))"
    header = page.locator("#models thead th:nth-child(4)")
    before = page.evaluate(column)
    assert len(before) >= 3
    header.click()
    expect(header).to_have_attribute("aria-sort", "ascending")
    assert page.evaluate(column) == sorted(before)
    header.click()
    expect(header).to_have_attribute("aria-sort", "descending")
    assert page.evaluate(column) == sorted(before, reverse=True)
    assert page_events.console_errors == []


def test_print_media_hides_the_navigation_and_lifts_the_scroll_boxes(
    demo_report, page: Page, page_events: PageEvents
):
    page.goto(demo_report.as_uri())
    page.emulate_media(media="print")
    expect(page.locator("nav").first).to_have_css("display", "none")
    expect(page.locator("#top .scroll").first).to_have_css("max-height", "none")
    pdf = page.pdf(print_background=False)
    assert pdf[:5] == b"%PDF-"
    assert len(base64.b64encode(pdf)) > 10_000
    assert page_events.console_errors == []


def test_hostile_api_data_is_shown_as_text_and_never_runs(tmp_path, page: Page, page_events: PageEvents):
    rng = random.Random(3)
    records = [
        {
            "id": i,
            HOSTILE: HOSTILE if i % 2 else HOSTILE_IMG,
            "a": rng.gauss(0, 1),
            "b": rng.gauss(5, 2),
            "c": rng.gauss(-3, 1) * (25 if i % 97 == 0 else 1),
        }
        for i in range(400)
    ]
    with ApiServer() as api:
        api.json("/records", records)
        report = _run(None, "browser-hostile", tmp_path, **{"name": HOSTILE, "source.url": api.url("/records"),
                                                           "processing.mode": "native"})  # fmt: skip
        assert api.count("/records") >= 1
    html = report.read_text()
    assert HOSTILE not in html and HOSTILE_IMG not in html  # escaped in the file ...

    page.goto(report.as_uri())
    # ... and in the browser: no dialog, no request for "x", the markup visible as text.
    assert page_events.dialogs == []
    assert _foreign_requests(page_events, report) == []
    assert not [url for url in page_events.requests if url.rstrip("/").endswith("/x")]
    text = page.locator("body").inner_text()
    assert HOSTILE in text
    assert HOSTILE_IMG in text
    assert page.evaluate("[...document.images].filter(img => !img.src.startsWith('data:')).length") == 0
    assert page.evaluate("[...document.scripts].filter(s => s.text.includes('alert')).length") == 0
    assert page_events.console_errors == []
    for section in CORE_SECTIONS:
        assert page.evaluate(f"!!document.getElementById({section!r})"), section
