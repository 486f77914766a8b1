"""Render the self-contained HTML report of one pipeline run.

The pipeline fills a :class:`ReportInputs` and calls :func:`render_report`. The report is a
single UTF-8 HTML file: the figures are inline base64 PNG data URIs and the CSS is inline, so
it opens offline and loads nothing from elsewhere. The Jinja2 environment autoescapes, and
every value that can come from the API (table cells, column names, log text, config values)
reaches the template as plain text, so it is always escaped.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from anomaly_detection import __version__, atomic
from anomaly_detection.detect.evaluate import LOWER_IS_BETTER
from anomaly_detection.report import plots

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAME = "report.html.j2"

DASH = "—"
MAX_PREVIEW_ROWS = 50
MAX_TABLE_COLUMNS = 100
MAX_TOP_ANOMALIES = 500
MAX_CELL_CHARS = 200
MAX_NAME_CHARS = 80
MAX_LOG_ISSUES = 100
LABEL_METRICS = ("roc_auc", "pr_auc", "precision", "recall", "f1")
_LABEL_METRIC_TITLES = {
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
}
_LOG_ISSUE = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL|FATAL|Traceback)\b")
_DECISION_TITLES = {"approved": "Approved", "rejected": "Rejected", "rerun": "Rerun requested"}


@dataclass
class ReportInputs:
    """Everything the report shows about one pipeline run.

    Attributes
    ----------
    run : dict
        Run metadata: ``run_id``, ``name``, ``status``, ``source_url`` (already redacted),
        ``started_at``, ``finished_at`` (ISO strings), ``duration_seconds``, ``versions``
        (name -> version) and ``rerun_of`` (run id or ``None``).
    config : dict
        The resolved, redacted configuration (nested plain data).
    summary : dict
        Data summary: ``rows_before``, ``rows_after``, ``columns_before``,
        ``duplicates_removed``, ``missing_per_column`` (column -> count before imputation),
        ``dtypes`` (column -> dtype), ``columns_dropped`` (column -> reason), ``features``,
        ``imputed_values``, ``imputation`` and ``infinite_values``.
    preview : pandas.DataFrame
        First rows of the flattened API table.
    models : list of dict
        One entry per configuration tried: ``algorithm``, ``params``, ``metric``, ``score``,
        ``silhouette``, ``davies_bouldin``, ``calinski_harabasz``, ``anomaly_count``,
        ``anomaly_share`` (fraction), ``seconds``, ``flags`` and optionally ``roc_auc``,
        ``pr_auc``, ``precision``, ``recall``, ``f1``.
    best : dict
        The selected configuration (same fields as a ``models`` entry) plus ``threshold``.
    features : numpy.ndarray
        Sample of the scaled feature matrix, shape ``(n_sample, n_features)``.
    feature_names : list of str
        Names of the feature columns.
    sample_labels : numpy.ndarray
        Anomaly labels (0/1) of the best model for the sampled rows, shape ``(n_sample,)``.
    scores : numpy.ndarray
        Anomaly score of the best model for every row, or for a uniform random sample of them
        when the run has more rows than ``report.plot_sample_size`` (higher is more anomalous).
    threshold : float
        Score from which the best model flags a row.
    top_anomalies : pandas.DataFrame
        Top flagged rows: ``rank``, ``score``, then the original fields.
    log_text : str
        The full pipeline log.
    correlation_heatmap : bool
        Whether to draw the feature correlation heatmap.
    decision : dict or None, optional
        Review decision: ``decision`` (``approved``, ``rejected`` or ``rerun``), ``by``,
        ``at``, ``comment`` and ``adjustments``.
    warnings : list of str, optional
        Sanity flags shown prominently at the top.
    explained_features : dict, optional
        Feature name -> how many of the top anomalies' explanations name it (most first).
    explained_rows, explanation_reference_rows : int, optional
        How many top anomalies were explained, and from how many normal sampled rows.
    time_view : insights.TimeView, optional
        The rows over time; ``None`` when the table has no time column.
    history : insights.HistoryView, optional
        Earlier runs of the same source and the features' drift.
    rerun : rerun_diff.RerunDiff, optional
        What changed from the run this one reruns.
    """

    run: dict
    config: dict
    summary: dict
    preview: pd.DataFrame
    models: list[dict]
    best: dict
    features: np.ndarray
    feature_names: list[str]
    sample_labels: np.ndarray
    scores: np.ndarray
    threshold: float
    top_anomalies: pd.DataFrame
    log_text: str
    correlation_heatmap: bool
    decision: dict | None = None
    warnings: list[str] = field(default_factory=list)
    explained_features: dict[str, int] = field(default_factory=dict)
    explained_rows: int = 0
    explanation_reference_rows: int = 0
    time_view: Any = None
    history: Any = None
    rerun: Any = None


# --------------------------------------------------------------------------- formatting


def format_number(value: Any, digits: int = 4) -> str:
    """Format a number for display.

    Parameters
    ----------
    value : Any
        Integer, float, ``None`` or anything else.
    digits : int, optional
        Significant digits of floats.

    Returns
    -------
    str
        Integers with thousands separators, floats with ``digits`` significant digits (large
        ones as grouped integers), an em dash for ``None``/NaN and ``str(value)`` otherwise.
    """
    if value is None:
        return DASH
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return f"{int(value):,}"
    if isinstance(value, Real):
        v = float(value)
        if math.isnan(v):
            return DASH
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        if 10**digits <= abs(v) < 1e15:
            return f"{v:,.0f}"
        if abs(v) < 1e-4:
            return f"{v:.{max(digits - 1, 0)}e}"
        return f"{v:.{digits}g}"
    return str(value)


def format_percent(fraction: Any) -> str:
    """Format a fraction (0.05) as a percentage (``5%``); ``None``/NaN give an em dash."""
    try:
        v = float(fraction)
    except (TypeError, ValueError):
        return DASH
    if math.isnan(v):
        return DASH
    pct = v * 100
    if pct == 0:
        return "0%"
    if abs(pct) < 0.01:
        return f"{pct:.2g}%"
    return f"{pct:.3g}%" if abs(pct) < 10 else f"{pct:.1f}%"


def format_duration(seconds: Any) -> str:
    """Format seconds as ``1 h 02 min 03 s``, ``2 min 03.4 s`` or ``4.56 s``."""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return DASH
    if math.isnan(s) or s < 0:
        return DASH
    if s < 60:
        return f"{s:.3g} s"
    minutes, sec = divmod(s, 60)
    if minutes < 60:
        return f"{int(minutes)} min {sec:04.1f} s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours} h {minutes:02d} min {int(sec):02d} s"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_cell(value: Any, limit: int = MAX_CELL_CHARS) -> str:
    """Turn one table cell of any type into display text (escaped later by the template).

    Parameters
    ----------
    value : Any
        Cell value from a DataFrame built from the API.
    limit : int, optional
        Longer text is cut and ends with an ellipsis.

    Returns
    -------
    str
        Display text; missing values give an em dash.
    """
    if isinstance(value, (list, tuple, dict, set, np.ndarray)):
        if isinstance(value, np.ndarray):
            return _shorten(str(value.tolist()), limit)
        return _shorten(json.dumps(value, default=str, ensure_ascii=False), limit)
    if value is None or value is pd.NaT:
        return DASH
    try:
        if pd.isna(value):
            return DASH
    except (TypeError, ValueError):
        pass
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, Integral):
        return str(int(value))  # API data: ids, years and codes read best without grouping
    if isinstance(value, Real):
        v = float(value)
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return _shorten(" ".join(str(value).split()) if "\n" in str(value) else str(value), limit)


def frame_table(
    frame: pd.DataFrame | None, max_rows: int, max_columns: int = MAX_TABLE_COLUMNS
) -> dict[str, Any]:
    """Convert a DataFrame to plain header and row lists for the template.

    Parameters
    ----------
    frame : pandas.DataFrame or None
        Table to show.
    max_rows, max_columns : int
        Largest number of rows and columns shown.

    Returns
    -------
    dict
        ``columns`` (list of ``{"name", "full"}``), ``rows`` (list of lists of str),
        ``total_rows``, ``total_columns``, ``numeric`` (one bool per column, for alignment) and
        ``wide`` (one bool per column holding long text, shown wider).
    """
    if frame is None or not isinstance(frame, pd.DataFrame):
        return {"columns": [], "rows": [], "total_rows": 0, "total_columns": 0, "numeric": [], "wide": []}
    shown = frame.iloc[:max_rows, :max_columns]
    columns = [{"name": _shorten(str(c), MAX_NAME_CHARS), "full": str(c)} for c in shown.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        for dtype in shown.dtypes
    ]
    rows = [[format_cell(v) for v in row] for row in shown.itertuples(index=False, name=None)]
    wide = [any(len(row[j]) > 40 for row in rows) for j in range(len(columns))]
    return {
        "columns": columns,
        "rows": rows,
        "total_rows": len(frame),
        "total_columns": frame.shape[1],
        "numeric": numeric,
        "wide": wide,
    }


def _dump_config(config: Any) -> str:
    try:
        return yaml.safe_dump(
            config, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
        )
    except yaml.YAMLError:
        return json.dumps(config, indent=2, default=str, ensure_ascii=False)


def _format_params(params: Any) -> str:
    if isinstance(params, Mapping):
        return ", ".join(f"{k}={format_cell(v, 60)}" for k, v in params.items()) or DASH
    return format_cell(params) if params is not None else DASH


# --------------------------------------------------------------------------- sections


def _best_index(models: list[dict], best: dict) -> int | None:
    for i, m in enumerate(models):
        if m is best:
            return i
    for i, m in enumerate(models):
        if m.get("algorithm") == best.get("algorithm") and m.get("params") == best.get("params"):
            return i
    return None


def _status_class(status: Any) -> str:
    s = str(status or "").lower()
    if any(w in s for w in ("fail", "error", "reject", "abort")):
        return "bad"
    if any(w in s for w in ("success", "succeed", "complete", "done", "approved", "ok")):
        return "good"
    if any(w in s for w in ("review", "warn", "pending", "running", "rerun")):
        return "warn"
    return "neutral"


def _run_section(run: Mapping[str, Any]) -> dict[str, Any]:
    versions = run.get("versions") or {}
    if not isinstance(versions, Mapping):
        versions = {"versions": versions}
    return {
        "run_id": str(run.get("run_id") or DASH),
        "name": str(run.get("name") or ""),
        "status": str(run.get("status") or "unknown"),
        "status_class": _status_class(run.get("status")),
        "source_url": str(run.get("source_url") or DASH),
        "started_at": format_cell(run.get("started_at")),
        "finished_at": format_cell(run.get("finished_at")),
        "duration": format_duration(run.get("duration_seconds")),
        "versions": [(str(k), format_cell(v)) for k, v in versions.items()],
        "rerun_of": str(run["rerun_of"]) if run.get("rerun_of") else None,
    }


def _decision_section(decision: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not decision:
        return None
    kind = str(decision.get("decision") or "").strip().lower()
    adjustments = decision.get("adjustments") or {}
    return {
        "kind": kind if kind in _DECISION_TITLES else "other",
        "title": _DECISION_TITLES.get(kind, kind.capitalize() or "Decision"),
        "by": str(decision.get("by") or "unknown reviewer"),
        "at": format_cell(decision.get("at")) if decision.get("at") else DASH,
        "comment": str(decision.get("comment") or ""),
        "adjustments": _dump_config(adjustments) if adjustments else "",
    }


def _summary_section(summary: Mapping[str, Any], feature_names: list[str]) -> dict[str, Any]:
    dtypes = summary.get("dtypes") or {}
    missing = summary.get("missing_per_column") or {}
    dropped = summary.get("columns_dropped") or {}
    features = list(summary.get("features") or feature_names)
    feature_set = set(map(str, features))
    rows_before, rows_after = summary.get("rows_before"), summary.get("rows_after")
    removed = (
        rows_before - rows_after
        if isinstance(rows_before, Integral) and isinstance(rows_after, Integral)
        else None
    )
    total_missing = sum(int(v) for v in missing.values() if isinstance(v, Integral | float) and v == v)

    columns = []
    for name in dict.fromkeys([*map(str, dtypes), *map(str, missing), *map(str, dropped), *feature_set]):
        count = missing.get(name)
        if name in dropped:
            role, role_class = f"dropped: {dropped[name]}", "dropped"
        elif name in feature_set:
            role, role_class = "feature", "feature"
        else:
            role, role_class = "kept (not a feature)", ""
        columns.append(
            {
                "name": _shorten(name, MAX_NAME_CHARS),
                "full": name,
                "dtype": str(dtypes.get(name, DASH)),
                "missing": format_number(count) if count is not None else DASH,
                "has_missing": bool(count) if isinstance(count, Integral | float) else False,
                "role": role,
                "role_class": role_class,
            }
        )
    stats = [
        ("Rows before cleaning", format_number(rows_before)),
        ("Rows after cleaning", format_number(rows_after)),
        ("Rows removed", format_number(removed)),
        ("Duplicates removed", format_number(summary.get("duplicates_removed"))),
        ("Columns in the API table", format_number(summary.get("columns_before"))),
        ("Columns dropped", format_number(len(dropped))),
        ("Features used", format_number(len(features))),
        ("Missing values (before imputation)", format_number(total_missing)),
        ("Values imputed", format_number(summary.get("imputed_values"))),
        ("Imputation", str(summary.get("imputation") or DASH)),
        ("Infinite values", format_number(summary.get("infinite_values"))),
    ]
    return {
        "stats": stats,
        "columns": columns,
        "features": [str(f) for f in features],
        "dropped": [(str(k), str(v)) for k, v in dropped.items()],
    }


def _model_row(model: Mapping[str, Any], label_metrics: list[str]) -> dict[str, Any]:
    flags = model.get("flags") or []
    if isinstance(flags, str):
        flags = [flags]
    return {
        "algorithm": str(model.get("algorithm") or DASH),
        "params": _format_params(model.get("params")),
        "score": format_number(model.get("score")),
        "silhouette": format_number(model.get("silhouette")),
        "davies_bouldin": format_number(model.get("davies_bouldin")),
        "calinski_harabasz": format_number(model.get("calinski_harabasz")),
        "anomaly_count": format_number(model.get("anomaly_count")),
        "anomaly_share": format_percent(model.get("anomaly_share")),
        "seconds": format_number(model.get("seconds"), 3),
        "labels": [format_number(model.get(k)) for k in label_metrics],
        "flags": [str(f) for f in flags],
    }


def _models_section(models: list[dict], best: dict, threshold: float) -> dict[str, Any]:
    everything = [*models, best]
    label_metrics = [k for k in LABEL_METRICS if any(m.get(k) is not None for m in everything)]
    best_index = _best_index(models, best)
    rows = [
        dict(_model_row(m, label_metrics), is_best=i == best_index, index=i + 1) for i, m in enumerate(models)
    ]
    metric = str(best.get("metric") or next((m["metric"] for m in models if m.get("metric")), "score"))
    card = _model_row(best, label_metrics)
    thr = threshold if threshold is not None else best.get("threshold")
    card_items = [
        ("Algorithm", card["algorithm"]),
        ("Parameters", card["params"]),
        (f"Selection metric ({metric})", card["score"]),
        ("Anomalies flagged", f"{card['anomaly_count']} ({card['anomaly_share']})"),
        ("Score threshold", format_number(thr)),
        ("Silhouette", card["silhouette"]),
        ("Davies–Bouldin", card["davies_bouldin"]),
        ("Calinski–Harabasz", card["calinski_harabasz"]),
        ("Fit time", format_duration(best.get("seconds"))),
    ]
    card_items += [(_LABEL_METRIC_TITLES[k], v) for k, v in zip(label_metrics, card["labels"], strict=True)]
    return {
        "metric": metric,
        "rows": rows,
        "label_metrics": [_LABEL_METRIC_TITLES[k] for k in label_metrics],
        "best_index": best_index,
        "best_card": card_items,
        "best_flags": card["flags"],
        "best_anomaly_count": card["anomaly_count"],
    }


def _timed_plot(
    name: str, fn: Callable[[], str | None], timings: dict[str, float]
) -> tuple[str | None, str | None]:
    start = time.perf_counter()
    try:
        return fn(), None
    except Exception as exc:  # a broken figure must not lose the whole report
        log.exception("report figure %r failed", name)
        return None, f"This figure could not be drawn: {type(exc).__name__}: {exc}"
    finally:
        timings[name] = time.perf_counter() - start


def _figures(inputs: ReportInputs, best_index: int | None) -> tuple[list[dict[str, Any]], dict[str, float]]:
    timings: dict[str, float] = {}
    figures: list[dict[str, Any]] = []
    names = list(map(str, inputs.feature_names))
    n_features = np.asarray(inputs.features).shape[1] if np.asarray(inputs.features).ndim == 2 else 1

    def add(key: str, title: str, fn: Callable[[], str | None], caption: str, empty_note: str) -> None:
        image, error = _timed_plot(key, fn, timings)
        note = error or (empty_note if image is None else "")
        figures.append({"key": key, "title": title, "image": image, "caption": caption, "note": note})

    if inputs.correlation_heatmap:
        if n_features >= 2:
            add(
                "heatmap",
                "Feature correlation",
                lambda: plots.correlation_heatmap(inputs.features, names),
                "Pearson correlation between the scaled features, on the sampled rows.",
                "Not enough usable rows to compute correlations.",
            )
        else:
            figures.append(
                {
                    "key": "heatmap",
                    "title": "Feature correlation",
                    "image": None,
                    "caption": "",
                    "note": "Skipped: a correlation heatmap needs at least two features.",
                }  # fmt: skip
            )
    total_rows = int(inputs.summary.get("rows_after") or len(inputs.scores))
    which = (
        "every row"
        if len(inputs.scores) >= total_rows
        else f"a uniform random sample of {len(inputs.scores):,} of the {total_rows:,} rows"
    )
    add(
        "scores",
        "Anomaly score distribution",
        lambda: plots.score_distribution(inputs.scores, inputs.threshold),
        f"Scores of {which} under the selected model; rows above the dashed threshold are flagged.",
        "No finite scores to draw.",
    )
    add(
        "models",
        "Model comparison",
        lambda: plots.model_comparison(inputs.models, best_index),
        "Selection metric of every configuration tried, coloured by algorithm; the hatched bar is the selected one.",
        "No configurations to compare.",
    )
    add(
        "scatter",
        "Anomalies in feature space" if n_features >= 2 else "Anomalies along the single feature",
        lambda: plots.pca_scatter(inputs.features, inputs.sample_labels, names),
        "Sampled rows projected on the first two principal components; anomalies in red."
        if n_features >= 2
        else "Only one feature: its scaled value per sampled row, anomalies in red (no PCA possible).",
        "No usable sampled rows to draw.",
    )
    return figures, timings


def _log_issues(log_text: str) -> tuple[list[str], int]:
    issues = [line for line in log_text.splitlines() if _LOG_ISSUE.search(line)]
    return [_shorten(line, 400) for line in issues[:MAX_LOG_ISSUES]], len(issues)


def _score_key(model: Mapping[str, Any]) -> float:
    score = model.get("score")
    if score is None or not isinstance(score, Real) or math.isnan(float(score)):
        return math.inf
    return float(score) if str(model.get("metric")) in LOWER_IS_BETTER else -float(score)


def _why_best(models: list[dict], best: dict) -> tuple[str, str | None]:
    """Why the selected configuration won, and the runner-up (the best of the other configurations)."""
    metric = str(best.get("metric") or "score")
    direction = "lowest" if metric in LOWER_IS_BETTER else "highest"
    scored_models = [m for m in models if m.get("score") is not None]
    info = best.get("info") or {}
    if best.get("algorithm") == "ensemble":
        agreement = info.get("member_agreement")
        why = (
            "default selection: the ensemble of "
            + " and ".join(map(str, info.get("members") or ["its members"]))
            + " (standardised scores, maximum)"
            + (
                f"; the members' rank agreement is {format_number(agreement, 2)} (Spearman)"
                if agreement is not None
                else ""
            )
            + f"; its {metric} is {format_number(best.get('score'))}"
        )
        others = sorted((m for m in scored_models if m.get("algorithm") != "ensemble"), key=_score_key)
        if not others:
            return why, None
        runner = others[0]
        return why, (
            f"{runner.get('algorithm')} ({_format_params(runner.get('params'))}), the best by {metric} at "
            f"{format_number(runner.get('score'))}"
        )
    why = f"{direction} {metric} ({format_number(best.get('score'))}) of {len(models)} configuration{'s' if len(models) != 1 else ''}"
    if best.get("flags"):
        why += "; it carries flags: " + ", ".join(map(str, best["flags"]))
    others = sorted(
        (
            m
            for m in scored_models
            if (m.get("algorithm"), m.get("params")) != (best.get("algorithm"), best.get("params"))
        ),
        key=_score_key,
    )
    if not others:
        return why, None
    runner = others[0]
    margin = (
        abs(float(best.get("score") or 0) - float(runner["score"])) if best.get("score") is not None else None
    )
    return why, (
        f"{runner.get('algorithm')} ({_format_params(runner.get('params'))}) at {format_number(runner.get('score'))}"
        + (f", margin {format_number(margin, 3)}" if margin is not None else "")
    )


def _verdict_section(inputs: ReportInputs, warnings: list[str]) -> dict[str, Any]:
    best = dict(inputs.best or {})
    summary = inputs.summary or {}
    why, runner_up = _why_best(list(inputs.models or []), best)
    drifted = [d.feature for d in (inputs.history.drift if inputs.history else []) if d.level == "drifted"]
    return {
        "rows": format_number(summary.get("rows_after")),
        "anomalies": format_number(best.get("anomaly_count")),
        "share": format_percent(best.get("anomaly_share")),
        "algorithm": str(best.get("algorithm") or DASH),
        "params": _format_params(best.get("params")),
        "why": why,
        "runner_up": runner_up,
        "warning_count": len(warnings),
        "drifted": drifted,
        "has_history": bool(inputs.history and inputs.history.previous),
        "top_reason": next(iter(inputs.explained_features), None),
        "data_quality": _data_quality(summary),
    }


def _without(frame: pd.DataFrame | None, column: str) -> pd.DataFrame | None:
    """``frame`` without ``column`` (the report shows the explanation text, the CSV also the codes)."""
    if isinstance(frame, pd.DataFrame) and column in frame.columns:
        return frame.drop(columns=[column])
    return frame


def _data_quality(summary: Mapping[str, Any]) -> str:
    """One line on the data's quality for the verdict: duplicates, missing values, dropped columns."""
    parts = []
    rows_before, dups = summary.get("rows_before"), summary.get("duplicates_removed")
    if isinstance(dups, Integral) and isinstance(rows_before, Integral) and rows_before:
        parts.append(f"{dups:,} duplicate row(s) removed ({format_percent(dups / rows_before)})")
    imputed, features = summary.get("imputed_values"), summary.get("features") or []
    rows_after = summary.get("rows_after")
    if isinstance(imputed, Integral) and isinstance(rows_after, Integral) and rows_after and features:
        parts.append(
            f"{imputed:,} missing value(s) imputed ({format_percent(imputed / (rows_after * len(features)))} of the feature cells)"
        )
    dropped = summary.get("columns_dropped") or {}
    if dropped:
        parts.append(f"{len(dropped):,} column(s) not used as features")
    infinite = summary.get("infinite_values")
    if infinite:
        parts.append(f"{infinite:,} infinite value(s) treated as missing")
    return "; ".join(parts) if parts else "no duplicates, missing values or dropped columns"


