"""Records in every common JSON shape and cursor pagination, read through HTTP from a loopback server.

The recorded responses come from ../shared/data/api (read in place; those tests skip without it);
the rest is generated. Both the native reader and the Spark path's bulk ingestion are exercised,
and ``ingest.json`` is checked through the pipeline's ingest stage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from http_fixtures import api_server, json_body  # noqa: F401
from ingest_helpers import Sleeps, run

from anomaly_detection.config import build_config
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.bulk import ingest_to_parquet
from anomaly_detection.pipeline.stages import ingest_stage
from anomaly_detection.runs import RunPaths

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "api"


def shared(name: str) -> bytes:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"shared API data not found at {path}")
    return path.read_bytes()


def serve(server, path: str, body, content_type: str = "application/json") -> str:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    server.route(path, (200, {"Content-Type": content_type}, data))
    return server.url(path)


def bulk(url: str, tmp_path: Path, **source):
    cfg = build_config({"source": {"url": url, "backoff_seconds": 0.01, **source}})
    result = ingest_to_parquet(
        cfg.source, cfg.processing, tmp_path / "raw", tmp_path / "parts", sleep=Sleeps(), batch_records=1
    )
    return result, pd.read_parquet(tmp_path / "parts")


def stage(url: str, tmp_path: Path, mode: str, **source) -> dict:
    """The pipeline's ingest stage; returns the ``ingest.json`` it wrote."""
    config = build_config(
        {"source": {"url": url, "backoff_seconds": 0.01, **source}, "processing": {"mode": mode}}
    )
    paths = RunPaths.create(tmp_path / "runs", tmp_path / "reports", f"shapes-{mode}")
    ingest_stage(config, paths)
    return json.loads(paths.ingest_info.read_text())


# --------------------------------------------------------------------------- recorded responses


def socrata_expected(body: bytes) -> tuple[list[str], list[dict]]:
    """The visible columns of a rows.json and its rows as objects, from the file itself."""
    payload = json.loads(body)
    names = [c["fieldName"] for c in payload["meta"]["view"]["columns"]]
    keep = [i for i, name in enumerate(names) if not name.startswith(":")]
    return [names[i] for i in keep], [{names[i]: row[i] for i in keep} for row in payload["data"]]


@pytest.mark.parametrize("records_path", [None, "data"])
def test_socrata_rows_json(api_server, tmp_path, records_path, caplog):
    body = shared("socrata_rows_chicago_tree_recycling.json")
    visible, rows = socrata_expected(body)
    hidden = len(json.loads(body)["meta"]["view"]["columns"]) - len(visible)
    url = serve(api_server, "/api/views/abcd-1234/rows.json", body)
    with caplog.at_level(logging.INFO, logger="anomaly_detection.ingest.pagination"):
        result = run(url, tmp_path, records_path=records_path)
    frame = result.frame
    assert len(frame) == len(rows) and result.records_path == "data"
    assert not [c for c in frame.columns if c.startswith(":")]
    # a list value (Socrata's location) is expanded to indexed columns, like any short fixed list
    assert sorted({c.split(".")[0] for c in frame.columns}) == sorted(visible)
    assert frame["address"].tolist() == [r["address"] for r in rows]
    assert frame["latitude"].tolist() == pytest.approx([float(r["latitude"]) for r in rows])
    shape = result.records_shape
    assert shape.startswith(f"'data' as rows of arrays with {len(visible)} columns from 'meta.view.columns'")
    assert f"Socrata rows.json; {hidden} hidden ':' columns dropped" in shape
    assert f"{len(rows)} rows × {len(visible)} fields" in shape
    assert f"records: {shape}" in caplog.text
    if records_path is None:
        assert "'meta.view.columns' (the column list of 'data', not data)" in caplog.text


@pytest.mark.parametrize("mode", ["native", "spark"])
def test_socrata_ingest_json_says_the_shape(api_server, tmp_path, mode):
    body = shared("socrata_rows_chicago_tree_recycling.json")
    visible, rows = socrata_expected(body)
    info = stage(serve(api_server, "/rows.json", body), tmp_path, mode)
    assert info["rows"] == len(rows) and info["warnings"] == []
    assert info["records_shape"].startswith("'data' as rows of arrays") and "Socrata" in info["records_shape"]
    frame = pd.read_parquet(tmp_path / "runs" / f"shapes-{mode}" / "flattened.parquet")
    if mode == "spark":  # the bulk path keeps lists as JSON text: one column per visible column
        assert list(frame.columns) == visible
    assert frame["community_area_name"].tolist() == [r["community_area_name"] for r in rows]


