"""Read records from a REST JSON API: pagination, retries, auth, and a raw snapshot of every page.

Every response body is written to ``raw_dir`` before it is parsed, so a failed parse loses nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urljoin, urlsplit, urlunsplit

import orjson
import pandas as pd
import requests

from .config import REDACTED, ProcessingConfig, SourceConfig, redact_url
from .errors import ConfigError, IngestionError
from .flatten import ColumnNotes, FlattenStats, extract_records, finalize_frame, flatten_records, parse_json

log = logging.getLogger(__name__)

USER_AGENT = "dynamic-anomaly-detection/0.1"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: Resolves the secrets of ``source.auth`` into request headers and query parameters.
CredentialResolver = Callable[[SourceConfig], tuple[dict[str, str], dict[str, str]]]


@dataclass
class PageRecord:
    page: int
    url: str
    status: int
    content_type: str
    bytes: int
    file: str
    records: int = 0
    seconds: float = 0.0
    attempts: int = 1


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

    @property
    def record_count(self) -> int:
        return len(self.frame)


def env_credentials(source: SourceConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Build auth headers / query params from environment variables named in ``source.auth``."""
    auth = source.auth

    def secret(var: str | None, key: str) -> str:
        value = os.environ.get(var or "")
        if not value:
            raise ConfigError(f"source.auth.{key}: environment variable {var!r} is not set")
        return value

    if auth.type == "none":
        return {}, {}
    if auth.type == "bearer":
        return {auth.header_name: f"Bearer {secret(auth.token_env, 'token_env')}"}, {}
    if auth.type == "header":
        return {auth.header_name: secret(auth.token_env, "token_env")}, {}
    if auth.type == "query":
        return {}, {auth.param_name: secret(auth.token_env, "token_env")}
    pair = f"{secret(auth.username_env, 'username_env')}:{secret(auth.password_env, 'password_env')}"
    return {auth.header_name: "Basic " + base64.b64encode(pair.encode()).decode()}, {}


def with_params(url: str, params: dict[str, Any]) -> str:
    """Set query parameters on ``url``: a parameter already there is replaced in place, others kept
    (repeated ones like ``tag=a&tag=b`` included); new ones are appended."""
    if not params:
        return url
    parts = urlsplit(url)
    new = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    query: list[tuple[str, str]] = []
    placed: set[str] = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in new:
            if key not in placed:
                query.append((key, new[key]))
                placed.add(key)
        else:
            query.append((key, value))
    query.extend((k, v) for k, v in new.items() if k not in placed)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _retry_after(response: requests.Response) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # "-0000" or no zone: HTTP dates are GMT
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return max(0.0, parsed.timestamp() - time.time())


def _secret_values(headers: dict[str, str], params: dict[str, str]) -> list[str]:
    """Every form in which a credential could show up in a URL, a body or a message."""
    found: list[str] = []
    for value in (*headers.values(), *params.values()):
        if not value:
            continue
        found.append(value)
        scheme, _, rest = value.partition(" ")
        if rest and scheme.lower() in ("bearer", "token", "basic"):
            found.append(rest)
            if scheme.lower() == "basic":
                try:
                    pair = base64.b64decode(rest).decode()
                except (ValueError, UnicodeDecodeError):
                    pair = ""
                if pair:
                    found.append(pair)
                    found.append(pair.partition(":")[2])
    variants: list[str] = []
    for value in found:
        variants.extend((value, quote(value, safe=""), quote_plus(value)))
    # longest first so that a value is masked before a shorter part of it; tiny values would mask noise
    return sorted({v for v in variants if len(v) >= 3}, key=len, reverse=True)


def _connection_problem(exc: requests.ConnectionError) -> str:
    """A short, secret-free reason for a failed connection (the exception text holds the full URL)."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS/SSL error"
    if "refused" in text.lower():
        return "connection refused"
    if any(s in text for s in ("Name or service not known", "nodename nor servname", "getaddrinfo failed",
                               "Temporary failure in name resolution", "NameResolutionError")):
        return "host name could not be resolved"
    if "reset" in text.lower():
        return "connection reset by the server"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "connection closed by the server without a response"
    return type(exc).__name__


def _origin(url: str) -> tuple[str, str]:
    """``(scheme, host:port)`` with the default port filled in, user info left out."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(scheme)
    return scheme, f"{(parts.hostname or '').lower()}:{port}"


