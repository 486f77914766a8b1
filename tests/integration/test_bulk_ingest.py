"""anomaly_detection.ingest.bulk against a real HTTP server on 127.0.0.1: concurrent pages to Parquet parts."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests

from anomaly_detection.config import build_config
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.bulk import ingest_to_parquet
from anomaly_detection.ingest.native import ingest

try:
    from http_fixtures import api_server, json_body  # noqa: F401
except ImportError:  # tests/ is a package: import it by its package name
    from tests.http_fixtures import api_server, json_body  # noqa: F401

SECRET = "s3cr3t-T0ken-value-42"


class Sleeps(list):
    """A fake ``sleep`` that records the delays asked for."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def config(url: str, **source):
    return build_config({"source": {"url": url, "backoff_seconds": 0.01, **source}})


def bulk(url: str, tmp_path: Path, *, sleep=None, batch_records: int = 1, **source):
    """Bulk ingestion with a part file per page unless ``batch_records`` says otherwise."""
    cfg = config(url, **source)
    return ingest_to_parquet(
        cfg.source,
        cfg.processing,
        tmp_path / "raw",
        tmp_path / "parts",
        sleep=sleep if sleep is not None else Sleeps(),
        batch_records=batch_records,
    )


def sequential(url: str, tmp_path: Path, **source) -> pd.DataFrame:
    cfg = config(url, **source)
    return ingest(cfg.source, cfg.processing, tmp_path / "seq-raw", sleep=Sleeps()).frame


def record(i: int) -> dict:
    """Nested objects, ragged lists, nulls, absent keys, booleans and text: nothing finalize_frame would convert."""
    rec = {
        "id": i,
        "value": i * 1.5,
        "name": f"item {i}",
        "ok": i % 3 == 0,
        "geo": {"site": f"s{i % 4}", "pos": {"x": i / 7, "y": None if i % 5 == 0 else -i}},
        "tags": ["a", "b"][: i % 3],
    }
    if i % 4:
        rec["sometimes"] = i * 2
    return rec


def offset_handler(total: int, make=record):
    def handler(req):
        offset, limit = int(req.query["offset"]), int(req.query["limit"])
        return json_body([make(i) for i in range(offset, min(offset + limit, total))])

    return handler


def parts(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "parts").iterdir())


