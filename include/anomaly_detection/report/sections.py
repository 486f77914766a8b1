"""The report's sections as plain template values: run, verdict, summary, models, explanations, time,
history, rerun, decision. Every value that can come from the API is plain text here (the template escapes)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import yaml

from anomaly_detection.detect.evaluate import LOWER_IS_BETTER
from anomaly_detection.report.figures import Drawn
from anomaly_detection.report.format import (
    DASH,
    MAX_NAME_CHARS,
    format_cell,
    format_duration,
    format_number,
    format_percent,
    frame_table,
    shorten,
)
from anomaly_detection.report.inputs import ReportInputs

log = logging.getLogger(__name__)


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


def dump_config(config: Any) -> str:
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


def source_title(name: Any, source_url: Any) -> str:
    """What the report is about: the config ``name`` unless it is "default", else host and path of
    the (first) source URL."""
    if name and str(name) != "default":
        return str(name)
    first = str(source_url or "").split(" ")[0]
    parts = urlsplit(first)
    return f"{parts.hostname or ''}{parts.path}" or str(name or "")


def run_section(run: Mapping[str, Any]) -> dict[str, Any]:
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
        "title": source_title(run.get("name"), run.get("source_url")),
        "cli": run.get("orchestrator") == "cli",
    }


def decision_section(decision: Mapping[str, Any] | None) -> dict[str, Any] | None:
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
        "adjustments": dump_config(adjustments) if adjustments else "",
    }


def summary_section(summary: Mapping[str, Any], feature_names: list[str]) -> dict[str, Any]:
    dtypes = summary.get("dtypes") or {}
    missing = summary.get("missing_per_column") or {}
    dropped = summary.get("columns_dropped") or {}
    features = list(summary.get("features") or feature_names)
    feature_set = set(map(str, features))
    rows_before, rows_after = summary.get("rows_before"), summary.get("rows_after")
    total_missing = sum(int(v) for v in missing.values() if isinstance(v, Integral | float) and v == v)

    roles = summary.get("roles") or {}
    gives: dict[str, list[str]] = {}
    for spec in (summary.get("feature_plan") or {}).get("specs", []):
        for column in (spec["column"], spec.get("end")):
            if column and spec["name"] != column:
                gives.setdefault(str(column), []).append(str(spec["name"]))
    columns = []
    for name in dict.fromkeys([*map(str, dtypes), *map(str, missing), *map(str, dropped), *feature_set]):
        count = missing.get(name)
        inferred = roles.get(name)
        derived = [f for f in gives.get(name, []) if f in feature_set]
        if name in dropped:
            role, role_class = f"dropped: {dropped[name]}", "dropped"
        elif inferred and (name in feature_set or derived):
            made = ", ".join([*(["itself"] if name in feature_set else []), *derived])
            role, role_class = f"{inferred['role']} ({inferred['reason']}): feature {made}", "feature"
        elif name in feature_set:
            role, role_class = "feature", "feature"
        elif inferred:
            role, role_class = f"{inferred['role']} ({inferred['reason']}): no feature", ""
        else:
            role, role_class = "kept (not a feature)", ""
        columns.append(
            {
                "name": shorten(name, MAX_NAME_CHARS),
                "full": name,
                "dtype": str(dtypes.get(name, DASH)),
                "missing": format_number(count) if count is not None else DASH,
                "has_missing": bool(count) if isinstance(count, Integral | float) else False,
                "role": role,
                "role_class": role_class,
            }
        )
    stats = [
        ("Rows ingested", format_number(rows_before)),
        ("Rows scored", format_number(rows_after)),
        ("Duplicate rows (scored, not removed)", format_number(summary.get("duplicates"))),
        ("Duplicate rows flagged", format_number(summary.get("duplicates_flagged"))),
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


def models_section(models: list[dict], best: dict, threshold: float) -> dict[str, Any]:
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


def log_issues(log_text: str) -> tuple[list[str], int]:
    issues = [line for line in log_text.splitlines() if _LOG_ISSUE.search(line)]
    return [shorten(line, 400) for line in issues[:MAX_LOG_ISSUES]], len(issues)


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
            + " (robustly standardised scores, maximum)"
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


def verdict_section(inputs: ReportInputs, warnings: list[str]) -> dict[str, Any]:
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
        "cut": str((best.get("info") or {}).get("threshold_rule") or ""),
        "events": None
        if inputs.time_view is None or inputs.time_view.events is None
        else len(inputs.time_view.events),
        "warning_count": len(warnings),
        "drifted": drifted,
        "has_history": bool(inputs.history and inputs.history.previous),
        "top_reason": next(iter(inputs.explained_features), None),
        "data_quality": _data_quality(summary),
    }


def without(frame: pd.DataFrame | None, column: str) -> pd.DataFrame | None:
    """``frame`` without ``column`` (the report shows the explanation text, the CSV also the codes)."""
    if isinstance(frame, pd.DataFrame) and column in frame.columns:
        return frame.drop(columns=[column])
    return frame


def _data_quality(summary: Mapping[str, Any]) -> str:
    """One line on the data's quality for the verdict: duplicates, missing values, dropped columns."""
    parts = []
    dups, flagged = summary.get("duplicates"), summary.get("duplicates_flagged")
    if isinstance(dups, Integral):
        of_them = f" ({flagged:,} of them flagged)" if isinstance(flagged, Integral) else ""
        parts.append(f"{dups:,} duplicate row{'' if dups == 1 else 's'}{of_them}")
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


