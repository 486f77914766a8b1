"""anomaly_detection.ingest against a real HTTP server on 127.0.0.1: pagination, retries, bad bodies."""

from __future__ import annotations

import json
import logging
import math
import time

import pandas as pd
import pytest
from http_fixtures import ApiServer, api_server, json_body, unused_port  # noqa: F401
from ingest_helpers import Sleeps, offset_handler, raw_files, rows, run

from anomaly_detection.config import build_config
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.http import with_params
from anomaly_detection.ingest.native import ingest

# --------------------------------------------------------------------------- pagination


def test_offset_pagination_stops_on_a_short_page(api_server, tmp_path):
    api_server.route("/items", offset_handler(25))
    result = run(api_server.url("/items"), tmp_path, pagination={"type": "offset", "page_size": 10})
    assert [r.query["offset"] for r in api_server.requests] == ["0", "10", "20"]
    assert all(r.query["limit"] == "10" for r in api_server.requests)
    assert result.frame["id"].tolist() == list(range(25))
    assert [p.records for p in result.pages] == [10, 10, 5]
    assert raw_files(tmp_path) == ["manifest.json", "page-00001.json", "page-00002.json", "page-00003.json"]


def test_offset_pagination_stops_on_an_empty_page(api_server, tmp_path):
    api_server.route("/items", offset_handler(20))
    result = run(api_server.url("/items"), tmp_path, pagination={"type": "offset", "page_size": 10})
    assert api_server.count("/items") == 3
    assert len(result.frame) == 20 and not result.truncated


def test_page_number_pagination(api_server, tmp_path):
    def handler(req):
        page, size = int(req.query["page"]), int(req.query["per_page"])
        return json_body({"results": rows((page - 1) * size, min(page * size, 7))})

    api_server.route("/p", handler)
    result = run(
        api_server.url("/p"),
        tmp_path,
        records_path="results",
        pagination={"type": "page", "page_size": 3, "limit_param": "per_page", "start_page": 1},
    )
    assert [r.query["page"] for r in api_server.requests] == ["1", "2", "3"]
    assert result.frame["id"].tolist() == list(range(7)) and result.records_path == "results"


def test_source_params_and_repeated_query_keys_are_kept(api_server, tmp_path):
    api_server.route("/items", offset_handler(3))
    run(
        api_server.url("/items?tag=a&tag=b"),
        tmp_path,
        params={"format": "json", "active": True},
        pagination={"type": "offset", "page_size": 10},
    )
    (req,) = api_server.requests
    assert req.query_lists["tag"] == ["a", "b"]
    assert req.query["format"] == "json" and req.query["active"] == "true"


def test_with_params_replaces_in_place():
    assert with_params("http://h/p?a=1&b=2&a=3", {"a": 9, "c": True}) == "http://h/p?a=9&b=2&c=true"


@pytest.mark.parametrize("style", ["relative", "query-only", "absolute"])
def test_next_url_in_the_body(api_server, tmp_path, style):
    def link(n):
        if style == "relative":
            return f"/items?cursor={n}"
        if style == "query-only":
            return f"?cursor={n}"
        return api_server.url(f"/items?cursor={n}")

    def handler(req):
        n = int(req.query.get("cursor", 0))
        return json_body({"data": rows(n * 2, n * 2 + 2), "links": {"next": link(n + 1) if n < 2 else None}})

    api_server.route("/items", handler)
    result = run(
        api_server.url("/items"),
        tmp_path,
        records_path="data",
        pagination={"type": "next_url", "next_url_path": "links.next"},
    )
    assert [r.raw_path for r in api_server.requests] == ["/items", "/items?cursor=1", "/items?cursor=2"]
    assert result.frame["id"].tolist() == list(range(6))


def test_link_header_pagination(api_server, tmp_path):
    def handler(req):
        n = int(req.query.get("page", 1))
        links = [f'<{api_server.url("/issues?page=1")}>; rel="first"']
        if n < 3:
            links.append(f'<{api_server.url(f"/issues?page={n + 1}")}>; rel="next"')
        links.append(f'<{api_server.url("/issues?page=3")}>; rel="last"')
        return json_body(rows(n * 10, n * 10 + 2), headers={"Link": ", ".join(links)})

    api_server.route("/issues", handler)
    result = run(api_server.url("/issues"), tmp_path, pagination={"type": "link_header"})
    assert [r.query.get("page") for r in api_server.requests] == [None, "2", "3"]
    assert result.frame["id"].tolist() == [10, 11, 20, 21, 30, 31]


