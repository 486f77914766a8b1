"""The time context of a run on disk: ``context.parquet`` (written by preprocess, read by detect),
the time explanations of flagged rows and ``events.csv`` (written by select).

``context.parquet`` holds one row per ingested row, in table order: ``_series`` and ``_order`` (the
row's series and its place in that series' time order, -1 without context), ``_series_name``,
``_time``, then per measure ``<measure>|score``, ``|view``, ``|typical`` and ``|season``
(features/context.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_detection import atomic
from anomaly_detection.config import PipelineConfig
from anomaly_detection.detect.events import group_events
from anomaly_detection.features.context import FENCE, SEASONS, VIEWS, build_context
from anomaly_detection.report import timeline
from anomaly_detection.report.format import format_number

log = logging.getLogger(__name__)

CONTEXT_FILE = "context.parquet"
#: The Spark path's context: part files with ``_pos`` and the columns above (``_series_name`` as text).
SPARK_CONTEXT_DIR = "context.spark.parquet"
EVENTS_FILE = "events.csv"
_SCORE, _VIEW, _TYPICAL, _SEASON = "|score", "|view", "|typical", "|season"
#: Events listed in results.json (events.csv has all).
EVENTS_LISTED = 20


def context_path(root: Path) -> Path:
    return Path(root) / CONTEXT_FILE


def events_path(root: Path) -> Path:
    return Path(root) / EVENTS_FILE


def write_context(
    config: PipelineConfig, root: Path, table: pd.DataFrame, measures: list[str]
) -> dict[str, Any]:
    """Build the time context of ``table`` and write ``context.parquet``; the summary's ``time_context``.

    Without a time column, with ``time.context: off`` or without a series long enough, no file is
    written (an old one is removed) and the returned entry says why.
    """
    path = context_path(root)
    if path.exists():
        path.unlink()
    if config.time.context == "off":
        return {"applied": False, "why": "time.context is off"}
    column = timeline.detect_time_column(table.head(timeline.DETECT_ROWS), config.time.column)
    if column is None:
        return {"applied": False, "why": "no time column (set time.column)"}
    if not measures:
        return {"applied": False, "why": "no numeric measure to follow over time", "column": column}
    times = timeline.parse_times(table[column])
    context = build_context(
        table, time_column=column, times=times, measures=measures, series_key=config.time.series_key
    )
    if context is None:
        why = "no series spans 2 days with 50 points"
        log.info("time context not applied: %s (column %r)", why, column)
        return {"applied": False, "why": why, "column": column}
    names = pd.Categorical.from_codes(np.maximum(context.series, 0), categories=context.series_names)
    frame = pd.DataFrame(
        {"_series": context.series, "_order": context.order, "_series_name": names, "_time": context.times}
    )
    for name, measure in context.measures.items():
        frame[name + _SCORE] = measure.score
        frame[name + _VIEW] = measure.view
        frame[name + _TYPICAL] = measure.typical
        frame[name + _SEASON] = measure.season
    with atomic.replacing(path) as tmp:
        frame.to_parquet(tmp, index=False)
    summary = {"applied": True, **context.summary()}
    seasons = ", ".join(summary["seasonality"] or ["none"])
    log.info(
        "time context: column %r, %d series, %d measure(s), seasonality %s; %d series too short",
        column, len(context.facts), len(measures), seasons, len(context.skipped),
    )  # fmt: skip
    if context.skipped:
        log.warning(
            "time context: %d series left out (%s); their rows are scored without it",
            len(context.skipped), "; ".join(f"{k}: {v}" for k, v in list(context.skipped.items())[:3]),
        )  # fmt: skip
    return summary


def _context_rows(
    root: Path, positions: np.ndarray, columns: list[str] | None = None
) -> tuple[pd.DataFrame, list[str]] | None:
    """The context rows at ``positions``, in that order, and the series names by code; None without
    context. ``context.parquet`` (native) or ``context.spark.parquet/`` (Spark: only the rows at
    ``positions`` are read, by a filter on ``_pos``)."""
    path = context_path(root)
    if path.exists():
        frame = pd.read_parquet(path, columns=columns).iloc[positions].reset_index(drop=True)
        return frame, [str(n) for n in frame["_series_name"].cat.categories]
    parts = Path(root) / SPARK_CONTEXT_DIR
    if not parts.is_dir():
        return None
    import pyarrow.dataset as ds

    wanted = np.asarray(positions, dtype=np.int64)
    dataset = ds.dataset(parts, format="parquet")
    read = None if columns is None else ["_pos", *columns]
    table = dataset.to_table(columns=read, filter=ds.field("_pos").isin(np.unique(wanted)))
    frame = table.to_pandas().drop_duplicates("_pos").set_index("_pos").loc[wanted].reset_index(drop=True)
    if "_time" in frame:
        times = pd.to_datetime(frame["_time"])
        frame["_time"] = (times.dt.tz_convert(None) if times.dt.tz else times).astype("datetime64[ns]")
    names: dict[int, str] = dict(zip(frame["_series"].to_numpy().tolist(), frame["_series_name"].astype(str)))
    listed = [names.get(code, "") for code in range(max(names, default=-1) + 1)]
    return frame, listed


def read_scores(root: Path) -> np.ndarray | None:
    """Every measure's context score as columns, shape (n_rows, n_measures); None without context."""
    path = context_path(root)
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    columns = [c for c in frame.columns if c.endswith(_SCORE)]
    return frame[columns].to_numpy(dtype=np.float64) if columns else None


