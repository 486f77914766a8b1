"""How values read in the report: numbers, shares, durations, table cells (shortened, never raw HTML)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from datetime import datetime
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DASH = "—"


MAX_CELL_CHARS = 200


MAX_NAME_CHARS = 80
MAX_TABLE_COLUMNS = 100


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


def shorten(text: str, limit: int) -> str:
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
            return shorten(str(value.tolist()), limit)
        return shorten(json.dumps(value, default=str, ensure_ascii=False), limit)
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
    return shorten(" ".join(str(value).split()) if "\n" in str(value) else str(value), limit)


def datetimes_as_iso(frame: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns as ISO-8601 text in their own zone (naive values without one), for CSV files."""
    frame = frame.copy()
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(column):
            frame[name] = [t.isoformat() if t is not pd.NaT else None for t in column]
    return frame


def epochs_as_iso(frame: pd.DataFrame | None, roles: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame | None:
    """Epoch-number timestamp columns (``roles[name]["unit"]``: s, ms or us) as ISO-8601 UTC text."""
    if frame is None:
        return None
    epochs = {
        n: r["unit"]
        for n, r in roles.items()
        if r.get("role") == "timestamp" and r.get("unit") and n in frame
    }
    if not epochs:
        return frame
    frame = frame.copy()
    for name, unit in epochs.items():
        numbers = pd.to_numeric(frame[name], errors="coerce")
        stamps = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
        frame[name] = [s.isoformat() if s is not pd.NaT else None for s in stamps]
    return frame


def frame_table(
    frame: pd.DataFrame | None,
    max_rows: int,
    max_columns: int = MAX_TABLE_COLUMNS,
    *,
    uncut: frozenset[str] = frozenset({"explanation"}),
) -> dict[str, Any]:
    """Convert a DataFrame to plain header and row lists for the template.

    Parameters
    ----------
    frame : pandas.DataFrame or None
        Table to show.
    max_rows, max_columns : int
        Largest number of rows and columns shown.
    uncut : frozenset of str
        Columns of the project's own text (the explanations), shown up to 1,000 characters.

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
    columns = [{"name": shorten(str(c), MAX_NAME_CHARS), "full": str(c)} for c in shown.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        for dtype in shown.dtypes
    ]
    limits = [1_000 if str(c) in uncut else MAX_CELL_CHARS for c in shown.columns]
    rows = [
        [format_cell(v, limit) for v, limit in zip(row, limits)]
        for row in shown.itertuples(index=False, name=None)
    ]
    wide = [any(len(row[j]) > 40 for row in rows) for j in range(len(columns))]
    return {
        "columns": columns,
        "rows": rows,
        "total_rows": len(frame),
        "total_columns": frame.shape[1],
        "numeric": numeric,
        "wide": wide,
    }
