"""Pagination: the pages of a source one after another (offset, page, next URL in the body, Link
header, none), the URLs of computed pagination planned ahead, and a background prefetch.

Pagination stops at an empty or short page, a page identical to the one before it (an API that
ignores the paging parameters), a next link already fetched (a loop), ``max_pages`` or
``max_records``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import requests

from anomaly_detection.config import SourceConfig
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.http import with_params
from anomaly_detection.ingest.reader import ApiReader, Fetched
from anomaly_detection.ingest.records import extract_records

log = logging.getLogger(__name__)


def next_in_body(payload: Any, path: str) -> str | None:
    node = payload
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node if isinstance(node, str) and node else None


def read_records(
    reader: ApiReader, url: str, fetched: Fetched, records_path: str | None
) -> tuple[list[Any], str]:
    """Find the records in a parsed page: ``(records, path_used)``.

    The record count (or, on failure, that the page could not be read) goes to the manifest; an
    error names the URL and the saved raw file.
    """
    try:
        records, path = extract_records(fetched.payload, records_path, source=reader.safe_url(url))
    except IngestionError as exc:
        reader.snapshot.settle(fetched.record, None)
        raise IngestionError(
            f"{reader.scrub(str(exc))} (raw response saved to {reader.raw_dir / fetched.record.file})"
        ) from None
    reader.snapshot.settle(fetched.record, len(records))
    return records, path


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


def iter_pages(reader: ApiReader, source: SourceConfig) -> Iterator[tuple[int, str, Any, list[Any], str]]:
    """Yield ``(page, url, payload, records, records_path)`` until the pagination says stop."""
    pagination = source.pagination
    base_url = with_params(source.url, dict(source.params))
    seen: set[str] = set()
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
            log.warning(
                "stopping pagination: %s was already fetched (a loop of next links)", reader.safe_url(url)
            )
            return
        seen.add(url)
        page_index += 1
        got = reader.get(url, page_index)
        digest = hashlib.sha256(got.body).digest()
        if page_index > 1 and digest == previous_digest:
            reader.snapshot.settle(got.record, None)
            log.warning(
                "stopping pagination: page %d from %s is identical to the page before it "
                "(the API seems to ignore the paging parameters)",
                page_index,
                reader.safe_url(url),
            )
            return
        previous_digest = digest
        records, path = read_records(reader, url, got, source.records_path)
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
        else:
            url = next_link(pagination.type, pagination.next_url_path, url, payload, response)
    if url is not None and page_index >= pagination.max_pages:
        log.warning("stopping pagination at max_pages=%d", pagination.max_pages)


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
