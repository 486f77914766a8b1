"""Read records from a REST JSON API: pagination, retries, auth, and a raw snapshot of every page.

Every response body is written to ``raw_dir`` before it is parsed, so a failed parse loses nothing.

Faults
    Connection errors, timeouts, HTTP 429/5xx, a body cut short and a 200 whose body is JSON-like
    but does not parse (a truncated page) are retried ``source.retries`` times. The body of each
    such rejected 200 is kept as ``page-NNNNN.attemptK.json`` (listed in its page's manifest entry
    under ``set_aside``); ``page-NNNNN.json`` holds the body that was parsed, so the snapshot and
    the records always come from the same response. A 200 that is plainly not JSON (HTML, text)
    or is nested too deeply fails at once.

Limits
    A body is read a network receive at a time and refused once it passes
    ``source.max_response_bytes`` (a ``Content-Length`` above it is refused before reading): the
    error names the URL and the cap, and what arrived is kept as ``page-NNNNN.partial``. A body
    still arriving ``source.max_response_seconds`` after its request was sent is abandoned and
    retried (``timeout_seconds`` only bounds each wait for data). Records that would flatten to
    more than ``processing.max_columns`` columns are refused before the frame is built.

Files
    Raw pages and ``manifest.json`` are written under a temporary name and renamed into place, so
    a killed process never leaves a half-written file under a final name.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.utils
import functools
import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urljoin, urlsplit, urlunsplit

import orjson
import pandas as pd
import requests
import urllib3

from anomaly_detection import atomic
from anomaly_detection.config import REDACTED, ProcessingConfig, SourceConfig, looks_secret, redact_url
from anomaly_detection.errors import ConfigError, IngestionError
from anomaly_detection.ingest.flatten import (
    BodyNotJson,
    ColumnNotes,
    FlattenStats,
    TooManyColumns,
    extract_records,
    finalize_frame,
    flatten_records,
    parse_json,
)
from anomaly_detection.ingest.outbound import guarded_session

log = logging.getLogger(__name__)

#: Redirects followed for one request (each hop checked by the outbound guard).
MAX_REDIRECTS = 10
USER_AGENT = "dynamic-anomaly-detection/0.1"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The most one read of a body asks for (a read returns what one network receive brings).
READ_CHUNK_BYTES = 256 * 1024

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
    #: Raw files of earlier attempts whose 200 body was rejected (not valid JSON).
    set_aside: list[str] = field(default_factory=list)


@dataclass
class Fetched:
    """One page's response, its body and manifest entry, and (once parsed) its payload."""

    response: requests.Response
    body: bytes
    record: PageRecord
    payload: Any = None
    parsed: bool = False


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
        parsed = parsed.replace(tzinfo=dt.UTC)
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
    if any(
        s in text
        for s in (
            "Name or service not known",
            "nodename nor servname",
            "getaddrinfo failed",
            "Temporary failure in name resolution",
            "NameResolutionError",
        )
    ):
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


class BodyTooLarge(Exception):
    """A body over the byte cap: ``partial`` is what was read (nothing when ``declared`` said so)."""

    def __init__(self, response: requests.Response, partial: bytes, declared: int | None) -> None:
        super().__init__(f"{len(partial)} bytes read, Content-Length {declared}")
        self.response = response
        self.partial = partial
        self.declared = declared


class BodyTooSlow(Exception):
    """A body still arriving at its deadline."""


def _declared_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def _reader(raw: Any) -> Callable[[int], bytes]:
    """A function that returns what one receive brings (at most n bytes), decoded; b"" at the end."""
    if isinstance(raw, urllib3.response.BaseHTTPResponse):
        return functools.partial(raw.read1, decode_content=True)
    return getattr(raw, "read1", raw.read)


