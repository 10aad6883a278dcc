"""Optional API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.errors import Unauthorized
from service.shadow.relay_headers import API_KEY_HEADER, RELAYED_BY_HEADER, RELAYED_SOURCE_HEADER

# Headers the gateway itself reads; not forwarded to the vendor in sidecar mode.
# The strength header is the sidecar's ?strength= (a vendor-format request has no query of ours);
# the relay headers pass between replicas (TARGET_PEERS) and mean nothing to a vendor.
STRENGTH_HEADER = "X-Zipgate-Strength"
GATEWAY_ONLY_HEADERS = frozenset(
    {"x-request-timeout", STRENGTH_HEADER.lower(), RELAYED_BY_HEADER.lower(), RELAYED_SOURCE_HEADER.lower()}
)
# Credential headers that may carry the gateway's key in some spelling (the adapter drops
# Proxy-Authorization as hop-by-hop too; here it goes whatever the adapter does).
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization"})


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
    header = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, scheme_name="apiKey", description=f"{API_KEY_HEADER}: <api key>"
    )

    async def require_api_key(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer), key: str | None = Security(header)
    ) -> None:
        presented = [value for value in (credentials.credentials if credentials else None, key) if value]
        if not presented:
            raise Unauthorized(
                f"missing API key: send 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Every presented key is compared, each in constant time, so timing tells nothing about the key.
        matches = [hmac.compare_digest(value.encode(), expected_bytes) for value in presented]
        if not any(matches):
            raise Unauthorized("wrong API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return require_api_key


def headers_for_vendor(headers: Mapping[str, str], api_key: SecretStr | None) -> dict[str, str]:
    """The client's headers minus what is meant for the gateway: its X-Request-Timeout, X-Zipgate-Strength and, when a
    key is configured, X-API-Key (the gateway's header, whatever it holds) and any Authorization or
    Proxy-Authorization that carries the gateway's key in any form. A vendor credential in
    Authorization passes (unless UPSTREAM_URL has credentials: the adapter's Basic auth replaces it).

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
        if secret is not None and (
            lower == API_KEY_HEADER.lower() or lower in _CREDENTIAL_HEADERS and _carries(value, secret)
        ):
            continue
        kept[name] = value
    return kept


def _carries(authorization: str, secret: str) -> bool:
    """Whether an Authorization value holds `secret` as any of its words: "Bearer<TAB>key",
    "bearer  key", "Token key" and a bare "key" all do. The admission check (HTTPBearer) reads
    only "Bearer key", but a client may send the key in other spellings beside a valid X-API-Key,
    and none of them may reach the vendor."""
    # Every word is compared, each in constant time, so timing tells nothing about the key.
    matches = [hmac.compare_digest(word.encode(), secret.encode()) for word in authorization.split()]
    return any(matches)