def _explain_section(inputs: ReportInputs) -> dict[str, Any]:
    return {
        "features": [(str(k), int(v)) for k, v in list(inputs.explained_features.items())[:15]],
        "rows": inputs.explained_rows,
        "reference_rows": inputs.explanation_reference_rows,
    }


def _time_section(view: Any, timings: dict[str, float]) -> dict[str, Any] | None:
    if view is None:
        return None
    image, error = _timed_plot(
        "time_features",
        lambda: plots.features_over_time(view.times, view.values, view.anomalies, view.feature_names),
        timings,
    )
    buckets = view.buckets
    counts_image, counts_error = (None, None)
    if buckets is not None:
        counts_image, counts_error = _timed_plot(
            "time_buckets",
            lambda: plots.anomalies_per_bucket(
                buckets.starts, buckets.rows, buckets.anomalies, buckets.width
            ),
            timings,
        )
    dated = view.times[~np.isnat(view.times)]
    return {
        "column": str(view.column),
        "how": "set in report.time_column" if view.configured else "detected from its name and values",
        "features": [str(f) for f in view.feature_names],
        "image": image,
        "note": error or ("" if image else "No sampled row has a usable time."),
        "counts_image": counts_image,
        "counts_note": counts_error or ("" if counts_image else "No row has a usable time."),
        "width": buckets.width if buckets is not None else DASH,
        "buckets": int(len(buckets.starts)) if buckets is not None else 0,
        "first": str(np.datetime_as_string(dated.min(), unit="s")) + "Z" if dated.size else DASH,
        "last": str(np.datetime_as_string(dated.max(), unit="s")) + "Z" if dated.size else DASH,
        "undated_rows": format_number(buckets.undated_rows) if buckets is not None else DASH,
        "undated_anomalies": format_number(buckets.undated_anomalies) if buckets is not None else DASH,
        "drawn": format_number(len(view.times)),
    }


