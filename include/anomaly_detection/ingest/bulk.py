"""Stream a paged REST API into Parquet part files, fetching pages concurrently (the Spark path).

:func:`ingest_to_parquet` reads every page of ``source`` and writes Parquet part files in page order,
``parts_dir/part-NNNNNN.parquet`` named after the first page they hold (``NNNNNN`` = page - 1): one
per ``batch_records`` records (10,000 by default, consecutive pages together) so that
``spark.read.parquet(parts_dir)`` and ``pandas.read_parquet(parts_dir)`` read the records as one
table. Fetching, retries, auth and secret masking are those of :class:`~.ingest.ApiReader`; each
page is flattened by :func:`~.flatten.flatten_records`, the native path's flattening.

Pagination
    ``offset`` and ``page`` pagination have URLs that can be computed ahead: ``source.concurrency``
    threads fetch (and save) a window of up to ``2 x concurrency`` pages ahead of the page being
    flattened and written, which happens in page order. Ingestion stops at the first empty or short page (or at a page
    identical to the one before it: an API that ignores the paging parameters), so at most one
    window of requests goes past the end. ``max_pages`` and ``max_records`` bound the plan itself.
    ``next_url``, ``link_header`` and ``none`` are sequential by nature: one page at a time, with
    the next page fetched (and flattened) while the current one is written.

Order
    Part file names sort in page order and each part keeps its page's record order, so sorting by
    (file name, row index in the file) restores the API's order.

Memory
    At most ``2 x concurrency`` pages ahead plus one batch of about ``batch_records`` records (two
    batches when sequential) are held at any time, whatever the record count; the manifest is
    appended to, not kept.

Throughput
    The threads overlap network waits, gzip and Parquet encoding, which release the GIL. JSON
    parsing and flattening (the native path's code, about half the CPU) hold it, so one core's
    worth of work is the ceiling. Flattening and writing have a fixed cost per call, so consecutive
    pages are flattened and written together, ``batch_records`` at a time: 25,000 demo records/s
    (1,000-record pages, concurrency 4, 182 MiB peak RSS) against 18,000 page by page on this
    2-core machine (``bench/ingest_scale.py``).

Politeness
    ``source.max_requests_per_second`` spaces all requests (retries included) evenly over all
    threads: at most that many start in any one second.

Column types (the same in every part)
    * JSON numbers -> ``double`` (float64). Integers beyond +-2**53, which a double cannot hold
      exactly, make the column text instead (their exact digits).
    * JSON booleans -> ``bool``.
    * Everything else -> ``string``: strings as they are (ISO timestamps and numeric text are not
      converted: that is the reader's choice), lists as compact JSON text (never expanded to
      indexed columns: whether a list is short and fixed is only known once every page is read),
      objects nested deeper than ``processing.max_depth`` as JSON text.
    * A page without a column, or with nulls only, has nulls there. A column that is null in
      every page is ``string``.
    * Drift: a column whose values have different kinds (numbers in one page and text in the
      next, or booleans and numbers) becomes ``string`` everywhere. Numbers then read as their
      shortest text, integral values without a fraction (``1.0`` -> ``"1"``), booleans as
      ``"true"`` / ``"false"``.
    * Columns are ordered by first appearance. Parts are written with the schema known so far;
      once every page is in, the parts written before a column appeared or widened are rewritten
      one at a time to the final schema, so all parts share one schema (Spark needs no
      ``mergeSchema`` and pandas sees every column).
    * NaN becomes null; +-Infinity stays.

Raw snapshot
    Every response body is saved gzip-compressed to ``raw_dir/page-000001.json.gz`` (the suffix
    follows the content type, like :mod:`.ingest`) before it is parsed, failed attempts' last body
    included, each through a temporary name and a rename (a killed process leaves no half file
    under a final name). ``raw_dir/manifest.jsonl`` gets one JSON line per saved page once it has
    been read, in page order, each line one ``write(2)`` to a file opened for appending (so a
    killed process leaves whole lines): ``page``, ``url`` (secrets masked), ``status``,
    ``content_type``, ``bytes`` (uncompressed), ``stored_bytes``, ``sha256`` (of the uncompressed
    body), ``file``, ``records`` (null when the page could not be read or was not used),
    ``seconds``, ``attempts``, ``set_aside``. Pages fetched past the end (or after a failure) are
    kept and listed last, with null records.

Faults and limits
    As in :mod:`.ingest`: transient faults are retried; a 200 whose JSON-like body does not parse
    is kept as ``page-000001.attempt1.json.gz`` (named in ``set_aside``) and fetched again (by the
    thread that writes, so parsing stays off the fetching threads); a body over
    ``source.max_response_bytes`` is an error that keeps what arrived as
    ``page-000001.partial.gz``. Each fetching thread holds at most one body, so the bodies in
    memory stay under ``concurrency x max_response_bytes``. Records that would flatten to more
    than ``processing.max_columns`` columns (in one batch, or over all the parts) are refused.

Failure
    An :class:`~.errors.IngestionError` names the page, its URL (secrets masked) and the cause; the
    raw pages fetched so far and the parts written so far stay on disk (those parts are not
    brought to one schema: read them one by one, or rerun).

Earlier ``part-*.parquet`` files in ``parts_dir`` and ``page-*.gz`` files in ``raw_dir`` are
removed first, so a rerun never mixes with the files of a previous run.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import requests

from anomaly_detection import atomic
from anomaly_detection.config import ProcessingConfig, SourceConfig
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.flatten import FlattenStats, TooManyColumns, flatten_records, json_text
from anomaly_detection.ingest.native import (
    ApiReader,
    CredentialResolver,
    Fetched,
    PageRecord,
    env_credentials,
    iter_pages,
    prefetch,
    read_records,
    with_params,
)
from anomaly_detection.ingest.outbound import guarded_session

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
#: zlib level 1: a quarter of level 6's CPU time for files about a fifth larger.
GZIP_LEVEL = 1
PROGRESS_SECONDS = 5.0
#: Records flattened and written per part file (consecutive pages together).
BATCH_RECORDS = 10_000
#: Integers up to this magnitude are exact in a float64.
EXACT_INT = 2**53

_NUMERIC_KINDS = frozenset({"integer", "floating", "mixed-integer-float", "decimal"})


@dataclass
class BulkIngestResult:
    """What :func:`ingest_to_parquet` wrote.

    Attributes
    ----------
    records : int
        Records written to the part files.
    pages : int
        Pages read in order (the final empty page included; pages fetched past the end are not).
    columns : dict of str to str
        Column name -> Parquet/Arrow type (``double``, ``bool`` or ``string``), in column order.
    parts_dir : Path
        The directory of ``part-NNNNNN.parquet`` files.
    manifest_path : Path
        The raw snapshot's ``manifest.jsonl``.
    seconds : float
        Wall time of the whole ingestion.
    truncated : bool
        Whether ``max_records`` cut the records short.
    requests : int
        HTTP requests sent: retries and pages fetched past the end included.
    """

    records: int
    pages: int
    columns: dict[str, str]
    parts_dir: Path
    manifest_path: Path
    seconds: float
    truncated: bool = False
    requests: int = 0

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class RawPage(PageRecord):
    """A manifest line: :class:`~.ingest.PageRecord` plus the body's digest and compressed size."""

    sha256: str = ""
    stored_bytes: int = 0


