"""Outbound-request guard: refuse connections to denied hosts and networks (SSRF protection).

The trigger form names arbitrary API URLs, so a run could be pointed at cloud metadata
(``http://169.254.169.254/``), at a name that resolves there, or at an allowed server that
redirects there. :func:`guard_session` mounts an adapter on a :class:`requests.Session` that

* checks the host name of every request (each redirect hop is a request of its own), and
* resolves the host itself, checks every address it resolves to, and connects only to an
  address it checked (so DNS tricks do not help), then checks the peer address of the socket.

A refused request raises :class:`BlockedDestination`, a :class:`requests.exceptions.InvalidURL`
(fatal, never retried) rather than a ``ConnectionError``.

Deployment settings (comma-separated host names, ``*.example.com`` patterns, IP addresses or
CIDR networks):

``ANOMALY_OUTBOUND_DENY``
    Added to the built-in deny list (link-local and cloud metadata addresses).
``ANOMALY_OUTBOUND_ALLOW``
    If non-empty, only these hosts or networks may be reached. Deny wins over allow.

Loopback stays allowed unless denied (``127.0.0.0/8,::1``). Requests sent through a proxy are
checked by host name and by the addresses the name resolves to locally (the proxy connects,
not this process); the proxy itself is deployment configuration and is not checked.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from anomaly_detection.errors import ConfigError

DENY_VAR = "ANOMALY_OUTBOUND_DENY"
ALLOW_VAR = "ANOMALY_OUTBOUND_ALLOW"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOST_PATTERN = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}")
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
_EXAMPLES = "e.g. api.example.com, *.example.com, 10.0.0.0/8, fd00::/8"


class BlockedDestination(requests.exceptions.InvalidURL):
    """The outbound policy refuses this destination.

    A subclass of :class:`requests.exceptions.InvalidURL`, so retry loops that retry
    ``requests.ConnectionError`` and ``requests.Timeout`` treat it as fatal.

    Attributes
    ----------
    host : str or None
        The host name (or literal address) of the refused URL.
    address : str or None
        The IP address that was refused, if the refusal was by address.
    rule : str
        The rule that refused it, e.g. ``"169.254.0.0/16 (built-in: link-local / cloud metadata)"``.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        address: str | None = None,
        rule: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.host = host
        self.address = address
        self.rule = rule


class OutboundPolicyError(ConfigError, ValueError):
    """An ``ANOMALY_OUTBOUND_*`` entry is not a host name, pattern, address or network."""


class _Refused(Exception):
    """Carries a :class:`BlockedDestination` out of urllib3.

    urllib3 and requests wrap any ``OSError`` raised while connecting (``InvalidURL`` is one) in
    a retryable ``ConnectionError``; an exception outside their except clauses passes through
    untouched and :meth:`OutboundGuardAdapter.send` re-raises the ``BlockedDestination`` inside.
    """

    def __init__(self, blocked: BlockedDestination) -> None:
        super().__init__(str(blocked))
        self.blocked = blocked


@dataclass(frozen=True)
class NetworkRule:
    """Matches addresses in ``network``; ``source`` says where the rule came from."""

    network: IPNetwork
    source: str

    def matches(self, address: IPAddress) -> bool:
        return address.version == self.network.version and address in self.network

    def describe(self) -> str:
        return f"{self.network} ({self.source})"


@dataclass(frozen=True)
class HostRule:
    """Matches a host name exactly, or any subdomain for a ``*.example.com`` pattern."""

    pattern: str
    source: str

    def matches(self, host: str) -> bool:
        if self.pattern.startswith("*."):
            suffix = self.pattern[1:]
            return host.endswith(suffix) and len(host) > len(suffix)
        return host == self.pattern

    def describe(self) -> str:
        return f"{self.pattern} ({self.source})"


Rule = NetworkRule | HostRule

BUILTIN_DENY: tuple[NetworkRule, ...] = (
    NetworkRule(ipaddress.ip_network("169.254.0.0/16"), "built-in: link-local / cloud metadata"),
    NetworkRule(ipaddress.ip_network("fe80::/10"), "built-in: IPv6 link-local"),
    NetworkRule(ipaddress.ip_network("fd00:ec2::254/128"), "built-in: AWS IPv6 instance metadata"),
)


