"""The outbound-request guard: policy parsing and matching, and real requests through a guarded session."""

from __future__ import annotations

import ipaddress
import pickle
import time
from typing import Any

import pytest
import requests
from http_fixtures import api_server, fake_dns, second_server  # noqa: F401
from requests.adapters import HTTPAdapter

from anomaly_detection.errors import ConfigError
from anomaly_detection.ingest.outbound import (
    ALLOW_VAR,
    DENY_VAR,
    BlockedDestination,
    HostRule,
    NetworkRule,
    OutboundGuardAdapter,
    OutboundPolicy,
    OutboundPolicyError,
    guard_session,
    normalise_address,
)


def policy(deny: str = "", allow: str = "") -> OutboundPolicy:
    return OutboundPolicy.from_env({DENY_VAR: deny, ALLOW_VAR: allow})


def session(p: OutboundPolicy | None = None, **adapter_kwargs: Any) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxy settings from the environment
    return guard_session(s, p if p is not None else policy(), **adapter_kwargs)


# ---------------------------------------------------------------------------- parsing


def test_empty_environment_has_only_the_builtin_rules():
    p = OutboundPolicy.from_env({})
    assert p.deny == () and p.allow == ()
    assert [str(r.network) for r in p.denied_networks] == ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"]


def test_entries_of_every_kind_are_parsed():
    p = policy(deny=" 10.0.0.0/8, Metadata.Internal. ,*.corp.example,192.168.1.5, [fd00::1], ::1,, ")
    assert p.deny == (
        NetworkRule(ipaddress.ip_network("10.0.0.0/8"), DENY_VAR),
        HostRule("metadata.internal", DENY_VAR),
        HostRule("*.corp.example", DENY_VAR),
        NetworkRule(ipaddress.ip_network("192.168.1.5/32"), DENY_VAR),
        NetworkRule(ipaddress.ip_network("fd00::1/128"), DENY_VAR),
        NetworkRule(ipaddress.ip_network("::1/128"), DENY_VAR),
    )


def test_ipv4_mapped_entries_become_ipv4():
    p = policy(deny="::ffff:10.0.0.0/104, ::ffff:192.0.2.7")
    assert [str(r.network) for r in p.deny] == ["10.0.0.0/8", "192.0.2.7/32"]


@pytest.mark.parametrize("variable", [DENY_VAR, ALLOW_VAR])
@pytest.mark.parametrize(
    "entry, expected",
    [
        ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        ("10.0.0.0/33", "not a valid CIDR network"),
        ("http://api.example.com/x", "is a URL; give only its host name"),
        ("api.example.com:443", "leave out any port"),
        ("api example.com", "not a host name"),
        ("*", "not a host name"),
        ("foo*.example.com", "not a host name"),
        ("*.*.example.com", "not a host name"),
        ("0.0.0.0", "unspecified address"),
    ],
)
def test_bad_entries_name_the_variable_and_the_entry(variable, entry, expected):
    with pytest.raises(OutboundPolicyError) as info:
        OutboundPolicy.from_env({variable: f"good.example.com, {entry}"})
    assert str(info.value).startswith(f"{variable}: entry {entry!r}")
    assert expected in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "::ffff:169.254.169.254",
        "::ffff:a9fe:a9fe",
        "[::ffff:169.254.169.254]",
        "fe80::1",
        "fe80::1%eth0",
        "fd00:ec2::254",
    ],
)
def test_builtin_deny_list(address):
    with pytest.raises(BlockedDestination, match="always denied"):
        policy().check_address(address)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.2", "::1", "0.0.0.0", "93.184.216.34", "10.1.2.3", "fd00:ec2::253"]
)
def test_loopback_and_the_rest_are_allowed_by_default(address):
    policy().check_address(address)


def test_normalise_address():
    assert normalise_address("::ffff:169.254.169.254") == ipaddress.ip_address("169.254.169.254")
    assert normalise_address("[fe80::1%lo]") == ipaddress.ip_address("fe80::1")
    assert normalise_address("0.0.0.0") == ipaddress.ip_address("127.0.0.1")
    assert normalise_address("::") == ipaddress.ip_address("::1")
    with pytest.raises(ValueError):
        normalise_address("example.com")


def test_unspecified_address_is_checked_as_loopback():
    with pytest.raises(BlockedDestination, match="127.0.0.0/8"):
        policy(deny="127.0.0.0/8").check_address("0.0.0.0")


def test_denied_network_message_names_host_address_and_rule():
    with pytest.raises(BlockedDestination) as info:
        policy(deny="10.0.0.0/8").check_address("::ffff:10.9.8.7", host="api.internal")
    blocked = info.value
    assert str(blocked) == (
        "outbound request refused: api.internal (10.9.8.7) is in the denied network 10.0.0.0/8 "
        f"({DENY_VAR}; edit that variable to change)"
    )
    assert (blocked.host, blocked.address, blocked.rule) == (
        "api.internal",
        "10.9.8.7",
        f"10.0.0.0/8 ({DENY_VAR})",
    )