# --------------------------------------------------------------------------- fetching


class RateLimiter:
    """Space calls to :meth:`acquire` at least ``1 / per_second`` apart, across all threads."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self._lock = threading.Lock()
        self._next = -math.inf

    def acquire(self) -> None:
        """Block until the caller may send its request."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class BulkReader(ApiReader):
    """An :class:`~.ingest.ApiReader` that threads can share.

    Each thread gets its own session (from ``session_factory``, else a plain one); bodies are
    saved gzip-compressed; the manifest is appended one JSON line per page (see the module
    docstring) instead of rewritten, and no page list is kept in memory.
    """

    def __init__(
        self,
        source: SourceConfig,
        raw_dir: Path,
        *,
        credentials: CredentialResolver = env_credentials,
        sleep: Callable[[float], None] = time.sleep,
        limiter: RateLimiter | None = None,
        session_factory: Callable[[], requests.Session] | None = None,
    ) -> None:
        self._new_session = session_factory or guarded_session
        super().__init__(source, raw_dir, credentials=credentials, session=self._new_session(), sleep=sleep)
        self.limiter = limiter
        self.manifest_path = self.raw_dir / MANIFEST_NAME
        self.requests = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = [self.session]
        self._manifest = os.open(
            self.manifest_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644
        )

    def _thread_session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._new_session()
            session.headers.update(self.session.headers)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _request(self, url: str, headers: dict[str, str]) -> requests.Response:
        if self.limiter is not None:
            self.limiter.acquire()
        with self._lock:
            self.requests += 1
        return self._send(self._thread_session(), url, headers)

    def _file_name(self, page: int, suffix: str) -> str:
        return f"page-{page:06d}{suffix}.gz"

    def _store(self, name: str, body: bytes) -> int:
        packed = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        atomic.write_bytes(self.raw_dir / name, packed)
        return len(packed)

    def _record(self, body: bytes, stored: int, **fields: Any) -> RawPage:
        return RawPage(**fields, sha256=hashlib.sha256(body).hexdigest(), stored_bytes=stored)

    def _list(self, record: PageRecord) -> None:
        """Nothing to do: a page's manifest line is written by :meth:`settle`."""

    def _forget(self, record: PageRecord) -> None:
        """Nothing to do: a page is listed only once :meth:`settle` is called."""

    def settle(self, record: PageRecord, records: int | None) -> None:
        record.records = records  # type: ignore[assignment]  # None: the page could not be read
        line = orjson.dumps(vars(record)) + b"\n"
        with self._lock:
            written = os.write(self._manifest, line)
        if written != len(line):
            raise OSError(
                f"only {written} of {len(line)} bytes of a manifest line were written to {self.manifest_path}"
            )

    def close(self) -> None:
        with self._lock:
            if self._manifest >= 0:
                os.close(self._manifest)
                self._manifest = -1
            for session in self._sessions:
                session.close()