def test_link_header_with_a_relative_next(api_server, tmp_path):
    api_server.route("/a", json_body(rows(0, 2), headers={"Link": '</b>; rel="next"'}))
    api_server.route("/b", json_body(rows(2, 3)))
    result = run(api_server.url("/a"), tmp_path, pagination={"type": "link_header"})
    assert len(result.frame) == 3 and api_server.count() == 2


def test_a_loop_of_next_links_stops(api_server, tmp_path, caplog):
    api_server.route("/a", json_body({"items": rows(0, 2), "next": "/b"}))
    api_server.route("/b", json_body({"items": rows(2, 4), "next": "/a"}))
    with caplog.at_level(logging.WARNING, logger="anomaly_detection"):
        result = run(api_server.url("/a"), tmp_path, records_path="items", pagination={"type": "next_url"})
    assert [r.path for r in api_server.requests] == ["/a", "/b"]
    assert result.frame["id"].tolist() == [0, 1, 2, 3]
    assert "already fetched" in caplog.text
    assert raw_files(tmp_path) == ["manifest.json", "page-00001.json", "page-00002.json"]


def test_a_self_link_stops(api_server, tmp_path):
    api_server.route("/a", json_body(rows(0, 2), headers={"Link": f'<{api_server.url("/a")}>; rel="next"'}))
    result = run(api_server.url("/a"), tmp_path, pagination={"type": "link_header"})
    assert api_server.count() == 1 and len(result.frame) == 2


def test_max_records_truncates_exactly(api_server, tmp_path):
    api_server.route("/items", offset_handler(100))
    result = run(
        api_server.url("/items"), tmp_path, max_records=15, pagination={"type": "offset", "page_size": 10}
    )
    assert api_server.count() == 2
    assert result.frame["id"].tolist() == list(range(15))
    assert result.truncated


def test_max_records_on_a_single_page(api_server, tmp_path):
    api_server.route("/all", json_body(rows(0, 50)))
    result = run(api_server.url("/all"), tmp_path, max_records=7)
    assert len(result.frame) == 7 and result.truncated


def test_max_pages(api_server, tmp_path):
    def handler(req):
        n = int(req.query.get("cursor", 0))
        return json_body({"data": rows(n, n + 1), "next": f"/endless?cursor={n + 1}"})

    api_server.route("/endless", handler)
    result = run(
        api_server.url("/endless"),
        tmp_path,
        records_path="data",
        pagination={"type": "next_url", "max_pages": 3},
    )
    assert api_server.count() == 3 and len(result.pages) == 3
    assert result.frame["id"].tolist() == [0, 1, 2]


def test_an_api_that_ignores_the_page_parameter_stops(api_server, tmp_path, caplog):
    api_server.route("/same", json_body(rows(0, 10)))
    with caplog.at_level(logging.WARNING, logger="anomaly_detection"):
        result = run(api_server.url("/same"), tmp_path, pagination={"type": "page", "page_size": 10})
    assert api_server.count() == 2
    assert result.frame["id"].tolist() == list(range(10))
    assert "identical to the page before" in caplog.text


def test_no_pagination_fetches_once(api_server, tmp_path):
    api_server.route("/one", json_body({"next": "/two", "items": rows(0, 3)}))
    result = run(api_server.url("/one"), tmp_path)
    assert api_server.count() == 1 and len(result.frame) == 3 and result.records_path == "items"


# --------------------------------------------------------------------------- retries


def test_429_retry_after_is_honoured(api_server, tmp_path):
    api_server.route("/r", [(429, {"Retry-After": "1"}, b"slow down"), json_body(rows(0, 2))])
    sleeps = Sleeps()
    result = run(api_server.url("/r"), tmp_path, sleep=sleeps)
    assert sleeps == [1.0]
    assert api_server.count() == 2
    assert len(result.frame) == 2 and result.pages[0].attempts == 2


