"""The demo API's HTTP server: offset/limit and next-URL pagination (``/records``), the ground truth
(``/planted``), ``/health``, optional drift between runs, and the command line."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson

from devtools.demo_api.dataset import DEFAULT_LIMIT, MAX_LIMIT, DemoDataset

log = logging.getLogger(__name__)


class Drift:
    """A distribution that moves between runs: each run sees its metrics shifted further.

    A request for the first page (``offset`` 0) starts a new run. Run ``r`` (0 for the first)
    sees the first ``columns`` metrics shifted by ``r * per_run`` of their standard deviation;
    the other metrics, and the planted anomalies relative to their run, stay as they are.
    """

    def __init__(self, spread: np.ndarray, *, per_run: float = 0.0, columns: int = 2) -> None:
        self.per_run = float(per_run)
        self.columns = max(0, min(int(columns), spread.size))
        self._unit = np.zeros_like(spread)
        self._unit[: self.columns] = spread[: self.columns]
        self._lock = threading.Lock()
        self.run = -1

    def start_run(self) -> int:
        with self._lock:
            self.run += 1
            return self.run

    def shift(self) -> np.ndarray | None:
        run = max(self.run, 0)
        return self._unit * (run * self.per_run) if self.per_run and run else None


class DemoServer(ThreadingHTTPServer):
    """A threading HTTP server that serves one :class:`DemoDataset` (with an optional :class:`Drift`)."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        dataset: DemoDataset,
        *,
        drift_per_run: float = 0.0,
        page_delay: float = 0.0,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        if page_delay < 0:
            raise ValueError(f"page_delay must be >= 0, got {page_delay}")
        self.dataset = dataset
        self.drift = Drift(dataset.metric_spread, per_run=drift_per_run)
        #: Seconds every ``/records`` page waits before it is sent (a slow API, for fault-injection tests).
        self.page_delay = float(page_delay)
        super().__init__(address, DemoHandler)


