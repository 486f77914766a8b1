"""The anomaly reports plugin (plugins/anomaly_reports.py) on a real ``airflow standalone``, over real HTTP.

The instance is the session's shared standalone (``airflow_shared``, with the runs of other modules); it
loads the repo's dags/ and plugins/. Run directories and reports are planted straight into its
ANOMALY_RUNS_DIR / ANOMALY_REPORTS_DIR (small hand-written reports for the REST checks; one real
pipeline report, made natively, for the browser). A secret file outside the reports directory (and a
symlink to it inside) must never come back, whatever the path. The browser test logs in through the
Airflow UI's login form in headless Chromium under Playwright (tests/support/browser.py).
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from anomaly_detection.report.index import report_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
DAG = "anomaly_detection"
PREFIX = "/anomaly-reports"
SECRET = f"SECRET-{uuid.uuid4().hex}"
SCREENSHOT = ROOT / "var" / "screenshots" / "airflow-plugin-report.png"
# a 1x1 PNG: the reports embed their figures as data: URIs
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201ff9d6e1b8c0000000049454e44ae426082"
    )
).decode()
HOSTILE_NAME = '<script>alert("name")</script>'
HOSTILE_COMMENT = "<img src=x onerror=alert(1)> looks fine & done"


@pytest.fixture(scope="module")
def airflow_standalone(airflow_shared):
    """This module's Airflow: the session's shared standalone (tests/conftest.py)."""
    return airflow_shared


def _report_html(run_id: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Report {run_id}</title>"
        "<style>body{font-family:sans-serif}</style></head><body>"
        f"<section id='run'><h2>Run</h2><p>REPORT-OF-{run_id} – ünïcode</p></section>"
        f"<section id='figures'><h2>Figures</h2><img alt='dot' src='data:image/png;base64,{PNG}'></section>"
        "</body></html>"
    )


def _results(run_id: str, finished: str, **extra) -> dict:
    return {
        "run_id": run_id,
        "name": "demo",
        "status": "succeeded",
        "source_url": "http://127.0.0.1:8765/records",
        "started_at": finished[:-9] + "00+00:00",
        "finished_at": finished,
        "rows": {"ingested": 1010, "after_duplicates": 1000},
        "best": {
            "algorithm": "kmeans",
            "params": {"n_clusters": 3},
            "anomaly_count": 50,
            "anomaly_share": 0.05,
        },
        "rerun_of": None,
        **extra,
    }


@pytest.fixture(scope="module")
def planted(airflow_standalone):  # noqa: F811
    """Runs, reports, a secret outside the reports directory and traps inside it."""
    reports = Path(airflow_standalone.env["ANOMALY_REPORTS_DIR"])
    runs = Path(airflow_standalone.env["ANOMALY_RUNS_DIR"])
    (reports / "approved").mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    outside = airflow_standalone.home / "outside"
    outside.mkdir()
    for name in ("secret.html", "secret.txt"):
        (outside / name).write_text(SECRET)

    def run(run_id, results=None, decision=None, raw=None, report=True):
        run_dir = runs / run_id
        run_dir.mkdir()
        if raw is not None:
            (run_dir / "results.json").write_text(raw)
        elif results is not None:
            (run_dir / "results.json").write_text(json.dumps(results))
        if decision:
            (run_dir / "decision.json").write_text(json.dumps(decision))
        if report:
            (run_dir / "report.html").write_text(_report_html(run_id))
            (reports / f"{run_id}.html").write_text(_report_html(run_id))

    run("plugin_approved", _results("plugin_approved", "2026-11-25T10:00:05+00:00"),
        {"decision": "approved", "by": "admin", "at": "2026-11-25T11:00:00+00:00", "comment": HOSTILE_COMMENT})  # fmt: skip
    (reports / "approved" / "plugin_approved.html").write_text(_report_html("plugin_approved"))
    run("plugin_rejected", _results("plugin_rejected", "2026-11-26T10:00:05+00:00"),
        {"decision": "rejected", "by": "ana", "at": "2026-11-26T11:00:00+00:00"})  # fmt: skip
    run("plugin_waiting", _results("plugin_waiting", "2026-11-27T10:00:05+00:00", name=HOSTILE_NAME))
    run("plugin_halfwritten", raw='{"run_id": "plugin_halfwritten", "status": "succ', report=False)

    (reports / "escape.html").symlink_to(outside / "secret.html")
    (reports / "escape-dir").symlink_to(outside, target_is_directory=True)
    (reports / "notes.txt").write_text(SECRET)
    return {"reports": reports, "runs": runs, "outside": outside}


@pytest.fixture(scope="module")
def token(airflow_standalone):  # noqa: F811
    return airflow_standalone.client.fetch_token()


def _get(
    airflow_standalone, path: str, *, token: str | None = None, cookie: str | None = None, accept: str = "*/*"
):  # noqa: F811
    """GET ``path`` exactly as written (no client-side normalisation of '..' or '%'): (status, headers, body)."""
    url = urlsplit(airflow_standalone.url)
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return (
            resp.status,
            {k.lower(): v for k, v in resp.getheaders()},
            resp.read().decode("utf-8", "replace"),
        )
    finally:
        conn.close()


def test_the_plugin_is_loaded(airflow_standalone):  # noqa: F811
    client = airflow_standalone.client
    plugins = {p["name"]: p for p in client.get_json("/api/v2/plugins")["plugins"]}
    plugin = plugins["anomaly_reports"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == [PREFIX]
    [view] = plugin["external_views"]
    assert (
        view["name"] == "Anomaly reports"
        and view["destination"] == "nav"
        and view["url_route"] == "anomaly-reports"
    )
    assert view["href"] == "anomaly-reports/"
    assert any("OpenReportLink" in link for link in plugin["global_operator_extra_links"])
    errors = client.get_json("/api/v2/plugins/importErrors")["import_errors"]
    assert not [e for e in errors if "anomaly_reports" in json.dumps(e)], errors


def test_nothing_without_a_valid_airflow_login(airflow_standalone, planted):  # noqa: F811
    paths = [
        f"{PREFIX}/",
        f"{PREFIX}/report/plugin_approved.html",
        f"{PREFIX}/report/..%2foutside%2fsecret.html",
    ]
    for path in paths:
        status, _, body = _get(airflow_standalone, path)
        assert status == 401, (path, status, body)
        assert "REPORT-OF" not in body and "plugin_approved" not in body and SECRET not in body
        for bad in ({"token": "not-a-jwt"}, {"cookie": "not-a-jwt"}, {"token": "e30.e30.e30"}):
            status, _, body = _get(airflow_standalone, path, **bad)
            assert status in (401, 403), (path, bad, status)
            assert "REPORT-OF" not in body and SECRET not in body
    # a browser asking for the page goes to Airflow's login page, and comes back afterwards
    status, headers, _ = _get(
        airflow_standalone, f"{PREFIX}/report/plugin_approved.html", accept="text/html,*/*"
    )
    assert status == 303
    assert headers["location"] == "/auth/login?next=" + quote(
        f"{PREFIX}/report/plugin_approved.html", safe=""
    )


def test_the_listing_shows_runs_decisions_and_links(airflow_standalone, planted, token):  # noqa: F811
    status, headers, page = _get(airflow_standalone, f"{PREFIX}/", token=token)
    assert status == 200, page
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert (
        "frame-ancestors 'self'" in headers["content-security-policy"]
        and headers["x-frame-options"] == "SAMEORIGIN"
    )
    assert headers["cache-control"] == "no-store"
    # newest first, each with its decision and a link to its report
    order = [
        page.index(f'data-run-id="{run_id}"')
        for run_id in ("plugin_waiting", "plugin_rejected", "plugin_approved")
    ]
    assert order == sorted(order)
    for run_id in ("plugin_waiting", "plugin_rejected", "plugin_approved"):
        assert f'href="report/{run_id}.html"' in page
    assert "waiting for review" in page
    assert ">approved</span>" in page and "by admin at" in page and "2026-11-25 11:00 UTC" in page
    assert 'title="2026-11-25T11:00:00+00:00"' in page
    assert ">rejected</span>" in page and "by ana" in page
    assert "1,000" in page and "50 (5.00%)" in page and "kmeans" in page
    # the half-written run is listed and says what is wrong, the page did not crash
    assert 'data-run-id="plugin_halfwritten"' in page and "not valid JSON" in page
    # a symlink in the reports directory that leads outside is no report: not listed, no link
    assert "escape" not in page
    # names and comments come from users and APIs: escaped, never markup
    assert HOSTILE_NAME not in page and "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt; looks fine &amp; done" in page
    # the UI's session cookie works as well as the Authorization header
    status, _, by_cookie = _get(airflow_standalone, f"{PREFIX}/", cookie=token)
    assert status == 200 and 'data-run-id="plugin_approved"' in by_cookie


def test_a_report_is_served_with_safe_headers(airflow_standalone, planted, token):  # noqa: F811
    for path, run_id in (("plugin_approved.html", "plugin_approved"), ("approved/plugin_approved.html", "plugin_approved"),
                         ("plugin_waiting.html", "plugin_waiting")):  # fmt: skip
        for creds in ({"token": token}, {"cookie": token}):
            status, headers, body = _get(airflow_standalone, f"{PREFIX}/report/{path}", **creds)
            assert status == 200, (path, body)
            assert body == _report_html(run_id)
            assert headers["content-type"] == "text/html; charset=utf-8"
            assert headers["x-content-type-options"] == "nosniff"
            csp = headers["content-security-policy"]
            for directive in ("default-src 'none'", "img-src data:", "style-src 'unsafe-inline'", "script-src 'unsafe-inline'",
                              "frame-ancestors 'self'", "sandbox allow-scripts"):  # fmt: skip
                assert directive in csp, csp
            assert "connect-src" not in csp and "allow-same-origin" not in csp
    # the URL the gate body and the extra link use is the one that serves it
    assert _get(airflow_standalone, report_url("plugin_waiting", base_path=""), token=token)[0] == 200
    assert _get(airflow_standalone, f"{PREFIX}/report/no-such-run.html", token=token)[0] == 404


TRAVERSALS = [
    "../../outside/secret.html",
    "../outside/secret.txt",
    "approved/../../outside/secret.html",
    "%2e%2e/%2e%2e/outside/secret.html",
    "%2e%2e%2f%2e%2e%2foutside%2fsecret.html",
    "..%2f..%2foutside%2fsecret.html",
    "..%2F..%2Foutside%2Fsecret.txt",
    "%252e%252e%252f%252e%252e%252foutside%252fsecret.html",  # double-encoded
    "..%252f..%252foutside%252fsecret.html",
    "%25252e%25252e%25252foutside%25252fsecret.html",  # triple
    "..%5c..%5coutside%5csecret.html",  # backslashes
    "..\\..\\outside\\secret.html",
    "plugin_approved.html%00.txt",
    "escape.html",  # a symlink inside the reports dir pointing outside
    "escape-dir/secret.html",  # a directory symlink pointing outside
    "notes.txt",  # not an HTML report
    "./notes.txt",
    ".%2fnotes.txt",
]


def test_paths_outside_the_reports_directory_are_refused(airflow_standalone, planted, token):  # noqa: F811
    secret_path = str(planted["outside"] / "secret.html")
    absolute = [
        "/" + secret_path.lstrip("/"),  # .../report//abs/path
        quote(secret_path, safe=""),  # .../report/%2Fabs%2Fpath
        "%2F" + quote(secret_path.lstrip("/")),
        quote(quote(secret_path, safe=""), safe=""),
        "~/secret.html",
    ]
    for requested in TRAVERSALS + absolute:
        status, _, body = _get(airflow_standalone, f"{PREFIX}/report/{requested}", token=token)
        assert SECRET not in body, requested
        # refused as such (400), never looked up: the symlinks and the text file exist, the rest is traversal
        assert status == 400, (requested, status, body[:200])
    # the secret and the trap files are still there: they were reachable had the checks failed
    assert (planted["reports"] / "escape.html").read_text() == SECRET


def test_open_report_extra_link_on_build_report(airflow_standalone, planted):  # noqa: F811
    """A run of the real DAG (paused: nothing runs) has task instances; the link shows once the report exists."""
    client = airflow_standalone.client
    was_paused = client.wait_for_dag(DAG, 300)["is_paused"]
    client.pause(DAG)  # the shared instance's DAG may be unpaused by another module; the probe must not run
    try:
        run_id = client.trigger(DAG, {}, run_id="plugin_link_probe")
        _check_open_report_links(airflow_standalone, planted, run_id)
    finally:  # leave the shared instance as it was: no probe run, the DAG paused or not as before
        client.request("DELETE", f"/api/v2/dags/{DAG}/dagRuns/plugin_link_probe", expect=(204, 404))
        client.set_paused(DAG, was_paused)


def _check_open_report_links(airflow_standalone, planted, run_id):
    client = airflow_standalone.client
    links_path = f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{{}}/links"

    def links(task_id):
        deadline = time.monotonic() + 60
        while True:  # the task instances are created with the run; allow the API a moment
            try:
                return client.get_json(links_path.format(task_id))["extra_links"]
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    assert links("build_report") == {"Open report": None}  # no report yet: no link
    (planted["reports"] / "plugin_link_probe.html").write_text(_report_html("plugin_link_probe"))
    url = links("build_report")["Open report"]
    assert url == report_url(run_id, base_path="") == f"{PREFIX}/report/plugin_link_probe.html"
    assert links("ingest") == {"Open report": None}  # a URL only on the report task
    assert _get(airflow_standalone, url, token=client.fetch_token())[0] == 200


# --- in a real browser: log in through the Airflow UI, open the nav entry, open a report -------------------

BROWSER_RUN = "plugin_browser"


@pytest.fixture(scope="module")
def real_report(airflow_standalone, planted, chromium):  # noqa: F811
    """A real report: configs/demo.yaml run natively (no Airflow) against the demo API into the instance's dirs."""
    from anomaly_detection.config import load_config
    from anomaly_detection.pipeline.run import run_pipeline
    from devtools.demo_api import DemoDataset, serve_in_thread

    server, base = serve_in_thread(DemoDataset.generate(rows=2000, seed=11))
    try:
        config = load_config(ROOT / "configs" / "demo.yaml", {
            "source.url": f"{base}/records",
            "processing.mode": "native",
            "output.runs_dir": str(planted["runs"]),
            "output.reports_dir": str(planted["reports"]),
        })  # fmt: skip
        outcome = run_pipeline(config, run_id=BROWSER_RUN)
    finally:
        server.shutdown()
        server.server_close()
    assert outcome.status == "succeeded", outcome.error
    published = planted["reports"] / f"{BROWSER_RUN}.html"
    assert published.is_file()
    return published