def test_blocked_destination_is_fatal_not_retryable():
    assert issubclass(BlockedDestination, requests.exceptions.InvalidURL)
    assert not issubclass(BlockedDestination, (requests.ConnectionError, requests.Timeout))


@pytest.mark.parametrize(
    "host, denied",
    [
        ("a.example.com", True),
        ("a.b.example.com", True),
        ("A.Example.COM.", True),
        ("example.com", False),
        ("badexample.com", False),
        ("example.com.evil", False),
    ],
)
def test_suffix_patterns(host, denied):
    p = policy(deny="*.example.com")
    if denied:
        with pytest.raises(BlockedDestination, match=r"matches the denied host \*\.example\.com"):
            p.check_host(host)
    else:
        p.check_host(host)


def test_allow_list_by_name():
    p = policy(allow="api.example.com, *.trusted.example")
    p.check_host("api.example.com")
    p.check_host("x.trusted.example")
    p.check_address("10.1.2.3", host="api.example.com")  # an allowed name may resolve anywhere not denied
    with pytest.raises(
        BlockedDestination, match=f"is not in {ALLOW_VAR} \\(api.example.com, \\*.trusted.example\\)"
    ):
        p.check_host("other.example.com")
    with pytest.raises(BlockedDestination, match=ALLOW_VAR):
        p.check_host("127.0.0.1")


def test_allow_list_by_network_is_decided_on_the_address():
    p = policy(allow="10.0.0.0/8")
    p.check_host("anything.example.com")  # cannot tell before resolving
    p.check_address("10.1.2.3", host="anything.example.com")
    with pytest.raises(BlockedDestination, match="anything.example.com \\(8.8.8.8\\) is not in"):
        p.check_address("8.8.8.8", host="anything.example.com")


def test_deny_wins_over_allow():
    with pytest.raises(BlockedDestination, match="always denied"):
        policy(allow="169.254.169.254").check_address("169.254.169.254")
    p = policy(allow="10.0.0.0/8, api.example.com", deny="10.1.0.0/16, api.example.com")
    p.check_address("10.2.0.1")
    with pytest.raises(BlockedDestination, match="10.1.0.0/16"):
        p.check_address("10.1.0.1")
    with pytest.raises(BlockedDestination, match="denied host api.example.com"):
        p.check_host("api.example.com")


# ---------------------------------------------------------------------------- real requests


def test_loopback_is_reached_by_default(api_server):
    api_server.json("/items", [1, 2])
    assert session().get(api_server.url("/items"), timeout=5).json() == [1, 2]


def test_policy_is_read_from_the_environment(api_server, monkeypatch):
    api_server.json("/items", [])
    monkeypatch.setenv(DENY_VAR, "127.0.0.0/8")
    monkeypatch.delenv(ALLOW_VAR, raising=False)
    s = requests.Session()
    s.trust_env = False
    guard_session(s)
    with pytest.raises(
        BlockedDestination, match=f"127.0.0.1 is in the denied network 127.0.0.0/8 \\({DENY_VAR}"
    ):
        s.get(api_server.url("/items"), timeout=5)
    assert api_server.count() == 0


def test_bad_environment_fails_when_guarding(monkeypatch):
    monkeypatch.setenv(ALLOW_VAR, "https://api.example.com")
    with pytest.raises(OutboundPolicyError, match=ALLOW_VAR):
        guard_session(requests.Session())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # refused before sending / while connecting
def test_blocked_request_surfaces_as_blocked_destination_not_connection_error(api_server, host):
    """requests would wrap an error raised while connecting in a retryable ConnectionError."""
    url = f"http://{host}:{api_server.port}/items"
    with pytest.raises(requests.RequestException) as info:
        session(policy(deny="127.0.0.0/8")).get(url, timeout=5)
    assert type(info.value) is BlockedDestination
    assert info.value.request is not None and info.value.request.url == url
    assert api_server.count() == 0


def test_allow_list_that_excludes_the_host_refuses_it(api_server):
    api_server.json("/items", [])
    with pytest.raises(BlockedDestination, match=ALLOW_VAR):
        session(policy(allow="api.example.com, 10.0.0.0/8")).get(api_server.url("/items"), timeout=5)
    assert api_server.count() == 0
    assert session(policy(allow="127.0.0.1")).get(api_server.url("/items"), timeout=5).status_code == 200
    assert session(policy(allow="api.example.com, 127.0.0.0/8")).get(api_server.url("/items"), timeout=5).ok


def test_allow_list_by_name_admits_that_name_only(api_server):
    api_server.json("/items", [])
    s = session(policy(allow="localhost"))
    assert s.get(f"http://localhost:{api_server.port}/items", timeout=5).ok
    with pytest.raises(BlockedDestination, match="127.0.0.1 is not in"):
        s.get(api_server.url("/items"), timeout=5)


def test_name_is_checked_by_what_it_resolves_to(api_server):
    api_server.json("/items", [])
    with pytest.raises(
        BlockedDestination, match=r"localhost \(127.0.0.1\) is in the denied network 127.0.0.0/8"
    ):
        session(policy(deny="127.0.0.0/8")).get(f"http://localhost:{api_server.port}/items", timeout=5)
    assert api_server.count() == 0


