"""Fault: an allowed API redirects to an address the outbound policy denies.

Every hop of a redirect is its own connection, so the guard refuses the hop before connecting,
fast and without a network, and ingestion fails at once instead of retrying.
"""

from __future__ import annotations

import time

import pytest
import requests
from http_fixtures import api_server, fake_dns, second_server  # noqa: F401

from anomaly_detection.config import ProcessingConfig, SourceConfig
from anomaly_detection.errors import IngestionError
from anomaly_detection.ingest.native import ingest
from anomaly_detection.ingest.outbound import DENY_VAR, BlockedDestination, OutboundPolicy, guard_session

FAULT = "redirect to a blocked address"
METADATA = "http://169.254.169.254/latest/meta-data/"


def guarded(deny: str = "") -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return guard_session(s, OutboundPolicy.from_env({DENY_VAR: deny}))


def refused(s: requests.Session, url: str) -> BlockedDestination:
    started = time.monotonic()
    with pytest.raises(BlockedDestination) as info:
        s.get(url, timeout=30)
    assert time.monotonic() - started < 2, "the refusal must come before any connection attempt"
    return info.value


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_metadata(api_server, fault_ledger, status):
    fault_ledger.injected(FAULT)
    api_server.route("/start", (status, {"Location": METADATA}, b""))
    blocked = refused(guarded(), api_server.url("/start"))
    assert (blocked.address, blocked.rule) == (
        "169.254.169.254",
        "169.254.0.0/16 (built-in: link-local / cloud metadata)",
    )
    assert api_server.count("/start") == 1


@pytest.mark.parametrize(
    "location",
    [
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
    ],
)
def test_redirect_to_disguised_metadata(api_server, fault_ledger, location):
    fault_ledger.injected(FAULT)
    api_server.route("/start", (302, {"Location": location}, b""))
    refused(guarded(), api_server.url("/start"))


def test_redirect_to_a_name_resolving_to_metadata(api_server, fault_ledger, fake_dns):
    fault_ledger.injected(FAULT)
    fake_dns["innocent.attacker.test"] = ["169.254.169.254"]
    api_server.route("/start", (302, {"Location": "http://innocent.attacker.test/latest/meta-data/"}, b""))
    blocked = refused(guarded(), api_server.url("/start"))
    assert blocked.host == "innocent.attacker.test" and blocked.address == "169.254.169.254"


def test_redirect_after_allowed_hops(api_server, fault_ledger):
    fault_ledger.injected(FAULT)
    api_server.route("/a", (302, {"Location": "/b"}, b""))
    api_server.route("/b", (307, {"Location": api_server.url("/c")}, b""))
    api_server.route("/c", (302, {"Location": METADATA}, b""))
    refused(guarded(), api_server.url("/a"))
    assert [api_server.count(p) for p in ("/a", "/b", "/c")] == [1, 1, 1]


def test_redirect_to_a_denied_loopback_server_never_reaches_it(api_server, second_server, fault_ledger):
    fault_ledger.injected(FAULT)
    api_server.route("/start", (302, {"Location": second_server.url + "admin"}, b""))
    blocked = refused(guarded(deny="127.0.0.2"), api_server.url("/start"))
    assert blocked.rule == f"127.0.0.2/32 ({DENY_VAR})"
    assert second_server.connections == 0 and second_server.paths == []
    assert guarded().get(api_server.url("/start"), timeout=5).json() == {
        "ok": True
    }  # reachable when not denied


def test_ingestion_fails_at_once_without_retrying(api_server, fault_ledger, tmp_path):
    fault_ledger.injected(FAULT)
    api_server.route("/records", (302, {"Location": METADATA}, b""))
    sleeps: list[float] = []
    source = SourceConfig(url=api_server.url("/records"), retries=5)
    with pytest.raises(IngestionError, match="BlockedDestination.*169.254.0.0/16"):
        ingest(source, ProcessingConfig(), tmp_path / "raw", session=guarded(), sleep=sleeps.append)
    assert sleeps == [] and api_server.count("/records") == 1