def manifest(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "raw" / "manifest.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda entry: entry["page"])


def values(column: pd.Series) -> list:
    """The column as a list, missing values as None (pandas reads missing text as NaN)."""
    return [None if pd.isna(v) else v for v in column.tolist()]


def assert_same_records(bulk_frame: pd.DataFrame, native: pd.DataFrame) -> None:
    assert list(bulk_frame.columns) == list(native.columns)
    pd.testing.assert_frame_equal(bulk_frame, native, check_dtype=False)


# --------------------------------------------------------------------------- pagination


def test_offset_pages_fetched_concurrently_match_the_sequential_ingest(api_server, tmp_path):
    api_server.route("/items", offset_handler(95))
    result = bulk(
        api_server.url("/items"), tmp_path, concurrency=4, pagination={"type": "offset", "page_size": 10}
    )
    assert (result.records, result.pages, result.truncated) == (95, 10, False)
    assert parts(tmp_path) == [f"part-{i:06d}.parquet" for i in range(10)]
    # the window ahead is bounded: at most 2 x concurrency requests past the last page
    assert 10 <= api_server.count() <= 10 + 2 * 4 and result.requests == api_server.count()
    frame = pd.read_parquet(tmp_path / "parts")
    assert frame["id"].tolist() == list(range(95))
    assert_same_records(
        frame, sequential(api_server.url("/items"), tmp_path, pagination={"type": "offset", "page_size": 10})
    )
    assert (
        result.columns["id"] == "double"
        and result.columns["ok"] == "bool"
        and result.columns["tags"] == "string"
    )
    assert len({pq.read_schema(tmp_path / "parts" / name) for name in parts(tmp_path)}) == 1


@pytest.mark.parametrize("kind", ["offset", "next_url"])
def test_consecutive_pages_are_written_together_in_batches(api_server, tmp_path, kind):
    """Pages of 10 records in batches of at least 25: parts start at pages 1, 4, 7, 10; same records."""
    if kind == "offset":
        api_server.route("/items", offset_handler(95))
        pagination = {"type": "offset", "page_size": 10}
    else:

        def handler(req):
            start = int(req.query.get("from", 0))
            body = {"items": [record(i) for i in range(start, min(start + 10, 95))]}
            if start + 10 < 95:
                body["next"] = f"/items?from={start + 10}"
            return json_body(body)

        api_server.route("/items", handler)
        pagination = {"type": "next_url", "next_url_path": "next"}
    options = {"pagination": pagination, **({"records_path": "items"} if kind == "next_url" else {})}
    result = bulk(api_server.url("/items"), tmp_path, batch_records=25, concurrency=3, **options)
    assert (result.records, result.pages) == (95, 10)
    assert parts(tmp_path) == [
        "part-000000.parquet",
        "part-000003.parquet",
        "part-000006.parquet",
        "part-000009.parquet",
    ]
    frame = pd.read_parquet(tmp_path / "parts")
    assert frame["id"].tolist() == list(range(95))
    assert_same_records(frame, sequential(api_server.url("/items"), tmp_path, **options))
    assert len(manifest(tmp_path)) >= 10  # the raw snapshot still has every page


def test_page_numbers_fetched_concurrently_match_the_sequential_ingest(api_server, tmp_path):
    def handler(req):
        page, size = int(req.query["page"]), int(req.query["per_page"])
        return json_body({"results": [record(i) for i in range((page - 1) * size, min(page * size, 23))]})

    api_server.route("/p", handler)
    options = {
        "records_path": "results",
        "pagination": {"type": "page", "page_size": 5, "limit_param": "per_page", "start_page": 1},
    }
    result = bulk(api_server.url("/p"), tmp_path, concurrency=3, **options)
    assert (result.records, result.pages) == (23, 5)
    frame = pd.read_parquet(tmp_path / "parts")
    assert_same_records(frame, sequential(api_server.url("/p"), tmp_path, **options))


@pytest.mark.parametrize("kind", ["next_url", "link_header"])
def test_next_links_are_followed_one_page_at_a_time(api_server, tmp_path, kind):
    def handler(req):
        n = int(req.query.get("cursor", 0))
        more = n < 3
        if kind == "next_url":
            return json_body(
                {
                    "data": [record(i) for i in range(n * 4, n * 4 + 4)],
                    "next": f"/items?cursor={n + 1}" if more else None,
                }
            )
        links = {"Link": f'</items?cursor={n + 1}>; rel="next"'} if more else {}
        return json_body([record(i) for i in range(n * 4, n * 4 + 4)], headers=links)

    api_server.route("/items", handler)
    options = {"records_path": "data"} if kind == "next_url" else {}
    result = bulk(api_server.url("/items"), tmp_path, concurrency=4, pagination={"type": kind}, **options)
    assert [r.query.get("cursor") for r in api_server.requests] == [None, "1", "2", "3"]
    assert (result.records, result.pages) == (16, 4)
    assert parts(tmp_path) == [f"part-{i:06d}.parquet" for i in range(4)]
    assert_same_records(
        pd.read_parquet(tmp_path / "parts"),
        sequential(api_server.url("/items"), tmp_path, pagination={"type": kind}, **options),
    )


def test_pages_are_fetched_at_most_two_windows_ahead(api_server, tmp_path):
    """While page 1 is slow, no more than 2 x concurrency pages are requested: what memory holds is bounded."""
    serve = offset_handler(200)
    early: list[int] = []
    released = threading.Event()

    def handler(req):
        offset = int(req.query["offset"])
        if offset == 0:
            api_server.sleep(0.5)
            early.extend(int(r.query["offset"]) for r in api_server.requests)
            released.set()
        return serve(req)

    api_server.route("/items", handler)
    result = bulk(
        api_server.url("/items"), tmp_path, concurrency=2, pagination={"type": "offset", "page_size": 10}
    )
    assert released.is_set() and result.records == 200
    assert 0 in early and set(early) <= {0, 10, 20, 30}  # the window: pages 1-4, nothing further


def test_max_records_plans_only_the_pages_needed(api_server, tmp_path):
    api_server.route("/items", offset_handler(1000))
    result = bulk(
        api_server.url("/items"),
        tmp_path,
        concurrency=4,
        max_records=25,
        pagination={"type": "offset", "page_size": 10},
    )
    assert api_server.count() == 3
    assert result.truncated and result.records == 25
    assert pd.read_parquet(tmp_path / "parts")["id"].tolist() == list(range(25))


def test_an_api_that_ignores_the_page_parameter_stops(api_server, tmp_path, caplog):
    api_server.json("/same", [record(i) for i in range(10)])
    with caplog.at_level(logging.WARNING, logger="anomaly_detection"):
        result = bulk(
            api_server.url("/same"), tmp_path, concurrency=2, pagination={"type": "page", "page_size": 10}
        )
    assert result.records == 10 and parts(tmp_path) == ["part-000000.parquet"]
    assert api_server.count() <= 1 + 2 * 2
    assert "identical to the page before" in caplog.text


def test_no_records_is_an_error(api_server, tmp_path):
    api_server.json("/empty", [])
    with pytest.raises(IngestionError, match="no records"):
        bulk(api_server.url("/empty"), tmp_path, pagination={"type": "offset", "page_size": 10})


# --------------------------------------------------------------------------- retries and failures


def test_500_and_429_are_retried_then_succeed(api_server, tmp_path):
    failures = {10: (500, {}, b"oops"), 20: (429, {"Retry-After": "0"}, b"slow down")}
    seen: set[int] = set()
    lock = threading.Lock()
    serve = offset_handler(35)

    def handler(req):
        offset = int(req.query["offset"])
        with lock:
            first = offset not in seen
            seen.add(offset)
        return failures[offset] if first and offset in failures else serve(req)

    api_server.route("/items", handler)
    sleeps = Sleeps()
    result = bulk(
        api_server.url("/items"),
        tmp_path,
        sleep=sleeps,
        concurrency=4,
        pagination={"type": "offset", "page_size": 10},
    )
    assert result.records == 35
    assert pd.read_parquet(tmp_path / "parts")["id"].tolist() == list(range(35))
    assert sorted(sleeps) == [0.0, 0.01]  # Retry-After: 0, and the backoff after the 500
    attempts = {entry["page"]: entry["attempts"] for entry in manifest(tmp_path)}
    assert attempts[2] == 2 and attempts[3] == 2 and attempts[1] == 1


def test_a_failing_page_is_named_and_earlier_pages_stay(api_server, tmp_path):
    serve = offset_handler(100)
    api_server.route(
        "/items",
        lambda req: (
            (404, {"Content-Type": "text/plain"}, b"gone") if req.query["offset"] == "30" else serve(req)
        ),
    )
    with pytest.raises(IngestionError) as info:
        bulk(
            api_server.url("/items"), tmp_path, concurrency=2, pagination={"type": "offset", "page_size": 10}
        )
    message = str(info.value)
    assert message.startswith("page 4:") and "HTTP 404" in message and "gone" in message
    assert api_server.url("/items?offset=30&limit=10") in message
    assert "30 records from 3 earlier page(s)" in message
    assert parts(tmp_path)[:3] == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert "part-000003.parquet" not in parts(tmp_path)
    raw = tmp_path / "raw"
    for page in (1, 2, 3, 4):
        assert (raw / f"page-{page:06d}.json.gz").exists() or (raw / f"page-{page:06d}.txt.gz").exists()
    assert gzip.decompress((raw / "page-000004.txt.gz").read_bytes()) == b"gone"
    entries = {entry["page"]: entry for entry in manifest(tmp_path)}
    assert [entries[p]["records"] for p in (1, 2, 3)] == [10, 10, 10]
    assert entries[4]["status"] == 404 and entries[4]["records"] is None


def test_bad_json_names_the_url_and_the_saved_file(api_server, tmp_path):
    serve = offset_handler(100)
    api_server.route(
        "/items",
        lambda req: (
            (200, {"Content-Type": "application/json"}, b'[{"id": 1')
            if req.query["offset"] == "10"
            else serve(req)
        ),
    )
    with pytest.raises(IngestionError) as info:
        bulk(
            api_server.url("/items"), tmp_path, concurrency=3, pagination={"type": "offset", "page_size": 10}
        )
    message = str(info.value)
    assert message.startswith("page 2:") and "not valid JSON" in message and "page-000002.json.gz" in message
    assert api_server.url("/items?offset=10&limit=10") in message


def test_a_cut_off_page_is_fetched_again_and_the_good_body_is_the_snapshot(api_server, tmp_path):
    serve = offset_handler(35)
    seen: set[int] = set()
    lock = threading.Lock()

    def handler(req):
        offset = int(req.query["offset"])
        with lock:
            first = offset not in seen
            seen.add(offset)
        status, headers, body = serve(req)
        return (status, headers, body[:-20]) if first and offset == 10 else (status, headers, body)

    api_server.route("/items", handler)
    result = bulk(
        api_server.url("/items"), tmp_path, concurrency=3, pagination={"type": "offset", "page_size": 10}
    )
    assert result.records == 35
    assert pd.read_parquet(tmp_path / "parts")["id"].tolist() == list(range(35))
    entry = {e["page"]: e for e in manifest(tmp_path)}[2]
    assert (
        entry["set_aside"] == ["page-000002.attempt1.json.gz"]
        and entry["attempts"] == 2
        and entry["records"] == 10
    )
    raw = tmp_path / "raw"
    good = gzip.decompress((raw / "page-000002.json.gz").read_bytes())
    assert json.loads(good) == [record(i) for i in range(10, 20)]
    assert gzip.decompress((raw / "page-000002.attempt1.json.gz").read_bytes()) == good[:-20]


def test_every_session_comes_from_the_session_factory(api_server, tmp_path):
    made = []

    def factory():
        session = requests.Session()
        session.headers["X-From-Factory"] = str(len(made))
        made.append(session)
        return session

    api_server.route("/items", offset_handler(45))
    cfg = config(api_server.url("/items"), concurrency=3, pagination={"type": "offset", "page_size": 10})
    result = ingest_to_parquet(
        cfg.source,
        cfg.processing,
        tmp_path / "raw",
        tmp_path / "parts",
        sleep=Sleeps(),
        session_factory=factory,
    )
    assert result.records == 45 and len(made) >= 2
    assert all("x-from-factory" in r.headers for r in api_server.requests)


# --------------------------------------------------------------------------- types


def test_type_drift_across_pages_reads_back_as_one_table(api_server, tmp_path):
    pages = [
        [
            {"id": 1, "x": 1.5, "flag": True, "late": None, "n": 2},
            {"id": 2, "x": 2.0, "flag": False, "late": None, "n": 3},
        ],
        [
            {"id": 3, "x": "n/a", "flag": 1, "late": 7, "n": 4.5},
            {"id": 4, "x": None, "flag": None, "late": 8, "n": None},
        ],
        [{"id": 5, "x": 3, "flag": True, "late": 9, "n": 5, "extra": "e", "big": 2**60 + 1}],
    ]
    api_server.route(
        "/items",
        lambda req: json_body(pages[int(req.query["page"]) - 1] if int(req.query["page"]) <= 3 else []),
    )
    result = bulk(
        api_server.url("/items"), tmp_path, concurrency=3, pagination={"type": "page", "page_size": 2}
    )
    assert result.columns == {
        "id": "double",
        "x": "string",
        "flag": "string",
        "late": "double",
        "n": "double",
        "extra": "string",
        "big": "string",
    }
    schemas = {pq.read_schema(tmp_path / "parts" / name) for name in parts(tmp_path)}
    assert len(schemas) == 1  # the earlier parts were rewritten to the final schema
    frame = pd.read_parquet(tmp_path / "parts")
    assert frame["id"].tolist() == [1, 2, 3, 4, 5]
    assert values(frame["x"]) == ["1.5", "2", "n/a", None, "3"]
    assert values(frame["flag"]) == ["true", "false", "1", None, "true"]
    assert frame["late"].isna().tolist() == [True, True, False, False, False] and frame["late"].iloc[2] == 7
    assert frame["n"].tolist()[:3] == [2.0, 3.0, 4.5]
    assert values(frame["extra"]) == [None, None, None, None, "e"]
    assert frame["big"].iloc[4] == str(2**60 + 1)


# --------------------------------------------------------------------------- raw snapshot and secrets


@pytest.mark.parametrize("auth", ["query", "bearer"])
def test_gzip_snapshot_and_manifest_without_secrets(api_server, tmp_path, monkeypatch, caplog, auth):
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    bodies: dict[str, bytes] = {}
    serve = offset_handler(25)

    def handler(req):
        status, headers, body = serve(req)
        bodies[req.query["offset"]] = body
        return status, headers, body

    api_server.route("/items", handler)
    caplog.set_level(logging.DEBUG, logger="anomaly_detection")
    result = bulk(
        api_server.url("/items"),
        tmp_path,
        concurrency=2,
        auth={"type": auth, "token_env": "MY_API_TOKEN"},
        pagination={"type": "offset", "page_size": 10},
    )
    if auth == "query":
        assert {r.query["api_key"] for r in api_server.requests} == {SECRET}
    else:
        assert {r.headers["authorization"] for r in api_server.requests} == {f"Bearer {SECRET}"}
    entries = manifest(tmp_path)
    assert result.manifest_path == tmp_path / "raw" / "manifest.jsonl"
    assert len(entries) == api_server.count()  # pages fetched past the end are listed too
    entries = entries[:3]
    assert [e["page"] for e in entries] == [1, 2, 3] and [e["records"] for e in entries] == [10, 10, 5]
    for entry, offset in zip(entries, ("0", "10", "20")):
        body = gzip.decompress((tmp_path / "raw" / entry["file"]).read_bytes())
        assert body == bodies[offset]
        assert entry["bytes"] == len(body) and entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["status"] == 200 and entry["file"].endswith(".json.gz")
        assert entry["url"] == api_server.url(
            f"/items?offset={offset}&limit=10"
        )  # the credential is added per request only
    assert SECRET not in result.manifest_path.read_text()
    assert SECRET not in caplog.text


# --------------------------------------------------------------------------- politeness


def test_the_rate_limit_is_honoured(api_server, tmp_path):
    arrivals: list[float] = []
    serve = offset_handler(195)

    def handler(req):
        arrivals.append(time.monotonic())
        return serve(req)

    api_server.route("/items", handler)
    source = {
        "concurrency": 4,
        "max_requests_per_second": 20,
        "pagination": {"type": "offset", "page_size": 10},
    }
    result = bulk(api_server.url("/items"), tmp_path, **source)
    assert result.records == 195
    arrivals.sort()
    assert len(arrivals) >= 20
    # 20/s spaces requests 50 ms apart: 20+ requests take about a second (unlimited, a few ms)
    assert arrivals[-1] - arrivals[0] >= 0.8 * (len(arrivals) - 1) / 20
    # no half-second holds much more than 10 (+1 at the window's edge, +3 for scheduling jitter)
    for i, start in enumerate(arrivals):
        assert sum(1 for t in arrivals[i:] if t - start < 0.5) <= 14