@dataclass
class _Page:
    """One page, flattened and typed (the unit held in memory)."""

    number: int
    rows: int
    columns: dict[str, pa.Array]
    stats: FlattenStats = field(default_factory=FlattenStats)
    #: API pages in this unit: consecutive pages are flattened and written together (``batch_records``).
    pages: int = 1
    #: The URL of its first page (secrets masked), for messages.
    url: str = ""

    def head(self, rows: int) -> _Page:
        return _Page(
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


def _concurrent_pages(
    reader: BulkReader, source: SourceConfig, pool: ThreadPoolExecutor
) -> Iterator[tuple[int, str, list[Any]]]:
    """``(page, URL, records)`` of computed-URL pagination in page order, fetched ``2 x concurrency`` ahead.

    The threads only fetch and save (network waits and gzip release the GIL); parsing and
    flattening happen here, one page at a time: threads contending for the GIL over them would
    spend more CPU than they overlap. A page whose body does not parse is fetched again from here.
    """
    page_size = source.pagination.page_size
    plan = planned_urls(source)
    pending: deque[tuple[int, str, Future[Fetched]]] = deque()

    def submit(number: int, url: str) -> None:
        pending.append((number, url, pool.submit(reader.get, url, number, parse=False)))

    previous = ""
    try:
        for number, url in itertools.islice(plan, 2 * source.concurrency):
            submit(number, url)
        while pending:
            number, url, future = pending.popleft()
            try:
                record, records = _read_page(reader, source, url, future.result(), previous)
            except IngestionError as exc:
                raise IngestionError(f"page {number}: {exc}") from None
            if records is None:
                log.warning(
                    "stopping pagination: page %d from %s is identical to the page before it "
                    "(the API seems to ignore the paging parameters)",
                    number,
                    record.url,
                )
                return
            previous = record.sha256
            following = next(plan, None) if len(records) >= page_size else None
            if following is not None:
                submit(*following)  # before this page is flattened and written: the threads stay busy
            log.debug("page %d: %d records from %s", number, len(records), record.url)
            yield number, record.url, records
            if len(records) < page_size:
                return
        log.warning("stopping pagination at max_pages=%d", source.pagination.max_pages)
    finally:
        _settle_unread(reader, [future for _, _, future in pending])


def _read_page(
    reader: BulkReader, source: SourceConfig, url: str, fetched: Fetched, previous: str
) -> tuple[RawPage, list[Any] | None]:
    """Parse a fetched page (fetching it again if its body is cut off) and find its records;
    None for records when the page is identical to the one before it (digest ``previous``)."""
    fetched = reader.parsed(url, fetched)
    record = fetched.record
    assert isinstance(record, RawPage)
    if record.page > 1 and record.sha256 == previous:
        reader.settle(record, None)
        return record, None
    records, _ = read_records(reader, url, fetched, source.records_path)
    page_size = source.pagination.page_size
    if len(records) > page_size and source.pagination.type == "offset":
        raise IngestionError(
            f"{record.url} returned {len(records)} records, more than pagination.page_size={page_size}: "
            "the API does not honour the limit parameter, so the offsets of the next pages are unknown; "
            "set page_size to the API's page size"
        )
    return record, records


def _settle_unread(reader: BulkReader, futures: list[Future[Fetched]]) -> None:
    """List the pages fetched but never read (past the end, or after a failure) in the manifest."""
    for future in futures:
        future.cancel()
    wait(futures)
    for future in futures:
        if not future.cancelled() and future.exception() is None:
            reader.settle(future.result().record, None)


def _sequential_pages(reader: BulkReader, source: SourceConfig) -> Iterator[tuple[int, str, list[Any]]]:
    """Pages of next-link (or no) pagination, one request at a time."""
    number = 0
    try:
        for number, url, _, records, _ in iter_pages(reader, source):
            yield number, reader.safe_url(url), records
    except IngestionError as exc:
        raise IngestionError(f"page {number + 1}: {exc}") from None


def _typed_batch(
    first: int, url: str, records: list[Any], pages: int, max_depth: int, max_columns: int | None
) -> _Page:
    try:
        return _Page(first, *typed_records(records, max_depth, max_columns), pages=pages, url=url)
    except TooManyColumns as exc:
        raise TooManyColumns(
            f"page {first}: {exc} (in the records of {pages} page(s) from {url} on)"
        ) from None


def _typed_batches(
    pages: Iterator[tuple[int, str, list[Any]]],
    max_depth: int,
    batch_records: int,
    max_columns: int | None = None,
) -> Iterator[_Page]:
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
                yield _typed_batch(first, url, batch, count, max_depth, max_columns)
                batch, first, count = [], 0, 0
        if count:
            yield _typed_batch(first, url, batch, count, max_depth, max_columns)
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------- types


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


def _text_array(values: list[Any]) -> pa.Array:
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


def _exact_in_float(values: np.ndarray) -> bool:
    return values.size == 0 or (int(values.max()) <= EXACT_INT and int(values.min()) >= -EXACT_INT)


def typed_column(column: pd.Series) -> pa.Array:
    """One page's column under the type rule: ``double``, ``bool``, ``string`` or ``null`` (no value)."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return pa.array(column.to_numpy(), type=pa.bool_())
    if pd.api.types.is_integer_dtype(dtype):
        values = column.to_numpy()
        if not _exact_in_float(values):
            return _text_array(values.tolist())
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
    return _text_array(values)


def widen(known: pa.DataType, seen: pa.DataType) -> pa.DataType:
    """The type of a column known as ``known`` once a page shows it as ``seen``."""
    if known == seen or pa.types.is_null(seen):
        return known
    if pa.types.is_null(known):
        return seen
    return pa.string()


def _stored(kind: pa.DataType) -> pa.DataType:
    return pa.string() if pa.types.is_null(kind) else kind


def conform(array: pa.Array | pa.ChunkedArray | None, kind: pa.DataType, rows: int) -> pa.Array:
    """``array`` (or nulls when absent) as the stored type of ``kind``."""
    target = _stored(kind)
    if array is None:
        return pa.nulls(rows, type=target)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type == target:
        return array
    if array.null_count == len(array):
        return pa.nulls(rows, type=target)
    if pa.types.is_string(target):
        return _text_array(array.to_pylist())
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

    def write(self, page: _Page) -> None:
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
            self.schema = pa.schema([(name, _stored(kind)) for name, kind in self.kinds.items()])
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
        return {name: str(_stored(kind)) for name, kind in self.kinds.items()}


# --------------------------------------------------------------------------- driver


def _clear(directory: Path, *patterns: str) -> None:
    for pattern in patterns:
        for path in directory.glob(pattern):
            path.unlink()


class _Progress:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._last = self.started
        self.records = 0
        self.pages = 0
        self.stats = FlattenStats()

    def add(self, page: _Page) -> None:
        self.records += page.rows
        self.pages += page.pages
        for original, renamed in page.stats.collisions.items():
            self.stats.collisions.setdefault(original, renamed)
        self.stats.truncated_paths |= page.stats.truncated_paths
        self.stats.scalar_records += page.stats.scalar_records
        now = time.perf_counter()
        if now - self._last >= PROGRESS_SECONDS:
            self._last = now
            log.info("%d records from %d pages so far (%.0f records/s)", self.records, self.pages, self.rate)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.records / max(self.seconds, 1e-9)


def _log_notes(stats: FlattenStats, max_depth: int) -> None:
    for original, renamed in stats.collisions.items():
        log.warning("key %r appears twice after flattening; the second is kept as %r", original, renamed)
    for path in sorted(stats.truncated_paths)[:20]:
        log.warning("%r is nested deeper than max_depth=%d; kept as JSON text", path, max_depth)
    if stats.scalar_records:
        log.info("%d records were scalars, kept in a 'value' column", stats.scalar_records)


def ingest_to_parquet(
    source: SourceConfig,
    processing: ProcessingConfig,
    raw_dir: Path,
    parts_dir: Path,
    *,
    credentials: CredentialResolver = env_credentials,
    sleep: Callable[[float], None] = time.sleep,
    batch_records: int = BATCH_RECORDS,
    session_factory: Callable[[], requests.Session] | None = None,
) -> BulkIngestResult:
    """Fetch every page of ``source`` into ``parts_dir/part-NNNNNN.parquet`` (see the module docstring).

    Parameters
    ----------
    source : SourceConfig
        The API; ``concurrency`` and ``max_requests_per_second`` apply here.
    processing : ProcessingConfig
        ``max_depth`` bounds the flattening.
    raw_dir : Path
        Where the gzip-compressed responses and ``manifest.jsonl`` go.
    parts_dir : Path
        Where the part files go.
    credentials : callable
        Resolves ``source.auth`` into headers and query parameters.
    sleep : callable
        Waits between retries (tests pass a fake).
    batch_records : int
        Consecutive pages are flattened and written as one part file once they hold this many
        records (``1``: a part file per page).
    session_factory : callable, optional
        Makes each thread's HTTP session (a replay serves the raw snapshot through one).

    Returns
    -------
    BulkIngestResult

    Raises
    ------
    IngestionError
        A page could not be fetched or read (the message names the page and its URL), its body is
        over ``source.max_response_bytes``, the records would flatten to more than
        ``processing.max_columns`` columns, or the API returned no records.
    ConfigError
        A credential's environment variable is not set.
    """
    raw_dir, parts_dir = Path(raw_dir), Path(parts_dir)
    limiter = RateLimiter(source.max_requests_per_second) if source.max_requests_per_second else None
    reader = BulkReader(
        source,
        raw_dir,
        credentials=credentials,
        sleep=sleep,
        limiter=limiter,
        session_factory=session_factory,
    )
    parts_dir.mkdir(parents=True, exist_ok=True)
    _clear(raw_dir, "page-*.gz", ".page-*.tmp*")
    _clear(parts_dir, "part-*.parquet", ".part-*.tmp")
    writer = PartWriter(parts_dir, max_columns=processing.max_columns)
    progress = _Progress()
    truncated = False
    computed = source.pagination.type in ("offset", "page")
    try:
        with ThreadPoolExecutor(max_workers=source.concurrency, thread_name_prefix="bulk-ingest") as pool:
            fetched = (
                _concurrent_pages(reader, source, pool) if computed else _sequential_pages(reader, source)
            )
            pages = _typed_batches(fetched, processing.max_depth, batch_records, processing.max_columns)
            if not computed:
                pages = prefetch(
                    pages, depth=2
                )  # the next batch is fetched and flattened while this one is written
            try:
                for page in pages:
                    if source.max_records is not None and progress.records + page.rows > source.max_records:
                        page, truncated = page.head(source.max_records - progress.records), True
                    if page.rows:
                        writer.write(page)
                    progress.add(page)
                    if source.max_records is not None and progress.records >= source.max_records:
                        break
            except IngestionError as exc:  # the message starts with the page's number
                raise IngestionError(
                    f"{exc} ({progress.records} records from {progress.pages} earlier page(s) "
                    f"are in {parts_dir}; every response so far is in {raw_dir})"
                ) from None
            finally:
                pages.close()
    finally:
        reader.close()
    if progress.records == 0:
        raise IngestionError(
            f"the API returned no records ({progress.pages} page(s) from {reader.safe_url(source.url)}; raw responses in {raw_dir})"
        )
    writer.finish()
    _log_notes(progress.stats, processing.max_depth)
    seconds = progress.seconds
    log.info(
        "ingested %d records x %d columns from %d page(s) in %.1fs (%.0f records/s, %d requests) into %s",
        progress.records,
        len(writer.kinds),
        progress.pages,
        seconds,
        progress.records / seconds,
        reader.requests,
        parts_dir,
    )
    return BulkIngestResult(
        records=progress.records,
        pages=progress.pages,
        columns=writer.columns,
        parts_dir=parts_dir,
        manifest_path=reader.manifest_path,
        seconds=round(seconds, 3),
        truncated=truncated,
        requests=reader.requests,
    )
