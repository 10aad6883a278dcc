"""Optional API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.errors import Unauthorized

API_KEY_HEADER = "X-API-Key"
# Headers the gateway itself reads; not forwarded to the vendor in sidecar mode.
GATEWAY_ONLY_HEADERS = frozenset({"x-request-timeout"})


def api_key_dependency(expected: SecretStr) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that admits a request only with the right key (else 401).

    Declared through FastAPI's security classes so the OpenAPI document lists both schemes.

    Args:
        expected: the configured key.

    Returns:
        The dependency; add it to the routers that need a key (not to probes and /metrics).
    """
    expected_bytes = expected.get_secret_value().encode()
    bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer <api key>")
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="apiKey",
                          description=f"{API_KEY_HEADER}: <api key>")

    async def require_api_key(credentials: HTTPAuthorizationCredentials | None = Security(bearer),
                              key: str | None = Security(header)) -> None:
        presented = [value for value in (credentials.credentials if credentials else None, key) if value]
        if not presented:
            raise Unauthorized(f"missing API key: send 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'",
                               headers={"WWW-Authenticate": "Bearer"})
        # Every presented key is compared, each in constant time, so timing tells nothing about the key.
        matches = [hmac.compare_digest(value.encode(), expected_bytes) for value in presented]
        if not any(matches):
            raise Unauthorized("wrong API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return require_api_key


def headers_for_vendor(headers: Mapping[str, str], api_key: SecretStr | None) -> dict[str, str]:
    """The client's headers minus what is meant for the gateway: the gateway's own key and its
    X-Request-Timeout. A vendor credential in the other header passes through untouched.

    Args:
        headers: the client's request headers.
        api_key: the gateway's key, if one is configured.

    Returns:
        Headers to forward (hop-by-hop ones are dropped later by the adapter).
    """
    secret = api_key.get_secret_value() if api_key is not None else None
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in GATEWAY_ONLY_HEADERS:
            continue
        if secret is not None and lower == "authorization" and _same(_bearer_token(value), secret):
            continue
        if secret is not None and lower == API_KEY_HEADER.lower() and _same(value, secret):
            continue
        kept[name] = value
    return kept


def _same(presented: str | None, secret: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), secret.encode())


def _bearer_token(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
