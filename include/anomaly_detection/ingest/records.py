"""Find the list of records in a parsed payload: at ``records_path`` when it is given, else the
largest list of records found (a dict of parallel arrays counts as a column layout)."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.flatten import SCALAR_TYPES

log = logging.getLogger(__name__)


def _is_parallel_arrays(obj: Any) -> bool:
    """A column layout: a dict whose values are all non-empty lists of one length, holding no objects.

    A dict of lists of objects (``{"items": [{...}, ...]}``) is a container of record lists, not columns.
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
    return not any(isinstance(item, dict) for value in obj.values() for item in value[:100])


def _zip_columns(obj: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(obj)
    return [dict(zip(keys, row)) for row in zip(*obj.values())]


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


def _largest_record_list(payload: Any) -> tuple[str, list[Any]] | None:
    """Breadth-first search for the longest list of objects (or of parallel-array dicts).

    A list that qualifies is not searched for objects' inner lists, but its items that are
    themselves lists are (so the data list of a ``[meta, data]`` response beats the outer pair).
    """
    best: tuple[str, list[Any]] | None = None
    queue: deque[tuple[str, Any, int]] = deque([("", payload, 0)])
    while queue:
        path, node, depth = queue.popleft()
        if depth > 8:
            continue
        if isinstance(node, list):
            objects = sum(1 for item in node[:1000] if isinstance(item, dict))
            qualifies = bool(node) and objects >= 0.5 * min(len(node), 1000)
            if qualifies and (best is None or len(node) > len(best[1])):
                best = (path, node)
            for i, item in enumerate(node[:50]):
                if isinstance(item, list) or (isinstance(item, dict) and not qualifies):
                    queue.append((f"{path}.{i}" if path else str(i), item, depth + 1))
        elif isinstance(node, dict):
            if _is_parallel_arrays(node):
                rows = _zip_columns(node)
                if best is None or len(rows) > len(best[1]):
                    best = (path, rows)
                continue
            for key, value in node.items():
                if isinstance(value, (list, dict)):
                    queue.append((f"{path}.{key}" if path else str(key), value, depth + 1))
    return best


def extract_records(payload: Any, records_path: str | None, *, source: str) -> tuple[list[Any], str]:
    """Return ``(records, path_used)``.

    With ``records_path`` the dotted path is followed (digits index lists, so ``1`` picks the data of
    a ``[meta, data]`` response). Without it, a top-level list of objects is used as is, else the
    largest list of objects anywhere in the payload. A dict of equal-length arrays (column layout)
    is zipped into rows.
    """
    if records_path:
        node = _walk(payload, records_path, source=source)
        path = records_path
    elif isinstance(payload, list) and (not payload or all(isinstance(x, dict) for x in payload[:1000])):
        node, path = payload, "<root>"
    else:
        found = _largest_record_list(payload)
        if found is None:
            if (
                isinstance(payload, list)
                and payload
                and all(isinstance(x, SCALAR_TYPES) for x in payload[:1000])
            ):
                node, path = payload, "<root>"
            else:
                shape = (
                    f"an object with keys {', '.join(list(map(str, payload))[:20])}"
                    if isinstance(payload, dict)
                    else f"a {type(payload).__name__}"
                )
                raise IngestionError(
                    f"no list of records found in the response from {source}: it is {shape}; "
                    "set source.records_path to the list that holds the records"
                )
        else:
            path, node = found
            path = path or "<root>"
    if _is_parallel_arrays(node):
        node = _zip_columns(node)
    if isinstance(node, dict):
        node = [node]
    if not isinstance(node, list):
        raise IngestionError(
            f"records_path '{records_path}' in the response from {source} points to a "
            f"{type(node).__name__}, not a list of records"
        )
    return node, path
