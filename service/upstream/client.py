"""The shared HTTP client to the vendor API: pool and timeouts, error mapping, bounded retries.

Every transport failure is translated in ONE table, `TRANSPORT_ERRORS` (in the manner of
httpx's `map_httpcore_exceptions`), and every non-2xx status in `raise_for_upstream_status`:

    httpx.TimeoutException (connect, read, write, pool)  → UpstreamTimeout   (504)
    httpx.ConnectError  (refused, unreachable)           → UpstreamError     (502)
    httpx.ReadError / WriteError (reset)                 → UpstreamError     (502)
    httpx.RemoteProtocolError (closed early, bad HTTP)   → UpstreamError     (502)
    any other httpx.TransportError                       → UpstreamError     (502)
    upstream 4xx                                         → UpstreamRejected  (the same 4xx)
    upstream 5xx, 1xx, 3xx                               → UpstreamError     (502, upstream_status)

Retries (`send_with_retries`) happen only where the vendor cannot have answered: a refused
connection, or a connection closed before the response head arrived (the keep-alive race of a
pooled connection the vendor just closed). A timed-out request is never retried: the vendor may
still be computing it, and a retry would multiply the latency the caller waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from service.errors import UpstreamError, UpstreamRejected, UpstreamTimeout

logger = logging.getLogger(__name__)

# Most specific wins (a ConnectTimeout is a TimeoutException, not a ConnectError).
TRANSPORT_ERRORS: dict[type[httpx.TransportError], type[UpstreamError]] = {
    httpx.TransportError: UpstreamError,
    httpx.TimeoutException: UpstreamTimeout,
    httpx.ConnectError: UpstreamError,
    httpx.ReadError: UpstreamError,
    httpx.WriteError: UpstreamError,
    httpx.RemoteProtocolError: UpstreamError,
}

# Errors after which the vendor cannot have sent an answer, so resending is safe.
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a request is resent after a connection error (never after a timeout or status).

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


def make_http_client(
    timeout_connect_s: float = 2.0,
    timeout_read_s: float = 30.0,
    max_connections: int = 100,
    *,
    max_keepalive_connections: int | None = None,
    keepalive_expiry_s: float = 5.0,
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
        keepalive_expiry_s: seconds an idle connection is kept before closing.
        timeout_write_s: seconds to send each chunk of the request; defaults to `timeout_read_s`.
        timeout_pool_s: seconds to wait for a free pooled connection; defaults to `timeout_read_s`.

    Returns:
        An httpx.AsyncClient without redirects (a vendor redirect is an error, not a hop).

    Raises:
        ValueError: a timeout or limit is not positive.
    """
    for name, value in (
        ("timeout_connect_s", timeout_connect_s),
        ("timeout_read_s", timeout_read_s),
        ("max_connections", max_connections),
        ("keepalive_expiry_s", keepalive_expiry_s),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    timeout = httpx.Timeout(
        connect=timeout_connect_s,
        read=timeout_read_s,
        write=timeout_write_s if timeout_write_s is not None else timeout_read_s,
        pool=timeout_pool_s if timeout_pool_s is not None else timeout_read_s,
    )
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=(
            max_keepalive_connections if max_keepalive_connections is not None else max_connections
        ),
        keepalive_expiry=keepalive_expiry_s,
    )
    # trust_env=False: proxy variables of the host must not silently reroute vendor traffic.
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False)


@contextlib.contextmanager
def map_transport_errors(url: str) -> Iterator[None]:
    """Translate httpx transport errors raised inside the block through `TRANSPORT_ERRORS`.

    Args:
        url: the upstream URL, named in the error message.

    Raises:
        UpstreamTimeout: the request timed out.
        UpstreamError: any other transport failure.
    """
    try:
        yield
    except httpx.TransportError as exc:
        mapped: type[UpstreamError] = UpstreamError
        for from_exc, to_exc in TRANSPORT_ERRORS.items():
            if isinstance(exc, from_exc) and issubclass(to_exc, mapped):
                mapped = to_exc
        detail = f": {exc}" if str(exc) else ""
        raise mapped(f"upstream {url}: {type(exc).__name__}{detail}") from exc


def raise_for_upstream_status(response: httpx.Response) -> None:
    """Raise the gateway error for a non-2xx upstream response; return for a 2xx.

    Args:
        response: a response whose body has been read.

    Raises:
        UpstreamRejected: 4xx, carrying the vendor's status, body and content type.
        UpstreamError: any other non-2xx, carrying `upstream_status`.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    url = str(response.request.url)
    if 400 <= status < 500:
        raise UpstreamRejected(
            f"upstream {url} rejected the request with {status}",
            upstream_status=status,
            body=response.content,
            content_type=response.headers.get("content-type", ""),
        )
    raise UpstreamError(f"upstream {url} answered {status}", upstream_status=status)


async def send_with_retries(
    client: httpx.AsyncClient,
    request: httpx.Request,
    retry: RetryPolicy,
    *,
    total_timeout_s: float | None = None,
) -> httpx.Response:
    """Send a request and read its whole body, resending only after connection errors.

    Status codes are not checked here (see `raise_for_upstream_status`): the relay passes
    them through.

    Args:
        client: the shared client.
        request: a request with an in-memory body (so it can be resent).
        retry: the retry policy.
        total_timeout_s: wall-clock bound on all attempts together; the client's timeouts bound
            each network operation only, and a vendor trickling bytes would never trip them.

    Returns:
        The response, body read and connection released.

    Raises:
        UpstreamTimeout: a timeout of the client or `total_timeout_s` passed.
        UpstreamError: a transport failure, after the allowed retries where it is retryable.
    """
    url = str(request.url)
    deadline = asyncio.timeout(total_timeout_s)
    try:
        async with deadline:
            return await _attempts(client, request, retry, url)
    except TimeoutError as exc:
        if not deadline.expired():
            raise
        raise UpstreamTimeout(f"upstream {url}: no complete answer within {total_timeout_s} s") from exc


async def _attempts(
    client: httpx.AsyncClient, request: httpx.Request, retry: RetryPolicy, url: str
) -> httpx.Response:
    for attempt in range(retry.max_retries + 1):
        with map_transport_errors(url):
            try:
                # stream=True returns once the response head is in: an error raised here means
                # the vendor has not answered; an error while reading the body comes later.
                response = await client.send(request, stream=True)
            except _RETRYABLE as exc:
                if attempt == retry.max_retries:
                    raise
                logger.warning(
                    "upstream attempt %d failed (%s: %s); retrying",
                    attempt + 1,
                    type(exc).__name__,
                    exc,
                    extra={"request_id": request.headers.get("x-request-id"), "upstream_url": url},
                )
                await asyncio.sleep(retry.backoff_s * 2**attempt)
                continue
            try:
                await response.aread()
            finally:
                await response.aclose()
            return response
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover
