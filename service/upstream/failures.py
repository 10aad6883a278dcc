"""How vendor failures become gateway errors: one table, client-safe messages, redacted URLs.

Every failure of a call is translated in ONE table, `TRANSPORT_ERRORS` (in the manner of httpx's
`map_httpcore_exceptions`), and every non-2xx status in `raise_for_upstream_status`:

    httpx.TimeoutException (connect, read, write, pool)  → UpstreamTimeout   (504)
    httpx.ConnectError  (refused, unreachable)           → UpstreamError     (502)  the only one resent
    httpx.ReadError / WriteError (reset)                 → UpstreamError     (502)
    httpx.RemoteProtocolError (closed early, bad HTTP)   → UpstreamError     (502)
    httpx.DecodingError (corrupt gzip …)                 → UpstreamError     (502)
    any other httpx.RequestError                         → UpstreamError     (502)
    upstream 4xx                                         → UpstreamRejected  (the same 4xx, Retry-After kept)
    upstream 5xx, 1xx, 3xx                               → UpstreamError     (502, upstream_status)

(`client.py` adds two of its own: a decoded body over the size limit → UpstreamResponseTooLarge,
and a Content-Encoding httpx cannot decode → UpstreamError.)

Messages name "the vendor" and the kind of failure, never the vendor's URL: it is an internal host
and may carry credentials. Log lines carry the URL through `redact_url`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator

import httpx

from service.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from service.upstream.vendor_response import VendorResponse

logger = logging.getLogger(__name__)

# Most specific wins (a ConnectTimeout is a TimeoutException, not a ConnectError): the first
# class of the exception's MRO found here. The text is what the client reads.
TRANSPORT_ERRORS: dict[type[httpx.RequestError], tuple[type[UpstreamError], str]] = {
    httpx.RequestError: (UpstreamError, "the vendor call failed"),
    httpx.TransportError: (UpstreamError, "the vendor call failed"),
    httpx.TimeoutException: (UpstreamTimeout, "the vendor timed out"),
    httpx.ConnectTimeout: (UpstreamTimeout, "could not connect to the vendor"),
    httpx.ReadTimeout: (UpstreamTimeout, "the vendor sent no data"),
    httpx.WriteTimeout: (UpstreamTimeout, "the vendor took no data"),
    httpx.PoolTimeout: (UpstreamTimeout, "no free connection to the vendor (pool full)"),
    httpx.ConnectError: (UpstreamError, "could not connect to the vendor"),
    httpx.ReadError: (UpstreamError, "the connection to the vendor broke while reading its answer"),
    httpx.WriteError: (UpstreamError, "the connection to the vendor broke while sending the request"),
    httpx.RemoteProtocolError: (UpstreamError, "the vendor sent no usable HTTP answer"),
    httpx.DecodingError: (UpstreamError, "the vendor's body does not decode as its Content-Encoding says"),
}

# Which phase of an httpx timeout fired → the key of its per-request timeout settings.
_TIMEOUT_PHASES: dict[type[httpx.TimeoutException], str] = {
    httpx.ConnectTimeout: "connect",
    httpx.ReadTimeout: "read",
    httpx.WriteTimeout: "write",
    httpx.PoolTimeout: "pool",
}


def redact_url(url: str | httpx.URL) -> str:
    """The URL with its userinfo (`user:password@`) replaced by `***@`, for log lines.

    Args:
        url: an absolute URL, or any text shaped like one (it need not parse).

    Returns:
        The same text without the credentials; unchanged where it has none.
    """
    text = str(url)
    scheme_end = text.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    end = next((i for i in range(start, len(text)) if text[i] in "/?#"), len(text))
    at = text.rfind("@", start, end)
    return text if at < 0 else f"{text[:start]}***{text[at:]}"


def describe_request_error(exc: httpx.RequestError) -> tuple[type[UpstreamError], str]:
    """The gateway error class and a client-safe message for an httpx failure (pure).

    Args:
        exc: the failure.

    Returns:
        The class to raise and its message: what failed and how (e.g. "could not connect to the
        vendor: connection refused"), never a host, port or URL.
    """
    mapped, summary = next(TRANSPORT_ERRORS[cls] for cls in type(exc).__mro__ if cls in TRANSPORT_ERRORS)
    kind = _failure_kind(exc)
    return mapped, f"{summary}: {kind}" if kind else summary


def _failure_kind(exc: httpx.RequestError) -> str:
    """How it failed, from the exception's own facts: a timeout's seconds, an OS error's kind."""
    phase = next((_TIMEOUT_PHASES[cls] for cls in type(exc).__mro__ if cls in _TIMEOUT_PHASES), None)
    if phase is not None:
        seconds = _request_timeouts(exc).get(phase)
        return f"timed out after {seconds:g} s" if isinstance(seconds, (int, float)) else "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        text = str(exc).lower()  # h11's and httpcore's wording; only the kind is passed on
        if "disconnected" in text or "closed" in text or "incomplete" in text:
            return "it closed the connection before the answer was complete"
        if "switch" in text:
            return "an unrequested protocol switch (101)"
        return "a malformed status line or headers"
    for cause in _causes(exc):
        # OS error texts can name the peer ("Connect call failed ('10.0.0.7', 80)"); kinds cannot.
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, socket.gaierror):
            return "host name not resolved"
        if isinstance(cause, ssl.SSLError):
            return "TLS failed"
    return ""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _request_timeouts(exc: httpx.RequestError) -> dict[str, object]:
    try:
        timeouts = exc.request.extensions.get("timeout", {})
    except RuntimeError:  # raised without a request (never by the client itself)
        return {}
    return timeouts if isinstance(timeouts, dict) else {}


@contextlib.contextmanager
def map_transport_errors(request: httpx.Request) -> Iterator[None]:
    """Translate httpx failures raised inside the block through `TRANSPORT_ERRORS`.

    The client's error names the failure only; the log line adds the (redacted) URL and the
    underlying error for operators.

    Args:
        request: the request being sent.

    Raises:
        UpstreamTimeout: the request timed out.
        UpstreamError: any other failure.
    """
    try:
        yield
    except httpx.RequestError as exc:
        mapped, message = describe_request_error(exc)
        logger.warning(
            "upstream %s %s failed: %s: %s",
            request.method,
            redact_url(request.url),
            type(exc).__name__,
            exc,
            extra={"request_id": request.headers.get("x-request-id")},
        )
        raise mapped(message) from exc


def raise_for_upstream_status(response: VendorResponse) -> None:
    """Raise the gateway error for a non-2xx upstream response; return for a 2xx.

    Args:
        response: the vendor's answer.

    Raises:
        UpstreamRejected: 4xx, carrying the vendor's status, body, content type and Retry-After.
        UpstreamError: any other non-2xx, carrying `upstream_status`.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    if 400 <= status < 500:
        raise UpstreamRejected(
            f"the vendor rejected the request with HTTP {status}",
            upstream_status=status,
            body=response.content,
            content_type=response.headers.get("content-type", ""),
            retry_after=response.headers.get("retry-after"),
        )
    raise UpstreamError(f"the vendor answered HTTP {status}", upstream_status=status)
