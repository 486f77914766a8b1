"""Flatten records to a table: nested objects become ``parent.child`` columns (without recursion),
short fixed lists indexed columns, other lists JSON text; then types are converted.

* :func:`flatten_records` flattens a page's records into a frame.
* :func:`finalize_frame` expands short fixed lists, serialises the rest and converts types.

A page whose records would flatten to more than ``max_columns`` columns is a
:class:`TooManyColumns` error raised before the wide frame is built.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from anomaly_detection.errors import IngestionError

log = logging.getLogger(__name__)

SCALAR_TYPES = (str, int, float, bool, type(None))


#: ISO-8601 date or date-time text: a text column of only these (and missing or empty values) becomes
#: datetimes when pandas parses every value. The Spark preprocessing applies the same patterns.
ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
#: The zone of an ISO date-time: ``Z`` or an offset (``+05:30``, ``-0500``).
TIME_ZONE = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
#: Stripped text that ``pandas.to_numeric`` reads as a number (not NaN): a text column of only these
#: becomes numeric. Written for the Spark preprocessing (Java regex syntax too); tests check it
#: against ``pandas.to_numeric``. :data:`INTEGER_TEXT`: the values that keep an all-integer column int64.
NUMERIC_TEXT = re.compile(r"^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity))$")
INTEGER_TEXT = re.compile(r"^[+-]?[0-9]+$")


class TooManyColumns(IngestionError):
    """Records that would flatten to more columns than allowed (``processing.max_columns``)."""


@dataclass
class FlattenStats:
    collisions: dict[str, str] = field(default_factory=dict)
    truncated_paths: set[str] = field(default_factory=set)
    scalar_records: int = 0


class _Token(str):
    """Literal output text on the encoder's stack (as opposed to a value still to encode)."""


