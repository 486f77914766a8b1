"""Records given as rows of arrays: where their column names are, and the rows turned into objects.

Layouts
    * Socrata ``rows.json``: ``{"meta": {"view": {"columns": [{"fieldName": ...}, ...]}}, "data": [[...]]}``.
      Socrata's hidden columns (``fieldName`` starting with ``:``, such as ``:sid``, ``:id``,
      ``:created_at``, ``:@computed_region_...``) are dropped.
    * A column list beside the data: ``{"columns": [...], "data": [[...]]}`` (also under ``fields``,
      ``meta``, ``header`` or ``headers``), the list holding names or objects with a ``fieldName``,
      ``name``, ``field`` or ``key``.
    * A header row: ``[["a", "b"], [1, 2], ...]``, the first row all strings.
    * Otherwise the columns are named by position, ``0``, ``1``...

Repeated column names follow the flattening's collision rule (``a``, ``a__dup1``): see
:func:`~anomaly_detection.ingest.flatten.unique_names`. A row whose length differs from the column
list's is an error naming its index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.flatten import unique_names

#: Sibling keys that may hold the column list of a data list of arrays.
COLUMN_KEYS = ("columns", "fields", "meta", "header", "headers")
#: Keys naming a column in a column descriptor object, in order of preference.
NAME_KEYS = ("fieldName", "name", "field", "key")
#: Rows looked at to recognise a layout.
SAMPLE = 100


@dataclass
class ColumnList:
    """The column names of a list of row arrays.

    Attributes
    ----------
    names : list of str
        The kept columns' names, made unique.
    keep : list of int
        The position in a row of each kept column.
    width : int
        The length every row must have.
    where : str
        Where the names come from: a dotted path, ``header row`` or ``positions``.
    layout : str
        ``Socrata rows.json``, ``columns + data``, ``header row`` or ``unnamed``.
    hidden : list of str
        Socrata hidden columns dropped.
    collisions : dict of str to str
        Repeated names and their first renaming.
    """

    names: list[str]
    keep: list[int]
    width: int
    where: str
    layout: str
    hidden: list[str] = field(default_factory=list)
    collisions: dict[str, str] = field(default_factory=dict)

    @property
    def skip(self) -> int:
        """Rows at the start of the list that are not data (the header row)."""
        return 1 if self.layout == "header row" else 0

    def describe(self) -> str:
        if self.layout == "header row":
            text = f"rows of arrays with {len(self.names)} columns from its header row"
        elif self.layout == "unnamed":
            return f"rows of arrays without column names ({self.width} columns named by position)"
        else:
            text = f"rows of arrays with {len(self.names)} columns from '{self.where}'"
        notes = [] if self.layout == "header row" else [self.layout]
        if self.hidden:
            notes.append(f"{len(self.hidden)} hidden ':' columns dropped")
        if self.collisions:
            notes.append(f"repeated names renamed: {', '.join(self.collisions.values())}")
        return f"{text} ({'; '.join(notes)})" if notes else text


def is_row_arrays(node: Any) -> bool:
    """A non-empty list whose first items are mostly lists and never objects (a stray item is an
    error of :func:`rows_to_records`)."""
    if not isinstance(node, list) or not node:
        return False
    sample = node[:SAMPLE]
    arrays = sum(isinstance(item, list) for item in sample)
    return arrays * 2 >= len(sample) and not any(isinstance(item, dict) for item in sample)


def _names(descriptors: Any) -> list[str] | None:
    """Column names from a list of names or of descriptor objects; None if it is neither."""
    if not isinstance(descriptors, list) or not descriptors:
        return None
    names: list[str] = []
    for item in descriptors:
        if isinstance(item, str):
            names.append(item)
            continue
        if not isinstance(item, dict):
            return None
        name = next((item[k] for k in NAME_KEYS if isinstance(item.get(k), str)), None)
        if name is None:
            return None
        names.append(name)
    return names


def _column_list(names: list[str], where: str, layout: str) -> ColumnList:
    keep = [i for i, name in enumerate(names) if not (layout == "Socrata rows.json" and name.startswith(":"))]
    hidden = [names[i] for i in range(len(names)) if i not in set(keep)]
    unique, collisions = unique_names([names[i] for i in keep])
    return ColumnList(unique, keep, len(names), where, layout, hidden, collisions)


def columns_beside(parent: Any, key: str, parent_path: str = "") -> ColumnList | None:
    """The column list of the row arrays at ``parent[key]``, found beside them in ``parent``."""
    if not isinstance(parent, dict):
        return None
    prefix = f"{parent_path}." if parent_path else ""
    view = parent.get("meta", {}).get("view") if isinstance(parent.get("meta"), dict) else None
    if isinstance(view, dict):
        names = _names(view.get("columns"))
        if names is not None:
            return _column_list(names, f"{prefix}meta.view.columns", "Socrata rows.json")
    for sibling in COLUMN_KEYS:
        if sibling != key:
            names = _names(parent.get(sibling))
            if names is not None:
                return _column_list(names, prefix + sibling, "columns + data")
    return None


def header_row(rows: list[Any]) -> ColumnList | None:
    """The column list of ``rows`` when their first row is a header: all strings, with value rows
    after it that hold a non-string, or that never repeat a header name in its column."""
    if len(rows) < 2 or not rows[0] or not all(isinstance(name, str) for name in rows[0]):
        return None
    header, sample = rows[0], [row for row in rows[1:SAMPLE] if isinstance(row, list)]
    typed = any(not isinstance(value, str) for row in sample for value in row)
    repeated = any(i < len(row) and row[i] == name for row in sample for i, name in enumerate(header))
    if not typed and repeated:
        return None
    return _column_list(list(header), "header row", "header row")


def unnamed(rows: list[Any]) -> ColumnList:
    """Columns named by position, as wide as the first row."""
    width = len(rows[0]) if rows and isinstance(rows[0], list) else 0
    return ColumnList([str(i) for i in range(width)], list(range(width)), width, "positions", "unnamed")


def row_columns(rows: list[Any], parent: Any, key: str, parent_path: str = "") -> ColumnList:
    """The column list of the row arrays ``rows`` (at ``parent[key]``): beside them, their header
    row, else positions."""
    return columns_beside(parent, key, parent_path) or header_row(rows) or unnamed(rows)


def rows_to_records(rows: list[Any], columns: ColumnList, *, path: str, source: str) -> list[dict[str, Any]]:
    """Each row array as an object of the kept columns.

    Raises
    ------
    IngestionError
        A row is not an array, or its length is not the column list's: the message names the
        row's index in the list at ``path``, both lengths and ``source``.
    """
    names, keep, width = columns.names, columns.keep, columns.width
    whole = len(keep) == width
    records: list[dict[str, Any]] = []
    for index in range(columns.skip, len(rows)):
        row = rows[index]
        if not isinstance(row, list) or len(row) != width:
            what = (
                f"has {len(row)} values"
                if isinstance(row, list)
                else f"is a {type(row).__name__}, not an array"
            )
            counted = " (the header row is item 0)" if columns.skip else ""
            expected = (
                "the first row has"
                if columns.layout == "unnamed"
                else f"the column list '{columns.where}' has"
            )
            raise IngestionError(
                f"row {index} of '{path}'{counted} in the response from {source} {what}, but "
                f"{expected} {width} columns"
            )
        records.append(dict(zip(names, row)) if whole else dict(zip(names, [row[i] for i in keep])))
    return records
