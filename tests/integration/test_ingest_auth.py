"""anomaly_detection.ingest against a real HTTP server on 127.0.0.1: credentials, secrets kept out of
every output, redirects."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from http_fixtures import ApiServer, api_server, json_body, unused_port  # noqa: F401
from ingest_helpers import SECRET, offset_handler, rows, run

from anomaly_detection.errors import ConfigError, IngestionError


def assert_secret_hidden(secret: str, raw_dir: Path, *texts: str) -> None:
    for path in raw_dir.iterdir():
        if path.name == "manifest.json":
            assert secret not in path.read_text(), path
    for text in texts:
        assert secret not in text


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="anomaly_detection")
    return caplog


def test_bearer_token_from_env(api_server, tmp_path, monkeypatch, debug_logs):
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    api_server.route("/private", [(503, {}, b""), json_body(rows(0, 2))])
    run(api_server.url("/private"), tmp_path, auth={"type": "bearer", "token_env": "MY_API_TOKEN"})
    assert [r.headers["authorization"] for r in api_server.requests] == [f"Bearer {SECRET}"] * 2
    assert "retrying" in debug_logs.text
    assert_secret_hidden(SECRET, tmp_path, debug_logs.text)


def test_bearer_token_never_in_errors(api_server, tmp_path, monkeypatch, debug_logs):
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    # a server that echoes the credential in its error body
    api_server.route(
        "/private", lambda req: (401, {"Content-Type": "text/plain"}, f"bad token {SECRET}".encode())
    )
    with pytest.raises(IngestionError) as info:
        run(api_server.url("/private"), tmp_path, auth={"type": "bearer", "token_env": "MY_API_TOKEN"})
    assert "HTTP 401" in str(info.value)
    assert_secret_hidden(SECRET, tmp_path, str(info.value), debug_logs.text)


def test_basic_auth(api_server, tmp_path, monkeypatch, debug_logs):
    monkeypatch.setenv("API_USER", "alice")
    monkeypatch.setenv("API_PASS", "pa55-w0rd!")
    api_server.route(
        "/private",
        lambda req: (500, {}, b"") if req.headers.get("authorization") is None else json_body(rows(0, 1)),
    )
    result = run(
        api_server.url("/private"),
        tmp_path,
        auth={"type": "basic", "username_env": "API_USER", "password_env": "API_PASS"},
    )
    (req,) = api_server.requests
    scheme, _, token = req.headers["authorization"].partition(" ")
    assert scheme == "Basic" and base64.b64decode(token).decode() == "alice:pa55-w0rd!"
    assert "pa55-w0rd!" in result.secrets
    assert_secret_hidden("pa55-w0rd!", tmp_path, debug_logs.text)
    assert_secret_hidden(token, tmp_path, debug_logs.text)


def test_custom_header_auth(api_server, tmp_path, monkeypatch):
    monkeypatch.setenv("KEY", SECRET)
    api_server.json("/k", rows(0, 1))
    run(
        api_server.url("/k"),
        tmp_path,
        auth={"type": "header", "token_env": "KEY", "header_name": "X-Api-Key"},
    )
    assert api_server.requests[0].headers["x-api-key"] == SECRET


def test_query_param_auth(api_server, tmp_path, monkeypatch, debug_logs):
    monkeypatch.setenv("KEY", SECRET)
    api_server.route("/items", offset_handler(15))
    run(
        api_server.url("/items"),
        tmp_path,
        auth={"type": "query", "token_env": "KEY"},
        pagination={"type": "offset", "page_size": 10},
    )
    assert [r.query["api_key"] for r in api_server.requests] == [SECRET, SECRET]
    assert_secret_hidden(SECRET, tmp_path, debug_logs.text)


def test_query_secret_echoed_in_next_links_is_masked(api_server, tmp_path, monkeypatch, debug_logs):
    """A param name that does not look secret (``appid``) echoed by the API in its next link."""
    monkeypatch.setenv("KEY", SECRET)

    def handler(req):
        if req.query.get("cursor") == "2":
            return 404, {"Content-Type": "text/plain"}, f"no page for appid={req.query['appid']}".encode()
        return json_body({"data": rows(0, 2), "next": f"/items?cursor=2&appid={req.query['appid']}"})

    api_server.route("/items", handler)
    with pytest.raises(IngestionError) as info:
        run(
            api_server.url("/items"),
            tmp_path,
            records_path="data",
            auth={"type": "query", "token_env": "KEY", "param_name": "appid"},
            pagination={"type": "next_url"},
        )
    assert [r.query["appid"] for r in api_server.requests] == [SECRET, SECRET]
    assert "HTTP 404" in str(info.value) and "cursor=2" in str(info.value)
    assert_secret_hidden(SECRET, tmp_path, str(info.value), debug_logs.text)


def test_credentials_are_not_sent_to_another_host(api_server, tmp_path, monkeypatch, debug_logs):
    monkeypatch.setenv("MY_API_TOKEN", SECRET)
    with ApiServer() as other:
        other.json("/stolen", rows(2, 3))
        api_server.json("/start", {"items": rows(0, 2), "next": other.url("/stolen")})
        result = run(
            api_server.url("/start"),
            tmp_path,
            auth={"type": "bearer", "token_env": "MY_API_TOKEN"},
            pagination={"type": "next_url"},
        )
        (theirs,) = other.requests
    assert api_server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert "authorization" not in theirs.headers
    assert len(result.frame) == 3
    assert "without credentials" in debug_logs.text


@pytest.mark.parametrize(
    "auth, variable",
    [
        ({"type": "bearer", "token_env": "NOT_SET_TOKEN"}, "NOT_SET_TOKEN"),
        ({"type": "query", "token_env": "NOT_SET_KEY"}, "NOT_SET_KEY"),
        ({"type": "basic", "username_env": "NOT_SET_USER", "password_env": "NOT_SET_PASS"}, "NOT_SET_USER"),
    ],
)
def test_missing_env_var_is_a_config_error(api_server, tmp_path, monkeypatch, auth, variable):
    for name in ("NOT_SET_TOKEN", "NOT_SET_KEY", "NOT_SET_USER", "NOT_SET_PASS"):
        monkeypatch.delenv(name, raising=False)
    api_server.json("/x", rows(0, 1))
    with pytest.raises(ConfigError, match=variable):
        run(api_server.url("/x"), tmp_path, auth=auth)
    assert api_server.count() == 0


# --------------------------------------------------------------------------- bad inputs: clear error or fallback, raw kept


def test_a_redirect_to_another_origin_carries_no_credentials(api_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_TOKEN", "tok-93a1f0")
    port = api_server.url("/").split(":")[2].split("/")[0]
    api_server.route("/start", (302, {"Location": f"http://localhost:{port}/data"}, b""))
    api_server.json("/data", rows(0, 3))
    result = run(
        api_server.url("/start"), tmp_path / "raw",
        auth={"type": "bearer", "token_env": "TEST_TOKEN"}, headers={"X-Api-Key": "hdr-51c2", "X-Team": "ops"},
    )  # fmt: skip
    assert result.record_count == 3
    first, hop = api_server.requests_to("/start")[0], api_server.requests_to("/data")[0]
    assert first.headers["authorization"] == "Bearer tok-93a1f0" and first.headers["x-api-key"] == "hdr-51c2"
    assert (
        "authorization" not in hop.headers
        and "x-api-key" not in hop.headers
        and hop.headers["x-team"] == "ops"
    )


def test_a_redirect_to_a_blocked_address_fails_at_once(api_server, tmp_path, monkeypatch):
    monkeypatch.delenv("ANOMALY_OUTBOUND_ALLOW", raising=False)
    api_server.route("/start", (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""))
    with pytest.raises(IngestionError, match=r"169\.254\.169\.254.*169\.254\.0\.0/16"):
        run(api_server.url("/start"), tmp_path / "raw", retries=5)
    assert api_server.count("/start") == 1  # refused, not retried


def test_a_redirect_loop_is_cut(api_server, tmp_path):
    api_server.route("/a", (302, {"Location": "/b"}, b""))
    api_server.route("/b", (302, {"Location": "/a"}, b""))
    with pytest.raises(IngestionError, match="TooManyRedirects"):
        run(api_server.url("/a"), tmp_path / "raw")
