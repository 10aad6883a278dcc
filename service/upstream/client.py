"""The shared HTTP client to the vendor API: pool and timeouts, bounded reads, bounded retries.

Failures are translated to gateway errors in `failures.py`; this module adds two of its own: a
decoded body over `max_response_bytes` (UpstreamResponseTooLarge, 502; the body is counted as it
streams in and abandoned at the limit) and a Content-Encoding httpx cannot decode (UpstreamError).

Retries (`send_with_retries`) happen only where the request provably never reached the vendor:
the connection could not be established (`httpx.ConnectError`). Everything later is ambiguous —
a reset, a close without an answer, a garbage status line, a timeout: the vendor may have run
(and billed) the POST, and a resend would run it twice or multiply the caller's wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx

# Two private httpx APIs, so pyproject.toml bounds httpx below its next minor version and
# tests/test_upstream.py fails loudly if either moves: the exact table httpx decodes with (br
# and zstd appear only when brotli / zstandard import), and `Response._get_content_decoder` (below).
from httpx._decoders import SUPPORTED_DECODERS as _HTTPX_DECODERS

from service.errors import UpstreamError, UpstreamResponseTooLarge, UpstreamTimeout
from service.upstream.failures import map_transport_errors, redact_url
from service.upstream.vendor_response import VendorResponse

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_RAW_STEP_BYTES = 1024  # encoded bytes decoded at a time (see `_decoded_chunks`)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a request is resent after it failed to connect (never after anything later).

    Attributes:
        max_retries: resends after the first attempt (0 disables retries).
        backoff_s: pause before the first resend; doubled before each further one.
    """

    max_retries: int = 2
    backoff_s: float = 0.05

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 (0 disables retries), got {self.max_retries}")
        if self.backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0 seconds, got {self.backoff_s}")


def decodable_encodings() -> tuple[str, ...]:
    """The content codings the client can decode: gzip and deflate, br and zstd where installed."""
    return tuple(name for name in _HTTPX_DECODERS if name != "identity")


def _require_positive(**settings: float) -> None:
    """Reject the first setting that is not > 0, naming it (settings are checked in the order given).

    Raises:
        ValueError: "<name> must be > 0, got <value>".
    """
    for name, value in settings.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _client_timeout(connect_s: float, read_s: float, write_s: float | None, pool_s: float | None) -> httpx.Timeout:
    """The per-operation timeouts; writing and waiting for a pooled connection default to the read timeout."""
    return httpx.Timeout(
        connect=connect_s,
        read=read_s,
        write=write_s if write_s is not None else read_s,
        pool=pool_s if pool_s is not None else read_s,
    )


def make_http_client(
    timeout_connect_s: float = 2.0,
    timeout_read_s: float = 30.0,
    max_connections: int = 100,
    *,
    max_keepalive_connections: int | None = None,
    keepalive_expiry_s: float = 4.0,
    timeout_write_s: float | None = None,
    timeout_pool_s: float | None = None,
) -> httpx.AsyncClient:
    """Create the one AsyncClient the gateway shares for all upstream calls.

    The caller owns it: open it in the lifespan and `await client.aclose()` there.

    Args:
        timeout_connect_s: seconds to establish a TCP (and TLS) connection.
        timeout_read_s: seconds to wait for each chunk of the response (not the whole body).
        max_connections: open connections at most; further requests wait for a free one.
        max_keepalive_connections: idle connections kept; defaults to `max_connections`.
        keepalive_expiry_s: seconds an idle connection is kept before closing. Below the common
            server idle timeout of 5 s (uvicorn's), so the gateway drops an idle connection before
            the vendor does: a request sent on a connection the vendor is closing fails ambiguously
            and is not resent.
        timeout_write_s: seconds to send each chunk of the request; defaults to `timeout_read_s`.
        timeout_pool_s: seconds to wait for a free pooled connection; defaults to `timeout_read_s`.

    Returns:
        An httpx.AsyncClient without redirects (a vendor redirect is an error, not a hop) that
        offers only the content codings it can decode (`decodable_encodings`).

    Raises:
        ValueError: a timeout or limit is not positive.
    """
    _require_positive(
        timeout_connect_s=timeout_connect_s,
        timeout_read_s=timeout_read_s,
        max_connections=max_connections,
        keepalive_expiry_s=keepalive_expiry_s,
    )
    timeout = _client_timeout(timeout_connect_s, timeout_read_s, timeout_write_s, timeout_pool_s)
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=(
            max_keepalive_connections if max_keepalive_connections is not None else max_connections
        ),
        keepalive_expiry=keepalive_expiry_s,
    )
    # Explicit, so a sidecar client's own Accept-Encoding never replaces it (transport.py drops it).
    headers = {"Accept-Encoding": ", ".join(decodable_encodings())}
    # trust_env=False: proxy variables of the host must not silently reroute vendor traffic.
    return httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        headers=headers,
        cookies=no_cookie_jar(),
        follow_redirects=False,
        trust_env=False,
    )


def no_cookie_jar() -> http.cookiejar.CookieJar:
    """A jar that never stores a cookie.

    The gateway's one client serves every client of the gateway: a cookie the vendor sets in an
    answer to one of them must not ride along on the next one's request (a session leaked across
    tenants). Set-Cookie still reaches the client that caused it, in a relayed answer's headers,
    and a client's own Cookie header is still relayed with its own request.
    """
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