class BadParameter(ValueError):
    """A query parameter is invalid; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _int_param(query: dict[str, list[str]], name: str, *, default: int, low: int) -> int:
    values = query.get(name)
    if not values:
        return default
    raw = values[-1].strip()
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(name, f"{name} must be an integer, got {raw!r}") from None
    if value < low:
        raise BadParameter(name, f"{name} must be >= {low}, got {value}")
    return value


def records_page(
    dataset: DemoDataset, *, offset: int, limit: int, shift: np.ndarray | None = None
) -> dict[str, Any]:
    """The ``/records`` response body for one page.

    Parameters
    ----------
    dataset : DemoDataset
    offset : int
        First position served (>= 0).
    limit : int
        Page size, already capped at :data:`MAX_LIMIT`.
    shift : numpy.ndarray, optional
        Added to the metrics (the current run's :class:`Drift`).

    Returns
    -------
    dict
        ``{"meta": {...}, "data": [...], "next": url or None}``.
    """
    data = dataset.records(offset, offset + limit, shift=shift)
    end = offset + len(data)
    nxt = f"/records?offset={end}&limit={limit}" if data and end < dataset.rows else None
    meta = {"total": dataset.rows, "offset": offset, "limit": limit, "count": len(data)}
    return {"meta": meta, "data": data, "next": nxt}


class DemoHandler(BaseHTTPRequestHandler):
    """Routes ``/records``, ``/planted`` and ``/health``; everything answers JSON."""

    server: DemoServer
    protocol_version = "HTTP/1.1"
    server_version = "AnomalyDemoAPI/0.1"
    timeout = 60

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        parts = urlsplit(self.path)
        route = parts.path.rstrip("/") or "/"
        dataset = self.server.dataset
        if route == "/records":
            self._records(dataset, parse_qs(parts.query, keep_blank_values=True))
        elif route == "/planted":
            columns = {str(k): v for k, v in dataset.planted_columns.items()}
            self._send(HTTPStatus.OK, {"ids": dataset.planted_ids, "columns": columns})
        elif route == "/health":
            drift = self.server.drift
            self._send(
                HTTPStatus.OK,
                {"status": "ok", "rows": dataset.rows, "run": drift.run, "drift_per_run": drift.per_run},
            )
        else:
            self._send(
                HTTPStatus.NOT_FOUND,
                {"error": f"no such path: {parts.path}", "paths": ["/records", "/planted", "/health"]},
            )

    def do_POST(self) -> None:  # noqa: N802
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET is supported"}, extra={"Allow": "GET"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _records(self, dataset: DemoDataset, query: dict[str, list[str]]) -> None:
        try:
            offset = _int_param(query, "offset", default=0, low=0)
            limit = min(_int_param(query, "limit", default=DEFAULT_LIMIT, low=1), MAX_LIMIT)
        except BadParameter as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc), "parameter": exc.parameter})
            return
        if offset == 0:
            self.server.drift.start_run()
        if self.server.page_delay:
            time.sleep(self.server.page_delay)
        self._send(
            HTTPStatus.OK, records_page(dataset, offset=offset, limit=limit, shift=self.server.drift.shift())
        )

    def _send(self, status: HTTPStatus, payload: Any, *, extra: dict[str, str] | None = None) -> None:
        body = orjson.dumps(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError) as exc:
            log.debug("client went away: %s", exc)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server signature)
        log.debug("%s - %s", self.address_string(), format % args)


def make_server(
    dataset: DemoDataset,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    drift_per_run: float = 0.0,
    page_delay: float = 0.0,
) -> DemoServer:
    """Bind (but do not start) a server for ``dataset``.

    Parameters
    ----------
    dataset : DemoDataset
    host : str
        Address to bind; loopback by default.
    port : int
        Port to bind; 0 picks a free one (read it from ``server.server_address[1]``).
    drift_per_run : float, optional
        Shift of the first two metrics per run, in standard deviations (see :class:`Drift`).
    page_delay : float, optional
        Seconds each ``/records`` page is held back before it is sent (0: none).

    Returns
    -------
    DemoServer
        A :class:`~http.server.ThreadingHTTPServer`; call ``serve_forever()`` to start it.
    """
    return DemoServer((host, port), dataset, drift_per_run=drift_per_run, page_delay=page_delay)


def base_url(server: DemoServer) -> str:
    """``http://host:port`` of a bound server."""
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_in_thread(
    dataset: DemoDataset,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    drift_per_run: float = 0.0,
    page_delay: float = 0.0,
) -> tuple[DemoServer, str]:
    """Serve ``dataset`` from a daemon thread.

    Returns
    -------
    tuple of (DemoServer, str)
        The server (stop it with ``shutdown()`` then ``server_close()``) and its base URL.
    """
    server = make_server(dataset, host, port, drift_per_run=drift_per_run, page_delay=page_delay)
    thread = threading.Thread(target=server.serve_forever, name="demo-api", daemon=True)
    thread.start()
    return server, base_url(server)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo_api",
        description="Serve synthetic sensor records with planted anomalies over HTTP.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8765, help="port to bind, 0 for any free port (default: %(default)s)"
    )
    parser.add_argument("--rows", type=int, default=5000, help="records served, duplicates included")
    parser.add_argument("--features", type=int, default=12, help="metrics per record")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--anomaly-share", type=float, default=0.01)
    parser.add_argument("--missing-share", type=float, default=0.02)
    parser.add_argument("--duplicate-share", type=float, default=0.01)
    parser.add_argument(
        "--drift-per-run",
        type=float,
        default=0.0,
        help="shift m01 and m02 by this many standard deviations more on every run (a run starts at offset 0)",
    )
    parser.add_argument(
        "--page-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="hold every /records page back this long before sending it: a slow API (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the dataset and serve it until SIGTERM or SIGINT.

    Returns
    -------
    int
        The exit status: 0 after a clean shutdown, 2 for bad arguments or an unusable address.
    """
    args = build_parser().parse_args(argv)
    try:
        dataset = DemoDataset.generate(
            rows=args.rows,
            features=args.features,
            seed=args.seed,
            anomaly_share=args.anomaly_share,
            missing_share=args.missing_share,
            duplicate_share=args.duplicate_share,
        )
        server, url = serve_in_thread(
            dataset, args.host, args.port, drift_per_run=args.drift_per_run, page_delay=args.page_delay
        )
    except (ValueError, OSError) as exc:
        print(f"demo API: {exc}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"demo API serving {dataset.rows} records at {url}/records", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