def explain_section(inputs: ReportInputs) -> dict[str, Any]:
    return {
        "features": [(str(k), int(v)) for k, v in list(inputs.explained_features.items())[:15]],
        "rows": inputs.explained_rows,
        "reference_rows": inputs.explanation_reference_rows,
    }


def time_section(view: Any, drawn: Drawn) -> dict[str, Any] | None:
    if view is None:
        return None
    image, error = drawn.get("time_features")
    buckets = view.buckets
    counts_image, counts_error = drawn.get("time_buckets")
    dated = view.times[~np.isnat(view.times)]
    return {
        "column": str(view.column),
        "how": "set in time.column" if view.configured else "detected from its name and values",
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
        "context": context_words(view.context),
        "events": events_rows(view.events),
        "event_count": 0 if view.events is None else len(view.events),
    }


#: Events listed in the report (events.csv has all).
EVENTS_SHOWN = 20


def context_words(context: Mapping[str, Any]) -> str:
    """One sentence on the time context: what it judged and how, or why it did not apply."""
    if not context:
        return ""
    if not context.get("applied"):
        return f"Detection did not use the time context: {context.get('why', 'not applied')}."
    series = context.get("series", 0)
    key = context.get("series_key")
    per = f"{series:,} series (one per {key})" if key else "one series"
    seasons = ", ".join(context.get("seasonality") or []) or "none"
    skipped = context.get("skipped_series_count") or 0
    left_out = (
        f" {skipped:,} series too short for it (under 2 days or 50 points) were scored without it."
        if skipped
        else ""
    )
    measures = context.get("measures") or []
    shown = ", ".join(measures[:8]) + (f" and {len(measures) - 8} more" if len(measures) > 8 else "")
    return (
        f"Each row was also judged against its own series' history ({per}): {shown} against the rolling "
        f"median of about a day and a week, the previous point and the level before, after removing the "
        f"seasonal profile where one was found (seasonality: {seasons}). A row counts only when its value is "
        f"new to the past week of its series; its first day is judged against the week after it.{left_out}"
    )


def _instant(value: Any) -> str:
    stamp = pd.Timestamp(value)
    return (
        DASH
        if pd.isna(stamp)
        else (stamp.tz_convert("UTC") if stamp.tzinfo else stamp).strftime("%Y-%m-%d %H:%M:%S")
    )


def events_rows(events: pd.DataFrame | None) -> list[dict[str, str]]:
    if events is None:
        return []
    rows = []
    for _, e in events.head(EVENTS_SHOWN).iterrows():
        rows.append(
            {
                "event": str(e["event"]),
                "series": str(e["series"]),
                "start": _instant(e["start"]),
                "end": _instant(e["end"]),
                "peak": _instant(e["peak"]),
                "rows": format_number(e["rows"]),
                "duration": format_duration(float(e["duration_seconds"])),
                "score": format_number(e["peak_score"], 3),
            }
        )
    return rows


def history_section(view: Any, run_id: str, drawn: Drawn) -> dict[str, Any] | None:
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
    trend, trend_error = drawn.get("share_trend")
    drift_image, drift_error = drawn.get("drift")
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


def rerun_section(diff: Any) -> dict[str, Any] | None:
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
