"""A real HTTP server on 127.0.0.1 whose routes each test scripts.

Usage in a test module::

    from http_fixtures import api_server, json_body  # noqa: F401

    def test_something(api_server):
        api_server.route("/items", lambda req: (200, {"Content-Type": "application/json"}, b"[]"))
        ... ingest from api_server.url("/items") ...
        assert api_server.count("/items") == 1
        assert api_server.requests[0].headers["authorization"] == "Bearer ..."

A route answers with a handler ``handler(request) -> (status, headers, body)``, a fixed
``(status, headers, body)`` tuple, or a list of either, used in turn (the last one repeats).
``body`` may be bytes, str, or any JSON-able value (encoded, with a JSON content type unless
the headers name one). A path with no route answers 404. ``api_server.sleep(seconds)`` is a
sleep a handler can use to simulate a slow server; it ends early when the server stops, so
shutting down never waits for a sleeping handler.

Also here: :class:`LoopbackHttpServer`, the start/stop of any such server (the fault suite's
``FlakyApi`` builds on it); :class:`LoopbackServer` and the ``second_server`` fixture, a plain
server on another 127/8 address that counts connections; ``fake_dns``, names resolved as a test says.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import pytest

Response = tuple[int, dict[str, str], Any]
Handler = Callable[["RecordedRequest"], Response]
RouteSpec = Handler | Response | list


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str  # without the query string
    raw_path: str  # with the query string, as sent
    query: dict[str, str]  # last value of each parameter
    query_lists: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


def json_body(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response tuple."""
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(value).encode()


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # a client that timed out and hung up: not an error
        pass


class LoopbackHttpServer:
    """A threaded HTTP server on a loopback address, served from a daemon thread; a context manager.

    A subclass builds its handler in ``_handler_class()`` and calls :meth:`_listen` in ``__init__``.
    ``_stopping`` is set when the server stops, so handlers can end their waits early.
    """

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def _listen(self, host: str = "127.0.0.1") -> None:
        self._stopping = threading.Event()
        self._server = _Server((host, 0), self._handler_class())
        self.port = self._server.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ApiServer(LoopbackHttpServer):
    def __init__(self) -> None:
        self._routes: dict[str, Iterator[Any] | Handler | Response] = {}
        self._sequences: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._log: list[RecordedRequest] = []
        self._listen()

    # ------------------------------------------------------------------ scripting

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def route(self, path: str, spec: RouteSpec) -> ApiServer:
        """Answer requests to ``path`` (query string ignored) with ``spec``."""
        with self._lock:
            if isinstance(spec, list):
                self._sequences[path] = list(spec)
                self._routes.pop(path, None)
            else:
                self._routes[path] = spec
                self._sequences.pop(path, None)
        return self

    def json(
        self, path: str, value: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> ApiServer:
        return self.route(path, json_body(value, status, headers))

    def sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._log)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def count(self, path: str | None = None) -> int:
        return len(self.requests if path is None else self.requests_to(path))

    # ------------------------------------------------------------------ serving

    def _pick(self, path: str) -> Any:
        with self._lock:
            if path in self._sequences:
                seq = self._sequences[path]
                return seq.pop(0) if len(seq) > 1 else seq[0]
            return self._routes.get(path)

    def _respond(self, request: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        spec = self._pick(request.path)
        if spec is None:
            return (
                404,
                {"Content-Type": "application/json"},
                json.dumps({"error": f"no route for {request.path}"}).encode(),
            )
        status, headers, body = spec(request) if callable(spec) else spec
        headers = dict(headers or {})
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        return int(status), headers, bytes(body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query_lists = parse_qs(parts.query, keep_blank_values=True)
                request = RecordedRequest(
                    method=self.command,
                    path=parts.path,
                    raw_path=self.path,
                    query={k: v[-1] for k, v in query_lists.items()},
                    query_lists=query_lists,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with api._lock:
                    api._log.append(request)
                try:
                    status, headers, payload = api._respond(request)
                except Exception as exc:  # a broken handler shows up as a 599 with its message
                    status, headers, payload = (
                        599,
                        {"Content-Type": "text/plain"},
                        f"handler failed: {exc!r}".encode(),
                    )
                if api._stopping.is_set():
                    return
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        return Handler


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    """A started :class:`ApiServer`; stopped after the test."""
    server = ApiServer().start()
    try:
        yield server
    finally:
        server.stop()


class LoopbackServer(LoopbackHttpServer):
    """A started server on any 127/8 address that answers ``{"ok": true}`` and counts TCP connections and paths."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.connections = 0
        self.paths: list[str] = []
        self._listen(host)
        self.url = self.base_url + "/"
        self.start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:  # once per accepted connection (HTTP/1.0: one request each)
                owner.connections += 1
                super().setup()

            def do_GET(self) -> None:
                owner.paths.append(self.path)
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def second_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer("127.0.0.2")
    try:
        yield server
    finally:
        server.stop()


def install_fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names added to the returned dict resolve to the given addresses (others resolve as usual)."""
    names: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if isinstance(host, str) and host in names:
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, int(port)) if ":" not in a else (a, int(port), 0, 0),
                )
                for a in names[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    return install_fake_dns(monkeypatch)