def _history_section(view: Any, run_id: str, timings: dict[str, float]) -> dict[str, Any] | None:
    if view is None:
        return None
    runs = []
    for entry in view.runs:
        best = entry.get("best") or {}
        runs.append(
            {
                "run_id": str(entry.get("run_id")),
                "finished": format_cell(entry.get("finished_at")),
                "rows": format_number(entry.get("rows")),
                "anomalies": format_number(entry.get("anomaly_count")),
                "share": format_percent(entry.get("anomaly_share")),
                "best": f"{best.get('algorithm', DASH)} ({_format_params(best.get('params'))})",
                "href": entry.get("report") or None,  # reports link to each other by name: one folder
                "current": str(entry.get("run_id")) == run_id,
            }
        )
    trend, trend_error = (None, None)
    if len(view.runs) > 1:
        labels = [str(e.get("finished_at") or e.get("run_id"))[:16] for e in view.runs]
        trend, trend_error = _timed_plot(
            "share_trend",
            lambda: plots.share_trend(
                labels, [float(e.get("anomaly_share") or 0) for e in view.runs], len(view.runs) - 1
            ),
            timings,
        )
    drift_image, drift_error = (None, None)
    if view.drift:
        drift_image, drift_error = _timed_plot(
            "drift",
            lambda: plots.drift_bars(
                [d.feature for d in view.drift], [d.psi for d in view.drift], view.psi_threshold
            ),
            timings,
        )
    previous = view.previous
    return {
        "runs": runs,
        "trend": trend,
        "trend_note": trend_error or "",
        "previous": {
            "run_id": str(previous.get("run_id")),
            "href": previous.get("report") or None,
            "finished": format_cell(previous.get("finished_at")),
        }
        if previous
        else None,  # fmt: skip
        "drift": [
            {
                "feature": d.feature,
                "previous_mean": format_number(d.previous_mean),
                "current_mean": format_number(d.current_mean),
                "psi": format_number(d.psi, 3),
                "ks": format_number(d.ks, 3),
                "ks_critical": format_number(d.ks_critical, 3),
                "ks_significant": d.ks_significant,
                "level": d.level,
            }
            for d in view.drift
        ],
        "drift_image": drift_image,
        "drift_note": drift_error or "",
        "drifted": [d.feature for d in view.drift if d.level == "drifted"],
        "threshold": format_number(view.psi_threshold),
    }


