"""Airflow 3 plugin: the anomaly reports inside the Airflow UI, for users who may read the DAG.

What it adds (Airflow 3.1+ plugin interface, checked against 3.3.2):

* a FastAPI app mounted by the API server at ``<base path>/anomaly-reports``:

  - ``GET /anomaly-reports/`` lists the runs (``ANOMALY_RUNS_DIR``) with their decisions and links;
  - ``GET /anomaly-reports/report/<name>.html`` serves a report file from ``ANOMALY_REPORTS_DIR``
    (``<run_id>.html``, ``approved/<run_id>.html``). Every path is checked by
    ``anomaly_detection.report.index.resolve_report``: traversal, encoded or absolute paths,
    backslashes, symlinks leading outside and non-HTML files are refused (400), missing files are 404;

* an external view "Anomaly reports" (a top-level entry of the UI's navigation) that shows the listing
  in the UI's iframe at ``/plugin/anomaly-reports``;
* a global operator extra link "Open report": a URL only on ``anomaly_detection.build_report`` once
  that run's report exists (empty, so not shown, on every other task).

Auth: Airflow's own. Each request is authenticated like the REST API (``Authorization: Bearer <JWT>``,
else the UI's ``_token`` cookie, through ``airflow.api_fastapi.core_api.security.get_user``) and
authorized with ``requires_access_dag("GET")`` on the ``anomaly_detection`` DAG. Without a valid token:
401 (a browser asking for HTML is redirected to the login page instead, and comes back after login);
without read access to the DAG: 403.

Reports are served with ``Content-Type: text/html; charset=utf-8``, ``X-Content-Type-Options: nosniff``
and a Content-Security-Policy allowing only inline styles and scripts and ``data:`` images, framing
only by the Airflow UI itself, and ``sandbox`` (the report runs in an opaque origin, so a script in it
could never act with the viewer's Airflow session).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment
from starlette.exceptions import HTTPException as StarletteHTTPException

from anomaly_detection import runs
from anomaly_detection.report import index as report_index
from anomaly_detection.report.index import ReportNotFound, UnsafeReportPath

DAG_ID = "anomaly_detection"
REPORT_TASK_ID = "build_report"
LINK_NAME = "Open report"
VIEW_NAME = "Anomaly reports"

_FRAMING = "frame-ancestors 'self'"
#: The reports are self-contained: inline CSS/JS and base64 images, nothing fetched.
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; font-src data:; "
    f"base-uri 'none'; form-action 'none'; {_FRAMING}; "
    "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox"
)
LISTING_CSP = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; {_FRAMING}"
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- auth: Airflow's own machinery, imported lazily (the plugin module is also loaded outside the API server)


async def _current_user(request: Request) -> Any:
    """The logged-in Airflow user: Bearer token first, else the UI's ``_token`` cookie (401/403 otherwise)."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPBearer

    credentials = await HTTPBearer(auto_error=False)(request)
    return await get_user(request, None, credentials)


def _can_read_dag(request: Request, user: Any = Depends(_current_user)) -> Any:
    """403 unless the user may read the ``anomaly_detection`` DAG (the auth manager decides)."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    requires_access_dag("GET", param_dag_id=DAG_ID)(request, user)
    return user


def _base_path() -> str:
    from airflow.configuration import conf

    return report_index.airflow_base_path(conf.get("api", "base_url", fallback="") or "")


def _login_redirect(request: Request) -> Response | None:
    """For a browser page request without a valid session, the auth manager's login page (then back here)."""
    if request.method not in ("GET", "HEAD") or "text/html" not in request.headers.get("accept", ""):
        return None
    try:
        from airflow.api_fastapi.app import get_auth_manager

        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(get_auth_manager().get_url_login(next_url=target), status_code=303)
    except Exception:  # noqa: BLE001 - no login page to offer: plain 401 below
        return None


# --- the app ---------------------------------------------------------------------------------------

app = FastAPI(title="Anomaly reports", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 401:
        redirect = _login_redirect(request)
        if redirect is not None:
            return redirect
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers={**COMMON_HEADERS, **(exc.headers or {})}
    )


