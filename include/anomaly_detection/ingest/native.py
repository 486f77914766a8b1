"""The native path's ingestion: every page of a source read, flattened and typed into one pandas frame.

Fetching, retries and the raw snapshot are :class:`~anomaly_detection.ingest.reader.ApiReader`'s; the
pages come from :func:`~anomaly_detection.ingest.pagination.iter_pages`, prefetched in a background
thread so that fetching the next page overlaps with flattening this one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from anomaly_detection.config import ProcessingConfig, SourceConfig
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.auth import CredentialResolver, env_credentials
from anomaly_detection.ingest.flatten import (
    ColumnNotes,
    FlattenStats,
    TooManyColumns,
    finalize_frame,
    flatten_records,
)
from anomaly_detection.ingest.pagination import PagingNotes, iter_pages, prefetch
from anomaly_detection.ingest.reader import ApiReader
from anomaly_detection.ingest.snapshot import PageRecord

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    frame: pd.DataFrame
    pages: list[PageRecord]
    raw_dir: Path
    records_path: str
    stats: FlattenStats
    notes: ColumnNotes
    truncated: bool = False
    secrets: list[str] = field(default_factory=list, repr=False)
    #: Which path and shape the records had, and why (:func:`~anomaly_detection.ingest.records.find_records`).
    records_shape: str = ""
    #: Why the pagination stopped early, when it did.
    warnings: list[str] = field(default_factory=list)

    @property
    def record_count(self) -> int:
        return len(self.frame)


def _flatten_page(
    reader: ApiReader,
    page: int,
    url: str,
    records: list[Any],
    processing: ProcessingConfig,
    stats: FlattenStats,
    columns: dict[str, None],
) -> pd.DataFrame:
    """Flatten one page's records; ``columns`` (the pages' columns so far) must stay within ``processing.max_columns``."""
    limit = processing.max_columns
    try:
        frame = flatten_records(records, max_depth=processing.max_depth, stats=stats, max_columns=limit)
        columns.update(dict.fromkeys(map(str, frame.columns)))
        if len(columns) > limit:
            raise TooManyColumns(
                f"the pages so far have {len(columns)} distinct columns, more than processing.max_columns={limit}"
            )
    except TooManyColumns as exc:
        raise IngestionError(f"page {page} from {reader.safe_url(url)}: {exc}") from None
    return frame


def ingest(
    source: SourceConfig,
    processing: ProcessingConfig,
    raw_dir: Path,
    *,
    credentials: CredentialResolver = env_credentials,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    memory_guard: Callable[[pd.DataFrame], None] | None = None,
) -> IngestResult:
    """Fetch every page, flatten the records and return one typed frame.

    Raises
    ------
    IngestionError
        A page could not be fetched or read after its retries, is over ``source.max_response_bytes``,
        its records would flatten to more than ``processing.max_columns`` columns, or there were no
        records. The message names the URL and the cause; every page fetched so far stays in
        ``raw_dir`` and its ``manifest.json``.
    """
    reader = ApiReader(source, raw_dir, credentials=credentials, session=session, sleep=sleep)
    stats = FlattenStats()
    chunks: list[pd.DataFrame] = []
    columns: dict[str, None] = {}
    total = 0
    path_used = "<root>"
    truncated = False
    paging = PagingNotes()
    for page, url, _, records, path_used in prefetch(iter_pages(reader, source, paging)):
        if source.max_records is not None and total + len(records) > source.max_records:
            records = records[: source.max_records - total]
            truncated = True
        if records:
            chunks.append(_flatten_page(reader, page, url, records, processing, stats, columns))
            if memory_guard is not None:  # sees each page's frame; raises to stop past the memory budget
                memory_guard(chunks[-1])
        total += len(records)
    if total == 0:
        raise IngestionError(
            f"the API returned no records ({len(reader.pages)} page(s) from {reader.safe_url(source.url)}; "
            f"raw responses in {raw_dir})"
        )
    frame = pd.concat(chunks, ignore_index=True, sort=False) if len(chunks) > 1 else chunks[0]
    frame, notes = finalize_frame(frame, max_list_length=processing.max_list_length)
    for original, renamed in paging.collisions.items():
        stats.collisions.setdefault(original, renamed)
    for original, renamed in stats.collisions.items():
        log.warning("key %r appears twice after flattening; the second is kept as %r", original, renamed)
    for path in sorted(stats.truncated_paths)[:20]:
        log.warning("%r is nested deeper than max_depth=%d; kept as JSON text", path, processing.max_depth)
    if stats.scalar_records:
        log.info("%d records were scalars, kept in a 'value' column", stats.scalar_records)
    for wanted, renamed in notes.renamed.items():
        log.warning("column %r already exists; the expanded list item is kept as %r", wanted, renamed)
    if notes.expanded_lists:
        log.info("short fixed lists expanded to indexed columns: %s", ", ".join(notes.expanded_lists))
    if notes.json_lists:
        log.info("long or ragged lists kept as JSON text: %s", ", ".join(notes.json_lists))
    if notes.numeric_from_text:
        log.info("numeric text converted to numbers: %s", ", ".join(notes.numeric_from_text))
    if notes.datetimes:
        log.info("ISO timestamps converted to datetimes: %s", ", ".join(notes.datetimes))
    log.info(
        "ingested %d records x %d columns from %d page(s) (records at %s)",
        len(frame),
        frame.shape[1],
        len(reader.pages),
        path_used,
    )
    return IngestResult(
        frame=frame,
        pages=reader.pages,
        raw_dir=Path(raw_dir),
        records_path=path_used,
        stats=stats,
        notes=notes,
        truncated=truncated,
        secrets=reader.secrets,
        records_shape=paging.shape,
        warnings=list(paging.warnings),
    )