def test_open_meteo_column_layout(api_server, tmp_path, caplog):
    body = shared("open_meteo_hourly.json")
    payload = json.loads(body)
    hourly, daily = payload["hourly"], payload["daily"]
    with caplog.at_level(logging.INFO, logger="anomaly_detection.ingest.pagination"):
        result = run(serve(api_server, "/v1/forecast", body), tmp_path)
    assert result.records_path == "hourly" and list(result.frame.columns) == list(hourly)
    assert len(result.frame) == len(hourly["time"])
    assert result.records_shape == (
        f"'hourly' as a column layout ({len(hourly)} parallel arrays), {len(hourly['time']):,} rows × "
        f"{len(hourly)} fields (the largest of 2 candidates by rows × fields)"
    )
    assert f"'daily' (column layout) {len(daily['time'])} × {len(daily)}" in caplog.text


def test_worldbank_meta_and_data(api_server, tmp_path):
    body = shared("worldbank_debt.json")
    meta, data = json.loads(body)
    result = run(serve(api_server, "/v2/indicator", body), tmp_path)
    assert result.records_path == "1" and len(result.frame) == len(data)
    assert result.records_shape.startswith(f"'1' as a list of objects, {len(data)} rows")
    assert not set(meta) & set(result.frame.columns)


def test_usgs_geojson(api_server, tmp_path):
    body = shared("usgs_earthquakes_all_week_2019.geojson")
    features = json.loads(body)["features"]
    result = run(serve(api_server, "/all_week.geojson", body, "application/geo+json"), tmp_path)
    assert result.records_path == "features" and len(result.frame) == len(features)
    assert result.records_shape.startswith(
        f"'features' as a list of objects (GeoJSON FeatureCollection), {len(features):,} rows"
    )
    assert {f"properties.{k}" for k in features[0]["properties"]} <= set(result.frame.columns)


def test_taxi_list_of_objects(api_server, tmp_path):
    body = shared("nyc_yellow_taxi_2019.json")
    trips = json.loads(body)
    result = run(serve(api_server, "/resource/trips.json", body), tmp_path)
    keys = list(dict.fromkeys(k for trip in trips for k in trip))
    assert result.records_path == "<root>" and len(result.frame) == len(trips)
    assert list(result.frame.columns) == keys
    assert "the response is a list of objects" in result.records_shape


# --------------------------------------------------------------------------- generated shapes


@pytest.mark.parametrize("records_path", [None, "data"])
def test_columns_and_data(api_server, tmp_path, records_path):
    payload = {
        "columns": [
            {"name": "id", "type": "Int"},
            {"name": "x", "type": "Float"},
            {"name": "tag", "type": "String"},
        ],
        "data": [[i, i * 0.5, f"t{i % 3}"] for i in range(40)],
        "rows": 40,
    }
    result = run(serve(api_server, "/query", payload), tmp_path, records_path=records_path)
    assert list(result.frame.columns) == ["id", "x", "tag"]
    assert result.frame["x"].tolist() == [r[1] for r in payload["data"]]
    assert "from 'columns' (columns + data)" in result.records_shape


def test_header_row_arrays(api_server, tmp_path):
    payload = [["station", "temp", "wind"]] + [[f"s{i}", 10 + i, i / 4] for i in range(25)]
    result = run(serve(api_server, "/values", payload), tmp_path)
    assert list(result.frame.columns) == payload[0] and len(result.frame) == len(payload) - 1
    assert result.frame["temp"].tolist() == [r[1] for r in payload[1:]]
    assert "from its header row" in result.records_shape


@pytest.mark.parametrize(("row", "length"), [(["r2", "x"], 2), (["r2", "x", 1, 2, "extra"], 5)])
def test_rows_json_with_a_row_of_the_wrong_length(api_server, tmp_path, row, length):
    columns = [{"fieldName": name, "name": name} for name in (":sid", "name", "value", "score")]
    data = [["r0", "a", 1, 2], ["r1", "b", 3, 4], row, ["r3", "d", 7, 8]]
    url = serve(api_server, "/rows.json", {"meta": {"view": {"columns": columns}}, "data": data})
    with pytest.raises(IngestionError) as info:
        run(url, tmp_path)
    message = str(info.value)
    assert f"row 2 of 'data' in the response from {url} has {length} values" in message
    assert "the column list 'meta.view.columns' has 4 columns" in message
    assert "page-00001.json" in message


@pytest.mark.parametrize("mode", ["native", "spark"])
def test_repeated_column_names_follow_the_collision_rule(api_server, tmp_path, mode):
    payload = {"columns": ["a", "b", "a"], "data": [[1, 2, 3], [4, 5, 6]]}
    url = serve(api_server, "/dup", payload)
    info = stage(url, tmp_path, mode)
    frame = pd.read_parquet(tmp_path / "runs" / f"shapes-{mode}" / "flattened.parquet")
    assert list(frame.columns) == ["a", "b", "a__dup1"]
    assert frame["a__dup1"].tolist() == [3, 6] and frame["a"].tolist() == [1, 4]
    assert "repeated names renamed: a__dup1" in info["records_shape"]
    if mode == "native":
        assert info["key_collisions"] == {"a": "a__dup1"}


