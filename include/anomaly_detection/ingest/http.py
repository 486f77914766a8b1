"""HTTP pieces of the readers: query parameters, ``Retry-After``, bodies read within a byte cap and a
deadline, and short secret-free reasons for failures.

Limits
    A body is read a network receive at a time and refused once it passes
    ``source.max_response_bytes`` (a ``Content-Length`` above it is refused before reading). A body
    still arriving ``source.max_response_seconds`` after its request was sent is abandoned
    (``timeout_seconds`` only bounds each wait for data).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import io
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import urllib3

#: Redirects followed for one request (each hop checked by the outbound guard).
MAX_REDIRECTS = 10


USER_AGENT = "dynamic-anomaly-detection/0.1"


RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


#: The most one read of a body asks for (a read returns what one network receive brings).
READ_CHUNK_BYTES = 256 * 1024


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


def retry_after(response: requests.Response) -> float | None:
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


def connection_problem(exc: requests.ConnectionError) -> str:
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


def origin(url: str) -> tuple[str, str]:
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


def declared_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def body_reader(raw: Any) -> Callable[[int], bytes]:
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
    declared = declared_length(response)
    if declared is not None and declared > cap:
        raise BodyTooLarge(response, b"", declared)
    read = body_reader(response.raw)
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


def broken_body(exc: requests.RequestException) -> str:
    """The first line of what urllib3 said about a broken body (no URL in it)."""
    inner = exc.args[0] if exc.args else exc
    text = str(inner.args[0] if getattr(inner, "args", None) else inner)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def looks_like_json(content_type: str, body: bytes) -> bool:
    """Whether a body that did not parse was meant to be JSON (so it may be a cut-off page)."""
    start = body[:64].lstrip()
    if start.lower().startswith((b"<!doctype", b"<html")):
        return False
    return not start or start[:1] in (b"{", b"[") or "json" in content_type


def body_suffix(content_type: str, body: bytes) -> str:
    if "json" in content_type:
        return ".json"
    if "html" in content_type or body[:15].lower().startswith((b"<!doctype", b"<html")):
        return ".html"
    return ".json" if body[:1] in (b"{", b"[") else ".txt"