def _when(value: Any) -> str:
    """An ISO timestamp as ``2026-11-27 10:00 UTC`` (anything else as it is)."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


_jinja = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_jinja.filters["when"] = _when
LISTING = _jinja.from_string(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Anomaly reports</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px 20px; color: #1f2933; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  p.sub { margin: 0 0 14px; color: #52606d; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
  th { background: #f5f7fa; font-weight: 600; white-space: nowrap; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  code { font-size: 12px; word-break: break-all; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; white-space: nowrap; }
  .approved { background: #e3f9e5; color: #0e5814; } .rejected { background: #ffe3e3; color: #8a041a; }
  .rerun { background: #e6f0ff; color: #0b3d91; } .waiting { background: #fff3c4; color: #8d6708; }
  .failed, .none { background: #eceff1; color: #52606d; }
  .when, a.open-report { white-space: nowrap; }
  .who, .problem { display: block; font-size: 12px; color: #52606d; }
  .problem { color: #8a041a; }
  a { color: #0b5cad; }
</style>
</head>
<body>
<h1>Anomaly reports</h1>
<p class="sub">{{ records|length }} run{{ "" if records|length == 1 else "s" }}, newest first.
Open a report to review it; the decision is taken on the run's <em>review</em> task.</p>
{% if records %}
<table id="runs">
<thead><tr>
  <th>Run</th><th>Name</th><th>Finished</th><th>Rows</th><th>Anomalies</th><th>Best model</th><th>Decision</th><th>Report</th>
</tr></thead>
<tbody>
{% for r in records %}
<tr data-run-id="{{ r.run_id }}">
  <td><code>{{ r.run_id }}</code>{% if r.rerun_of %}<span class="who">rerun of <code>{{ r.rerun_of }}</code></span>{% endif %}
    {% if r.problem %}<span class="problem">{{ r.problem }}</span>{% endif %}</td>
  <td>{{ r.name or "—" }}</td>
  <td>{% set at = r.finished_at or r.started_at %}{% if at %}<span class="when" title="{{ at }}">{{ at|when }}</span>{% else %}—{% endif %}</td>
  <td class="num">{{ "{:,}".format(r.rows) if r.rows is not none else "—" }}</td>
  <td class="num">{% if r.anomalies is not none %}{{ "{:,}".format(r.anomalies) }}{% if r.share is not none %} ({{ "%.2f"|format(100 * r.share) }}%){% endif %}{% else %}—{% endif %}</td>
  <td>{{ r.best_model or "—" }}</td>
  <td class="decision"><span class="badge {{ badge(r) }}">{{ r.review }}</span>
    {% if r.decided_by or r.decided_at %}<span class="who">by {{ r.decided_by or "?" }}{% if r.decided_at %} at <span title="{{ r.decided_at }}">{{ r.decided_at|when }}</span>{% endif %}</span>{% endif %}
    {% if r.comment %}<span class="who">“{{ r.comment }}”</span>{% endif %}</td>
  <td>{% if r.report_url %}<a class="open-report" href="{{ r.report_url }}">Open report</a>{% else %}—{% endif %}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p id="empty">No runs yet.</p>
{% endif %}
</body>
</html>
"""
)


def _badge(record: report_index.RunRecord) -> str:
    if record.decision in ("approved", "rejected", "rerun"):
        return record.decision
    return {"run failed": "failed", report_index.WAITING: "waiting"}.get(record.review, "none")


@app.get("/", response_class=HTMLResponse)
def listing(user: Any = Depends(_can_read_dag)) -> Response:
    records = report_index.list_runs(runs.reports_dir(), runs.runs_dir())
    page = LISTING.render(records=records, badge=_badge)
    return HTMLResponse(page, headers={**COMMON_HEADERS, "Content-Security-Policy": LISTING_CSP})


@app.get("/report/{requested:path}")
def report(requested: str, user: Any = Depends(_can_read_dag)) -> Response:
    try:
        body = report_index.read_report(runs.reports_dir(), requested)
    except UnsafeReportPath:
        raise HTTPException(400, "refused: not a report path inside the reports directory") from None
    except ReportNotFound:
        raise HTTPException(404, "no such report") from None
    return Response(
        body,
        media_type="text/html; charset=utf-8",
        headers={**COMMON_HEADERS, "Content-Security-Policy": REPORT_CSP},
    )


# --- the "Open report" extra link ------------------------------------------------------------------


class OpenReportLink(BaseOperatorLink):
    """ "Open report" on ``anomaly_detection.build_report``: the plugin URL of the run's published report.

    Registered as a global link (the API server asks it for every task): it returns a URL only for the
    report task and only once the report exists; an empty link is not shown by the UI.
    """

    name = LINK_NAME

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if getattr(ti_key, "dag_id", None) != DAG_ID or getattr(ti_key, "task_id", None) != REPORT_TASK_ID:
            return ""
        try:
            report_index.resolve_report(runs.reports_dir(), report_index.report_file_name(ti_key.run_id))
        except (ValueError, LookupError):
            return ""
        return report_index.report_url(ti_key.run_id, base_path=_base_path())


class AnomalyReportsPlugin(AirflowPlugin):
    name = "anomaly_reports"
    fastapi_apps = [{"app": app, "url_prefix": report_index.URL_PREFIX, "name": VIEW_NAME}]
    external_views = [
        {
            "name": VIEW_NAME,
            # relative to the UI's base URL: works below a base path too; the slash is needed (the mount)
            "href": report_index.URL_PREFIX.lstrip("/") + "/",
            "destination": "nav",
            "url_route": report_index.UI_ROUTE,
            "nav_top_level": True,
        }
    ]
    global_operator_extra_links = [OpenReportLink()]