# --------------------------------------------------------------------------- cursor pagination


def cursor_api(server, pages: dict[str, tuple[list[int], object]], *, path: str = "meta.next"):
    """Serve ``pages``: cursor sent (``""`` for the first request) -> (ids, next cursor or ``...`` for
    no cursor key at all), the cursor at ``path`` of the body."""

    def handler(req):
        ids, nxt = pages[req.query.get("after", "")]
        body: dict = {"items": [{"id": i, "value": i * 1.5} for i in ids]}
        if nxt is not ...:
            outer, _, inner = path.rpartition(".")
            (body.setdefault(outer, {}) if outer else body)[inner] = nxt
        return json_body(body)

    server.route("/feed", handler)
    return server.url("/feed")


CURSOR = {"type": "cursor", "cursor_path": "meta.next", "cursor_param": "after"}


@pytest.mark.parametrize("last", [None, ...], ids=["null cursor", "no cursor key"])
def test_cursor_pagination_to_the_end(api_server, tmp_path, last, caplog):
    url = cursor_api(api_server, {"": ([0, 1, 2], "c2"), "c2": ([3, 4, 5], "c3"), "c3": ([6], last)})
    with caplog.at_level(logging.WARNING):
        result = run(url, tmp_path, pagination=CURSOR)
    assert [r.query.get("after") for r in api_server.requests] == [None, "c2", "c3"]
    assert result.frame["id"].tolist() == list(range(7)) and result.warnings == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_empty_cursor_stops_with_a_warning(api_server, tmp_path, caplog):
    url = cursor_api(api_server, {"": ([0, 1], "c2"), "c2": ([2, 3], "")})
    with caplog.at_level(logging.WARNING):
        result = run(url, tmp_path, pagination=CURSOR)
    assert result.frame["id"].tolist() == [0, 1, 2, 3] and api_server.count("/feed") == 2
    assert result.warnings == ["stopping pagination: the cursor '' at 'meta.next' of page 2 is empty"]
    assert result.warnings[0] in caplog.text


def test_cursor_loop_stops_and_counts_each_record_once(api_server, tmp_path, caplog):
    url = cursor_api(api_server, {"": ([0, 1], "A"), "A": ([2, 3], "B"), "B": ([4, 5], "A")})
    with caplog.at_level(logging.WARNING):
        result = run(url, tmp_path, pagination=CURSOR)
    assert [r.query.get("after") for r in api_server.requests] == [None, "A", "B"]
    assert result.frame["id"].tolist() == list(range(6))
    assert result.warnings == [
        "stopping pagination: the cursor 'A' at 'meta.next' of page 3 was already sent (a loop of cursors)"
    ]
    assert result.warnings[0] in caplog.text


def test_cursor_pagination_on_the_bulk_path(api_server, tmp_path):
    url = cursor_api(
        api_server,
        {"": ([0, 1], "A"), "A": ([2, 3], "B"), "B": ([4], "A")},
        path="next_cursor",
    )
    result, frame = bulk(url, tmp_path, pagination={"type": "cursor", "cursor_param": "after"})
    assert frame["id"].tolist() == [0, 1, 2, 3, 4] and result.records == 5 and result.requests == 3
    assert result.warnings == [
        "stopping pagination: the cursor 'A' at 'next_cursor' of page 3 was already sent (a loop of cursors)"
    ]
    assert result.records_shape.startswith("'items' as a list of objects")


@pytest.mark.parametrize("mode", ["native", "spark"])
def test_ingest_json_lists_the_pagination_warnings(api_server, tmp_path, mode):
    url = cursor_api(api_server, {"": ([0, 1], "A"), "A": ([2], "A")})
    info = stage(url, tmp_path, mode, pagination=CURSOR)
    assert info["rows"] == 3
    assert info["warnings"] == [
        "stopping pagination: the cursor 'A' at 'meta.next' of page 2 was already sent (a loop of cursors)"
    ]


@pytest.mark.parametrize("mode", ["native", "spark"])
def test_identical_pages_warning_is_returned(api_server, tmp_path, mode):
    api_server.route("/same", json_body([{"id": i} for i in range(10)]))
    info = stage(api_server.url("/same"), tmp_path, mode, pagination={"type": "offset", "page_size": 10})
    assert info["rows"] == 10 and len(info["warnings"]) == 1
    assert "page 2 from" in info["warnings"][0] and "identical to the page before it" in info["warnings"][0]