def test_name_resolving_to_metadata_is_refused_without_connecting(fake_dns):
    fake_dns["metadata.attacker.test"] = ["169.254.169.254"]
    started = time.monotonic()
    with pytest.raises(BlockedDestination, match=r"metadata.attacker.test \(169.254.169.254\)"):
        session().get("http://metadata.attacker.test/latest/meta-data/", timeout=30)
    assert time.monotonic() - started < 2


def test_any_denied_address_of_a_name_refuses_it(api_server, fake_dns):
    api_server.json("/items", [])
    fake_dns["mixed.test"] = ["127.0.0.1", "169.254.169.254"]
    with pytest.raises(BlockedDestination, match="169.254.169.254"):
        session().get(f"http://mixed.test:{api_server.port}/items", timeout=5)
    assert api_server.count() == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://2852039166/latest/meta-data/",  # 169.254.169.254 as one number
        "http://0xa9fea9fe/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[fe80::1%25lo]/",
    ],
)
def test_disguised_metadata_addresses_are_refused(url):
    started = time.monotonic()
    with pytest.raises(BlockedDestination):
        session().get(url, timeout=30)
    assert time.monotonic() - started < 2


def test_ipv4_mapped_loopback_is_denied_with_127_8(api_server):
    with pytest.raises(BlockedDestination, match="127.0.0.1 is in the denied network"):
        session(policy(deny="127.0.0.0/8")).get(f"http://[::ffff:127.0.0.1]:{api_server.port}/", timeout=5)


def test_redirect_to_metadata_is_refused_fast(api_server):
    api_server.route("/start", (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""))
    started = time.monotonic()
    with pytest.raises(
        BlockedDestination, match="169.254.169.254 is in the denied network 169.254.0.0/16"
    ) as info:
        session().get(api_server.url("/start"), timeout=30)
    assert time.monotonic() - started < 2
    assert info.value.request.url == "http://169.254.169.254/latest/meta-data/"
    assert api_server.count("/start") == 1


def test_redirect_to_a_denied_loopback_address_never_connects(api_server, second_server):
    api_server.route("/start", (302, {"Location": second_server.url + "secret"}, b""))
    assert session().get(api_server.url("/start"), timeout=5).json() == {"ok": True}  # the setup works
    assert (second_server.connections, second_server.paths) == (1, ["/secret"])

    with pytest.raises(BlockedDestination, match="127.0.0.2 is in the denied network 127.0.0.2/32"):
        session(policy(deny="127.0.0.2")).get(api_server.url("/start"), timeout=5)
    assert (second_server.connections, second_server.paths) == (1, ["/secret"])  # no new connection at all


def test_https_to_a_denied_address_is_refused_before_tls(api_server):
    with pytest.raises(BlockedDestination):
        session(policy(deny="127.0.0.0/8")).get(f"https://127.0.0.1:{api_server.port}/", timeout=5)
    assert api_server.count() == 0


def test_proxied_requests_are_checked_by_name_and_local_resolution(api_server):
    api_server.json("/data", {"via": "proxy"})
    proxies = {"http": api_server.base_url}
    s = session(policy(deny="*.blocked.test, 127.0.0.2"))
    for url in ("http://169.254.169.254/", "http://api.blocked.test/data", "http://127.0.0.2/data"):
        with pytest.raises(BlockedDestination):
            s.get(url, proxies=proxies, timeout=5)
    assert api_server.count() == 0
    # a name only the proxy can resolve is left to the proxy
    assert s.get("http://only-the-proxy-knows.invalid/data", proxies=proxies, timeout=5).json() == {
        "via": "proxy"
    }


# ---------------------------------------------------------------------------- adapter settings


def test_adapter_settings_are_passed_and_kept():
    s = session(pool_maxsize=7, pool_connections=3)
    adapter = s.get_adapter("https://api.example.com/")
    assert isinstance(adapter, OutboundGuardAdapter)
    assert (adapter._pool_maxsize, adapter._pool_connections) == (7, 3)

    s = requests.Session()
    s.mount("http://", HTTPAdapter(pool_maxsize=9, max_retries=2))
    s.mount("http://special.example:8080", HTTPAdapter(pool_maxsize=5))
    guard_session(s, policy())
    kept = s.get_adapter("http://api.example.com/")
    assert isinstance(kept, OutboundGuardAdapter)
    assert kept._pool_maxsize == 9 and kept.max_retries.total == 2
    special = s.get_adapter("http://special.example:8080/x")
    assert isinstance(special, OutboundGuardAdapter) and special._pool_maxsize == 5


def test_adapter_pickles_with_its_policy(api_server):
    api_server.json("/items", [])
    p = policy(deny="127.0.0.0/8")
    adapter = pickle.loads(pickle.dumps(OutboundGuardAdapter(p, pool_maxsize=4)))
    assert adapter.policy == p and adapter._pool_maxsize == 4
    s = requests.Session()
    s.trust_env = False
    s.mount("http://", adapter)
    with pytest.raises(BlockedDestination):
        s.get(api_server.url("/items"), timeout=5)
