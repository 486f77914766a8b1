"""Credentials of ``source.auth``: resolved from environment variables, and every form a secret can take
(to mask it in URLs, bodies and messages)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

from anomaly_detection.config import AuthConfig, SourceConfig
from anomaly_detection.errors import ConfigError

#: Resolves the secrets of ``source.auth`` into request headers and query parameters.
CredentialResolver = Callable[[SourceConfig], tuple[dict[str, str], dict[str, str]]]


def auth_values(
    auth: AuthConfig, kind: str, *, token: str = "", username: str = "", password: str = ""
) -> tuple[dict[str, str], dict[str, str]]:
    """The request headers and query parameters of credentials of ``kind`` (an ``auth.type``)."""
    if kind == "basic":
        pair = base64.b64encode(f"{username}:{password}".encode()).decode()
        return {auth.header_name: f"Basic {pair}"}, {}
    if kind == "bearer":
        return {auth.header_name: f"Bearer {token}"}, {}
    if kind == "header":
        return {auth.header_name: token}, {}
    if kind == "query":
        return {}, {auth.param_name: token}
    return {}, {}


def env_credentials(source: SourceConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Build auth headers / query params from environment variables named in ``source.auth``."""
    auth = source.auth

    def secret(var: str | None, key: str) -> str:
        value = os.environ.get(var or "")
        if not value:
            raise ConfigError(f"source.auth.{key}: environment variable {var!r} is not set")
        return value

    if auth.type == "none":
        return {}, {}
    if auth.type == "basic":
        username, password = (
            secret(auth.username_env, "username_env"),
            secret(auth.password_env, "password_env"),
        )
        return auth_values(auth, "basic", username=username, password=password)
    return auth_values(auth, auth.type, token=secret(auth.token_env, "token_env"))


def connection_credentials(
    auth: AuthConfig, *, login: str | None, password: str | None, extra: dict[str, Any] | None
) -> tuple[dict[str, str], dict[str, str]]:
    """Credentials from an Airflow connection (``source.auth.conn_id``): its login and password, or a
    token (the password, else ``extra["token"]``). With ``auth.type: none`` a login means basic auth,
    else the token is sent as a bearer token."""
    token = password or (extra or {}).get("token") or ""
    kind = auth.type
    if kind == "none":
        kind = "basic" if login else "bearer"
    return auth_values(auth, kind, token=token, username=login or "", password=password or "")


def secret_values(headers: dict[str, str], params: dict[str, str]) -> list[str]:
    """Every form in which a credential could show up in a URL, a body or a message."""
    found: list[str] = []
    for value in (*headers.values(), *params.values()):
        if not value:
            continue
        found.append(value)
        scheme, _, rest = value.partition(" ")
        if rest and scheme.lower() in ("bearer", "token", "basic"):
            found.append(rest)
            if scheme.lower() == "basic":
                try:
                    pair = base64.b64decode(rest).decode()
                except (ValueError, UnicodeDecodeError):
                    pair = ""
                if pair:
                    found.append(pair)
                    found.append(pair.partition(":")[2])
    variants: list[str] = []
    for value in found:
        variants.extend((value, quote(value, safe=""), quote_plus(value)))
    # longest first so that a value is masked before a shorter part of it; tiny values would mask noise
    return sorted({v for v in variants if len(v) >= 3}, key=len, reverse=True)
