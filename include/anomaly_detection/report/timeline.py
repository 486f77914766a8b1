"""The time view: find the table's timestamp column, parse it, and count rows and anomalies per bucket.

A column is the time axis when the config names it (``time.column``) or, failing that,
when it is the first column whose name says time (``time``, ``timestamp``, ``date``, ``*_at``,
``datetime``, ``updated``, ``created``) and whose values parse as instants: ISO-8601 text, or
Unix epoch numbers in seconds, milliseconds or microseconds (the unit is read from the magnitude,
so USGS's ``properties.time`` in milliseconds works). A column of datetime type always qualifies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from anomaly_detection.detect import scored

_TIME_NAME = re.compile(
    r"(^|[._])(time|timestamp|datetime|date|ts)$|(_at|At|_time|_date|Time|Date)$|updated|created", re.I
)
#: Share of a head sample that must parse for a column to count as the time axis.
MIN_PARSED_SHARE = 0.9
#: Rows read from the head of the table to detect the column.
DETECT_ROWS = 500
#: Instants outside these years are not believed (a counter that happens to be numeric).
EARLIEST, LATEST = pd.Timestamp("1970-01-02", tz="UTC"), pd.Timestamp("2200-01-01", tz="UTC")
#: Bucket widths tried, smallest first; the first giving at most ``MAX_BUCKETS`` buckets is used.
BUCKETS = (
    ("1 minute", "1min"), ("5 minutes", "5min"), ("15 minutes", "15min"), ("1 hour", "1h"), ("6 hours", "6h"),
    ("1 day", "1D"), ("1 week", "7D"), ("30 days", "30D"), ("1 year", "365D"),
)  # fmt: skip
MAX_BUCKETS = 60


def parse_times(values: pd.Series) -> pd.Series:
    """Instants (UTC, ``datetime64[ns, UTC]``) from text, datetimes or epoch numbers; unparseable -> NaT.

    Parameters
    ----------
    values : pandas.Series
        One column of the API table.

    Returns
    -------
    pandas.Series
        Same length and index; values outside 1970-2200 are NaT.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True, errors="coerce")
    elif pd.api.types.is_bool_dtype(values):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    elif pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        magnitude = numbers.abs().median() if numbers.notna().any() else 0.0
        unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"
        parsed = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
    else:
        text = values.astype("string")
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        if parsed.isna().all() and text.notna().any():
            parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
    parsed = parsed.astype("datetime64[ns, UTC]")
    return parsed.where((parsed >= EARLIEST) & (parsed < LATEST))


def detect_time_column(head: pd.DataFrame, configured: str | None = None) -> str | None:
    """The name of the time column of a table, or ``None``.

    Parameters
    ----------
    head : pandas.DataFrame
        The first rows of the flattened API table.
    configured : str, optional
        ``time.column``; when given it must exist (``KeyError`` names the columns).

    Returns
    -------
    str or None
    """
    if configured:
        if configured not in head.columns:
            raise KeyError(
                f"time.column {configured!r} is not a column; columns are: {', '.join(map(str, head.columns[:40]))}"
            )
        return configured
    sample = head.head(DETECT_ROWS)
    typed = [c for c in sample.columns if pd.api.types.is_datetime64_any_dtype(sample[c])]
    named = [c for c in sample.columns if _TIME_NAME.search(str(c)) and c not in typed]
    for name in [*typed, *named]:
        column = sample[name].dropna()
        if len(column) and parse_times(column).notna().mean() >= MIN_PARSED_SHARE:
            return str(name)
    return None


def read_times(path: Path, column: str) -> np.ndarray:
    """Every row's instant as int64 nanoseconds since the epoch (NaT as the int64 minimum), in row order.

    One streaming pass over one column of ``flattened.parquet`` (a file or part files).
    """
    pieces = []
    for batch in scored.iter_batches(path, columns=[column]):
        series = pa.Table.from_batches([batch]).column(0).to_pandas()
        pieces.append(parse_times(series).to_numpy(dtype="datetime64[ns]").astype(np.int64))
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)


NAT = np.iinfo(np.int64).min


@dataclass(frozen=True)
class Buckets:
    """Rows and anomalies per time bucket.

    Attributes
    ----------
    width : str
        Human name of the bucket width (``"1 hour"``).
    starts : numpy.ndarray
        Start of every bucket, ``datetime64[ns]`` (UTC), shape ``(n_buckets,)``.
    rows, anomalies : numpy.ndarray
        Rows and flagged rows per bucket, shape ``(n_buckets,)``.
    undated_rows, undated_anomalies : int
        Rows (and flagged rows) without a usable instant.
    """

    width: str
    starts: np.ndarray
    rows: np.ndarray
    anomalies: np.ndarray
    undated_rows: int
    undated_anomalies: int


def bucket_counts(times: np.ndarray, flagged: np.ndarray, kept: np.ndarray | None = None) -> Buckets | None:
    """Count rows and anomalies per time bucket, with a bucket width giving at most 60 buckets.

    Parameters
    ----------
    times : numpy.ndarray
        Instants of every row of the ingested table, int64 ns (:data:`NAT` for missing).
    flagged : numpy.ndarray
        Positions of the flagged rows.
    kept : numpy.ndarray, optional
        Positions of the rows that were scored (duplicates removed); default all rows.

    Returns
    -------
    Buckets or None
        ``None`` when no row has an instant.
    """
    scored_times = times if kept is None else times[kept]
    valid = scored_times[scored_times != NAT]
    if valid.size == 0:
        return None
    low, high = int(valid.min()), int(valid.max())
    span = max(high - low, 1)
    for label, freq in BUCKETS:
        width = pd.Timedelta(freq).value
        if span / width <= MAX_BUCKETS:
            break
    start = (low // width) * width
    n = (high - start) // width + 1
    rows = np.bincount((valid - start) // width, minlength=n)
    flagged_times = times[np.asarray(flagged, dtype=np.int64)]
    dated = flagged_times[flagged_times != NAT]
    anomalies = (
        np.bincount((dated - start) // width, minlength=n) if dated.size else np.zeros(n, dtype=np.int64)
    )
    starts = (start + np.arange(n, dtype=np.int64) * width).astype("datetime64[ns]")
    return Buckets(
        label,
        starts,
        rows,
        anomalies,
        int(scored_times.size - valid.size),
        int(flagged_times.size - dated.size),
    )