# ---------------------------------------------------------------------------- normalising


def normalise_host(host: str) -> str:
    """Lower-case ``host`` and drop IPv6 brackets and a trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def _literal_address(text: str) -> IPAddress | None:
    """``text`` as an IP address (IPv4-mapped IPv6 as IPv4, zone id dropped), or None."""
    try:
        address = ipaddress.ip_address(text.strip("[]").partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalise_address(value: str | IPAddress) -> IPAddress:
    """The address a connection to ``value`` actually reaches, for checking.

    IPv4-mapped IPv6 addresses (``::ffff:169.254.169.254``) become IPv4, a zone id
    (``fe80::1%eth0``) is dropped, and the unspecified address (``0.0.0.0``, ``::``), which
    connects to this host, is checked as loopback.

    Raises
    ------
    ValueError
        If ``value`` is not an IP address.
    """
    address = _literal_address(str(value))
    if address is None:
        raise ValueError(f"{value!r} is not an IP address")
    if address.is_unspecified:
        return ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    return address


def _normalise_network(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network (``::ffff:169.254.0.0/112``) as the IPv4 network it maps."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.subnet_of(_MAPPED_V4)
    ):
        v4 = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network(f"{v4}/{network.prefixlen - 96}")
    return network


# ---------------------------------------------------------------------------- parsing


def parse_entry(entry: str, variable: str) -> Rule:
    """One allow/deny entry as a rule.

    Parameters
    ----------
    entry : str
        A host name, a ``*.domain`` pattern, an IP address or a CIDR network.
    variable : str
        The variable the entry came from, used as the rule's source and in errors.

    Raises
    ------
    OutboundPolicyError
        If the entry is none of these; the message names the variable and the entry.
    """
    text = entry.strip()
    bad = f"{variable}: entry {text!r}"
    if "/" in text and "://" not in text:
        try:
            network = ipaddress.ip_network(text.strip("[]"), strict=True)
        except ValueError as exc:
            try:
                hint = f"; did you mean {ipaddress.ip_network(text.strip('[]'), strict=False)}?"
            except ValueError:
                hint = ""
            raise OutboundPolicyError(f"{bad} is not a valid CIDR network ({exc}){hint}") from None
        return NetworkRule(_normalise_network(network), variable)
    address = _literal_address(text)
    if address is not None:
        if address.is_unspecified:
            raise OutboundPolicyError(
                f"{bad} is the unspecified address; connections to it reach this host and are checked "
                "as loopback, so list 127.0.0.0/8 and ::1 instead"
            )
        return NetworkRule(ipaddress.ip_network(address), variable)
    host = normalise_host(text)
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        pass
    if _HOST_PATTERN.fullmatch(host):
        return HostRule(host, variable)
    if "://" in text:
        raise OutboundPolicyError(f"{bad} is a URL; give only its host name ({_EXAMPLES})")
    if ":" in text:
        raise OutboundPolicyError(f"{bad} is not a host name or address; leave out any port ({_EXAMPLES})")
    raise OutboundPolicyError(
        f"{bad} is not a host name, *.domain pattern, IP address or CIDR network ({_EXAMPLES})"
    )


def parse_entries(text: str, variable: str) -> tuple[Rule, ...]:
    """The rules of a comma-separated list; blank entries are skipped."""
    return tuple(parse_entry(entry, variable) for entry in text.split(",") if entry.strip())


# ---------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class OutboundPolicy:
    """Which hosts and addresses outbound requests may reach.

    Parameters
    ----------
    deny : tuple of rules
        Denied hosts and networks, in addition to :data:`BUILTIN_DENY` (always applied).
    allow : tuple of rules
        If non-empty, only these hosts and networks may be reached. Deny wins over allow.
    """

    deny: tuple[Rule, ...] = ()
    allow: tuple[Rule, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OutboundPolicy:
        """The policy set by ``ANOMALY_OUTBOUND_DENY`` and ``ANOMALY_OUTBOUND_ALLOW``.

        Raises
        ------
        OutboundPolicyError
            If an entry cannot be parsed.
        """
        return cls(
            deny=parse_entries(environ.get(DENY_VAR, ""), DENY_VAR),
            allow=parse_entries(environ.get(ALLOW_VAR, ""), ALLOW_VAR),
        )

    @property
    def denied_networks(self) -> tuple[NetworkRule, ...]:
        return BUILTIN_DENY + tuple(r for r in self.deny if isinstance(r, NetworkRule))

    def refusal(self, host: str | None, address: IPAddress | None) -> BlockedDestination | None:
        """Why a connection to ``host`` at ``address`` is refused, or None if it is allowed.

        With ``address`` None only the host name is judged; a name that an allowed network
        could still admit once resolved passes.
        """
        shown = (
            host
            if address is None
            else (str(address) if host in (None, str(address)) else f"{host} ({address})")
        )

        def refuse(reason: str, rule: str) -> BlockedDestination:
            return BlockedDestination(
                f"outbound request refused: {shown} {reason}",
                host=host,
                address=None if address is None else str(address),
                rule=rule,
            )

        if address is not None:
            for net_rule in self.denied_networks:
                if net_rule.matches(address):
                    fix = (
                        "always denied"
                        if net_rule.source.startswith("built-in")
                        else "edit that variable to change"
                    )
                    return refuse(
                        f"is in the denied network {net_rule.network} ({net_rule.source}; {fix})",
                        net_rule.describe(),
                    )
        if host is not None:
            for host_rule in self.deny:
                if isinstance(host_rule, HostRule) and host_rule.matches(host):
                    return refuse(
                        f"matches the denied host {host_rule.pattern} ({host_rule.source}; "
                        "edit that variable to change)",
                        host_rule.describe(),
                    )
        if not self.allow or self._allowed(host, address):
            return None
        listed = ", ".join(r.pattern if isinstance(r, HostRule) else str(r.network) for r in self.allow)
        return refuse(f"is not in {ALLOW_VAR} ({listed}); add it there to allow it", ALLOW_VAR)

    def _allowed(self, host: str | None, address: IPAddress | None) -> bool:
        for rule in self.allow:
            if isinstance(rule, HostRule):
                if host is not None and rule.matches(host):
                    return True
            elif address is None or rule.matches(address):
                return True  # with no address yet, an allowed network may still match it
        return False

    def check_host(self, host: str) -> None:
        """Refuse ``host`` by name (a literal IP address is checked as an address).

        Raises
        ------
        BlockedDestination
            If a deny rule matches, or the allow-list cannot admit the host.
        """
        name = normalise_host(host)
        literal = _literal_address(name)
        if literal is not None:
            self.check_address(literal)
            return
        blocked = self.refusal(name, None)
        if blocked is not None:
            raise blocked

    def check_address(self, address: str | IPAddress, host: str | None = None) -> None:
        """Refuse a connection to ``address`` (reached as ``host``, if given).

        Raises
        ------
        BlockedDestination
            If a deny rule matches, or an allow-list admits neither the host nor the address.
        ValueError
            If ``address`` is not an IP address.
        """
        name = None if host is None else normalise_host(host)
        if name is not None and _literal_address(name) is not None:
            name = None  # a literal host is judged by its address only
        blocked = self.refusal(name, normalise_address(address))
        if blocked is not None:
            raise blocked


# ---------------------------------------------------------------------------- urllib3 / requests


def _resolve(host: str, port: int) -> list[str]:
    """The addresses a connection to ``host`` would try, in order (may raise socket.gaierror)."""
    family = urllib3_connection.allowed_gai_family()
    infos = socket.getaddrinfo(host.strip("[]"), port, family, socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _GuardedConnection:
    """Mixin for urllib3 connections: check every address before connecting, and the peer after."""

    policy: ClassVar[OutboundPolicy]
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _check(self, address: str) -> None:
        try:
            self.policy.check_address(address, self.host)
        except BlockedDestination as blocked:
            raise _Refused(blocked) from None

    def _new_conn(self) -> socket.socket:
        try:
            self.policy.check_host(self.host)
        except BlockedDestination as blocked:
            raise _Refused(blocked) from None
        try:
            addresses = _resolve(self.host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        for address in addresses:  # refuse if any address is denied, not only the first
            self._check(address)
        sock = self._connect_any(addresses)
        try:
            self._check(sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock

    def _connect_any(self, addresses: list[str]) -> socket.socket:
        """Connect to the first of ``addresses`` that answers, mapping errors as urllib3 does."""
        error: OSError = OSError("getaddrinfo returns an empty list")
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:
                error = exc
        if isinstance(error, socket.timeout):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error  # type: ignore[arg-type]


def guarded_pool_classes(policy: OutboundPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes (by scheme) whose connections enforce ``policy``."""
    http_conn = type("GuardedHTTPConnection", (_GuardedConnection, HTTPConnection), {"policy": policy})
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnection, HTTPSConnection), {"policy": policy})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


class OutboundGuardAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` that enforces an :class:`OutboundPolicy`.

    Parameters
    ----------
    policy : OutboundPolicy, optional
        Defaults to :meth:`OutboundPolicy.from_env`.
    **adapter_kwargs
        Passed to ``HTTPAdapter`` (``pool_connections``, ``pool_maxsize``, ``max_retries``,
        ``pool_block``).
    """

    __attrs__ = HTTPAdapter.__attrs__ + ["policy"]

    def __init__(self, policy: OutboundPolicy | None = None, **adapter_kwargs: Any) -> None:
        self.policy = OutboundPolicy.from_env() if policy is None else policy
        super().__init__(**adapter_kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = guarded_pool_classes(self.policy)

    def _check_proxied(self, host: str, port: int) -> None:
        """Best effort for a proxied request: check what the host resolves to here."""
        try:
            addresses = _resolve(host, port)
        except (socket.gaierror, UnicodeError):
            return  # only the proxy can resolve it; the name check has run
        for address in addresses:
            self.policy.check_address(address, host)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Check the destination, then send; a refusal raises :class:`BlockedDestination`."""
        parts = urlsplit(request.url or "")
        try:
            if parts.hostname:
                self.policy.check_host(parts.hostname)
                if select_proxy(request.url, proxies):
                    self._check_proxied(
                        parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
                    )
            return super().send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
        except BlockedDestination as blocked:
            blocked.request = request
            raise
        except _Refused as refused:
            refused.blocked.request = request
            raise refused.blocked from None


def _adapter_settings(adapter: Any) -> dict[str, Any]:
    """The pool settings of an existing ``HTTPAdapter``, to carry over to its replacement."""
    if not isinstance(adapter, HTTPAdapter):
        return {}
    return {
        "pool_connections": adapter._pool_connections,
        "pool_maxsize": adapter._pool_maxsize,
        "pool_block": adapter._pool_block,
        "max_retries": adapter.max_retries,
    }


def guard_session(
    session: requests.Session, policy: OutboundPolicy | None = None, **adapter_kwargs: Any
) -> requests.Session:
    """Make every http(s) request of ``session`` obey ``policy``, including redirect hops.

    Mounts an :class:`OutboundGuardAdapter` for ``http://`` and ``https://`` and in place of
    any more specific http(s) adapter already mounted, keeping each replaced adapter's pool
    settings unless ``adapter_kwargs`` override them.

    Parameters
    ----------
    session : requests.Session
        The session to guard (modified in place).
    policy : OutboundPolicy, optional
        Defaults to :meth:`OutboundPolicy.from_env` (read once, now).
    **adapter_kwargs
        ``HTTPAdapter`` settings, e.g. ``pool_maxsize=16``.

    Returns
    -------
    requests.Session
        ``session`` itself.

    Raises
    ------
    OutboundPolicyError
        If ``policy`` is None and an ``ANOMALY_OUTBOUND_*`` entry cannot be parsed.
    """
    policy = OutboundPolicy.from_env() if policy is None else policy
    prefixes = {"http://", "https://"} | {
        p for p in session.adapters if p.lower().startswith(("http://", "https://"))
    }
    for prefix in sorted(prefixes):
        settings = {**_adapter_settings(session.adapters.get(prefix)), **adapter_kwargs}
        session.mount(prefix, OutboundGuardAdapter(policy, **settings))
    return session


def guarded_session() -> requests.Session:
    """A new session behind the deployment's outbound policy (read from the environment now)."""
    return guard_session(requests.Session())