def _slot(when: pd.Timestamp, season: str | None) -> str:
    if season == "week":
        return f" for {when.strftime('%A %H:%M')}"
    if season == "day":
        return f" at {when.strftime('%H:%M')}"
    return ""


def explanations(root: Path, table: pd.DataFrame, positions: np.ndarray) -> list[str]:
    """The time view's words for the rows at ``positions`` (empty where it did not raise the row).

    The measure with the highest context score above the fence names the view, e.g. "value 2,100 vs
    14,800 typical for Monday 09:00 (-86 %)" or "value 40 vs 12 at the previous point (+233 %)".
    """
    found = _context_rows(root, positions) if len(positions) else None
    if found is None:
        return [""] * len(positions)
    frame = found[0]
    measures = [c[: -len(_SCORE)] for c in frame.columns if c.endswith(_SCORE)]
    scores = frame[[m + _SCORE for m in measures]].to_numpy(dtype=np.float64)
    out = []
    for i in range(len(frame)):
        j = int(np.argmax(scores[i]))
        if scores[i, j] < FENCE:
            out.append("")
            continue
        measure = measures[j]
        value = pd.to_numeric(pd.Series([table[measure].iloc[i]]), errors="coerce").iloc[0]
        typical = float(frame.at[i, measure + _TYPICAL])
        view = VIEWS[int(frame.at[i, measure + _VIEW])]
        when = pd.Timestamp(frame.at[i, "_time"])
        season = SEASONS[int(frame.at[i, measure + _SEASON])]
        relative = f" ({(value - typical) / abs(typical):+.0%})" if typical and np.isfinite(typical) else ""
        words = {
            "day": f"typical{_slot(when, season)} in the surrounding day",
            "week": f"typical{_slot(when, season)} in the surrounding week",
            "change": "at the previous point",
            "shift": "before a level shift",
        }[view]
        out.append(f"{measure} {format_number(value)} vs {format_number(typical)} {words}{relative}")
    return out


def write_events(root: Path, positions: np.ndarray, scores: np.ndarray) -> pd.DataFrame | None:
    """Group the flagged rows at ``positions`` into events and write ``events.csv``; None without context."""
    target = events_path(root)
    found = _context_rows(root, positions, ["_series", "_order", "_series_name", "_time"])
    if found is None:
        if target.exists():
            target.unlink()
        return None
    frame, names = found
    inside = frame["_series"].to_numpy() >= 0
    events = group_events(
        rows=np.asarray(positions)[inside],
        series=frame["_series"].to_numpy()[inside],
        order=frame["_order"].to_numpy()[inside],
        times=frame["_time"].to_numpy()[inside],
        scores=np.asarray(scores)[inside],
        series_names=[str(n) for n in names],
    )
    with atomic.replacing(target) as tmp:
        events.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    return events


def events_summary(events: pd.DataFrame | None, root: Path) -> dict[str, Any] | None:
    """results.json's ``events``: the count, the file and the strongest :data:`EVENTS_LISTED`."""
    if events is None:
        return None
    listed = events.head(EVENTS_LISTED).copy()
    for column in ("start", "end", "peak"):
        listed[column] = pd.to_datetime(listed[column], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "count": int(len(events)),
        "series": int(events["series"].nunique()),
        "file": str(events_path(root)),
        "strongest": listed.to_dict(orient="records"),
    }
