"""Typed columns and Parquet part files of the Spark path's ingestion (see :mod:`.bulk` for the rules).

Pages are flattened as the native path does, each column typed ``double``, ``bool`` or ``string``
(lists as JSON text), and written as part files under one growing schema; :meth:`PartWriter.finish`
rewrites the older parts so that every part shares the final schema.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly_detection.ingest.flatten import FlattenStats, TooManyColumns, flatten_records, json_text

log = logging.getLogger(__name__)

#: Integers up to this magnitude are exact in a float64.
EXACT_INT = 2**53


_NUMERIC_KINDS = frozenset({"integer", "floating", "mixed-integer-float", "decimal"})


@dataclass
class TypedBatch:
    """One page, flattened and typed (the unit held in memory)."""

    number: int
    rows: int
    columns: dict[str, pa.Array]
    stats: FlattenStats = field(default_factory=FlattenStats)
    #: API pages in this unit: consecutive pages are flattened and written together (``batch_records``).
    pages: int = 1
    #: The URL of its first page (secrets masked), for messages.
    url: str = ""

    def head(self, rows: int) -> TypedBatch:
        return TypedBatch(
            self.number,
            rows,
            {k: v.slice(0, rows) for k, v in self.columns.items()},
            self.stats,
            self.pages,
            self.url,
        )


def typed_records(
    records: list[Any], max_depth: int, max_columns: int | None = None
) -> tuple[int, dict[str, pa.Array], FlattenStats]:
    """Flatten records as the native path does, then type each column (see the module docstring).

    Raises :class:`~.flatten.TooManyColumns` before building a frame wider than ``max_columns``.
    """
    stats = FlattenStats()
    frame = flatten_records(records, max_depth=max_depth, stats=stats, max_columns=max_columns)
    return len(records), {str(name): typed_column(frame[name]) for name in frame.columns}, stats


def typed_batch(
    first: int, url: str, records: list[Any], pages: int, max_depth: int, max_columns: int | None
) -> TypedBatch:
    try:
        return TypedBatch(first, *typed_records(records, max_depth, max_columns), pages=pages, url=url)
    except TooManyColumns as exc:
        raise TooManyColumns(
            f"page {first}: {exc} (in the records of {pages} page(s) from {url} on)"
        ) from None


def typed_batches(
    pages: Iterator[tuple[int, str, list[Any]]],
    max_depth: int,
    batch_records: int,
    max_columns: int | None = None,
) -> Iterator[TypedBatch]:
    """Consecutive pages' records flattened and typed together, at least ``batch_records`` at a time
    (the last batch may hold fewer): flattening and writing a part file have a fixed cost that
    small pages would otherwise pay every time."""
    batch: list[Any] = []
    first, url, count = 0, "", 0
    try:
        for number, page_url, records in pages:
            if not count:
                first, url = number, page_url
            batch.extend(records)
            count += 1
            if len(batch) >= batch_records:
                yield typed_batch(first, url, batch, count, max_depth, max_columns)
                batch, first, count = [], 0, 0
        if count:
            yield typed_batch(first, url, batch, count, max_depth, max_columns)
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()


def number_text(value: float | int) -> str | None:
    """A number as text: integers exactly, integral floats without a fraction, others shortest."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) <= EXACT_INT:
        return str(int(value))
    return repr(value)


def value_text(value: Any) -> str | None:
    """Any flattened value as the text a ``string`` column holds (None stays null)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return number_text(value.item() if isinstance(value, np.generic) else value)
    if isinstance(value, (list, dict, tuple)):
        return json_text(value)
    return str(value)


def text_array(values: list[Any]) -> pa.Array:
    texts = []
    for value in values:
        kind = type(value)
        if kind is str or value is None:
            texts.append(value)
        elif kind is list or kind is dict:  # the common case of a text column: lists as JSON
            texts.append(json_text(value))
        else:
            texts.append(value_text(value))
    return pa.array(texts, type=pa.string())


def exact_in_float(values: np.ndarray) -> bool:
    return values.size == 0 or (int(values.max()) <= EXACT_INT and int(values.min()) >= -EXACT_INT)


def typed_column(column: pd.Series) -> pa.Array:
    """One page's column under the type rule: ``double``, ``bool``, ``string`` or ``null`` (no value)."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return pa.array(column.to_numpy(), type=pa.bool_())
    if pd.api.types.is_integer_dtype(dtype):
        values = column.to_numpy()
        if not exact_in_float(values):
            return text_array(values.tolist())
        return pa.array(values.astype(np.float64), type=pa.float64())
    if pd.api.types.is_float_dtype(dtype):
        return pa.array(column.to_numpy(dtype=np.float64), type=pa.float64(), from_pandas=True)
    kind = pd.api.types.infer_dtype(column, skipna=True)
    if kind == "empty":
        return pa.nulls(len(column))
    if kind == "string":
        return pa.array(column, type=pa.string(), from_pandas=True)
    if kind == "boolean":
        return pa.array(column, type=pa.bool_(), from_pandas=True)
    values = column.tolist()
    if kind in _NUMERIC_KINDS:
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if all(-EXACT_INT <= v <= EXACT_INT for v in ints):
            return pa.array(
                [None if v is None else float(v) for v in values], type=pa.float64(), from_pandas=True
            )
    return text_array(values)