def _scalar_text(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else "null"
    return json.dumps(value if isinstance(value, str) else str(value), ensure_ascii=False)


def _dumps_iterative(value: Any) -> str:
    """Compact JSON like orjson's, without recursion (any depth); non-finite floats become null."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Token:
            out.append(item)
        elif isinstance(item, dict):
            out.append("{")
            pending: list[Any] = [_Token("}")]
            for i, (key, inner) in enumerate(reversed(list(item.items()))):
                if i:
                    pending.append(_Token(","))
                pending.append(inner)
                pending.append(_Token(_scalar_text(str(key)) + ":"))
            stack.extend(pending)
        elif isinstance(item, (list, tuple)):
            out.append("[")
            pending = [_Token("]")]
            for i, inner in enumerate(reversed(item)):
                if i:
                    pending.append(_Token(","))
                pending.append(inner)
            stack.extend(pending)
        else:
            out.append(_scalar_text(item))
    return "".join(out)


def json_text(value: Any) -> str:
    """JSON text of ``value``: orjson when it can (depth < 255, 64-bit ints), else an iterative encoder."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _dumps_iterative(value)


def flatten_record(record: Any, *, max_depth: int, stats: FlattenStats) -> dict[str, Any]:
    """Flatten one record iteratively: nested keys join with ``.``; lists stay as lists.

    Objects nested deeper than ``max_depth`` are kept as JSON text. A key that collides with an
    earlier one after flattening gets a ``__dupN`` suffix.
    """
    if not isinstance(record, dict):
        stats.scalar_records += 1
        return {"value": record if isinstance(record, SCALAR_TYPES) else json_text(record)}
    for value in record.values():
        if type(value) is dict:
            break
    else:
        return record  # already flat: the common case, no copy
    out: dict[str, Any] = {}
    stack = [("", iter(record.items()), 1)]
    while stack:
        prefix, items, depth = stack[-1]
        for key, value in items:
            name = f"{prefix}{key}"
            if type(value) is dict and value:
                if depth >= max_depth:
                    stats.truncated_paths.add(name)
                    value = json_text(value)
                else:
                    stack.append((name + ".", iter(value.items()), depth + 1))
                    break
            elif type(value) is dict:
                value = None
            _emit(out, name, value, stats)
        else:
            stack.pop()
    return out


_PLAIN_KINDS = frozenset(
    {
        "string",
        "bytes",
        "floating",
        "integer",
        "mixed-integer-float",
        "decimal",
        "boolean",
        "datetime64",
        "datetime",
        "date",
        "timedelta64",
        "timedelta",
        "time",
        "period",
        "empty",
    }
)


def _emit(out: dict[str, Any], name: str, column: Any, stats: FlattenStats) -> None:
    """Store ``column`` under ``name``, or under ``name__dupN`` when the name is already taken."""
    if name in out:
        n = 1
        while f"{name}__dup{n}" in out:
            n += 1
        stats.collisions.setdefault(name, f"{name}__dup{n}")
        name = f"{name}__dup{n}"
    out[name] = column


def unique_names(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """``names`` with the :func:`flatten_record` collision rule applied: a name already taken gets a
    ``__dupN`` suffix. Returns the names and ``{name: first renaming}``, like ``FlattenStats.collisions``."""
    out: dict[str, None] = {}
    collisions: dict[str, str] = {}
    for name in names:
        if name in out:
            n = 1
            while f"{name}__dup{n}" in out:
                n += 1
            collisions.setdefault(name, f"{name}__dup{n}")
            name = f"{name}__dup{n}"
        out[name] = None
    return list(out), collisions


def _check_width(columns: int, max_columns: int | None, where: str) -> None:
    if max_columns is not None and columns > max_columns:
        raise TooManyColumns(
            f"the records would flatten to more than processing.max_columns={max_columns} columns "
            f"({columns} {where}); raise processing.max_columns, or point source.records_path at the list of records"
        )


def _check_keys(rows: list[dict[str, Any]], already: int, max_columns: int | None, where: str) -> None:
    """Refuse ``rows`` if their distinct keys and ``already`` columns pass ``max_columns`` (the keys
    are only gathered when the plain count of keys says they might)."""
    if max_columns is None or already + sum(map(len, rows)) <= max_columns:
        return
    _check_width(already + len(set().union(*rows)), max_columns, where)


def flatten_records(
    records: list[Any], *, max_depth: int, stats: FlattenStats, max_columns: int | None = None
) -> pd.DataFrame:
    """Flatten a page of records into a frame (list values are still Python lists).

    Column by column rather than record by record: each level of nested objects becomes one
    ``DataFrame.from_records`` call, so the cost per record stays small. Names, the ``max_depth``
    rule and the ``__dupN`` collision rule are those of :func:`flatten_record`; a key whose value
    is an object in every record yields only its children (no all-empty parent column).

    Raises
    ------
    TooManyColumns
        The records would make more than ``max_columns`` columns (None: no limit). Each level's
        keys are counted before its frame is built, so a record with a million keys costs a set
        of its keys, not a million-column frame.
    """
    if not records:
        return pd.DataFrame()
    if not all(type(r) is dict for r in records):
        rows = [flatten_record(r, max_depth=max_depth, stats=stats) for r in records]
        _check_keys(rows, 0, max_columns, "distinct keys")
        return pd.DataFrame.from_records(rows)
    _check_keys(records, 0, max_columns, "distinct keys at the top level")
    top = pd.DataFrame.from_records(records)
    planned = top.shape[1]
    out: dict[str, Any] = {}
    stack = [iter([(str(name), top[name], 1) for name in top.columns])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        name, column, depth = item
        if column.dtype != object or pd.api.types.infer_dtype(column, skipna=True) in _PLAIN_KINDS:
            _emit(out, name, column, stats)
            continue
        values = column.to_numpy()
        is_dict = np.fromiter((type(v) is dict for v in values), dtype=bool, count=len(values))
        if not is_dict.any():
            _emit(out, name, column, stats)
            continue
        non_empty = is_dict & np.fromiter(
            (bool(v) if type(v) is dict else False for v in values), dtype=bool, count=len(values)
        )
        if depth >= max_depth and non_empty.any():
            stats.truncated_paths.add(name)
            _emit(
                out,
                name,
                column.map(lambda v: (json_text(v) if v else None) if type(v) is dict else v),
                stats,
            )
            continue
        rest = column.where(~is_dict, None)
        objects = [v if d else {} for v, d in zip(values, is_dict)]
        keep_parent = bool(rest.notna().any()) or not non_empty.any()
        _check_keys(objects, planned - (not keep_parent), max_columns, f"columns once '{name}' is flattened")
        sub = pd.DataFrame.from_records(objects, index=column.index)
        planned += sub.shape[1] - (not keep_parent)
        if keep_parent:
            _emit(out, name, rest, stats)
        stack.append(iter([(f"{name}.{key}", sub[key], depth + 1) for key in sub.columns]))
    return pd.DataFrame(out, index=top.index)


@dataclass
class ColumnNotes:
    expanded_lists: list[str] = field(default_factory=list)
    json_lists: list[str] = field(default_factory=list)
    numeric_from_text: list[str] = field(default_factory=list)
    datetimes: list[str] = field(default_factory=list)
    #: expanded list columns whose name was already taken, e.g. ``{"c.0": "c.0__dup1"}``
    renamed: dict[str, str] = field(default_factory=dict)


def _expand_lists(frame: pd.DataFrame, *, max_list_length: int, notes: ColumnNotes) -> pd.DataFrame:
    new_columns: dict[str, pd.DataFrame | pd.Series] = {}
    for name in frame.columns:
        col = frame[name]
        if col.dtype != object:
            continue
        is_list = col.map(type).eq(list)
        if not is_list.any():
            continue
        lists = col[is_list]
        lengths = lists.map(len)
        scalar = lists.map(lambda v: all(isinstance(x, SCALAR_TYPES) for x in v)).all()
        fixed = lengths.nunique() == 1 and is_list.sum() == col.notna().sum()
        length = int(lengths.iloc[0])
        if scalar and fixed and 0 < length <= max_list_length:
            expanded = pd.DataFrame(lists.tolist(), index=lists.index).reindex(col.index)
            taken = set(map(str, frame.columns)) | {
                str(c) for r in new_columns.values() if isinstance(r, pd.DataFrame) for c in r.columns
            }
            names = []
            for i in range(length):
                wanted = candidate = f"{name}.{i}"
                n = 0
                while candidate in taken:
                    n += 1
                    candidate = f"{wanted}__dup{n}"
                if candidate != wanted:
                    notes.renamed[wanted] = candidate
                taken.add(candidate)
                names.append(candidate)
            expanded.columns = names
            new_columns[name] = expanded
            notes.expanded_lists.append(str(name))
        else:
            new_columns[name] = col.map(lambda v: json_text(v) if isinstance(v, list) else v)
            notes.json_lists.append(str(name))
    if not new_columns:
        return frame
    parts = []
    for name in frame.columns:
        replacement = new_columns.get(name)
        if replacement is None:
            parts.append(frame[[name]])
        elif isinstance(replacement, pd.DataFrame):
            parts.append(replacement)
        else:
            parts.append(replacement.to_frame(name))
    return pd.concat(parts, axis=1)


_TEXT_KINDS = frozenset(
    {"string", "mixed", "mixed-integer", "mixed-integer-float", "integer", "floating", "decimal"}
)


def _convert_text(frame: pd.DataFrame, notes: ColumnNotes) -> pd.DataFrame:
    for name in frame.columns:
        col = frame[name]
        if (
            col.dtype == bool
            or pd.api.types.is_numeric_dtype(col)
            or pd.api.types.is_datetime64_any_dtype(col)
        ):
            continue
        kind = pd.api.types.infer_dtype(col, skipna=True)
        if kind not in _TEXT_KINDS:
            continue
        present = col.dropna()
        if present.empty or (kind != "string" and not present.map(type).isin((str, int, float)).all()):
            continue
        as_text = present.astype(str).str.strip()
        as_text = as_text[as_text != ""]
        if as_text.empty:
            continue
        head = as_text.head(200)
        if pd.to_numeric(head, errors="coerce").notna().all():
            numbers = pd.to_numeric(as_text, errors="coerce")
            if numbers.notna().all():
                frame[name] = pd.to_numeric(col.where(col.astype(str).str.strip() != ""), errors="coerce")
                if kind in ("string", "mixed", "mixed-integer"):
                    notes.numeric_from_text.append(str(name))
                continue
        if head.str.match(ISO_TIMESTAMP).all() and as_text.str.match(ISO_TIMESTAMP).all():
            stamps = pd.to_datetime(as_text, format="ISO8601", utc=True, errors="coerce")
            if stamps.notna().all():
                frame[name] = _datetimes(col.where(col.astype(str).str.strip() != ""), as_text)
                notes.datetimes.append(str(name))
    return frame


def _datetimes(values: pd.Series, present: pd.Series) -> pd.Series:
    """ISO text as datetimes that keep the values' own zone: naive text stays naive (local time, never
    labelled UTC), one shared offset is kept; only text mixing offsets is converted to UTC."""
    zoned = present.str.contains(TIME_ZONE.pattern, regex=True)
    if not zoned.any():
        return pd.to_datetime(values, format="ISO8601", errors="coerce")
    if zoned.all():
        try:
            parsed = pd.to_datetime(values, format="ISO8601", errors="coerce")
            if isinstance(parsed.dtype, pd.DatetimeTZDtype):
                return parsed
        except (ValueError, TypeError):
            pass
    return pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")


def finalize_frame(frame: pd.DataFrame, *, max_list_length: int) -> tuple[pd.DataFrame, ColumnNotes]:
    """Expand short fixed lists of scalars to indexed columns, keep the rest as JSON text, and
    convert numeric strings to numbers and ISO timestamps to datetimes."""
    notes = ColumnNotes()
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    frame = _expand_lists(frame, max_list_length=max_list_length, notes=notes)
    frame = _convert_text(frame, notes)
    return frame.reset_index(drop=True), notes