async def send_with_retries(
    client: httpx.AsyncClient,
    request: httpx.Request,
    retry: RetryPolicy,
    *,
    total_timeout_s: float | None = None,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    auth: httpx.Auth | None = None,
) -> VendorResponse:
    """Send a request and read its whole body, resending only when it could not connect.

    Status codes are not checked here (see `raise_for_upstream_status`): the relay passes
    them through.

    Args:
        client: the shared client.
        request: a request with an in-memory body (so it can be resent).
        retry: the retry policy.
        total_timeout_s: wall-clock bound on all attempts together, body included; the client's
            timeouts bound each network operation only, and a vendor trickling bytes would never
            trip them. Zero or less: no time is left, nothing is sent.
        max_response_bytes: limit on the decoded body, enforced while it streams in.
        auth: credentials for the vendor (kept out of the URL, so no log line carries them).

    Returns:
        The vendor's status, headers and decoded body; the connection is released.

    Raises:
        UpstreamTimeout: a timeout of the client, or `total_timeout_s` passed.
        UpstreamResponseTooLarge: the decoded body exceeds `max_response_bytes`.
        UpstreamError: any other failure, after the allowed resends where it could not connect.
    """
    if total_timeout_s is not None and total_timeout_s <= 0:
        raise UpstreamTimeout("no time was left for the vendor call (the request's deadline has passed)")
    deadline = asyncio.timeout(total_timeout_s)
    try:
        async with deadline:
            return await _attempts(client, request, retry, max_response_bytes, auth)
    except TimeoutError as exc:
        if not deadline.expired():
            raise
        logger.warning(
            "upstream %s %s: no complete answer within %g s",
            request.method,
            redact_url(request.url),
            total_timeout_s,
            extra={"request_id": request.headers.get("x-request-id")},
        )
        raise UpstreamTimeout(f"the vendor timed out: no complete answer within {total_timeout_s:g} s") from exc


async def _attempts(
    client: httpx.AsyncClient,
    request: httpx.Request,
    retry: RetryPolicy,
    max_response_bytes: int,
    auth: httpx.Auth | None,
) -> VendorResponse:
    for attempt in range(retry.max_retries + 1):
        try:
            with map_transport_errors(request):
                # stream=True returns once the response head is in, so the body can be counted
                # as it arrives instead of being buffered whole by httpx first.
                response = await client.send(request, stream=True, auth=auth)
        except UpstreamError as exc:
            if not isinstance(exc.__cause__, httpx.ConnectError) or attempt == retry.max_retries:
                raise
            logger.warning(
                "upstream attempt %d could not connect (%s); retrying",
                attempt + 1,
                exc.message,
                extra={"request_id": request.headers.get("x-request-id")},
            )
            await asyncio.sleep(retry.backoff_s * 2**attempt)
            continue
        try:
            with map_transport_errors(request):
                content = await _read_bounded(response, max_response_bytes)
        finally:
            await response.aclose()
        return VendorResponse(response.status_code, response.headers, content)
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


async def _read_bounded(response: httpx.Response, max_bytes: int) -> bytes:
    """The decoded body, counted chunk by chunk and abandoned once it exceeds `max_bytes`.

    Decoded bytes are what costs memory: a small gzip body can expand a thousandfold.
    """
    status = response.status_code
    undecodable = [
        coding
        for value in response.headers.get_list("content-encoding")
        for coding in (part.strip().lower() for part in value.split(","))
        if coding and coding not in _HTTPX_DECODERS
    ]
    if undecodable:
        # httpx would pass such a body through still encoded, and the relay drops the header.
        raise UpstreamError(
            f"the vendor answered HTTP {status} with Content-Encoding {', '.join(undecodable)}, which was "
            f"not offered and cannot be decoded (offered: {', '.join(decodable_encodings())})",
            upstream_status=status,
        )
    declared = response.headers.get("content-length", "")
    if not response.headers.get("content-encoding") and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(status, max_bytes)
    chunks: list[bytes] = []
    size = 0
    # aclosing: at the limit the generator is closed now, not whenever the loop finalizes it.
    async with contextlib.aclosing(_decoded_chunks(response)) as decoded:
        async for chunk in decoded:
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(status, max_bytes)
            chunks.append(chunk)
    return b"".join(chunks)


async def _decoded_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body, decoded a little at a time.

    `aiter_bytes` decodes a whole network read at once: 64 KiB of a deflate bomb is ~64 MB before
    anything can count it. Feeding httpx's own decoder chain 1 KiB encoded steps bounds the
    overshoot past the limit to about 1 MB (deflate tops out near 1000:1).
    """
    if not response.headers.get("content-encoding") or response.is_stream_consumed:
        # Nothing to expand (or a transport handed over a body already read): reads are the bound.
        async for chunk in response.aiter_bytes():
            yield chunk
        return
    decoder = response._get_content_decoder()
    async for raw in response.aiter_raw(_RAW_STEP_BYTES):
        yield decoder.decode(raw)
    yield decoder.flush()


def _too_large(status: int, max_bytes: int) -> UpstreamResponseTooLarge:
    return UpstreamResponseTooLarge(
        f"the vendor's HTTP {status} answer exceeds {max_bytes} bytes (decoded); raise "
        "upstream_max_response_bytes if the vendor's answers are legitimately that large",
        upstream_status=status,
    )