def _suffix(content_type: str, body: bytes) -> str:
    if "json" in content_type:
        return ".json"
    if "html" in content_type or body[:15].lower().startswith((b"<!doctype", b"<html")):
        return ".html"
    return ".json" if body[:1] in (b"{", b"[") else ".txt"


class ApiReader:
    """Fetch pages from one API with retries, saving each raw body to ``raw_dir``."""

    def __init__(
        self,
        source: SourceConfig,
        raw_dir: Path,
        *,
        credentials: CredentialResolver = env_credentials,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.raw_dir = Path(raw_dir)
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers["Accept"] = "application/json"
        self.auth_headers, self.auth_params = credentials(source)
        self.secrets = _secret_values(self.auth_headers, self.auth_params)
        self.origin = _origin(source.url)
        self.sleep = sleep
        self.pages: list[PageRecord] = []

    def scrub(self, text: str) -> str:
        """Mask secret-looking query parameters and every credential value in ``text``."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def safe_url(self, url: str) -> str:
        return self.scrub(redact_url(url))

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        hinted = _retry_after(response) if response is not None else None
        delay = hinted if hinted is not None else self.source.backoff_seconds * (2**attempt)
        return min(delay, self.source.max_backoff_seconds)

    def _save(self, page: int, url: str, response: requests.Response | None, body: bytes, attempts: int, seconds: float) -> PageRecord:
        content_type = response.headers.get("Content-Type", "") if response is not None else ""
        name = f"page-{page:05d}{_suffix(content_type, body)}"
        (self.raw_dir / name).write_bytes(body)
        record = PageRecord(
            page=page,
            url=self.safe_url(url),
            status=response.status_code if response is not None else 0,
            content_type=content_type,
            bytes=len(body),
            file=name,
            seconds=round(seconds, 4),
            attempts=attempts,
        )
        self.pages.append(record)
        self.write_manifest()
        return record

    def write_manifest(self) -> None:
        manifest = [vars(p) for p in self.pages]
        (self.raw_dir / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))

    def settle(self, record: PageRecord, records: int | None) -> None:
        """Record how many records a saved page held (None: it could not be read) in the manifest."""
        if records is not None:
            record.records = records
        self.write_manifest()

    def _request(self, url: str, headers: dict[str, str]) -> requests.Response:
        """Send one attempt; subclasses may throttle it or pick a session per thread."""
        return self.session.request(self.source.method, url, headers=headers, timeout=self.source.timeout_seconds)

    def get(self, url: str, page: int) -> tuple[requests.Response, bytes, PageRecord]:
        """GET ``url`` (retrying connection errors, timeouts, 429 and 5xx) and save the body.

        Credentials are sent only to the origin (scheme, host and port) of ``source.url``: a next
        link that points elsewhere is fetched without them.
        """
        safe_url = self.safe_url(url)
        same_origin = _origin(url) == self.origin
        if not same_origin and (self.auth_headers or self.auth_params):
            log.warning("%s is not on %s://%s; requesting it without credentials", safe_url, *self.origin)
        request_url = with_params(url, self.auth_params) if same_origin else url
        headers = {**self.source.headers, **self.auth_headers} if same_origin else dict(self.source.headers)
        started = time.perf_counter()
        last_problem = ""
        response: requests.Response | None = None
        for attempt in range(self.source.retries + 1):
            if attempt:
                delay = self._delay(attempt - 1, response)
                log.warning("retrying %s in %.2fs (attempt %d of %d): %s", safe_url, delay, attempt + 1, self.source.retries + 1, last_problem)
                self.sleep(delay)
            response = None
            try:
                response = self._request(request_url, headers)
            except requests.Timeout:
                last_problem = f"timed out (no response within {self.source.timeout_seconds:g}s)"
                continue
            except requests.ConnectionError as exc:
                last_problem = f"connection failed ({_connection_problem(exc)})"
                continue
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema, requests.exceptions.TooManyRedirects) as exc:
                raise IngestionError(f"GET {safe_url} failed: {type(exc).__name__} ({self.scrub(str(exc))[:200]})") from None
            except requests.RequestException as exc:  # e.g. a broken chunked body: worth another try
                last_problem = f"{type(exc).__name__} while reading the response"
                continue
            if response.status_code in RETRY_STATUSES:
                last_problem = f"HTTP {response.status_code}"
                continue
            body = response.content
            record = self._save(page, url, response, body, attempt + 1, time.perf_counter() - started)
            if response.status_code >= 400:
                self.settle(record, None)
                snippet = self.scrub(body[:200].decode("utf-8", "replace").strip())
                raise IngestionError(
                    f"GET {safe_url} failed with HTTP {response.status_code}; body starts with {snippet!r} "
                    f"(saved to {self.raw_dir / record.file})"
                )
            return response, body, record
        if response is not None:
            record = self._save(page, url, response, response.content, self.source.retries + 1, time.perf_counter() - started)
            self.settle(record, None)
        raise IngestionError(f"GET {safe_url} failed after {self.source.retries + 1} attempt(s): {last_problem}")


def _next_in_body(payload: Any, path: str) -> str | None:
    node = payload
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node if isinstance(node, str) and node else None


def read_records(reader: ApiReader, url: str, body: bytes, record: PageRecord, records_path: str | None) -> tuple[Any, list[Any], str]:
    """Parse a saved page and find its records: ``(payload, records, path_used)``.

    The record count (or, on failure, that the page could not be read) goes to the manifest; an
    error names the URL and the saved raw file.
    """
    safe = reader.safe_url(url)
    try:
        payload = parse_json(body, source=safe)
        records, path = extract_records(payload, records_path, source=safe)
    except IngestionError as exc:
        reader.settle(record, None)
        raise IngestionError(f"{reader.scrub(str(exc))} (raw response saved to {reader.raw_dir / record.file})") from None
    reader.settle(record, len(records))
    return payload, records, path


def next_link(kind: str, next_url_path: str, url: str, payload: Any, response: requests.Response) -> str | None:
    """The absolute URL of the next page for ``next_url`` / ``link_header`` pagination, else None."""
    if kind == "next_url":
        nxt = _next_in_body(payload, next_url_path)
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
            url = with_params(base_url, {pagination.offset_param: fetched, pagination.limit_param: pagination.page_size})
        elif pagination.type == "page":
            url = with_params(base_url, {pagination.page_param: pagination.start_page + page_index, pagination.limit_param: pagination.page_size})
        if url in seen:
            log.warning("stopping pagination: %s was already fetched (a loop of next links)", reader.safe_url(url))
            return
        seen.add(url)
        page_index += 1
        response, body, record = reader.get(url, page_index)
        digest = hashlib.sha256(body).digest()
        if page_index > 1 and digest == previous_digest:
            reader.settle(record, None)
            log.warning(
                "stopping pagination: page %d from %s is identical to the page before it "
                "(the API seems to ignore the paging parameters)", page_index, reader.safe_url(url)
            )
            return
        previous_digest = digest
        payload, records, path = read_records(reader, url, body, record, source.records_path)
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


def prefetch(items: Iterator[Any], *, depth: int = 2) -> Iterator[Any]:
    """Run ``items`` in a background thread, ``depth`` items ahead of the consumer.

    Fetching and parsing the next page overlaps with flattening the current one. An exception in
    the producer is re-raised in the consumer; closing the consumer stops the producer.
    """
    import queue
    import threading

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


def ingest(
    source: SourceConfig,
    processing: ProcessingConfig,
    raw_dir: Path,
    *,
    credentials: CredentialResolver = env_credentials,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> IngestResult:
    """Fetch every page, flatten the records and return one typed frame."""
    reader = ApiReader(source, raw_dir, credentials=credentials, session=session, sleep=sleep)
    stats = FlattenStats()
    chunks: list[pd.DataFrame] = []
    total = 0
    path_used = "<root>"
    truncated = False
    for _, _, _, records, path_used in prefetch(iter_pages(reader, source)):
        if source.max_records is not None and total + len(records) > source.max_records:
            records = records[: source.max_records - total]
            truncated = True
        if records:
            chunks.append(flatten_records(records, max_depth=processing.max_depth, stats=stats))
        total += len(records)
    if total == 0:
        raise IngestionError(
            f"the API returned no records ({len(reader.pages)} page(s) from {reader.safe_url(source.url)}; "
            f"raw responses in {raw_dir})"
        )
    frame = pd.concat(chunks, ignore_index=True, sort=False) if len(chunks) > 1 else chunks[0]
    frame, notes = finalize_frame(frame, max_list_length=processing.max_list_length)
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
    log.info("ingested %d records x %d columns from %d page(s) (records at %s)", len(frame), frame.shape[1], len(reader.pages), path_used)
    return IngestResult(
        frame=frame,
        pages=reader.pages,
        raw_dir=Path(raw_dir),
        records_path=path_used,
        stats=stats,
        notes=notes,
        truncated=truncated,
        secrets=reader.secrets,
    )
