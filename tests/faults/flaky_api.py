"""A paginated JSON API on 127.0.0.1 that misbehaves on cue, at the socket level where needed.

    api = FlakyApi(dataset(35), page_size=10, script={2: ["reset", "500"], 3: ["truncated", "changed"]})
    with api:
        ... read api.url ("/items") with offset pagination, or follow the "next" links ...
    api.injected   # Counter of the faults actually performed
    api.served     # every complete, healthy body sent, by page

Pages
    ``GET /items?offset=O&limit=L`` answers ``{"items": [...], "next": "/items?offset=O+L&limit=L"}``
    (``next`` is null after the last page); without parameters it is the first page. A page is
    numbered ``offset // page_size + 1``.

Faults
    ``script[page]`` lists what the successive requests for that page get; once the list is used
    up the page is healthy. Each entry is one of :data:`FAULTS`:

    ``reset``       the request is read, then the socket is closed with ``SO_LINGER`` 0: an RST, no response
    ``reset_body``  headers and half the body, then an RST
    ``500``         HTTP 500 with a JSON error body
    ``429``         HTTP 429 with ``Retry-After: 1``
    ``stall``       nothing at all for ``pause_seconds`` (longer than the client's timeout), then a close
    ``trickle``     headers, then the body a few bytes at a time, ``pause_seconds`` between pieces
    ``drip``        headers, then the body a few bytes at a time, ``drip_seconds`` between pieces
                    (shorter than the client's timeout, longer in total than its deadline)
    ``truncated``   a 200 with half the body and an honest ``Content-Length`` of that half
    ``short``       a 200 whose ``Content-Length`` is the whole body's but only half is sent, then a close
    ``changed``     a complete, valid 200 whose records have changed (``rev`` goes up by one): the
                    page's content changed between retries (not a fault of the transport)

Other routes
    :meth:`FlakyApi.route` serves any other path with a function ``handler(conn, query)`` that
    writes what it likes through a :class:`Conn` (status line, headers, raw bytes, pauses), for
    hostile bodies: endless streams, lying ``Content-Length``, gzip bombs.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from http_fixtures import LoopbackHttpServer

FAULTS = ("reset", "reset_body", "500", "429", "stall", "trickle", "drip", "truncated", "short", "changed")


def dataset(count: int) -> list[dict[str, Any]]:
    """Records whose values survive both readers' typing unchanged (no numeric text, no timestamps)."""
    return [
        {
            "id": i,
            "name": f"rec-{i}",
            "value": round(i * 1.25, 2),
            "rev": 0,
            "nested": {"a": i % 7, "b": {"c": f"c{i % 3}"}},
        }
        for i in range(count)
    ]


class Conn:
    """The raw connection of one request: write exactly what the server should send."""

    def __init__(self, handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        self._handler = handler
        self._stopping = stopping

    def head(self, status: int, headers: dict[str, str]) -> None:
        """Send the status line and headers (no ``Content-Length`` unless given)."""
        self._handler.send_response(status)
        for name, value in headers.items():
            self._handler.send_header(name, value)
        self._handler.send_header("Connection", "close")
        self._handler.end_headers()
        self._handler.wfile.flush()

    def write(self, data: bytes) -> bool:
        """Send bytes; False once the client has gone."""
        try:
            self._handler.wfile.write(data)
            self._handler.wfile.flush()
            return True
        except OSError:
            return False

    def pause(self, seconds: float) -> bool:
        """Wait; False when the server is stopping."""
        return not self._stopping.wait(seconds)

    def trickle(self, data: bytes, *, piece: int, seconds: float) -> None:
        """Send ``data`` ``piece`` bytes at a time with a pause before each piece."""
        for start in range(0, len(data), piece):
            if not self.pause(seconds) or not self.write(data[start : start + piece]):
                return

    def reset(self) -> None:
        """Abort the connection with an RST: ``SO_LINGER`` 0, then close."""
        sock = self._handler.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._handler.rfile.close()
        sock.close()
        self._handler.close_connection = True


Route = Callable[[Conn, dict[str, str]], None]


def static(body: bytes, headers: dict[str, str] | None = None, status: int = 200) -> Route:
    """A route that answers every request with ``body`` (an honest ``Content-Length`` unless given)."""
    head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}

    def handler(conn: Conn, query: dict[str, str]) -> None:
        conn.head(status, head)
        conn.write(body)

    return handler


