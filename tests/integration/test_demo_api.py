"""The demo API: a deterministic generator, an HTTP server and a CLI."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import numpy as np
import orjson
import pytest

from devtools.demo_api import MAX_LIMIT, DemoDataset, make_server, serve_in_thread

ROWS = 3000


@pytest.fixture(scope="module")
def dataset() -> DemoDataset:
    return DemoDataset.generate(rows=ROWS, seed=11)


@pytest.fixture(scope="module")
def records(dataset: DemoDataset) -> list[dict[str, Any]]:
    return dataset.records(0, dataset.rows)


@pytest.fixture(scope="module")
def api(dataset: DemoDataset) -> Iterator[str]:
    server, url = serve_in_thread(dataset)
    yield url
    server.shutdown()
    server.server_close()


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"] == "application/json"
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        assert exc.headers["Content-Type"] == "application/json"
        return exc.code, orjson.loads(body)


def metric_matrix(dataset: DemoDataset, rows: list[dict[str, Any]]) -> np.ndarray:
    """Metric values as a float matrix, NaN for null or absent cells."""
    names = dataset.metric_names
    return np.array(
        [[r["metrics"].get(n) if r["metrics"].get(n) is not None else np.nan for n in names] for r in rows]
    )


# --------------------------------------------------------------------------- generator


def test_same_seed_gives_identical_records_and_other_seed_differs() -> None:
    a = DemoDataset.generate(rows=500, seed=3)
    b = DemoDataset.generate(rows=500, seed=3)
    c = DemoDataset.generate(rows=500, seed=4)
    assert a.records() == b.records()
    assert a.planted_ids == b.planted_ids
    assert a == b
    assert [r["metrics"] for r in a.records()] != [r["metrics"] for r in c.records()]


def test_record_shape(dataset: DemoDataset, records: list[dict[str, Any]]) -> None:
    first = records[0]
    assert set(first) == {"id", "timestamp", "sensor", "metrics", "tags", "status"}
    assert isinstance(first["id"], int)
    assert re.fullmatch(r"2026-01-\d\dT\d\d:\d\d:00Z", first["timestamp"])
    assert set(first["sensor"]) == {"site", "location"}
    assert isinstance(first["sensor"]["location"]["lat"], float)
    assert isinstance(first["sensor"]["location"]["lon"], float)
    assert 1 <= len({r["sensor"]["site"] for r in records}) <= 6
    assert all(r["status"] == "ok" for r in records)
    assert all(
        isinstance(r["tags"], list) and r["tags"] and all(isinstance(t, str) for t in r["tags"])
        for r in records
    )
    assert len({len(r["tags"]) for r in records}) > 1
    assert dataset.metric_names == [f"m{i:02d}" for i in range(1, 13)]
    assert all(set(r["metrics"]) <= set(dataset.metric_names) for r in records)
    assert orjson.loads(orjson.dumps(records[:50])) == records[:50]


def test_timestamp_is_epoch_plus_id_minutes(records: list[dict[str, Any]]) -> None:
    from datetime import datetime, timedelta

    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    for r in records[:: len(records) // 20]:
        stamp = datetime.strptime(r["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert stamp == epoch + timedelta(minutes=r["id"])


def test_features_controls_metric_names() -> None:
    data = DemoDataset.generate(rows=200, features=5, missing_share=0.0)
    assert all(list(r["metrics"]) == ["m01", "m02", "m03", "m04", "m05"] for r in data.records())


def test_counts_duplicates_and_planted(dataset: DemoDataset, records: list[dict[str, Any]]) -> None:
    assert len(records) == dataset.rows == ROWS
    planted = dataset.planted_ids
    assert planted == sorted(planted)
    assert abs(len(planted) - 0.01 * ROWS) <= 1

    counts = Counter(r["id"] for r in records)
    repeated = {i for i, n in counts.items() if n > 1}
    assert abs(sum(n - 1 for n in counts.values()) - 0.01 * ROWS) <= 1
    assert dataset.duplicate_count == sum(n - 1 for n in counts.values())
    assert not repeated & set(planted), "duplicates copy normal rows only"

    first_seen: dict[int, tuple[int, dict[str, Any]]] = {}
    for position, r in enumerate(records):
        if r["id"] in first_seen:
            earlier, original = first_seen[r["id"]]
            assert r == original and position > earlier
        else:
            first_seen[r["id"]] = (position, r)
    assert len(first_seen) == ROWS - dataset.duplicate_count


def test_missing_values_are_null_and_absent(dataset: DemoDataset, records: list[dict[str, Any]]) -> None:
    names = dataset.metric_names
    planted = set(dataset.planted_ids)
    nulls = sum(1 for r in records for n in names if n in r["metrics"] and r["metrics"][n] is None)
    absent = sum(1 for r in records for n in names if n not in r["metrics"])
    normal_cells = sum(1 for r in records if r["id"] not in planted) * len(names)
    assert nulls > 0 and absent > 0
    assert 0.01 < (nulls + absent) / normal_cells < 0.03
    for r in records:
        if r["id"] in planted:
            assert list(r["metrics"]) == names and None not in r["metrics"].values()


def test_no_missing_and_no_duplicates_when_shares_are_zero() -> None:
    data = DemoDataset.generate(rows=400, missing_share=0.0, duplicate_share=0.0, anomaly_share=0.0)
    rows = data.records()
    assert data.planted_ids == []
    assert [r["id"] for r in rows] == list(range(1, 401))
    assert all(len(r["metrics"]) == 12 and None not in r["metrics"].values() for r in rows)


def test_planted_rows_are_far_from_normal_rows(dataset: DemoDataset, records: list[dict[str, Any]]) -> None:
    values = metric_matrix(dataset, records)
    is_planted = np.isin([r["id"] for r in records], dataset.planted_ids)
    normal = values[~is_planted]
    z = np.abs(values - np.nanmean(normal, axis=0)) / np.nanstd(normal, axis=0)
    extreme = (np.nan_to_num(z) > 4).sum(axis=1)
    assert (extreme[is_planted] >= 2).all()
    assert (extreme[~is_planted] >= 2).mean() < 0.005


def test_distance_score_ranks_planted_rows_on_top(
    dataset: DemoDataset, records: list[dict[str, Any]]
) -> None:
    """Like the pipeline: median-impute, min-max scale, score by distance to the 10th nearest neighbour."""
    values = metric_matrix(dataset, records)
    values = np.where(np.isnan(values), np.nanmedian(values, axis=0), values)
    values = (values - values.min(axis=0)) / np.ptp(values, axis=0)
    squared = (values**2).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2 * values @ values.T
    scores = np.sort(distances, axis=1)[:, 10]
    top = {records[i]["id"] for i in np.argsort(scores)[::-1][: int(0.05 * len(records))]}
    assert len(top & set(dataset.planted_ids)) >= 0.95 * len(dataset.planted_ids)


def test_records_slices(dataset: DemoDataset, records: list[dict[str, Any]]) -> None:
    assert dataset.records(10, 20) == records[10:20]
    assert dataset.records(ROWS - 5, ROWS + 100) == records[-5:]
    assert dataset.records(ROWS + 1, ROWS + 10) == []
    assert dataset.records(20, 10) == []
    with pytest.raises(ValueError, match="start"):
        dataset.records(-1, 10)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rows": 0}, "rows"),
        ({"rows": 10.5}, "rows"),
        ({"features": 0}, "features"),
        ({"features": 100}, "features"),
        ({"anomaly_share": 0.7}, "anomaly_share"),
        ({"missing_share": -0.1}, "missing_share"),
        ({"duplicate_share": "a"}, "duplicate_share"),
        ({"seed": -1}, "seed"),
        ({"rows": 2, "anomaly_share": 0.5, "duplicate_share": 0.5}, "too small"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DemoDataset.generate(**kwargs)


def test_generate_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        DemoDataset.generate(100)  # type: ignore[misc]


def test_million_rows_timing_print() -> None:
    start = time.perf_counter()
    big = DemoDataset.generate(rows=1_000_000)
    page = big.records(500_000, 510_000)
    print(f"1M rows generated + one 10k page built in {time.perf_counter() - start:.2f}s")
    assert big.rows == 1_000_000 and len(page) == 10_000
    assert abs(len(big.planted_ids) - 10_000) <= 1


# --------------------------------------------------------------------------- HTTP


def test_offset_pages_concatenate_to_the_dataset(api: str, records: list[dict[str, Any]]) -> None:
    collected: list[dict[str, Any]] = []
    offset = 0
    while True:
        status, body = get_json(f"{api}/records?offset={offset}&limit=700")
        assert status == 200
        assert body["meta"] == {"total": ROWS, "offset": offset, "limit": 700, "count": len(body["data"])}
        if not body["data"]:
            break
        collected.extend(body["data"])
        offset += len(body["data"])
    assert collected == records


def test_next_links_walk_to_the_end(api: str, records: list[dict[str, Any]]) -> None:
    collected: list[dict[str, Any]] = []
    path: str | None = "/records?limit=1000"
    pages = 0
    while path is not None:
        status, body = get_json(api + path)
        assert status == 200
        collected.extend(body["data"])
        path = body["next"]
        pages += 1
    assert pages == 3
    assert collected == records


def test_records_defaults_and_cap(api: str, records: list[dict[str, Any]]) -> None:
    status, body = get_json(f"{api}/records")
    assert status == 200
    assert body["meta"] == {"total": ROWS, "offset": 0, "limit": 500, "count": 500}
    assert body["data"] == records[:500]
    assert body["next"] == "/records?offset=500&limit=500"
    _, capped = get_json(f"{api}/records?limit={MAX_LIMIT * 5}")
    assert capped["meta"]["limit"] == MAX_LIMIT and capped["meta"]["count"] == ROWS and capped["next"] is None
    _, beyond = get_json(f"{api}/records?offset={ROWS + 10}")
    assert beyond["data"] == [] and beyond["next"] is None


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
    ],
)
def test_bad_parameters_give_400(api: str, query: str, param: str) -> None:
    status, body = get_json(f"{api}/records?{query}")
    assert status == 400
    assert body["parameter"] == param and param in body["error"]


def test_unknown_path_gives_404(api: str) -> None:
    status, body = get_json(f"{api}/nope")
    assert status == 404 and "error" in body


def test_planted_and_health(api: str, dataset: DemoDataset) -> None:
    status, planted = get_json(f"{api}/planted")
    assert status == 200 and planted["ids"] == dataset.planted_ids
    assert sorted(map(int, planted["columns"])) == dataset.planted_ids
    status, health = get_json(f"{api}/health")
    assert (
        status == 200 and health["status"] == "ok" and health["rows"] == ROWS and health["drift_per_run"] == 0
    )


def test_planted_columns_are_the_ones_pushed_away(dataset: DemoDataset) -> None:
    names = dataset.metric_names
    z = np.abs(dataset.metrics - np.median(dataset.metrics, axis=0)) / dataset.metric_spread
    on, off = [], []
    for row, columns in zip(dataset.planted.tolist(), dataset.planted_columns.values()):
        assert 3 <= len(columns) <= len(names) // 2 and set(columns) <= set(names)
        hit = np.isin(names, columns)
        on.extend(z[row, hit])
        off.extend(z[row, ~hit])
    assert np.median(on) > 4 > 1 > np.median(off)


def test_drift_shifts_two_metrics_further_on_every_run(dataset: DemoDataset) -> None:
    server, url = serve_in_thread(dataset, drift_per_run=0.5)
    try:

        def run_means() -> np.ndarray:
            pages = [
                get_json(f"{url}/records?offset={o}&limit=1000")[1]["data"] for o in range(0, ROWS, 1000)
            ]
            return np.nanmean(metric_matrix(dataset, [r for page in pages for r in page]), axis=0)

        first, second, third = run_means(), run_means(), run_means()
        assert get_json(f"{url}/health")[1]["run"] == 2
    finally:
        server.shutdown()
        server.server_close()
    spread = dataset.metric_spread
    np.testing.assert_allclose((second - first)[:2] / spread[:2], 0.5, atol=1e-3)
    np.testing.assert_allclose((third - first)[:2] / spread[:2], 1.0, atol=1e-3)
    np.testing.assert_allclose(third[2:], first[2:])


def test_make_server_binds_loopback_free_port(dataset: DemoDataset) -> None:
    server = make_server(dataset)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
    finally:
        server.server_close()


def test_server_is_quiet(dataset: DemoDataset, capfd: pytest.CaptureFixture[str]) -> None:
    server, url = serve_in_thread(dataset)
    try:
        get_json(f"{url}/health")
        get_json(f"{url}/missing")
    finally:
        server.shutdown()
        server.server_close()
    assert capfd.readouterr().err == ""


# --------------------------------------------------------------------------- CLI


def test_cli_serves_and_exits_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.demo_api", "--port", "0", "--rows", "300", "--seed", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=30), "the CLI printed nothing"
        line = proc.stdout.readline().strip()
        match = re.fullmatch(r"demo API serving 300 records at (http://127\.0\.0\.1:\d+)/records", line)
        assert match, line
        assert get_json(f"{match.group(1)}/health")[1]["rows"] == 300
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devtools.demo_api", "--port", "0", "--rows", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "rows" in result.stderr
