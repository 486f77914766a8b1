"""A built-in demo REST API serving synthetic sensor records with planted anomalies.

The module has three parts:

* :class:`DemoDataset` -- a pure, deterministic generator. The data is stored column by column in
  numpy arrays, so a million records take a couple of seconds and well under 500 MB; JSON-ready
  records are built only for the slice a request asks for.
* :func:`make_server` / :func:`serve_in_thread` -- a small ``http.server`` API with offset/limit
  and next-URL pagination (``/records``), the ground truth (``/planted``) and ``/health``.
* :func:`main` -- ``python -m devtools.demo_api`` serves the API until SIGTERM/SIGINT.

Every record looks like::

    {"id": 17, "timestamp": "2026-01-01T00:17:00Z",
     "sensor": {"site": "plant-north", "location": {"lat": 52.5212, "lon": 13.4043}},
     "metrics": {"m01": 101.2345, "m02": null, ...},
     "tags": ["calibrated", "indoor"], "status": "ok"}

Normal records come from four correlated Gaussian clusters. Planted anomalies deviate by 6-10
standard deviations (random signs) on at least three metrics and never have missing values.
About ``missing_share`` of the metric cells of normal records are ``null`` or absent, and about
``duplicate_share`` of the records are exact copies of an earlier normal record.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson

log = logging.getLogger(__name__)

#: The timestamp of id 0; record ``id`` is stamped ``EPOCH + id minutes``.
EPOCH = np.datetime64("2026-01-01T00:00:00", "s")

#: Sites (one per cluster, with some mixing) and their approximate coordinates.
SITES: tuple[tuple[str, float, float], ...] = (
    ("plant-north", 52.5200, 13.4050),
    ("plant-south", 48.1372, 11.5755),
    ("warehouse-east", 50.1109, 8.6821),
    ("lab-west", 53.5511, 9.9937),
)

#: The tag lists a record can carry (picked per record; lengths vary from one to three).
TAG_SETS: tuple[tuple[str, ...], ...] = (
    ("calibrated",),
    ("calibrated", "indoor"),
    ("calibrated", "outdoor"),
    ("indoor", "battery"),
    ("outdoor", "mains"),
    ("calibrated", "indoor", "v2"),
    ("outdoor", "battery", "v2"),
)

N_CLUSTERS = 4
MAX_FEATURES = 99
DEFAULT_LIMIT = 500
MAX_LIMIT = 10_000

_PRESENT, _NULL, _ABSENT = 0, 1, 2
_DECIMALS = 4


# --------------------------------------------------------------------------- generator


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_share(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 0.5:
        raise ValueError(f"{name} must be between 0 and 0.5, got {value}")
    return value


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _normal_metrics(rng: np.random.Generator, *, rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``rows`` points from correlated Gaussian clusters in standardised units.

    Returns
    -------
    tuple of numpy.ndarray
        The points, shape ``(rows, features)``, and each point's cluster, shape ``(rows,)``.
    """
    rank = min(3, features)
    centers = rng.normal(0.0, 3.0, size=(N_CLUSTERS, features))
    loadings = rng.normal(0.0, 0.6, size=(N_CLUSTERS, rank, features))
    weights = rng.dirichlet(np.full(N_CLUSTERS, 6.0))
    cluster = rng.choice(N_CLUSTERS, size=rows, p=weights).astype(np.int8)
    # Build the points grouped by cluster (contiguous blocks are cheap), then put them in row order.
    by_cluster = np.argsort(cluster, kind="stable")
    grouped = rng.standard_normal((rows, features))
    grouped *= 0.5
    latent = rng.standard_normal((rows, rank))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cluster, minlength=N_CLUSTERS))])
    for k in range(N_CLUSTERS):
        block = slice(bounds[k], bounds[k + 1])
        grouped[block] += centers[k]
        grouped[block] += np.einsum("nr,rf->nf", latent[block], loadings[k])
    points = np.empty_like(grouped)
    points[by_cluster] = grouped
    del grouped
    return points, cluster


