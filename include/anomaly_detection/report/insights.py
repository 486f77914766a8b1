"""What the report says beyond the scores: the time view, the run history with drift, and the rerun diff.

Each function reads a run's files and returns a small typed view for :mod:`.report`; none holds a
full column of the dataset except the time column (int64 nanoseconds, 8 bytes per row).
A view that cannot be built (no time column, no earlier run, the rerun's run directory gone)
is ``None`` and its section says why; a failure here is logged and never fails the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from anomaly_detection.config import PipelineConfig
from anomaly_detection.detect import scored
from anomaly_detection.detect.explain import Reference
from anomaly_detection.report import history, timeline
from anomaly_detection.report.rerun_diff import RerunDiff, compare
from anomaly_detection.runs import RunPaths, safe_run_id

log = logging.getLogger(__name__)

#: Features drawn in the time view.
TIME_VIEW_FEATURES = 4


@dataclass
class TimeView:
    """Rows over time: the sampled rows' main features and flagged rows per bucket."""

    column: str
    configured: bool
    times: np.ndarray  # datetime64[ns] of the drawn rows
    values: np.ndarray  # (n_drawn, n_features_drawn), API units
    anomalies: np.ndarray  # 0/1 per drawn row
    feature_names: list[str]
    buckets: timeline.Buckets | None
    #: The time context's summary entry (features/context.py), and the run's events (events.csv).
    context: dict[str, Any] = field(default_factory=dict)
    events: pd.DataFrame | None = None


@dataclass
class HistoryView:
    """This run among the earlier runs of the same source, and how its features moved."""

    source_key: str
    runs: list[dict[str, Any]]  # earlier runs then this one: run_id, finished_at, rows, anomaly_share, ...
    previous: dict[str, Any] | None
    drift: list[history.FeatureDrift] = field(default_factory=list)
    psi_threshold: float = history.PSI_THRESHOLD


def kept_positions(paths: RunPaths) -> np.ndarray | None:
    """Positions of the scored rows (duplicates removed) in ``flattened.parquet``, if recorded."""
    if paths.kept_rows.exists():
        return np.load(paths.kept_rows)
    if paths.spark_features.exists():
        positions = [
            b.column(0).to_numpy() for b in scored.iter_batches(paths.spark_features, columns=["_pos"])
        ]
        return np.sort(np.concatenate(positions)) if positions else None
    return None


def _time_context(paths: RunPaths) -> dict[str, Any]:
    if not paths.summary.exists():
        return {}
    return dict(json.loads(paths.summary.read_text(encoding="utf-8")).get("time_context") or {})


def time_view(
    config: PipelineConfig,
    paths: RunPaths,
    sample: pd.DataFrame,
    reference: Reference,
    flagged_positions: np.ndarray,
    main_features: Sequence[str],
) -> TimeView | None:
    """The time view of a run, or ``None`` when the table has no time column."""
    column = timeline.detect_time_column(
        scored.head(paths.flattened, timeline.DETECT_ROWS), config.time.column
    )
    if column is None:
        return None
    times = timeline.read_times(paths.flattened, column)
    buckets = timeline.bucket_counts(times, flagged_positions, kept_positions(paths))
    names = reference.names
    chosen = [n for n in main_features if n in names][:TIME_VIEW_FEATURES] or names[:TIME_VIEW_FEATURES]
    index = [names.index(n) for n in chosen]
    X = sample[scored.feature_columns(len(names))].to_numpy(dtype=np.float64)
    drawn = times[sample["position"].to_numpy()]
    return TimeView(
        column=column,
        configured=bool(config.time.column),
        times=np.where(drawn == timeline.NAT, np.datetime64("NaT"), drawn.astype("datetime64[ns]")).astype(
            "datetime64[ns]"
        ),
        values=reference.original(X)[:, index],
        anomalies=sample["anomaly"].to_numpy(),
        feature_names=chosen,
        buckets=buckets,
        context=_time_context(paths),
        events=pd.read_csv(paths.root / "events.csv", parse_dates=["start", "end", "peak"])
        if (paths.root / "events.csv").exists()
        else None,
    )


def history_entry(
    config: PipelineConfig,
    paths: RunPaths,
    results: dict[str, Any],
    reference: Reference,
    sample: pd.DataFrame,
) -> dict[str, Any]:
    """The history line of this run: what the trend and the next run's drift need."""
    X = sample.loc[sample["sampled"], scored.feature_columns(len(reference.names))].to_numpy(dtype=np.float64)
    best = results["best"]
    return {
        "run_id": results["run_id"],
        "source_key": history.source_key(results["source_url"], config.source.records_path, config.name),
        "name": config.name,
        "source_url": results["source_url"],
        "finished_at": results.get("finished_at"),
        "rows": results["rows"]["scored"],
        "anomaly_count": best["anomaly_count"],
        "anomaly_share": best["anomaly_share"],
        "best": {
            "algorithm": best["algorithm"],
            "params": best["params"],
            "metric": best["metric"],
            "score": best["score"],
        },
        "mode": results.get("mode"),
        "rerun_of": results.get("rerun_of"),
        "report": paths.published_report.name,
        "features": history.profiles(reference.original(X), reference.names),
    }


def history_view(config: PipelineConfig, paths: RunPaths, entry: dict[str, Any]) -> HistoryView:
    """Record this run in the history store and compare it with the earlier runs of its source."""
    store = history.history_path(paths.root.parent)
    history.append(store, entry)
    earlier = history.previous_runs(
        history.read(store), entry["source_key"], entry["run_id"], config.report.history_runs
    )
    previous = earlier[-1] if earlier else None
    drifts = history.drift(previous.get("features") or {}, entry["features"]) if previous else []
    runs = [{k: v for k, v in e.items() if k != "features"} for e in [*earlier, entry]]
    return HistoryView(entry["source_key"], runs, runs[-2] if previous else None, drifts)


def rerun_view(paths: RunPaths, rerun_of: str | None) -> RerunDiff | None:
    """The diff against the run this one reruns, when its run directory is still there."""
    if not rerun_of:
        return None
    previous = RunPaths(paths.root.parent / safe_run_id(rerun_of), paths.reports_dir)
    if not previous.anomalies.exists():
        log.warning("rerun of %s: %s is gone, no diff shown", rerun_of, previous.anomalies)
        return None

    def load(path: Path) -> dict[str, Any]:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {} if path.exists() else {}

    return compare(
        rerun_of,
        previous.anomalies,
        paths.anomalies,
        previous_config=load(previous.config),
        current_config=load(paths.config),
    )
