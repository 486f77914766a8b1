"""Stream a paged REST API into Parquet part files, fetching pages concurrently (the Spark path).

:func:`ingest_to_parquet` reads every page of ``source`` and writes Parquet part files in page order,
``parts_dir/part-NNNNNN.parquet`` named after the first page they hold (``NNNNNN`` = page - 1): one
per ``batch_records`` records (10,000 by default, consecutive pages together) so that
``spark.read.parquet(parts_dir)`` and ``pandas.read_parquet(parts_dir)`` read the records as one
table. Fetching, retries, auth and secret masking are those of :class:`~.reader.ApiReader`; each
page is flattened by :func:`~.flatten.flatten_records`, the native path's flattening, and typed and
written by :mod:`.parquet`.

Pagination
    ``offset`` and ``page`` pagination have URLs that can be computed ahead: ``source.concurrency``
    threads fetch (and save) a window of up to ``2 x concurrency`` pages ahead of the page being
    flattened and written, which happens in page order. Ingestion stops at the first empty or short page (or at a page
    identical to the one before it: an API that ignores the paging parameters), so at most one
    window of requests goes past the end. ``max_pages`` and ``max_records`` bound the plan itself.
    ``next_url``, ``link_header``, ``cursor`` and ``none`` are sequential by nature: one page at a
    time, with the next page fetched (and flattened) while the current one is written. The
    warnings of a pagination that stopped early are returned with the result.

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
    follows the content type, like :mod:`.native`; see :mod:`.snapshot`) before it is parsed, failed attempts' last body
    included, each through a temporary name and a rename (a killed process leaves no half file
    under a final name). ``raw_dir/manifest.jsonl`` gets one JSON line per saved page once it has
    been read, in page order, each line one ``write(2)`` to a file opened for appending (so a
    killed process leaves whole lines): ``page``, ``url`` (secrets masked), ``status``,
    ``content_type``, ``bytes`` (uncompressed), ``stored_bytes``, ``sha256`` (of the uncompressed
    body), ``file``, ``records`` (null when the page could not be read or was not used),
    ``seconds``, ``attempts``, ``set_aside``. Pages fetched past the end (or after a failure) are
    kept and listed last, with null records.

Faults and limits
    As in :mod:`.native`: transient faults are retried; a 200 whose JSON-like body does not parse
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

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from anomaly_detection.config import ProcessingConfig, SourceConfig
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.auth import CredentialResolver, env_credentials
from anomaly_detection.ingest.flatten import FlattenStats
from anomaly_detection.ingest.outbound import guarded_session
from anomaly_detection.ingest.pagination import (
    PagingNotes,
    iter_pages,
    planned_urls,
    prefetch,
    read_records,
)
from anomaly_detection.ingest.parquet import PartWriter, TypedBatch, typed_batches
from anomaly_detection.ingest.reader import ApiReader, Fetched
from anomaly_detection.ingest.snapshot import GzipSnapshot, RawPage

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 5.0


#: Records flattened and written per part file (consecutive pages together).
BATCH_RECORDS = 10_000


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
    records_shape : str
        Which path and shape the first page's records had, and why.
    warnings : list of str
        Why the pagination stopped early, when it did.
    """

    records: int
    pages: int
    columns: dict[str, str]
    parts_dir: Path
    manifest_path: Path
    seconds: float
    truncated: bool = False
    requests: int = 0
    records_shape: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")


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
    """An :class:`~anomaly_detection.ingest.reader.ApiReader` that threads can share.

    Each thread gets its own session (from ``session_factory``, else a plain one); requests are
    spaced by ``limiter``; bodies go to a :class:`~anomaly_detection.ingest.snapshot.GzipSnapshot`.
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
        super().__init__(
            source,
            raw_dir,
            credentials=credentials,
            session=self._new_session(),
            sleep=sleep,
            snapshot=GzipSnapshot(Path(raw_dir)),
        )
        self.limiter = limiter
        self.manifest_path = self.snapshot.manifest_path
        self.requests = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = [self.session]

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

    def close(self) -> None:
        super().close()
        with self._lock:
            for session in self._sessions:
                session.close()


def _concurrent_pages(
    reader: BulkReader, source: SourceConfig, pool: ThreadPoolExecutor, notes: PagingNotes
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
                record, records = _read_page(reader, source, url, future.result(), previous, notes)
            except IngestionError as exc:
                raise IngestionError(f"page {number}: {exc}") from None
            if records is None:
                notes.warn(
                    f"stopping pagination: page {number} from {record.url} is identical to the page "
                    "before it (the API seems to ignore the paging parameters)"
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
        notes.warn(f"stopping pagination at max_pages={source.pagination.max_pages}")
    finally:
        _settle_unread(reader, [future for _, _, future in pending])


def _read_page(
    reader: BulkReader, source: SourceConfig, url: str, fetched: Fetched, previous: str, notes: PagingNotes
) -> tuple[RawPage, list[Any] | None]:
    """Parse a fetched page (fetching it again if its body is cut off) and find its records;
    None for records when the page is identical to the one before it (digest ``previous``)."""
    fetched = reader.parsed(url, fetched)
    record = fetched.record
    assert isinstance(record, RawPage)
    if record.page > 1 and record.sha256 == previous:
        reader.snapshot.settle(record, None)
        return record, None
    records, _ = read_records(reader, url, fetched, source.records_path, notes)
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
            reader.snapshot.settle(future.result().record, None)


def _sequential_pages(
    reader: BulkReader, source: SourceConfig, notes: PagingNotes
) -> Iterator[tuple[int, str, list[Any]]]:
    """Pages of next-link, cursor (or no) pagination, one request at a time."""
    number = 0
    try:
        for number, url, _, records, _ in iter_pages(reader, source, notes):
            yield number, reader.safe_url(url), records
    except IngestionError as exc:
        raise IngestionError(f"page {number + 1}: {exc}") from None


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

    def add(self, page: TypedBatch) -> None:
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
    notes = PagingNotes()
    try:
        with ThreadPoolExecutor(max_workers=source.concurrency, thread_name_prefix="bulk-ingest") as pool:
            fetched = (
                _concurrent_pages(reader, source, pool, notes)
                if computed
                else _sequential_pages(reader, source, notes)
            )
            pages = typed_batches(fetched, processing.max_depth, batch_records, processing.max_columns)
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
    for original, renamed in notes.collisions.items():
        progress.stats.collisions.setdefault(original, renamed)
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
        records_shape=notes.shape,
        warnings=list(notes.warnings),
    )
