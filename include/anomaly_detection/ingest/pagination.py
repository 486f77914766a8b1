"""Pagination: the pages of a source one after another (offset, page, next URL in the body, Link
header, cursor, none), the URLs of computed pagination planned ahead, and a background prefetch.

Pagination stops at an empty or short page, a page identical to the one before it (an API that
ignores the paging parameters), a next link already fetched (a loop), ``max_pages`` or
``max_records``. Cursor pagination (``cursor_path`` in the body, sent back as ``cursor_param``)
stops at a missing or null cursor, and with a warning at an empty one or one already sent (a loop).
The warnings of a pagination that stopped early are logged and collected in :class:`PagingNotes`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import requests

from anomaly_detection.config import SourceConfig
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.http import with_params
from anomaly_detection.ingest.reader import ApiReader, Fetched
from anomaly_detection.ingest.records import find_records

log = logging.getLogger(__name__)

#: Characters of a cursor quoted in a warning.
CURSOR_QUOTE = 80


@dataclass
class PagingNotes:
    """What reading the pages found besides the records.

    Attributes
    ----------
    path : str
        Where the first page's records were (``<root>`` for the body itself).
    shape : str
        Which path and shape the first page's records had, and why (see
        :func:`~anomaly_detection.ingest.records.find_records`).
    collisions : dict of str to str
        Repeated column names of a column list and their first renaming.
    warnings : list of str
        Why the pagination stopped early, when it did (also logged as warnings).
    """

    path: str = ""
    shape: str = ""
    collisions: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        log.warning("%s", text)
        self.warnings.append(text)


def body_value(payload: Any, path: str) -> Any:
    """The value at the dotted ``path`` of ``payload``; None when a key is missing."""
    node = payload
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def next_in_body(payload: Any, path: str) -> str | None:
    node = body_value(payload, path)
    return node if isinstance(node, str) and node else None


def read_records(
    reader: ApiReader,
    url: str,
    fetched: Fetched,
    records_path: str | None,
    notes: PagingNotes | None = None,
) -> tuple[list[Any], str]:
    """Find the records in a parsed page: ``(records, path_used)``.

    The record count (or, on failure, that the page could not be read) goes to the manifest; an
    error names the URL and the saved raw file. The first page's shape (or a later page's that
    differs) is logged and kept in ``notes``.
    """
    try:
        found = find_records(fetched.payload, records_path, source=reader.safe_url(url))
    except IngestionError as exc:
        reader.snapshot.settle(fetched.record, None)
        raise IngestionError(
            f"{reader.scrub(str(exc))} (raw response saved to {reader.raw_dir / fetched.record.file})"
        ) from None
    reader.snapshot.settle(fetched.record, len(found.records))
    if notes is None or not notes.shape or found.path != notes.path:
        log.info("page %d %s", fetched.record.page, found.summary())
    if notes is not None:
        if not notes.shape:
            notes.path, notes.shape = found.path, found.shape
        for name, renamed in found.collisions.items():
            notes.collisions.setdefault(name, renamed)
    return found.records, found.path


def next_cursor(payload: Any, path: str, page: int, sent: set[str], notes: PagingNotes) -> str | None:
    """The cursor of the page after ``page`` at ``path`` in its body, or None to stop.

    A missing or null cursor ends the pagination; an empty one, one of another type or one
    already ``sent`` (a loop) ends it with a warning naming the cursor and the page.
    """
    value = body_value(payload, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problem = f"is a {type(value).__name__}, not a text or number"
    elif str(value) == "":
        problem = "is empty"
    elif str(value) in sent:
        problem = "was already sent (a loop of cursors)"
    else:
        return str(value)
    quoted = repr(value)[:CURSOR_QUOTE]
    notes.warn(f"stopping pagination: the cursor {quoted} at '{path}' of page {page} {problem}")
    return None


def next_link(
    kind: str, next_url_path: str, url: str, payload: Any, response: requests.Response
) -> str | None:
    """The absolute URL of the next page for ``next_url`` / ``link_header`` pagination, else None."""
    if kind == "next_url":
        nxt = next_in_body(payload, next_url_path)
    elif kind == "link_header":
        nxt = response.links.get("next", {}).get("url")
    else:
        return None
    return urljoin(url, nxt) if nxt else None


def iter_pages(
    reader: ApiReader, source: SourceConfig, notes: PagingNotes | None = None
) -> Iterator[tuple[int, str, Any, list[Any], str]]:
    """Yield ``(page, url, payload, records, records_path)`` until the pagination says stop.

    ``notes`` gets the records' shape and the warnings of a pagination that stopped early.
    """
    notes = notes if notes is not None else PagingNotes()
    pagination = source.pagination
    base_url = with_params(source.url, dict(source.params))
    seen: set[str] = set()
    cursors: set[str] = set()
    previous_digest = b""
    fetched = 0
    url: str | None = base_url
    page_index = 0
    while url is not None and page_index < pagination.max_pages:
        if pagination.type == "offset":
            url = with_params(
                base_url, {pagination.offset_param: fetched, pagination.limit_param: pagination.page_size}
            )
        elif pagination.type == "page":
            url = with_params(
                base_url,
                {
                    pagination.page_param: pagination.start_page + page_index,
                    pagination.limit_param: pagination.page_size,
                },
            )
        if url in seen:
            notes.warn(
                f"stopping pagination: {reader.safe_url(url)} was already fetched (a loop of next links)"
            )
            return
        seen.add(url)
        page_index += 1
        got = reader.get(url, page_index)
        digest = hashlib.sha256(got.body).digest()
        if page_index > 1 and digest == previous_digest:
            reader.snapshot.settle(got.record, None)
            notes.warn(
                f"stopping pagination: page {page_index} from {reader.safe_url(url)} is identical to "
                "the page before it (the API seems to ignore the paging parameters)"
            )
            return
        previous_digest = digest
        records, path = read_records(reader, url, got, source.records_path, notes)
        response, payload = got.response, got.payload
        del got
        log.info("page %d: %d records from %s", page_index, len(records), reader.safe_url(url))
        yield page_index, url, payload, records, path
        fetched += len(records)
        if not records:
            return
        if source.max_records is not None and fetched >= source.max_records:
            return
        if pagination.type in ("offset", "page"):
            if len(records) < pagination.page_size:
                return
        elif pagination.type == "cursor":
            cursor = next_cursor(payload, pagination.cursor_path, page_index, cursors, notes)
            if cursor is None:
                return
            cursors.add(cursor)
            url = with_params(base_url, {pagination.cursor_param: cursor})
        else:
            url = next_link(pagination.type, pagination.next_url_path, url, payload, response)
    if url is not None and page_index >= pagination.max_pages:
        notes.warn(f"stopping pagination at max_pages={pagination.max_pages}")


def planned_urls(source: SourceConfig) -> Iterator[tuple[int, str]]:
    """``(page number, URL)`` of every page offset/page pagination may need, within the limits."""
    pagination = source.pagination
    base = with_params(source.url, dict(source.params))
    count = pagination.max_pages
    if source.max_records is not None:
        count = min(count, math.ceil(source.max_records / pagination.page_size))
    for index in range(count):
        if pagination.type == "offset":
            where = {pagination.offset_param: index * pagination.page_size}
        else:
            where = {pagination.page_param: pagination.start_page + index}
        yield index + 1, with_params(base, {**where, pagination.limit_param: pagination.page_size})


def prefetch(items: Iterator[Any], *, depth: int = 2) -> Iterator[Any]:
    """Run ``items`` in a background thread, ``depth`` items ahead of the consumer.

    Fetching and parsing the next page overlaps with flattening the current one. An exception in
    the producer is re-raised in the consumer; closing the consumer stops the producer.
    """
    import queue

    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((True, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put((False, exc))

    worker = threading.Thread(target=produce, name="ingest-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=30)
