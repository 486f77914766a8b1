"""Events: runs of consecutive flagged points of one series, each with its start, end, peak and duration.

Two flagged points belong to one event when they are neighbours in their series' time order (no
unflagged point of the same series between them). A table without a time column has no events.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EVENT_COLUMNS = [
    "event",
    "series",
    "start",
    "end",
    "peak",
    "peak_row",
    "peak_score",
    "rows",
    "duration_seconds",
]


def group_events(
    *,
    rows: np.ndarray,
    series: np.ndarray,
    order: np.ndarray,
    times: np.ndarray,
    scores: np.ndarray,
    series_names: list[str] | None = None,
) -> pd.DataFrame:
    """Group flagged points into events.

    Parameters
    ----------
    rows : ndarray of shape (n_flagged,)
        Position of each flagged row in the ingested table.
    series : ndarray of shape (n_flagged,)
        Series code of each flagged row (0 when the records form one series).
    order : ndarray of shape (n_flagged,)
        The row's place in its series' time order (0, 1, 2 ...).
    times : ndarray of shape (n_flagged,), datetime64
        The row's time.
    scores : ndarray of shape (n_flagged,)
        The row's anomaly score.
    series_names : list of str, optional
        The series key's value of each code.

    Returns
    -------
    DataFrame
        One row per event, by decreasing peak score: ``event`` (1 = strongest), ``series``, ``start``,
        ``end``, ``peak`` (the time of the highest score), ``peak_row``, ``peak_score``, ``rows``
        (flagged points), ``duration_seconds`` (end - start; 0 for a single point).
    """
    if len(rows) == 0:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    frame = pd.DataFrame(
        {
            "row": np.asarray(rows, dtype=np.int64),
            "series": np.asarray(series, dtype=np.int64),
            "order": np.asarray(order, dtype=np.int64),
            "time": pd.to_datetime(np.asarray(times), utc=True),
            "score": np.asarray(scores, dtype=np.float64),
        }
    ).sort_values(["series", "order"], kind="stable")
    new = (frame["series"].diff() != 0) | (frame["order"].diff() != 1)
    frame["event"] = np.cumsum(new.to_numpy())
    peak_at = frame.groupby("event")["score"].idxmax()
    grouped = frame.groupby("event")
    events = pd.DataFrame(
        {
            "series": grouped["series"].first(),
            "start": grouped["time"].min(),
            "end": grouped["time"].max(),
            "peak": frame.loc[peak_at.to_numpy(), "time"].to_numpy(),
            "peak_row": frame.loc[peak_at.to_numpy(), "row"].to_numpy(),
            "peak_score": frame.loc[peak_at.to_numpy(), "score"].to_numpy(),
            "rows": grouped.size(),
        }
    )
    events["duration_seconds"] = (events["end"] - events["start"]).dt.total_seconds()
    if series_names is not None:
        events["series"] = [series_names[int(code)] for code in events["series"]]
    events = events.sort_values(["peak_score", "start"], ascending=[False, True], kind="stable")
    events.insert(0, "event", np.arange(1, len(events) + 1))
    return events.reset_index(drop=True)[EVENT_COLUMNS]
