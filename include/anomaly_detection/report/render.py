"""Render the self-contained HTML report of one pipeline run.

The pipeline fills a :class:`ReportInputs` and calls :func:`render_report`. The report is a
single UTF-8 HTML file: the figures are inline base64 PNG data URIs and the CSS is inline, so
it opens offline and loads nothing from elsewhere. The Jinja2 environment autoescapes, and
every value that can come from the API (table cells, column names, log text, config values)
reaches the template as plain text, so it is always escaped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from anomaly_detection import __version__, atomic
from anomaly_detection.report.figures import draw_all, figure_jobs, main_figures
from anomaly_detection.report.format import (
    format_number,
    format_percent,
    frame_table,
)
from anomaly_detection.report.inputs import ReportInputs
from anomaly_detection.report.sections import (
    decision_section,
    dump_config,
    explain_section,
    history_section,
    log_issues,
    models_section,
    rerun_section,
    run_section,
    summary_section,
    time_section,
    verdict_section,
    without,
)

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"


TEMPLATE_NAME = "report.html.j2"


MAX_PREVIEW_ROWS = 50


MAX_TOP_ANOMALIES = 500


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = format_number
    env.filters["pct"] = format_percent
    return env


def _strings(values: Iterable[Any]) -> list[str]:
    return [str(v) for v in values if v is not None and str(v).strip()]


def build_context(inputs: ReportInputs) -> dict[str, Any]:
    """Compute every value the template shows, as plain text and base64 figures.

    Parameters
    ----------
    inputs : ReportInputs
        Data of one pipeline run.

    Returns
    -------
    dict
        Template context; ``timings`` holds the seconds spent drawing each figure.
    """
    run = run_section(inputs.run or {})
    models = models_section(list(inputs.models or []), dict(inputs.best or {}), inputs.threshold)
    drawn = draw_all(figure_jobs(inputs, models["best_index"]))
    figures, timings = main_figures(inputs, drawn), drawn.seconds
    log_text = inputs.log_text or ""
    issues, issue_count = log_issues(log_text)
    warnings = _strings(inputs.warnings or [])
    history = history_section(inputs.history, run["run_id"], drawn)
    if history and history["drifted"]:
        warnings.append(
            f"{len(history['drifted'])} feature(s) drifted since the previous run of this source "
            f"(PSI ≥ {history['threshold']}): {', '.join(history['drifted'][:10])}"
        )
    return {
        "verdict": verdict_section(inputs, warnings),
        "explain": explain_section(inputs),
        "time": time_section(inputs.time_view, drawn),
        "history": history,
        "rerun": rerun_section(inputs.rerun),
        "title": f"Anomaly report {run['title']} {run['run_id']}".strip(),
        "run": run,
        "decision": decision_section(inputs.decision),
        "warnings": warnings,
        "config_text": dump_config(inputs.config or {}),
        "summary": summary_section(inputs.summary or {}, list(inputs.feature_names or [])),
        "preview": frame_table(inputs.preview, MAX_PREVIEW_ROWS),
        "models": models,
        "threshold": format_number(inputs.threshold),
        "figures": figures,
        "top": frame_table(without(inputs.top_anomalies, "top_features"), MAX_TOP_ANOMALIES),
        "log_text": log_text,
        "log_lines": log_text.count("\n") + (1 if log_text and not log_text.endswith("\n") else 0),
        "log_issues": issues,
        "log_issue_count": issue_count,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "package_version": __version__,
        "timings": timings,
    }


def render_html(inputs: ReportInputs) -> str:
    """Render the report of ``inputs`` to an HTML string.

    Parameters
    ----------
    inputs : ReportInputs
        Data of one pipeline run.

    Returns
    -------
    str
        The complete, self-contained HTML document.
    """
    context = build_context(inputs)
    return _environment().get_template(TEMPLATE_NAME).render(**context)


def render_report(inputs: ReportInputs, path: Path) -> Path:
    """Write the self-contained HTML report of one run.

    Parameters
    ----------
    inputs : ReportInputs
        Data of one pipeline run.
    path : pathlib.Path
        Destination file; its parent folders are created. The file is replaced atomically.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    start = time.perf_counter()
    path = Path(path)
    html = render_html(inputs)
    atomic.write_text(path, html)
    log.info(
        "report written to %s (%.1f kB, %.2f s)",
        path,
        len(html.encode("utf-8")) / 1024,
        time.perf_counter() - start,
    )
    return path