def _rerun_section(diff: Any) -> dict[str, Any] | None:
    if diff is None:
        return None
    return {
        "previous_run": str(diff.previous_run),
        "previous_count": format_number(diff.previous_count),
        "current_count": format_number(diff.current_count),
        "delta": f"{diff.current_count - diff.previous_count:+,}",
        "kept": format_number(diff.kept),
        "new_count": format_number(diff.new_count),
        "gone_count": format_number(diff.gone_count),
        "changes": [(str(k), format_cell(a, 120), format_cell(b, 120)) for k, a, b in diff.changes],
        "new": frame_table(diff.new, 20),
        "gone": frame_table(diff.gone, 20),
    }


# --------------------------------------------------------------------------- rendering


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
    run = _run_section(inputs.run or {})
    models = _models_section(list(inputs.models or []), dict(inputs.best or {}), inputs.threshold)
    figures, timings = _figures(inputs, models["best_index"])
    log_text = inputs.log_text or ""
    issues, issue_count = _log_issues(log_text)
    warnings = _strings(inputs.warnings or [])
    history = _history_section(inputs.history, run["run_id"], timings)
    if history and history["drifted"]:
        warnings.append(
            f"{len(history['drifted'])} feature(s) drifted since the previous run of this source "
            f"(PSI ≥ {history['threshold']}): {', '.join(history['drifted'][:10])}"
        )
    return {
        "verdict": _verdict_section(inputs, warnings),
        "explain": _explain_section(inputs),
        "time": _time_section(inputs.time_view, timings),
        "history": history,
        "rerun": _rerun_section(inputs.rerun),
        "title": f"Anomaly report {run['name']} {run['run_id']}".strip(),
        "run": run,
        "decision": _decision_section(inputs.decision),
        "warnings": warnings,
        "config_text": _dump_config(inputs.config or {}),
        "summary": _summary_section(inputs.summary or {}, list(inputs.feature_names or [])),
        "preview": frame_table(inputs.preview, MAX_PREVIEW_ROWS),
        "models": models,
        "threshold": format_number(inputs.threshold),
        "figures": figures,
        "top": frame_table(_without(inputs.top_anomalies, "top_features"), MAX_TOP_ANOMALIES),
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