def _plant_anomalies(
    rng: np.random.Generator, points: np.ndarray, *, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Push ``count`` random rows of ``points`` (in place) 6-10 standard deviations away.

    Returns
    -------
    tuple of numpy.ndarray
        The sorted row indices of the planted anomalies, shape ``(count,)``, and which metrics
        each one was pushed on, shape ``(count, features)`` (bool).
    """
    rows, features = points.shape
    planted = np.sort(rng.choice(rows, size=count, replace=False))
    spread = points[: min(rows, 100_000)].std(axis=0) if rows > 1 else np.ones(features)
    spread = np.where(spread > 0, spread, 1.0)
    low = min(3, features)
    high = max(low, features // 2)
    n_hit = rng.integers(low, high + 1, size=(count, 1))
    # Each row hits its n_hit features of lowest random rank: a random subset of that size.
    rank = rng.random((count, features)).argsort(axis=1).argsort(axis=1)
    hit = rank < n_hit
    signs = rng.choice((-1.0, 1.0), size=(count, features))
    shift = np.where(hit, signs * rng.uniform(6.0, 10.0, size=(count, features)) * spread, 0.0)
    points[planted] += shift
    return planted, hit


def _missing_codes(
    rng: np.random.Generator, *, shape: tuple[int, int], share: float, planted: np.ndarray
) -> np.ndarray:
    """Mark about ``share`` of the cells as null or absent (half each); planted rows stay complete."""
    codes = np.zeros(shape, dtype=np.int8)
    if share <= 0:
        return codes
    hit = rng.random(shape, dtype=np.float32) < share
    absent = rng.random(shape, dtype=np.float32) < 0.5
    codes[hit] = _NULL
    codes[hit & absent] = _ABSENT
    codes[planted] = _PRESENT
    return codes


def _stream_order(rng: np.random.Generator, *, unique: int, sources: np.ndarray) -> np.ndarray:
    """Interleave duplicates of ``sources`` into ``0..unique-1``, each after its original.

    Returns
    -------
    numpy.ndarray
        For every served position, the index of the unique row it shows.
    """
    # Unique row i sorts at key 2*i; a copy of row s goes after some unique row j >= s (key 2*j+1).
    after = sources + np.floor(rng.random(sources.size) * (unique - sources)).astype(np.int64)
    keys = np.concatenate([2 * np.arange(unique, dtype=np.int64), 2 * after + 1])
    rows = np.concatenate([np.arange(unique, dtype=np.int64), sources.astype(np.int64)])
    return rows[np.argsort(keys, kind="stable")]


def _scale_to_units(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """Give each metric its own realistic offset and scale, rounded to a few decimals (in place)."""
    features = points.shape[1]
    points *= rng.uniform(0.5, 25.0, size=features)
    points += rng.uniform(-20.0, 500.0, size=features)
    return np.round(points, _DECIMALS, out=points)


@dataclass(frozen=True)
class DemoDataset:
    """Synthetic sensor records with planted anomalies, missing values and duplicates.

    Build one with :meth:`generate`; the columns are read-only numpy arrays indexed by unique row,
    and ``order`` maps each served position to its unique row (duplicates repeat a row).

    Attributes
    ----------
    rows : int
        Records served, duplicates included.
    features : int
        Metrics per record, named ``m01`` .. ``mNN``.
    seed : int
        The seed the data was generated from.
    """

    rows: int
    features: int
    seed: int
    anomaly_share: float
    missing_share: float
    duplicate_share: float
    metrics: np.ndarray = field(repr=False, compare=False)
    missing: np.ndarray = field(repr=False, compare=False)
    site: np.ndarray = field(repr=False, compare=False)
    lat: np.ndarray = field(repr=False, compare=False)
    lon: np.ndarray = field(repr=False, compare=False)
    tags: np.ndarray = field(repr=False, compare=False)
    order: np.ndarray = field(repr=False, compare=False)
    planted: np.ndarray = field(repr=False, compare=False)
    planted_hits: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def generate(
        cls,
        *,
        rows: int = 5000,
        features: int = 12,
        anomaly_share: float = 0.01,
        missing_share: float = 0.02,
        duplicate_share: float = 0.01,
        seed: int = 7,
    ) -> DemoDataset:
        """Generate a dataset; the same arguments always give the same records.

        Parameters
        ----------
        rows : int
            Records served in total, duplicates included (>= 1).
        features : int
            Metrics per record (1 to 99).
        anomaly_share : float
            Share of records that are planted anomalies (0 to 0.5).
        missing_share : float
            Share of the metric cells of normal records that are null or absent (0 to 0.5).
        duplicate_share : float
            Share of records that are exact copies of an earlier normal record (0 to 0.5).
        seed : int
            Non-negative random seed.

        Returns
        -------
        DemoDataset

        Raises
        ------
        ValueError
            If an argument is out of range or the shares leave no normal record to duplicate.
        """
        rows = _check_int("rows", rows, low=1)
        features = _check_int("features", features, low=1, high=MAX_FEATURES)
        seed = _check_int("seed", seed, low=0)
        anomaly_share = _check_share("anomaly_share", anomaly_share)
        missing_share = _check_share("missing_share", missing_share)
        duplicate_share = _check_share("duplicate_share", duplicate_share)

        n_dup = int(round(duplicate_share * rows))
        unique = rows - n_dup
        n_anom = int(round(anomaly_share * rows))
        if n_anom + n_dup > unique:
            raise ValueError(
                f"rows={rows} is too small for anomaly_share={anomaly_share} and duplicate_share={duplicate_share}: "
                "no normal record would be left to duplicate"
            )

        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
        points, cluster = _normal_metrics(streams[0], rows=unique, features=features)
        planted, hits = _plant_anomalies(streams[1], points, count=n_anom)
        codes = _missing_codes(streams[2], shape=points.shape, share=missing_share, planted=planted)
        site, lat, lon, tags = _sensor_columns(streams[3], cluster)
        normal = np.setdiff1d(np.arange(unique), planted, assume_unique=True)
        sources = (
            np.sort(streams[4].choice(normal, size=n_dup, replace=False)) if n_dup else np.empty(0, np.int64)
        )
        order = _stream_order(streams[4], unique=unique, sources=sources)
        metrics = _scale_to_units(streams[0], points)
        return cls(
            rows=rows,
            features=features,
            seed=seed,
            anomaly_share=anomaly_share,
            missing_share=missing_share,
            duplicate_share=duplicate_share,
            metrics=_readonly(metrics),
            missing=_readonly(codes),
            site=_readonly(site),
            lat=_readonly(lat),
            lon=_readonly(lon),
            tags=_readonly(tags),
            order=_readonly(order),
            planted=_readonly(planted),
            planted_hits=_readonly(hits),
        )

    @property
    def metric_names(self) -> list[str]:
        """The metric keys, ``m01`` .. ``mNN``."""
        return [f"m{i:02d}" for i in range(1, self.features + 1)]

    @property
    def planted_ids(self) -> list[int]:
        """The sorted ids of the planted anomalies (the ground truth)."""
        return (self.planted + 1).tolist()

    @property
    def planted_columns(self) -> dict[int, list[str]]:
        """For every planted id, the metrics it was pushed away on (the anomalous columns)."""
        names = self.metric_names
        return {
            int(i) + 1: [names[j] for j in np.flatnonzero(hit)]
            for i, hit in zip(self.planted.tolist(), self.planted_hits)
        }

    @property
    def metric_spread(self) -> np.ndarray:
        """Standard deviation of each metric (first 100,000 rows), the unit of :class:`Drift`."""
        spread = (
            self.metrics[: min(len(self.metrics), 100_000)].std(axis=0)
            if len(self.metrics) > 1
            else np.ones(self.features)
        )
        return np.where(spread > 0, spread, 1.0)

    @property
    def duplicate_count(self) -> int:
        """How many served records are copies of an earlier record."""
        return self.rows - self.metrics.shape[0]

    def records(
        self, start: int = 0, stop: int | None = None, *, shift: np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """Build the JSON-ready records served at positions ``start`` .. ``stop - 1``.

        Parameters
        ----------
        start : int
            First position (>= 0).
        stop : int, optional
            One past the last position; clipped to :attr:`rows`. Defaults to the end.
        shift : numpy.ndarray, optional
            Added to every record's metrics, shape ``(features,)`` (see :class:`Drift`).

        Returns
        -------
        list of dict
            Fresh records (nothing shared between calls).
        """
        start = _check_int("start", start, low=0)
        stop = self.rows if stop is None else _check_int("stop", stop, low=0)
        index = self.order[min(start, self.rows) : min(stop, self.rows)]
        if index.size == 0:
            return []
        return _build_records(self, index, shift)


def _sensor_columns(rng: np.random.Generator, cluster: np.ndarray) -> tuple[np.ndarray, ...]:
    """Site (mostly its cluster's), jittered coordinates and a tag set for every row."""
    rows = cluster.size
    site = np.where(rng.random(rows) < 0.9, cluster % len(SITES), rng.integers(0, len(SITES), rows)).astype(
        np.int8
    )
    base = np.array([[lat, lon] for _, lat, lon in SITES])
    jitter = rng.normal(0.0, 0.01, size=(rows, 2))
    lat = np.round(base[site, 0] + jitter[:, 0], 5)
    lon = np.round(base[site, 1] + jitter[:, 1], 5)
    tags = rng.integers(0, len(TAG_SETS), rows).astype(np.int8)
    return site, lat, lon, tags


def _build_records(
    dataset: DemoDataset, index: np.ndarray, shift: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Turn unique-row ``index`` into record dicts from whole-column ``.tolist()`` conversions."""
    names = dataset.metric_names
    ids = (index + 1).tolist()
    stamps = np.datetime_as_string(
        EPOCH + (index + 1).astype("timedelta64[m]"), unit="s", timezone="UTC"
    ).tolist()
    sites = [SITES[s][0] for s in dataset.site[index].tolist()]
    lats = dataset.lat[index].tolist()
    lons = dataset.lon[index].tolist()
    tags = dataset.tags[index].tolist()
    values = dataset.metrics[index]
    values = (np.round(values + shift, _DECIMALS) if shift is not None and shift.any() else values).tolist()
    codes = dataset.missing[index]
    gappy = codes.any(axis=1)
    gaps = dict(zip(np.flatnonzero(gappy).tolist(), codes[gappy].tolist()))
    out = []
    for i, row_id in enumerate(ids):
        metrics = dict(zip(names, values[i]))
        if i in gaps:
            _apply_gaps(metrics, names, gaps[i])
        out.append(
            {
                "id": row_id,
                "timestamp": stamps[i],
                "sensor": {"site": sites[i], "location": {"lat": lats[i], "lon": lons[i]}},
                "metrics": metrics,
                "tags": list(TAG_SETS[tags[i]]),
                "status": "ok",
            }
        )
    return out


def _apply_gaps(metrics: dict[str, Any], names: list[str], codes: list[int]) -> None:
    for name, code in zip(names, codes):
        if code == _NULL:
            metrics[name] = None
        elif code == _ABSENT:
            del metrics[name]


# --------------------------------------------------------------------------- HTTP server


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


# --------------------------------------------------------------------------- CLI


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


if __name__ == "__main__":
    raise SystemExit(main())