def test_retry_after_is_capped_by_max_backoff(api_server, tmp_path):
    api_server.route("/r", [(429, {"Retry-After": "3600"}, b""), json_body(rows(0, 1))])
    sleeps = Sleeps()
    run(api_server.url("/r"), tmp_path, sleep=sleeps, max_backoff_seconds=2)
    assert sleeps == [2.0]


@pytest.mark.parametrize("value", ["soon", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_unreadable_or_past_retry_after(api_server, tmp_path, value):
    api_server.route("/r", [(503, {"Retry-After": value}, b""), json_body(rows(0, 1))])
    sleeps = Sleeps()
    run(api_server.url("/r"), tmp_path, sleep=sleeps)
    assert sleeps == ([0.01] if value == "soon" else [0.0])


def test_503_twice_then_success(api_server, tmp_path):
    api_server.route("/r", [(503, {}, b"busy"), (503, {}, b"busy"), json_body(rows(0, 3))])
    sleeps = Sleeps()
    result = run(api_server.url("/r"), tmp_path, sleep=sleeps, backoff_seconds=0.5)
    assert api_server.count() == 3
    assert sleeps == [0.5, 1.0]  # exponential backoff
    assert len(result.frame) == 3 and result.pages[0].attempts == 3


def test_5xx_forever_fails_naming_url_and_status(api_server, tmp_path):
    api_server.route("/down", (503, {"Content-Type": "text/plain"}, b"maintenance"))
    sleeps = Sleeps()
    with pytest.raises(IngestionError) as info:
        run(api_server.url("/down"), tmp_path, sleep=sleeps, retries=2)
    message = str(info.value)
    assert api_server.url("/down") in message and "HTTP 503" in message and "3 attempt" in message
    assert api_server.count() == 3 and len(sleeps) == 2
    assert (tmp_path / "page-00001.txt").read_bytes() == b"maintenance"


def test_timeout_is_retried_then_reported(api_server, tmp_path):
    api_server.route("/slow", lambda req: (api_server.sleep(3), json_body([{"a": 1}]))[1])
    started = time.perf_counter()
    with pytest.raises(IngestionError) as info:
        run(api_server.url("/slow"), tmp_path, timeout_seconds=0.3, retries=1)
    assert time.perf_counter() - started < 2.5
    message = str(info.value)
    assert "timed out" in message and "0.3s" in message and api_server.url("/slow") in message
    assert api_server.count() == 2


def test_timeout_then_success(api_server, tmp_path):
    calls = []

    def handler(req):
        calls.append(1)
        if len(calls) == 1:
            api_server.sleep(3)
        return json_body(rows(0, 2))

    api_server.route("/slow", handler)
    sleeps = Sleeps()
    result = run(api_server.url("/slow"), tmp_path, timeout_seconds=0.3, retries=2, sleep=sleeps)
    assert len(result.frame) == 2 and api_server.count() == 2 and len(sleeps) == 1


def test_connection_refused_is_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{unused_port()}/items"
    sleeps = Sleeps()
    with pytest.raises(IngestionError) as info:
        run(url, tmp_path, retries=1, sleep=sleeps)
    message = str(info.value)
    assert url in message and "connection refused" in message and "2 attempt" in message
    assert len(sleeps) == 1


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_fail_at_once(api_server, tmp_path, status):
    api_server.route("/missing", (status, {"Content-Type": "application/json"}, b'{"error": "nope"}'))
    sleeps = Sleeps()
    with pytest.raises(IngestionError) as info:
        run(api_server.url("/missing"), tmp_path, sleep=sleeps)
    message = str(info.value)
    assert api_server.url("/missing") in message and f"HTTP {status}" in message and "nope" in message
    assert api_server.count() == 1 and sleeps == []
    assert (tmp_path / "page-00001.json").exists()


# --------------------------------------------------------------------------- auth


def test_plain_text_body(api_server, tmp_path):
    api_server.route("/t", (200, {"Content-Type": "text/plain"}, b"id,value\n1,2\n"))
    with pytest.raises(IngestionError) as info:
        run(api_server.url("/t"), tmp_path)
    message = str(info.value)
    assert api_server.url("/t") in message and "not valid JSON" in message and "id,value" in message
    assert (tmp_path / "page-00001.txt").read_bytes() == b"id,value\n1,2\n"
    assert "page-00001.txt" in message
    assert json.loads((tmp_path / "manifest.json").read_text())[0]["status"] == 200


def test_html_page_with_status_200(api_server, tmp_path):
    html = b"<!DOCTYPE html><html><head><title>Login</title></head><body>Please sign in</body></html>"
    api_server.route("/h", (200, {"Content-Type": "text/html"}, html))
    with pytest.raises(IngestionError) as info:
        run(api_server.url("/h"), tmp_path)
    assert "HTML page" in str(info.value) and api_server.url("/h") in str(info.value)
    assert (tmp_path / "page-00001.html").read_bytes() == html


def test_empty_list(api_server, tmp_path):
    api_server.json("/empty", [])
    with pytest.raises(IngestionError, match="no records") as info:
        run(api_server.url("/empty"), tmp_path)
    assert api_server.url("/empty") in str(info.value)
    assert (tmp_path / "page-00001.json").read_bytes() == b"[]"


def test_object_without_a_list_of_records(api_server, tmp_path):
    api_server.json("/obj", {"status": "ok", "count": 0, "meta": {"version": 2}})
    with pytest.raises(IngestionError) as info:
        run(api_server.url("/obj"), tmp_path)
    message = str(info.value)
    assert (
        "no list of records" in message
        and "status, count, meta" in message
        and api_server.url("/obj") in message
    )
    assert (tmp_path / "page-00001.json").exists()


def test_wrong_records_path(api_server, tmp_path):
    api_server.json("/obj", {"data": rows(0, 2)})
    with pytest.raises(IngestionError, match=r"key 'items' not found .*keys there: data"):
        run(api_server.url("/obj"), tmp_path, records_path="items")
    assert (tmp_path / "page-00001.json").exists()


def test_nan_and_infinity_in_the_body(api_server, tmp_path):
    body = b'[{"id": 1, "x": NaN, "y": Infinity}, {"id": 2, "x": 1.5, "y": -Infinity}]'
    api_server.route("/nan", (200, {"Content-Type": "application/json"}, body))
    frame = run(api_server.url("/nan"), tmp_path).frame
    assert math.isnan(frame.loc[0, "x"]) and frame.loc[1, "x"] == 1.5
    assert frame["y"].tolist() == [math.inf, -math.inf]
    assert (tmp_path / "page-00001.json").read_bytes() == body


def test_nesting_1000_levels_deep(api_server, tmp_path):
    deep = b'{"k":' * 1000 + b'"leaf"' + b"}" * 1000
    body = b'[{"id": 1, "deep": ' + deep + b'}, {"id": 2, "deep": null}]'
    api_server.route("/deep", (200, {"Content-Type": "application/json"}, body))
    result = run(api_server.url("/deep"), tmp_path, processing={"max_depth": 4})
    name = "deep.k.k.k"
    assert result.stats.truncated_paths == {name}
    assert result.frame.loc[0, name].startswith('{"k":{"k":') and result.frame.loc[0, name].count("{") == 997
    assert result.frame["id"].tolist() == [1, 2]
    assert (tmp_path / "page-00001.json").read_bytes() == body


def test_colliding_keys(api_server, tmp_path, caplog):
    api_server.json("/c", [{"a.b": 1, "a": {"b": 2}}, {"a.b": 3, "a": {"b": 4}}])
    with caplog.at_level(logging.WARNING, logger="anomaly_detection"):
        result = run(api_server.url("/c"), tmp_path)
    assert result.frame["a.b"].tolist() == [1, 3] and result.frame["a.b__dup1"].tolist() == [2, 4]
    assert result.stats.collisions == {"a.b": "a.b__dup1"}
    assert "a.b__dup1" in caplog.text
    assert (tmp_path / "page-00001.json").exists()


def test_bad_json_on_a_later_page_keeps_earlier_pages(api_server, tmp_path):
    api_server.json("/p1", {"items": rows(0, 2), "next": "/p2"})
    api_server.route("/p2", (200, {"Content-Type": "application/json"}, b'{"items": [1, 2'))
    with pytest.raises(IngestionError) as info:
        run(api_server.url("/p1"), tmp_path, records_path="items", pagination={"type": "next_url"})
    message = str(info.value)
    assert (
        api_server.url("/p2") in message and "not valid JSON" in message and "after 4 attempt(s)" in message
    )
    assert "page-00002.json" in message and "line 1 column" in message
    assert api_server.count("/p2") == 4  # a cut-off JSON body is retried like a transient fault
    attempts = [f"page-00002.attempt{n}.json" for n in (1, 2, 3)]
    assert raw_files(tmp_path) == ["manifest.json", "page-00001.json", *attempts, "page-00002.json"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [p["records"] for p in manifest] == [2, 0]
    assert manifest[1]["set_aside"] == attempts and manifest[1]["attempts"] == 4


def test_records_of_mixed_types_are_typed(api_server, tmp_path):
    api_server.json(
        "/mixed",
        [
            {"id": "1", "when": "2024-01-01T00:00:00Z", "tags": ["a", "b"], "geo": [1.0, 2.0], "ok": True},
            {"id": "2", "when": "2024-01-02T00:00:00Z", "tags": ["c"], "geo": [3.0, 4.0], "ok": False},
        ],
    )
    frame = run(api_server.url("/mixed"), tmp_path).frame
    assert pd.api.types.is_integer_dtype(frame["id"])
    assert pd.api.types.is_datetime64_any_dtype(frame["when"]) and str(frame["when"].dt.tz) == "UTC"
    assert frame["tags"].tolist() == ['["a","b"]', '["c"]']
    assert frame["geo.1"].tolist() == [2.0, 4.0]
    assert frame["ok"].tolist() == [True, False]


# --------------------------------------------------------------------------- faults: cut-off bodies, byte cap


def test_a_cut_off_json_body_is_retried_and_the_good_body_is_the_snapshot(api_server, tmp_path):
    good = json.dumps(rows(0, 3)).encode()
    api_server.route(
        "/r",
        [
            (200, {"Content-Type": "application/json"}, good[:-9]),
            (200, {"Content-Type": "application/json"}, good),
        ],
    )
    sleeps = Sleeps()
    result = run(api_server.url("/r"), tmp_path, sleep=sleeps)
    assert result.frame["id"].tolist() == [0, 1, 2] and api_server.count() == 2 and sleeps == [0.01]
    assert raw_files(tmp_path) == ["manifest.json", "page-00001.attempt1.json", "page-00001.json"]
    assert (tmp_path / "page-00001.attempt1.json").read_bytes() == good[:-9]
    assert (tmp_path / "page-00001.json").read_bytes() == good
    (entry,) = json.loads((tmp_path / "manifest.json").read_text())
    assert (
        entry["set_aside"] == ["page-00001.attempt1.json"]
        and entry["attempts"] == 2
        and entry["records"] == 3
    )


def test_a_200_that_is_plainly_not_json_is_not_retried(api_server, tmp_path):
    api_server.route("/h", (200, {"Content-Type": "text/html"}, b"<html><body>Sign in</body></html>"))
    with pytest.raises(IngestionError, match="HTML page"):
        run(api_server.url("/h"), tmp_path)
    assert api_server.count() == 1 and raw_files(tmp_path) == ["manifest.json", "page-00001.html"]


def test_the_byte_cap_refuses_a_large_response_at_once(api_server, tmp_path):
    from anomaly_detection.config import SourceConfig

    assert SourceConfig.model_fields["max_response_bytes"].default == 256 * 2**20
    api_server.route("/big", json_body(rows(0, 500)))
    config = build_config({"source": {"url": api_server.url("/big")}})
    source = config.source.model_copy(update={"max_response_bytes": 1000})
    with pytest.raises(IngestionError) as info:
        ingest(source, config.processing, tmp_path, sleep=Sleeps())
    message = str(info.value)
    assert (
        api_server.url("/big") in message
        and "source.max_response_bytes=1000" in message
        and "Content-Length is" in message
    )
    assert api_server.count() == 1
