"""Find the records in a parsed payload, whatever their JSON shape.

Shapes
    * a list of objects (a GeoJSON FeatureCollection's ``features`` among them);
    * rows of arrays with a column list: Socrata ``rows.json`` (``meta.view.columns`` + ``data``),
      ``{"columns": [...], "data": [[...]]}``, or a header row of strings followed by value rows
      (see :mod:`.tables`; rows of arrays without any column list get positional names);
    * a column layout: a dict of parallel arrays, like Open-Meteo's ``hourly``, zipped into rows.

With ``records_path`` the dotted path is followed (digits index lists, so ``1`` picks the data of a
``[meta, data]`` response); rows of arrays there still get their column list from beside them.
Without it a top-level list of objects is used as is; otherwise every candidate in the payload is
scored by rows x fields and the largest wins, where a column list that names another candidate's
rows (Socrata's ``meta.view.columns``) is never a candidate: it is metadata, not data.
:func:`find_records` says which path and shape were chosen, and why.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.flatten import SCALAR_TYPES
from anomaly_detection.ingest.tables import (
    ColumnList,
    columns_beside,
    is_row_arrays,
    row_columns,
    rows_to_records,
)

#: Objects whose keys are counted to estimate a list of objects' fields.
FIELD_SAMPLE = 20
MAX_DEPTH = 8


@dataclass
class Found:
    """The records of a payload and how they were found.

    Attributes
    ----------
    records : list
        The records (objects, or scalars for a list of scalars).
    path : str
        The dotted path of the records, ``<root>`` for the payload itself.
    shape : str
        Which path and shape were chosen and why (short: stored in ``ingest.json``).
    others : list of str
        The other candidates, largest first, and the column lists set aside as metadata.
    collisions : dict of str to str
        Repeated column names of a column list and their first renaming.
    """

    records: list[Any]
    path: str
    shape: str
    others: list[str] = field(default_factory=list)
    collisions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """The log line: the shape and the other candidates."""
        others = f"; other candidates: {', '.join(self.others[:4])}" if self.others else ""
        more = f" and {len(self.others) - 4} more" if len(self.others) > 4 else ""
        return f"records: {self.shape}{others}{more}"


@dataclass
class Candidate:
    """A place in the payload that may hold the records."""

    path: str
    node: Any
    kind: str  # objects | layout | arrays
    rows: int
    fields: int
    columns: ColumnList | None = None
    geojson: bool = False

    @property
    def score(self) -> int:
        return self.rows * max(self.fields, 1)

    def describe(self) -> str:
        if self.kind == "layout":
            return f"a column layout ({self.fields} parallel arrays)"
        if self.kind == "arrays":
            assert self.columns is not None
            return self.columns.describe()
        return "a list of objects (GeoJSON FeatureCollection)" if self.geojson else "a list of objects"

    def brief(self) -> str:
        kind = {"layout": "column layout", "arrays": "rows of arrays"}.get(self.kind, "objects")
        return f"'{self.path or '<root>'}' ({kind}) {self.rows:,} × {self.fields:,}"


def _is_parallel_arrays(obj: Any) -> bool:
    """A column layout: a dict whose values are all non-empty lists of one length, holding no objects.

    A dict of lists of objects (``{"items": [{...}, ...]}``) is a container of record lists, not
    columns; nor is a dict holding rows of arrays with their column list, or only rows of arrays.
    """
    if not isinstance(obj, dict) or not obj:
        return False
    length = -1
    for value in obj.values():
        if not isinstance(value, list) or not value:
            return False
        if length < 0:
            length = len(value)
        elif len(value) != length:
            return False
    if any(isinstance(item, dict) for value in obj.values() for item in value[:100]):
        return False
    if len(obj) == 1:
        return not is_row_arrays(next(iter(obj.values())))
    return not any(is_row_arrays(v) and columns_beside(obj, k) is not None for k, v in obj.items())


def _zip_columns(obj: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(obj)
    return [dict(zip(keys, row)) for row in zip(*obj.values())]


def _leaf_fields(items: list[Any]) -> int:
    """The distinct flattened field names of the first objects of ``items`` (an estimate of its width)."""
    names: set[str] = set()
    budget = 100_000
    for item in items[:FIELD_SAMPLE]:
        if not isinstance(item, dict):
            continue
        stack: list[tuple[str, dict[str, Any], int]] = [("", item, 0)]
        while stack and budget > 0:
            prefix, obj, depth = stack.pop()
            for key, value in obj.items():
                budget -= 1
                if isinstance(value, dict) and value and depth < MAX_DEPTH:
                    stack.append((f"{prefix}{key}.", value, depth + 1))
                else:
                    names.add(f"{prefix}{key}")
    return len(names)


def _walk(payload: Any, path: str, *, source: str) -> Any:
    node = payload
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise IngestionError(
                    f"records_path '{path}': '{part}' is not an index of the list at "
                    f"'{'.'.join(walked) or '<root>'}' (length {len(node)}) in the response from {source}"
                )
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                keys = ", ".join(list(map(str, node))[:20])
                raise IngestionError(
                    f"records_path '{path}': key '{part}' not found at '{'.'.join(walked) or '<root>'}' "
                    f"in the response from {source}; keys there: {keys}"
                )
            node = node[part]
        else:
            raise IngestionError(
                f"records_path '{path}': '{'.'.join(walked) or '<root>'}' is a {type(node).__name__}, "
                "not an object or list, "
                f"in the response from {source}"
            )
        walked.append(part)
    return node


def _arrays(path: str, rows: list[Any], parent: Any, key: str) -> Candidate:
    parent_path = path.rpartition(".")[0]
    columns = row_columns(rows, parent, key, parent_path)
    return Candidate(path, rows, "arrays", len(rows) - columns.skip, len(columns.names), columns)


def candidates(payload: Any) -> tuple[list[Candidate], dict[str, str]]:
    """Breadth-first search for every place that may hold the records.

    Returns the candidates in the order found and the column lists that name another
    candidate's rows (``{column list path: rows path}``). A list of objects is not searched for
    its objects' inner lists, but its items that are lists are (so the data list of a
    ``[meta, data]`` response is found); rows of arrays and column layouts are not searched.
    """
    found: list[Candidate] = []
    claimed: dict[str, str] = {}
    queue: deque[tuple[str, Any, int, Any, str]] = deque([("", payload, 0, None, "")])
    while queue:
        path, node, depth, parent, key = queue.popleft()
        if depth > MAX_DEPTH:
            continue
        if isinstance(node, list):
            if is_row_arrays(node):
                candidate = _arrays(path, node, parent, key)
                found.append(candidate)
                assert candidate.columns is not None
                if candidate.columns.layout not in ("header row", "unnamed"):
                    claimed[candidate.columns.where] = path or "<root>"
                continue
            objects = sum(1 for item in node[:1000] if isinstance(item, dict))
            qualifies = bool(node) and objects >= 0.5 * min(len(node), 1000)
            if qualifies:
                geojson = (
                    key == "features"
                    and isinstance(parent, dict)
                    and parent.get("type") == "FeatureCollection"
                )
                rows = objects if len(node) <= 1000 else round(len(node) * objects / 1000)
                found.append(Candidate(path, node, "objects", rows, _leaf_fields(node), geojson=geojson))
            for i, item in enumerate(node[:50]):
                if isinstance(item, list) or (isinstance(item, dict) and not qualifies):
                    queue.append((f"{path}.{i}" if path else str(i), item, depth + 1, node, str(i)))
        elif isinstance(node, dict):
            if _is_parallel_arrays(node):
                found.append(Candidate(path, node, "layout", len(next(iter(node.values()))), len(node)))
                continue
            for name, value in node.items():
                if isinstance(value, (list, dict)):
                    queue.append((f"{path}.{name}" if path else str(name), value, depth + 1, node, str(name)))
    return found, claimed


def _records(candidate: Candidate, *, source: str) -> list[Any]:
    if candidate.kind == "layout":
        return _zip_columns(candidate.node)
    if candidate.kind == "arrays":
        assert candidate.columns is not None
        return rows_to_records(
            candidate.node, candidate.columns, path=candidate.path or "<root>", source=source
        )
    return candidate.node


def _found(candidate: Candidate, reason: str, others: list[str], *, source: str) -> Found:
    records = _records(candidate, source=source)
    path = candidate.path or "<root>"
    shape = (
        f"'{path}' as {candidate.describe()}, {len(records):,} rows × {candidate.fields:,} fields ({reason})"
    )
    collisions = candidate.columns.collisions if candidate.columns is not None else {}
    return Found(records, path, shape, others, dict(collisions))


def _at_path(payload: Any, records_path: str, *, source: str) -> Found:
    node = _walk(payload, records_path, source=source)
    reason = "source.records_path"
    parent_path, _, key = records_path.rpartition(".")
    if is_row_arrays(node):
        parent = _walk(payload, parent_path, source=source) if parent_path else payload
        return _found(_arrays(records_path, node, parent, key), reason, [], source=source)
    if _is_parallel_arrays(node):
        return _found(
            Candidate(records_path, node, "layout", len(next(iter(node.values()))), len(node)),
            reason,
            [],
            source=source,
        )
    if isinstance(node, dict):
        return Found([node], records_path, f"'{records_path}' as one object, 1 row ({reason})")
    if not isinstance(node, list):
        raise IngestionError(
            f"records_path '{records_path}' in the response from {source} points to a "
            f"{type(node).__name__}, not a list of records"
        )
    if node and not any(isinstance(item, dict) for item in node[:1000]):
        return Found(node, records_path, f"'{records_path}' as a list of {len(node):,} scalars ({reason})")
    return _found(
        Candidate(records_path, node, "objects", len(node), _leaf_fields(node)), reason, [], source=source
    )


def find_records(payload: Any, records_path: str | None, *, source: str) -> Found:
    """The records of ``payload``: at ``records_path`` when it is given, else detected (see the module docstring).

    Raises
    ------
    IngestionError
        ``records_path`` does not lead to records, no records were found, or a row array's length
        differs from its column list's; the message names the path, the row and ``source``.
    """
    if records_path:
        return _at_path(payload, records_path, source=source)
    if isinstance(payload, list) and (not payload or all(isinstance(x, dict) for x in payload[:1000])):
        candidate = Candidate("", payload, "objects", len(payload), _leaf_fields(payload))
        return _found(candidate, "the response is a list of objects", [], source=source)
    found, claimed = candidates(payload)
    data = [c for c in found if (c.path or "<root>") not in claimed]
    if not data:
        if isinstance(payload, list) and payload and all(isinstance(x, SCALAR_TYPES) for x in payload[:1000]):
            return Found(
                payload, "<root>", f"'<root>' as a list of {len(payload):,} scalars (no records found)"
            )
        shape = (
            f"an object with keys {', '.join(list(map(str, payload))[:20])}"
            if isinstance(payload, dict)
            else f"a {type(payload).__name__}"
        )
        raise IngestionError(
            f"no list of records found in the response from {source}: it is {shape}; "
            "set source.records_path to the list that holds the records"
        )
    best = max(data, key=lambda c: c.score)
    ranked = sorted((c for c in data if c is not best), key=lambda c: -c.score)
    others = [f"'{where}' (the column list of '{rows}', not data)" for where, rows in claimed.items()]
    others += [c.brief() for c in ranked]
    reason = (
        f"the largest of {len(data)} candidates by rows × fields" if len(data) > 1 else "the only candidate"
    )
    return _found(best, reason, others, source=source)


def extract_records(payload: Any, records_path: str | None, *, source: str) -> tuple[list[Any], str]:
    """``(records, path_used)`` of :func:`find_records`."""
    found = find_records(payload, records_path, source=source)
    return found.records, found.path