def _sections_and_images(page) -> dict:
    """What a reviewer sees of the report in ``page`` (a page or a frame): visible sections with
    headings, and every image."""
    return page.evaluate(
        """(() => {
            const visible = el => el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})
                && el.getBoundingClientRect().width > 0 && el.getBoundingClientRect().height > 0;
            const sections = [...document.querySelectorAll("section[id]")]
                .filter(s => visible(s) && s.querySelector("h2") && s.querySelector("h2").innerText.trim())
                .map(s => s.id);
            const images = [...document.images].map(img => ({src: img.src.slice(0, 30), ok: img.complete
                && img.naturalWidth > 0 && img.naturalHeight > 0 && img.getBoundingClientRect().width > 0}));
            return {sections, images, text: document.body.innerText.slice(0, 2000)};
        })()"""
    )


def test_in_the_airflow_ui_a_logged_in_user_opens_a_report(
    airflow_standalone, planted, real_report, page, page_events
):  # noqa: F811
    from browser import screenshot
    from playwright.sync_api import expect

    password = json.loads(Path(airflow_standalone.env["AIRFLOW_CREDENTIALS_FILE"]).read_text())["admin"]
    report_path = f"{PREFIX}/report/{BROWSER_RUN}.html"
    # not logged in: the report URL sends the browser to Airflow's login form, which comes back to it
    page.goto(airflow_standalone.url + report_path)
    page.wait_for_url(lambda url: urlsplit(url).path == "/auth/login")
    expect(page.locator("input[name=password]")).to_be_attached()
    assert BROWSER_RUN not in page.locator("body").inner_text()
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda url: urlsplit(url).path == report_path)  # and its load event
    direct = _sections_and_images(page)
    assert {"run", "figures"} <= set(direct["sections"]), direct
    assert direct["images"] and all(img["ok"] for img in direct["images"]), direct["images"]

    # the "Anomaly reports" entry of the Airflow UI's navigation: the listing inside the UI
    page.goto(airflow_standalone.url + "/")
    page.locator('a[href$="plugin/anomaly-reports"]').first.click()
    frame = 'iframe[title="Anomaly reports"]'
    listing = page.locator(frame).content_frame
    link = listing.locator(f"tr[data-run-id={BROWSER_RUN}] a.open-report")
    expect(link).to_be_attached()
    assert urlsplit(page.url).path.startswith("/plugin/anomaly-reports")
    # the listing is same-origin: the UI can look into its frame
    assert page.evaluate(f"document.querySelector({json.dumps(frame)}).contentDocument !== null")
    rows = listing.locator("tr[data-run-id]").evaluate_all("rows => rows.map(r => r.dataset.runId)")
    assert rows[0] == BROWSER_RUN and {"plugin_approved", "plugin_rejected", "plugin_waiting"} <= set(rows)
    row_text = listing.locator(f"tr[data-run-id={BROWSER_RUN}]").inner_text()
    assert "waiting for review" in row_text and "demo" in row_text

    # click "Open report" in the embedded listing (real mouse events at the link's place on the page)
    link.click()
    # the report is sandboxed (CSP): once it is in the frame, the UI can no longer look into the frame
    page.wait_for_function(f"document.querySelector({json.dumps(frame)}).contentDocument === null")
    assert airflow_standalone.url + report_path in page_events.requests
    assert urlsplit(page.url).path.startswith("/plugin/anomaly-reports")  # still inside the UI
    # the report in the frame has loaded and shows its sections and figures
    report_frame = page.locator(frame).element_handle().content_frame()
    assert report_frame is not None and report_frame.url == airflow_standalone.url + report_path
    report_frame.wait_for_load_state("load")
    in_frame = _sections_and_images(report_frame)
    assert {"run", "figures"} <= set(in_frame["sections"]), in_frame
    assert in_frame["images"] and all(img["ok"] for img in in_frame["images"]), in_frame["images"]
    SCREENSHOT.unlink(missing_ok=True)
    screenshot(page, SCREENSHOT)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 20_000

    assert page_events.console_errors == [] and page_events.dialogs == []
    # nothing but Airflow itself (its pages, the UI's blob: workers, data: images) was fetched
    own = (airflow_standalone.url, "blob:" + airflow_standalone.url, "data:")
    foreign = [u for u in page_events.requests if not u.startswith(own)]
    assert foreign == []
