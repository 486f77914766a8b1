"""Parse response bodies as JSON: orjson first; the standard library, with a raised recursion limit on
a thread with a large stack, for NaN/Infinity literals and deep nesting.

Hostile input
    Invalid UTF-8 is decoded with U+FFFD replacement characters and a warning naming the source
    and the byte offset of the first bad sequence (the raw snapshot keeps the original bytes), so
    one mis-encoded text field does not cost the whole run. Nesting deeper than about 20,000
    levels is a :class:`BodyNotJson` error, never a ``RecursionError`` or a crashed stack, in any
    thread.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

import orjson

from anomaly_detection.errors import IngestionError

log = logging.getLogger(__name__)

_PARSE_RECURSION_LIMIT = 20_000


#: Stack of the thread that runs the standard library's parser: 20,000 levels need about 4 MiB.
_PARSE_STACK_BYTES = 64 * 2**20


#: The fallback parser changes process-wide settings (recursion limit, new threads' stack size).
_PARSE_LOCK = threading.Lock()


class BodyNotJson(IngestionError):
    """A response body that could not be parsed as JSON.

    Attributes
    ----------
    detail : str
        The parser's own message (with its position).
    deep : bool
        Whether the body is nested too deeply: a property of the data, never worth a retry.
    """

    def __init__(self, message: str, *, detail: str, deep: bool = False) -> None:
        super().__init__(message)
        self.detail = detail
        self.deep = deep


def parse_json(body: bytes, *, source: str) -> Any:
    """Parse a response body, naming ``source`` and the body's start in the error.

    Parameters
    ----------
    body : bytes
        The response body: UTF-8 (UTF-16/32 with or without a byte order mark are read too).
    source : str
        Where the body came from (a URL with secrets masked), for messages.

    Returns
    -------
    Any
        The parsed value.

    Raises
    ------
    BodyNotJson
        The body is not JSON, or is nested more than about 20,000 levels deep (``deep``).

    Notes
    -----
    Bytes that are not valid in the body's encoding are replaced with U+FFFD and logged as a
    warning naming ``source`` and the byte offset of the first one; the body is not refused.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    text, repaired = _decode(body, source)
    if repaired:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _parse_standard(text, body, source)


def _decode(body: bytes, source: str) -> tuple[str, bool]:
    """``(text, changed)``: the body decoded in the encoding JSON detection names, bad bytes replaced."""
    encoding = json.detect_encoding(body)
    try:
        return body.decode(encoding), encoding != "utf-8"
    except UnicodeDecodeError as exc:
        log.warning(
            "response from %s is not valid %s at byte %d (%r); undecodable bytes are read as U+FFFD "
            "(the raw snapshot keeps the original bytes)",
            source,
            encoding,
            exc.start,
            body[exc.start : exc.start + 8],
        )
        return body.decode(encoding, "replace"), True


def _parse_standard(text: str, body: bytes, source: str) -> Any:
    """``json.loads`` (NaN/Infinity, deep nesting) in a thread whose stack fits the raised recursion limit."""
    outcome: dict[str, Any] = {}

    def parse() -> None:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, _PARSE_RECURSION_LIMIT))
        try:
            outcome["value"] = json.loads(text)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc
        finally:
            sys.setrecursionlimit(limit)

    with _PARSE_LOCK:
        previous = threading.stack_size(_PARSE_STACK_BYTES)
        try:
            worker = threading.Thread(target=parse, name="json-parse", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
        worker.join()
    error = outcome.get("error")
    if error is None:
        return outcome["value"]
    if not isinstance(error, (RecursionError, ValueError)):
        raise error
    if isinstance(error, RecursionError):
        raise BodyNotJson(
            f"response from {source} is nested too deeply to parse (more than about {_PARSE_RECURSION_LIMIT:,} levels)",
            detail="nested too deeply",
            deep=True,
        )
    start = body[:120].decode("utf-8", "replace").strip()
    kind = "an HTML page" if start.lower().startswith(("<!doctype html", "<html")) else "not valid JSON"
    raise BodyNotJson(
        f"response from {source} is {kind} ({error}); it starts with {start!r}", detail=str(error)
    )