def widen(known: pa.DataType, seen: pa.DataType) -> pa.DataType:
    """The type of a column known as ``known`` once a page shows it as ``seen``."""
    if known == seen or pa.types.is_null(seen):
        return known
    if pa.types.is_null(known):
        return seen
    return pa.string()


def stored_type(kind: pa.DataType) -> pa.DataType:
    return pa.string() if pa.types.is_null(kind) else kind


def conform(array: pa.Array | pa.ChunkedArray | None, kind: pa.DataType, rows: int) -> pa.Array:
    """``array`` (or nulls when absent) as the stored type of ``kind``."""
    target = stored_type(kind)
    if array is None:
        return pa.nulls(rows, type=target)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type == target:
        return array
    if array.null_count == len(array):
        return pa.nulls(rows, type=target)
    if pa.types.is_string(target):
        return text_array(array.to_pylist())
    raise AssertionError(f"cannot store {array.type} as {target}")  # widen() never asks for this


class PartWriter:
    """Write pages as part files under one growing schema; :meth:`finish` unifies the older parts."""

    def __init__(self, parts_dir: Path, max_columns: int | None = None) -> None:
        self.parts_dir = Path(parts_dir)
        self.max_columns = max_columns
        self.kinds: dict[str, pa.DataType] = {}
        self.schema = pa.schema([])
        self._version = 0
        self._parts: list[tuple[str, int]] = []

    def write(self, page: TypedBatch) -> None:
        changed = False
        for name, array in page.columns.items():
            known = self.kinds.get(name)
            kind = array.type if known is None else widen(known, array.type)
            if kind != known:
                self.kinds[name] = kind
                changed = True
        if self.max_columns is not None and len(self.kinds) > self.max_columns:
            raise TooManyColumns(
                f"page {page.number}: the pages so far have {len(self.kinds)} distinct columns, "
                f"more than processing.max_columns={self.max_columns} (from {page.url})"
            )
        if changed:
            self.schema = pa.schema([(name, stored_type(kind)) for name, kind in self.kinds.items()])
            self._version += 1
        arrays = [conform(page.columns.get(name), kind, page.rows) for name, kind in self.kinds.items()]
        name = f"part-{page.number - 1:06d}.parquet"
        self._write(name, pa.Table.from_arrays(arrays, schema=self.schema))
        self._parts.append((name, self._version))

    def _write(self, name: str, table: pa.Table) -> None:
        # a dot file is invisible to Spark and pyarrow until it is complete
        temporary = self.parts_dir / f".{name}.tmp"
        # dictionary-encode text only: numbers are mostly distinct, so a dictionary costs time and space
        text = [field.name for field in table.schema if pa.types.is_string(field.type)]
        pq.write_table(table, temporary, use_dictionary=text)
        os.replace(temporary, self.parts_dir / name)

    def finish(self) -> int:
        """Rewrite the parts written under an older schema; return how many were rewritten."""
        stale = [name for name, version in self._parts if version != self._version]
        for name in stale:
            table = pq.read_table(self.parts_dir / name)
            present = set(table.column_names)
            arrays = [
                conform(table.column(n) if n in present else None, kind, table.num_rows)
                for n, kind in self.kinds.items()
            ]
            self._write(name, pa.Table.from_arrays(arrays, schema=self.schema))
        if stale:
            log.info(
                "rewrote %d earlier part file(s) to the final schema (%d columns)",
                len(stale),
                len(self.kinds),
            )
        return len(stale)

    @property
    def columns(self) -> dict[str, str]:
        return {name: str(stored_type(kind)) for name, kind in self.kinds.items()}
