"""Ingest real recorded API responses from ../shared/data/api, served by the loopback test server.

The files are read in place (never copied into the project); the module is skipped when the
directory is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from anomaly_detection.config import build_config
from anomaly_detection.ingest.native import ingest

try:
    from http_fixtures import api_server, json_body  # noqa: F401
except ImportError:  # tests/ is a package: import it by its package name
    from tests.http_fixtures import api_server, json_body  # noqa: F401

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "api"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"shared API data not found at {DATA}"),
]


def serve_file(server, path: str, name: str, content_type: str = "application/json") -> bytes:
    body = (DATA / name).read_bytes()
    server.route(path, (200, {"Content-Type": content_type}, body))
    return body


def run(url: str, raw_dir: Path, **source):
    config = build_config({"source": {"url": url, "backoff_seconds": 0.01, **source}})
    return ingest(config.source, config.processing, raw_dir, sleep=lambda s: None)


@pytest.mark.parametrize("records_path", ["features", None])
def test_usgs_geojson(api_server, tmp_path, records_path):
    body = serve_file(
        api_server,
        "/earthquakes/feed/v1.0/summary/all_week.geojson",
        "usgs_earthquakes_all_week_2019.geojson",
        "application/geo+json",
    )
    features = json.loads(body)["features"]
    result = run(
        api_server.url("/earthquakes/feed/v1.0/summary/all_week.geojson"), tmp_path, records_path=records_path
    )
    frame = result.frame
    assert result.records_path == "features"
    assert len(frame) == len(features) == 2241
    assert pd.api.types.is_float_dtype(frame["properties.mag"])
    assert frame["properties.mag"].iloc[0] == features[0]["properties"]["mag"]
    for i in range(3):
        column = f"geometry.coordinates.{i}"
        assert pd.api.types.is_numeric_dtype(frame[column]), column
        assert frame[column].iloc[-1] == features[-1]["geometry"]["coordinates"][i]
    assert "geometry.coordinates" not in frame.columns
    assert (tmp_path / "page-00001.json").read_bytes() == body


@pytest.mark.parametrize("name", ["nyc_yellow_taxi_2019.json", "nyc_yellow_taxi_2021.json"])
def test_nyc_taxi_strings_become_typed(api_server, tmp_path, name):
    body = serve_file(api_server, "/resource/taxi.json", name)
    records = json.loads(body)
    frame = run(api_server.url("/resource/taxi.json"), tmp_path).frame
    assert len(frame) == len(records)
    for column in ("fare_amount", "trip_distance", "total_amount", "passenger_count", "pulocationid"):
        assert pd.api.types.is_numeric_dtype(frame[column]), column
    assert frame["fare_amount"].iloc[0] == float(records[0]["fare_amount"])
    for column in ("tpep_pickup_datetime", "tpep_dropoff_datetime"):
        assert pd.api.types.is_datetime64_any_dtype(frame[column]), column
        assert frame[column].dt.tz is None  # naive local times stay naive, never labelled UTC
    assert frame["tpep_pickup_datetime"].iloc[0] == pd.Timestamp(records[0]["tpep_pickup_datetime"])
    assert not pd.api.types.is_numeric_dtype(frame["store_and_fwd_flag"])


def test_socrata_offset_pages(api_server, tmp_path):
    pages = {
        "0": (DATA / "socrata_bike_counts_page_1.json").read_bytes(),
        "1000": (DATA / "socrata_bike_counts_page_2.json").read_bytes(),
    }

    def handler(req):
        if req.query.get("$limit") != "1000" or req.query.get("$offset") not in pages:
            return 400, {"Content-Type": "application/json"}, b'{"error": "unexpected paging"}'
        return 200, {"Content-Type": "application/json"}, pages[req.query["$offset"]]

    api_server.route("/resource/bikes.json", handler)
    result = run(
        api_server.url("/resource/bikes.json"),
        tmp_path,
        pagination={"type": "offset", "offset_param": "$offset", "limit_param": "$limit", "page_size": 1000},
    )
    assert [(r.query["$offset"], r.query["$limit"]) for r in api_server.requests] == [
        ("0", "1000"),
        ("1000", "1000"),
    ]
    assert len(result.frame) == 1000 + 1
    assert [p.records for p in result.pages] == [1000, 1]
    assert pd.api.types.is_numeric_dtype(result.frame["counts"])
    assert pd.api.types.is_datetime64_any_dtype(result.frame["date"])
    assert result.frame["date"].iloc[-1] == pd.Timestamp("2016-10-02T01:45:00")


@pytest.mark.parametrize("records_path", ["1", None])
def test_worldbank_meta_data_pair(api_server, tmp_path, records_path):
    body = serve_file(api_server, "/v2/country/all/indicator/GC.DOD.TOTL.GD.ZS", "worldbank_debt.json")
    meta, data = json.loads(body)
    result = run(
        api_server.url("/v2/country/all/indicator/GC.DOD.TOTL.GD.ZS?format=json"),
        tmp_path,
        records_path=records_path,
    )
    frame = result.frame
    assert result.records_path == "1"
    assert len(frame) == len(data) == meta["total"] == 53
    assert {"indicator.id", "indicator.value", "country.id", "country.value", "value", "date"} <= set(
        frame.columns
    )
    assert "page" not in frame.columns
    assert pd.api.types.is_numeric_dtype(frame["value"]) and frame["value"].isna().sum() == sum(
        r["value"] is None for r in data
    )
    assert pd.api.types.is_numeric_dtype(frame["date"])
    assert api_server.requests[0].query["format"] == "json"


def test_github_issues_replayed_with_link_header(api_server, tmp_path, monkeypatch):
    exchanges = json.loads((DATA / "github_paginate_issues_fixture.json").read_text())
    gets = [e for e in exchanges if e["method"].lower() == "get"]
    by_path = {}
    for exchange in gets:
        raw = exchange["rawHeaders"]
        headers = dict(zip(raw[0::2], raw[1::2]))
        keep = {
            k: v.replace("https://api.github.com", api_server.base_url)
            for k, v in headers.items()
            if k.lower() in ("link", "content-type")
        }
        by_path[exchange["path"]] = (exchange["status"], keep, json.dumps(exchange["response"]).encode())
    expected_token = gets[0]["reqheaders"]["authorization"]

    def replay(req):
        if req.headers.get("authorization") != expected_token:
            return 401, {"Content-Type": "application/json"}, b'{"message": "Bad credentials"}'
        return by_path.get(
            req.raw_path, (404, {"Content-Type": "application/json"}, b'{"message": "Not Found"}')
        )

    for path in by_path:
        api_server.route(path.split("?")[0], replay)
    monkeypatch.setenv("GITHUB_TOKEN_FOR_TEST", expected_token)
    first = gets[0]["path"]
    result = run(
        api_server.url(first),
        tmp_path,
        auth={"type": "header", "token_env": "GITHUB_TOKEN_FOR_TEST", "header_name": "Authorization"},
        pagination={"type": "link_header"},
    )
    assert [r.raw_path for r in api_server.requests] == [e["path"] for e in gets]
    issues = [issue for e in gets for issue in e["response"]]
    assert len(result.frame) == len(issues) == 13
    assert result.frame["number"].tolist() == [issue["number"] for issue in issues]
    assert "user.login" in result.frame.columns
    assert pd.api.types.is_datetime64_any_dtype(result.frame["created_at"])
    assert len(result.pages) == 5
    manifest = (tmp_path / "manifest.json").read_text()
    assert expected_token.split()[-1] not in manifest


def test_open_meteo_parallel_arrays(api_server, tmp_path):
    body = serve_file(api_server, "/v1/forecast", "open_meteo_hourly.json")
    hourly = json.loads(body)["hourly"]
    result = run(
        api_server.url("/v1/forecast?latitude=45.75&longitude=12.75"), tmp_path, records_path="hourly"
    )
    frame = result.frame
    assert len(frame) == len(hourly["time"]) == 168
    assert list(frame.columns) == list(hourly)
    assert pd.api.types.is_datetime64_any_dtype(frame["time"])
    assert frame["time"].iloc[0] == pd.Timestamp(hourly["time"][0])  # Open-Meteo's local times, naive
    with_values = [k for k, v in hourly.items() if k != "time" and any(x is not None for x in v)]
    assert with_values and all(pd.api.types.is_numeric_dtype(frame[c]) for c in with_values)
    all_null = set(hourly) - set(with_values) - {"time"}  # models without data in the recording
    assert all(frame[c].isna().all() for c in all_null)
    assert frame["temperature_2m_ecmwf_ifs025"].tolist()[:5] == pytest.approx(
        hourly["temperature_2m_ecmwf_ifs025"][:5], nan_ok=True
    )


def test_open_meteo_auto_detects_the_hourly_columns(api_server, tmp_path):
    serve_file(api_server, "/v1/forecast", "open_meteo_hourly.json")
    result = run(api_server.url("/v1/forecast"), tmp_path)
    assert result.records_path == "hourly" and len(result.frame) == 168


@pytest.mark.parametrize("name", ["restcountries_v2.json", "coingecko_markets.json"])
def test_other_recorded_lists(api_server, tmp_path, name):
    body = serve_file(api_server, "/data", name)
    records = json.loads(body)
    frame = run(api_server.url("/data"), tmp_path).frame
    assert len(frame) == len(records)
    assert sum(pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns) >= 3
