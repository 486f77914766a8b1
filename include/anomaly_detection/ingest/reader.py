"""Fetch pages from a REST JSON API: retries, redirects, credentials, and a raw snapshot of every body.

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
    Bodies and the manifest go to the reader's :class:`~anomaly_detection.ingest.snapshot.Snapshot`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from anomaly_detection.config import REDACTED, SourceConfig, looks_secret, redact_url
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.auth import CredentialResolver, env_credentials, secret_values
from anomaly_detection.ingest.http import (
    MAX_REDIRECTS,
    RETRY_STATUSES,
    USER_AGENT,
    BodyTooLarge,
    BodyTooSlow,
    body_suffix,
    broken_body,
    connection_problem,
    looks_like_json,
    origin,
    read_body,
    retry_after,
    with_params,
)
from anomaly_detection.ingest.outbound import guarded_session
from anomaly_detection.ingest.parse import BodyNotJson, parse_json
from anomaly_detection.ingest.snapshot import JsonSnapshot, PageRecord, Snapshot

log = logging.getLogger(__name__)


@dataclass
class Fetched:
    """One page's response, its body and manifest entry, and (once parsed) its payload."""

    response: requests.Response
    body: bytes
    record: PageRecord
    payload: Any = None
    parsed: bool = False


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
        snapshot: Snapshot | None = None,
    ) -> None:
        self.source = source
        self.snapshot = snapshot if snapshot is not None else JsonSnapshot(Path(raw_dir))
        self.raw_dir = self.snapshot.raw_dir
        self.session = session or guarded_session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers["Accept"] = "application/json"
        self.auth_headers, self.auth_params = credentials(source)
        self.secrets = secret_values(self.auth_headers, self.auth_params)
        self.origin = origin(source.url)
        self.sleep = sleep

    def scrub(self, text: str) -> str:
        """Mask secret-looking query parameters and every credential value in ``text``."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def safe_url(self, url: str) -> str:
        return self.scrub(redact_url(url))

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        hinted = retry_after(response) if response is not None else None
        delay = hinted if hinted is not None else self.source.backoff_seconds * (2**attempt)
        return min(delay, self.source.max_backoff_seconds)

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
        name = self.snapshot.file_name(
            page, suffix if suffix is not None else body_suffix(content_type, body)
        )
        return self.snapshot.save(
            name,
            body,
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

    @property
    def pages(self) -> list[PageRecord]:
        """The manifest's entries (kept by a :class:`~anomaly_detection.ingest.snapshot.JsonSnapshot` only)."""
        return getattr(self.snapshot, "pages", [])

    def settle(self, record: PageRecord, records: int | None) -> None:
        """Record how many records a saved page held (None: it could not be read) in the manifest."""
        self.snapshot.settle(record, records)

    def close(self) -> None:
        self.snapshot.close()

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
            if origin(url) != self.origin:
                headers = self._public_headers()
        raise requests.exceptions.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")

    def _public_headers(self) -> dict[str, str]:
        """The configured headers that carry no secret: what a request to another origin gets."""
        return {k: v for k, v in self.source.headers.items() if not looks_secret(k, v)}

    def _addressed(self, url: str) -> tuple[str, dict[str, str]]:
        """The URL and headers to send: credentials only to the origin of ``source.url``."""
        same_origin = origin(url) == self.origin
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
            return response, b"", f"connection failed ({connection_problem(exc)})"
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
                f"the connection broke before the whole body arrived ({self.scrub(broken_body(exc))})",
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
            and looks_like_json(record.content_type, fetched.body)
            and record.attempts < self.source.retries + 1
        )
        if not retry:
            self.settle(record, None)
            tries = f" after {record.attempts} attempt(s)" if record.attempts > 1 else ""
            raise IngestionError(
                f"{self.scrub(str(exc))}{tries} (raw response saved to {self.raw_dir / record.file})"
            ) from None
        name = self.snapshot.file_name(
            record.page, f".attempt{record.attempts}{body_suffix(record.content_type, fetched.body)}"
        )
        os.replace(self.raw_dir / record.file, self.raw_dir / name)
        self.snapshot.forget(record)
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