def read_body(response: requests.Response, *, cap: int, deadline: float) -> bytes:
    """Read the whole (decoded) body of a streamed response within ``cap`` bytes and a deadline.

    Reads return as soon as data arrives, so at most one read (``READ_CHUNK_BYTES``) passes the
    cap and one ``timeout_seconds`` wait passes the deadline; memory stays within the cap.

    Raises
    ------
    BodyTooLarge
        More than ``cap`` bytes: declared by ``Content-Length`` (nothing read) or received.
    BodyTooSlow
        The body was still arriving at ``deadline`` (``time.monotonic()``).
    requests.RequestException
        The connection timed out or broke while reading.
    """
    declared = _declared_length(response)
    if declared is not None and declared > cap:
        raise BodyTooLarge(response, b"", declared)
    read = _reader(response.raw)
    buffer = io.BytesIO()
    try:
        while chunk := read(READ_CHUNK_BYTES):
            buffer.write(chunk)
            if buffer.tell() > cap:
                raise BodyTooLarge(response, buffer.getvalue(), declared)
            if time.monotonic() > deadline:
                raise BodyTooSlow(f"{buffer.tell()} bytes read")
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ReadTimeout(exc) from None
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from None
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from None
    return buffer.getvalue()


def _broken(exc: requests.RequestException) -> str:
    """The first line of what urllib3 said about a broken body (no URL in it)."""
    inner = exc.args[0] if exc.args else exc
    text = str(inner.args[0] if getattr(inner, "args", None) else inner)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _looks_like_json(content_type: str, body: bytes) -> bool:
    """Whether a body that did not parse was meant to be JSON (so it may be a cut-off page)."""
    start = body[:64].lstrip()
    if start.lower().startswith((b"<!doctype", b"<html")):
        return False
    return not start or start[:1] in (b"{", b"[") or "json" in content_type


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
        self.session = session or guarded_session()
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

    def _file_name(self, page: int, suffix: str) -> str:
        return f"page-{page:05d}{suffix}"

    def _store(self, name: str, body: bytes) -> int:
        """Write a raw file; return the bytes stored."""
        atomic.write_bytes(self.raw_dir / name, body)
        return len(body)

    def _record(self, body: bytes, stored: int, **fields: Any) -> PageRecord:
        """The manifest entry of a stored body (``stored``: bytes on disk)."""
        return PageRecord(**fields)

    def _save(
        self,
        page: int,
        url: str,
        response: requests.Response | None,
        body: bytes,
        attempts: int,
        seconds: float,
        *,
        set_aside: list[str] | None = None,
        suffix: str | None = None,
    ) -> PageRecord:
        """Store a body as ``page``'s raw file and list it in the manifest."""
        content_type = response.headers.get("Content-Type", "") if response is not None else ""
        name = self._file_name(page, suffix if suffix is not None else _suffix(content_type, body))
        stored = self._store(name, body)
        record = self._record(
            body,
            stored,
            page=page,
            url=self.safe_url(url),
            status=response.status_code if response is not None else 0,
            content_type=content_type,
            bytes=len(body),
            file=name,
            seconds=round(seconds, 4),
            attempts=attempts,
            set_aside=list(set_aside or ()),
        )
        self._list(record)
        return record

    def _list(self, record: PageRecord) -> None:
        """Put a page's entry in the manifest."""
        self.pages.append(record)
        self.write_manifest()

    def _forget(self, record: PageRecord) -> None:
        """Take a page's entry out of the manifest (its body was set aside for a retry)."""
        self.pages.remove(record)
        self.write_manifest()

    def write_manifest(self) -> None:
        manifest = [vars(p) for p in self.pages]
        atomic.write_bytes(self.raw_dir / "manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))

    def settle(self, record: PageRecord, records: int | None) -> None:
        """Record how many records a saved page held (None: it could not be read) in the manifest."""
        if records is not None:
            record.records = records
        self.write_manifest()

    def _request(self, url: str, headers: dict[str, str]) -> requests.Response:
        """Send one attempt (the body is left to stream); subclasses may throttle it or pick a session per thread."""
        return self._send(self.session, url, headers)

    def _send(self, session: requests.Session, url: str, headers: dict[str, str]) -> requests.Response:
        """Send a request and follow its redirects here, not in requests: a redirect's body is never read
        (requests would read all of it, past any cap), every hop passes the session's outbound guard,
        and a hop to another origin carries no credentials."""
        method = self.source.method
        for _ in range(MAX_REDIRECTS + 1):
            response = session.request(
                method,
                url,
                headers=headers,
                timeout=self.source.timeout_seconds,
                stream=True,
                allow_redirects=False,
            )
            if not response.is_redirect:
                return response
            location = response.headers["Location"]
            response.close()
            if response.status_code in (301, 302, 303) and method != "GET":
                method = "GET"
            url = urljoin(url, location)
            if _origin(url) != self.origin:
                headers = self._public_headers()
        raise requests.exceptions.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")

    def _public_headers(self) -> dict[str, str]:
        """The configured headers that carry no secret: what a request to another origin gets."""
        return {k: v for k, v in self.source.headers.items() if not looks_secret(k, v)}

    def _addressed(self, url: str) -> tuple[str, dict[str, str]]:
        """The URL and headers to send: credentials only to the origin of ``source.url``."""
        same_origin = _origin(url) == self.origin
        if not same_origin and (self.auth_headers or self.auth_params):
            log.warning(
                "%s is not on %s://%s; requesting it without credentials", self.safe_url(url), *self.origin
            )
        if same_origin:
            return with_params(url, self.auth_params), {**self.source.headers, **self.auth_headers}
        return url, self._public_headers()

    def _attempt(
        self, url: str, headers: dict[str, str], safe_url: str
    ) -> tuple[requests.Response | None, bytes, str]:
        """Send one request and read its body: ``(response, body, "")``, or why it failed instead.

        Raises :class:`BodyTooLarge` for a body over the cap.
        """
        cap, seconds = self.source.max_response_bytes, self.source.max_response_seconds
        deadline = time.monotonic() + seconds
        response: requests.Response | None = None
        try:
            response = self._request(url, headers)
            return response, read_body(response, cap=cap, deadline=deadline), ""
        except BodyTooSlow:
            return (
                response,
                b"",
                f"the body was still arriving after source.max_response_seconds={seconds:g}s",
            )
        except requests.Timeout:
            return response, b"", f"timed out (nothing received within {self.source.timeout_seconds:g}s)"
        except requests.ConnectionError as exc:
            return response, b"", f"connection failed ({_connection_problem(exc)})"
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.TooManyRedirects,
        ) as exc:
            raise IngestionError(
                f"GET {safe_url} failed: {type(exc).__name__} ({self.scrub(str(exc))[:400]})"
            ) from None
        except requests.exceptions.ChunkedEncodingError as exc:
            return (
                response,
                b"",
                f"the connection broke before the whole body arrived ({self.scrub(_broken(exc))})",
            )
        except requests.RequestException as exc:
            return response, b"", f"{type(exc).__name__} while reading the response"
        finally:
            if response is not None:
                response.close()

    def get(self, url: str, page: int, *, parse: bool = True, after: PageRecord | None = None) -> Fetched:
        """GET ``url`` (retrying connection errors, timeouts, 429, 5xx and truncated JSON) and save the body.

        Parameters
        ----------
        url : str
            The page's URL (credentials are added for the origin of ``source.url`` only: a next
            link that points elsewhere is fetched without them).
        page : int
            The page's number, which names its raw file.
        parse : bool
            Parse the body too, retrying a 200 whose JSON-like body does not parse. Without it the
            caller parses with :meth:`parsed`.
        after : PageRecord, optional
            The entry of an attempt set aside by :meth:`parsed`: continue from its attempt count.

        Raises
        ------
        IngestionError
            Every attempt failed, the status is another 4xx/5xx, the body is over the byte cap or
            is not JSON: the message names the URL, the cause and the saved raw file, if any.
        """
        safe_url = self.safe_url(url)
        request_url, headers = self._addressed(url)
        attempts = self.source.retries + 1
        set_aside = list(after.set_aside) if after is not None else []
        started = time.perf_counter()
        problem = ""
        response: requests.Response | None = None
        failed: tuple[requests.Response, bytes] | None = None
        for attempt in range(after.attempts if after is not None else 0, attempts):
            if attempt:
                delay = self._delay(attempt - 1, response)
                log.warning(
                    "retrying %s in %.2fs (attempt %d of %d): %s",
                    safe_url,
                    delay,
                    attempt + 1,
                    attempts,
                    problem,
                )
                self.sleep(delay)
            try:
                response, body, problem = self._attempt(request_url, headers, safe_url)
            except BodyTooLarge as exc:
                self._refuse_large(page, url, exc, attempt + 1, time.perf_counter() - started, set_aside)
            if problem:
                continue
            assert response is not None
            if response.status_code in RETRY_STATUSES:
                problem, failed = f"HTTP {response.status_code}", (response, body)
                continue
            record = self._save(
                page, url, response, body, attempt + 1, time.perf_counter() - started, set_aside=set_aside
            )
            if response.status_code >= 400:
                self.settle(record, None)
                snippet = self.scrub(body[:200].decode("utf-8", "replace").strip())
                raise IngestionError(
                    f"GET {safe_url} failed with HTTP {response.status_code}; body starts with {snippet!r} "
                    f"(saved to {self.raw_dir / record.file})"
                )
            fetched = Fetched(response, body, record)
            if not parse:
                return fetched
            try:
                return self._parse(fetched, safe_url)
            except BodyNotJson as exc:
                problem = self._set_aside(fetched, exc, set_aside)
        saved = ""
        if failed is not None:
            record = self._save(
                page, url, failed[0], failed[1], attempts, time.perf_counter() - started, set_aside=set_aside
            )
            self.settle(record, None)
            saved = f" (the last response is saved to {self.raw_dir / record.file})"
        raise IngestionError(f"GET {safe_url} failed after {attempts} attempt(s): {problem}{saved}")

    def parsed(self, url: str, fetched: Fetched) -> Fetched:
        """``fetched`` with its payload: parsed here, or fetched again (see :meth:`get`) when the
        body is JSON-like but does not parse and attempts remain."""
        if fetched.parsed:
            return fetched
        try:
            return self._parse(fetched, self.safe_url(url))
        except BodyNotJson as exc:
            set_aside: list[str] = []
            self._set_aside(fetched, exc, set_aside)
            after = dataclasses.replace(fetched.record, set_aside=fetched.record.set_aside + set_aside)
            return self.get(url, fetched.record.page, after=after)

    @staticmethod
    def _parse(fetched: Fetched, safe_url: str) -> Fetched:
        fetched.payload, fetched.parsed = parse_json(fetched.body, source=safe_url), True
        return fetched

    def _set_aside(self, fetched: Fetched, exc: BodyNotJson, set_aside: list[str]) -> str:
        """Keep a rejected body as ``page-NNNNN.attemptK.*`` for a retry (its name is appended to
        ``set_aside``); raise a clear error when it is not worth one or none is left."""
        record = fetched.record
        retry = (
            not exc.deep
            and _looks_like_json(record.content_type, fetched.body)
            and record.attempts < self.source.retries + 1
        )
        if not retry:
            self.settle(record, None)
            tries = f" after {record.attempts} attempt(s)" if record.attempts > 1 else ""
            raise IngestionError(
                f"{self.scrub(str(exc))}{tries} (raw response saved to {self.raw_dir / record.file})"
            ) from None
        name = self._file_name(
            record.page, f".attempt{record.attempts}{_suffix(record.content_type, fetched.body)}"
        )
        os.replace(self.raw_dir / record.file, self.raw_dir / name)
        self._forget(record)
        set_aside.append(name)
        return f"the body is not valid JSON ({self.scrub(exc.detail)[:200]}; kept as {name})"

    def _refuse_large(
        self, page: int, url: str, exc: BodyTooLarge, attempts: int, seconds: float, set_aside: list[str]
    ) -> None:
        """Raise the error for a body over ``source.max_response_bytes``, keeping what arrived."""
        cap = self.source.max_response_bytes
        if exc.partial:
            record = self._save(
                page,
                url,
                exc.response,
                exc.partial,
                attempts,
                seconds,
                set_aside=set_aside,
                suffix=".partial",
            )
            self.settle(record, None)
            how = f"more than {cap} bytes arrived; the first {len(exc.partial)} are saved to {self.raw_dir / record.file}"
        else:
            how = f"its Content-Length is {exc.declared}; nothing was read"
        raise IngestionError(
            f"GET {self.safe_url(url)}: the response is larger than source.max_response_bytes={cap} ({how})"
        ) from None


def _next_in_body(payload: Any, path: str) -> str | None:
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
        reader.settle(fetched.record, None)
        raise IngestionError(
            f"{reader.scrub(str(exc))} (raw response saved to {reader.raw_dir / fetched.record.file})"
        ) from None
    reader.settle(fetched.record, len(records))
    return records, path


def next_link(
    kind: str, next_url_path: str, url: str, payload: Any, response: requests.Response
) -> str | None:
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
            reader.settle(got.record, None)
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
    for page, url, _, records, path_used in prefetch(iter_pages(reader, source)):
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
    )