class FlakyApi(LoopbackHttpServer):
    """The dataset, paginated, with faults scripted per page and request (see the module docstring)."""

    def __init__(
        self,
        records: list[dict[str, Any]],
        *,
        page_size: int = 10,
        script: dict[int, list[str]] | None = None,
        pause_seconds: float = 1.5,
        drip_seconds: float = 0.1,
    ) -> None:
        unknown = {fault for faults in (script or {}).values() for fault in faults} - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
        self.records = records
        self.page_size = page_size
        self.script = {page: list(faults) for page, faults in (script or {}).items()}
        self.pause_seconds = pause_seconds
        self.drip_seconds = drip_seconds
        self.injected: Counter[str] = Counter()
        self.served: dict[int, list[bytes]] = defaultdict(list)
        self.requests: Counter[int] = Counter()
        self.revisions: Counter[int] = Counter()
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._listen()
        self.url = self.base_url + "/items"

    # ------------------------------------------------------------------ the dataset

    @property
    def pages(self) -> int:
        """Pages holding records (offset pagination then asks for one more, empty or short)."""
        return -(-len(self.records) // self.page_size)

    def page_url(self, page: int) -> str:
        return f"{self.url}?offset={(page - 1) * self.page_size}&limit={self.page_size}"

    def page_body(self, offset: int, limit: int, revision: int) -> bytes:
        items = [
            {**record, "rev": revision, "value": record["value"] + revision}
            for record in self.records[offset : offset + limit]
        ]
        following = offset + limit if offset + limit < len(self.records) else None
        nxt = f"/items?offset={following}&limit={limit}" if following is not None else None
        return json.dumps({"items": items, "next": nxt}).encode()

    def route(self, path: str, handler: Route) -> FlakyApi:
        self.routes[path] = handler
        return self

    # ------------------------------------------------------------------ serving

    def _next_fault(self, page: int) -> str | None:
        with self._lock:
            self.requests[page] += 1
            faults = self.script.get(page)
            fault = faults.pop(0) if faults else None
            if fault is not None:
                self.injected[fault] += 1
            if fault == "changed":
                self.revisions[page] += 1
            return fault

    def _serve_items(self, conn: Conn, query: dict[str, str]) -> None:
        offset = int(query.get("offset", 0))
        limit = int(query.get("limit", self.page_size))
        page = offset // self.page_size + 1
        fault = self._next_fault(page)
        body = self.page_body(offset, limit, self.revisions[page])
        half = body[: len(body) // 2]
        json_type = {"Content-Type": "application/json"}
        if fault == "reset":
            conn.reset()
        elif fault == "reset_body":
            conn.head(200, {**json_type, "Content-Length": str(len(body))})
            conn.write(half)
            conn.reset()
        elif fault in ("500", "429"):
            error = json.dumps({"error": f"injected {fault}"}).encode()
            extra = {"Retry-After": "1"} if fault == "429" else {}
            conn.head(int(fault), {**json_type, **extra, "Content-Length": str(len(error))})
            conn.write(error)
        elif fault == "stall":
            conn.pause(self.pause_seconds)
        elif fault in ("trickle", "drip"):
            conn.head(200, {**json_type, "Content-Length": str(len(body))})
            pieces = 4 if fault == "trickle" else 40
            seconds = self.pause_seconds if fault == "trickle" else self.drip_seconds
            conn.trickle(body, piece=-(-len(body) // pieces), seconds=seconds)
        elif fault == "truncated":
            conn.head(200, {**json_type, "Content-Length": str(len(half))})
            conn.write(half)
        elif fault == "short":
            conn.head(200, {**json_type, "Content-Length": str(len(body))})
            conn.write(half)
        else:  # healthy, or "changed": a complete page of the page's current revision
            conn.head(200, {**json_type, "Content-Length": str(len(body))})
            if conn.write(body):
                with self._lock:
                    self.served[page].append(body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                conn = Conn(self, api._stopping)
                self.close_connection = True
                with api._lock:
                    api.hits[parts.path] += 1
                try:
                    if parts.path == "/items":
                        api._serve_items(conn, query)
                    elif parts.path in api.routes:
                        api.routes[parts.path](conn, query)
                    else:
                        conn.head(404, {"Content-Type": "text/plain", "Content-Length": "9"})
                        conn.write(b"not found")
                except OSError:  # the client hung up mid-response
                    pass

        return Handler
