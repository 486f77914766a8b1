"""What a rerun changed compared with the run it reruns: parameters, anomaly count, and which rows
newly became or stopped being anomalies.

Rows are matched across the two runs by their content, not their position (the API may have
returned them in another order): a row's key is a hash of its original fields as written in
``anomalies.csv`` (every column except the ones the pipeline adds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

#: Columns the pipeline adds to ``anomalies.csv``; the rest are the API's fields.
ADDED_COLUMNS = ("rank", "score", "explanation", "top_features", "row")
#: Rows listed per direction in the report.
MAX_LISTED = 20
#: Config keys that differ between any two runs and say nothing about the analysis.
IGNORED_KEYS = ("output.", "name")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as ``{"modeling.contamination": 0.05, ...}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_changes(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, previous value, current value)`` for every config key that differs, sorted by key."""
    a, b = flatten(previous), flatten(current)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k) and not k.startswith(IGNORED_KEYS)]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def row_keys(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One content hash per row over ``columns`` (text as written in the CSV)."""
    if not columns:
        return pd.Series(frame.index.astype(str), index=frame.index)
    return pd.util.hash_pandas_object(frame[columns], index=False).astype(str)


@dataclass
class RerunDiff:
    """Flagged rows of a rerun against the run it reruns.

    Attributes
    ----------
    previous_run : str
        The run id that was rerun.
    previous_count, current_count : int
        Flagged rows in each run.
    kept : int
        Rows flagged by both.
    new, gone : pandas.DataFrame
        Up to :data:`MAX_LISTED` rows newly flagged (with this run's rank and score) and no longer
        flagged (with the previous run's), highest score first.
    new_count, gone_count : int
        How many rows are in each direction in total.
    changes : list of tuple
        ``(config key, previous value, current value)``.
    """

    previous_run: str
    previous_count: int
    current_count: int
    kept: int
    new_count: int
    gone_count: int
    new: pd.DataFrame
    gone: pd.DataFrame
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)


def compare(
    previous_run: str,
    previous_anomalies: Path,
    current_anomalies: Path,
    *,
    previous_config: Mapping[str, Any] | None = None,
    current_config: Mapping[str, Any] | None = None,
) -> RerunDiff:
    """Compare the flagged rows (``anomalies.csv``) and resolved configs of two runs."""
    before, after = _read(previous_anomalies), _read(current_anomalies)
    fields = [c for c in after.columns if c in set(before.columns) and c not in ADDED_COLUMNS]
    before_keys, after_keys = row_keys(before, fields), row_keys(after, fields)
    new_mask = ~after_keys.isin(set(before_keys))
    gone_mask = ~before_keys.isin(set(after_keys))
    shown = [c for c in ("rank", "score") if c in after.columns] + fields
    return RerunDiff(
        previous_run=previous_run,
        previous_count=len(before),
        current_count=len(after),
        kept=int((~new_mask).sum()),
        new_count=int(new_mask.sum()),
        gone_count=int(gone_mask.sum()),
        new=after.loc[new_mask, shown].head(MAX_LISTED).reset_index(drop=True),
        gone=before.loc[gone_mask, [c for c in shown if c in before.columns]]
        .head(MAX_LISTED)
        .reset_index(drop=True),
        changes=config_changes(previous_config or {}, current_config or {}),
    )
