"""The one ASGI middleware around every request: id, limits, drain gate, timing, metrics, last-resort 500.

Pure ASGI rather than Starlette's BaseHTTPMiddleware: handlers keep the server's own `receive`,
so they can notice a client that hangs up while its images wait in the queue.

The body is guarded here, in the `receive` handed to the app: its size (413) and its arrival
time. The size limit is `max_request_bytes`, or a tighter one the matched route declares as its
`body_limit` (a `BodyLimit`; e.g. `POST /targets/alerts`): one mechanism for every body cap, applied
when the handler reads the body (the route is known by then, from the router's own match, so no
path is matched twice). uvicorn has no timeout on a body in progress, so without a deadline a
client sending a byte every few seconds holds a connection and a handler for ever (408, and the
connection is closed). A client that hangs up mid-body is counted as 499 and logged at info:
nothing failed.

A body over its limit is not left to uvicorn to discard: it does so with no deadline, so a client that
got its 413 and kept trickling bytes would hold the connection for ever. As nginx's "lingering close",
the rest of the body is read and dropped first (`_drain_rest`: until it ends, the body's deadline, or a
byte budget), then the 413 goes out with Connection: close. The client has normally finished sending by
then, so the close is clean (FIN, not RST) and the 413 reaches it; one still sending is cut off.

A body with a content coding (`Content-Encoding: gzip`, ...) is refused the same way, drained and then
answered, with 415 and `Accept-Encoding: identity` (RFC 9110 §15.5.16): the gateway reads images out
of the bytes, and would otherwise fail on them as an undecodable image (a misleading 400). Decoding
it here would put a decompressed size, not the bytes sent, under the body limits.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import (
    CLIENT_CLOSED_REQUEST,
    gateway_error_response,
    internal_error_response,
    request_path_context,
)
from service.api.lifecycle import Lifecycle
from service.api.logging import request_id_context
from service.api.timing import RequestTimings
from service.errors import DRAINING_RETRY_AFTER_S, NotReady, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from service.metrics import GatewayMetrics

logger = logging.getLogger("zipgate.access")

# How much of a refused (413) body is read and dropped before the connection closes: DRAIN_LIMIT_FACTOR × the
# limit it broke, at least DRAIN_FLOOR_BYTES. Dropping costs no memory (each chunk goes as it arrives) and the
# body's deadline bounds the time; this bounds the bytes, so a huge upload at full speed is cut off after
# about 64 MiB (4 × the default MAX_REQUEST_BYTES) rather than read for ever. Within it, a body up to 5 × its
# limit (a common mistake's size) still ends before the close and its client reliably reads the 413; the
# floor does the same for a route's small limit (the Alertmanager webhook's 1 MiB). A body declared larger
# than the budget is not read at all: it could not end before the close anyway.
DRAIN_LIMIT_FACTOR = 4
DRAIN_FLOOR_BYTES = 8 << 20

REQUEST_ID_HEADER = "x-request-id"
# Printable ASCII without spaces, bounded: safe to log, echo and forward upstream.
_REQUEST_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")
# Probes and scrapes must answer while starting or draining, and without an API key.
# The v2 health routes and KServe v1's `GET /` are probes too (tritonclient's is_server_live/ready, KServe's
# is_server_live): while draining, "live" must stay true and "ready" answer false by itself, not be
# refused with the drain's 503.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/v2/health/live", "/v2/health/ready"})
UNMATCHED_ENDPOINT = "unmatched"  # one label for every unknown path: no label explosion from scanners
TIMINGS_STATE_KEY = "zipgate_timings"


@dataclass(frozen=True)
class BodyLimit:
    """A cap on a request body: at most `max_bytes`; the 413 names the limit (`name`) and how to stay under it.

    The gateway's own is `max_request_bytes`. A route declares a tighter one as a `body_limit` attribute
    (a class attribute of its route class), and `GatewayMiddleware` applies it to that route's body.
    """

    max_bytes: int
    name: str
    advice: str

    @property
    def drain_budget(self) -> int:
        """At most this many bytes of a body over this limit are read (and dropped) before its 413 closes."""
        return max(DRAIN_LIMIT_FACTOR * self.max_bytes, DRAIN_FLOOR_BYTES)

    # Both with Connection: close, sent once the rest of the body is drained (`_drain_rest`): kept open,
    # uvicorn would discard whatever the client sends next with no deadline.
    def declared_too_large(self, declared: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body of {declared} bytes; the limit is {self.max_bytes} bytes ({self.name}): {self.advice}",
            headers=_CLOSE,
        )

    def streamed_too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body over the limit of {self.max_bytes} bytes ({self.name}): {self.advice}", headers=_CLOSE
        )


_CLOSE = {"Connection": "close"}


def route_body_limit(scope: Scope) -> BodyLimit | None:
    """The `body_limit` the matched route declares, if any (FastAPI sets the scope's route before its handler runs)."""
    limit = getattr(scope.get("route"), "body_limit", None)
    return limit if isinstance(limit, BodyLimit) else None


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is a sane token, else a fresh uuid4 hex."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID_PATTERN.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def timings_of(scope: Scope) -> RequestTimings:
    """The current request's timings (set by `GatewayMiddleware`; a fresh one outside it)."""
    state = scope.setdefault("state", {})
    return state.setdefault(TIMINGS_STATE_KEY, RequestTimings())


class GatewayMiddleware:
    """Around every HTTP request: take or make X-Request-ID and log with it; refuse bodies over
    `max_request_bytes`, or over the route's tighter `body_limit` (declared or streamed) with 413 (the rest of
    the body drained first, then the connection closed) and bodies not complete within
    `body_read_timeout_s` of the request's arrival with 408; refuse work while draining with 503;
    add X-Request-ID and Server-Timing to the response; count it in the request metrics (499 for
    a client that hung up mid-body); end a request still unanswered when the drain budget is spent
    with 503 (`Lifecycle.stop_in_flight`); and turn any unexpected exception into a JSON 500.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: GatewayMetrics,
        lifecycle: Lifecycle,
        max_request_bytes: int,
        body_read_timeout_s: float,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.body_limit = BodyLimit(max_request_bytes, "max_request_bytes", "send fewer or smaller images")
        self.body_read_timeout_s = body_read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])
        timings = RequestTimings()
        scope.setdefault("state", {})[TIMINGS_STATE_KEY] = timings
        status = 500
        started_response = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"server-timing", timings.server_timing(timings.elapsed_s()).encode()))
                message = {**message, "headers": headers}
            await send(message)

        # Probes and scrapes are not work: a /metrics scrape would otherwise always report itself in flight.
        counted = scope["path"] not in PROBE_PATHS
        with request_id_context(request_id), request_path_context(scope["path"]):
            if counted:
                self.metrics.inflight.inc()
            try:
                await self._handle(scope, receive, send_with_headers, lambda: started_response)
            except ClientDisconnect:
                # Starlette's, raised while the app reads the body: nobody is left to answer.
                status = CLIENT_CLOSED_REQUEST
                logger.info("client disconnected while sending %s %s", scope["method"], scope["path"])
            except Exception:
                logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
                if started_response:
                    raise  # too late for a JSON body; the server closes the connection
                await internal_error_response()(scope, receive, send_with_headers)
            finally:
                if counted:
                    self.metrics.inflight.dec()
                self._record(scope, status, timings)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, response_started: Callable[[], bool]) -> None:
        if self.lifecycle.draining and scope["path"] not in PROBE_PATHS:
            await gateway_error_response(NotReady(self.lifecycle.detail, retry_after_s=DRAINING_RETRY_AFTER_S))(
                scope, receive, send
            )
            return
        deadline = asyncio.get_running_loop().time() + self.body_read_timeout_s  # from the request's arrival
        declared = _content_length(scope["headers"])
        codings = _content_codings(scope["headers"]) if _has_body(scope["headers"], declared) else []
        if codings:  # before any route: no route reads a coded body
            refusal = _refuse_coded(self.body_limit, declared, codings, deadline=deadline)
            await self._until_drain_stop(refusal(scope, receive, send), scope, receive, send, response_started)
            return
        if declared is not None and declared > self.body_limit.max_bytes:  # before any route: no work for it
            refusal = _refuse_declared(self.body_limit, declared, deadline=deadline)
            await self._until_drain_stop(refusal(scope, receive, send), scope, receive, send, response_started)
            return
        guarded_receive = _guarded_receive(
            receive,
            scope,
            self.body_limit,
            declared,
            deadline=deadline,
            timeout_s=self.body_read_timeout_s,
            response_started=response_started,
        )
        await self._until_drain_stop(self.app(scope, guarded_receive, send), scope, receive, send, response_started)

    async def _until_drain_stop(
        self, call: Awaitable[None], scope: Scope, receive: Receive, send: Send, response_started: Callable[[], bool]
    ) -> None:
        """Run the app's `call`, ending it with a 503 JSON if the drain budget is spent before it answered.

        The request stages end themselves at that moment (`service.api.guard`, whose cleanup runs as
        the call is cancelled); this covers everything outside them, e.g. a body still arriving, which
        uvicorn's graceful timeout would otherwise cancel into a plain-text 500 without a request id.
        A response already under way is left to finish (uvicorn's timeout bounds it).
        """
        app_call = asyncio.ensure_future(call)
        stopped = self.lifecycle.in_flight_stopped()
        try:
            await asyncio.wait({app_call, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this task was cancelled (uvicorn's own timeout): the app's goes too
            app_call.cancel()
            raise
        if app_call.done() or response_started():
            await app_call  # its outcome, errors included, as if called directly
            return
        app_call.cancel()
        await asyncio.gather(app_call, return_exceptions=True)
        if response_started():  # it began to answer as it was cancelled: too late for ours
            return
        logger.info("request cut short by the end of the drain: %s %s", scope["method"], scope["path"])
        error = NotReady(
            "the gateway shut down before this request was answered (drain_timeout_s spent); retry on another replica",
            retry_after_s=DRAINING_RETRY_AFTER_S,
        )
        await gateway_error_response(error)(scope, receive, send)

    def _record(self, scope: Scope, status: int, timings: RequestTimings) -> None:
        route: Any = scope.get("route")
        endpoint = getattr(route, "path", None) or UNMATCHED_ENDPOINT
        elapsed_s = timings.elapsed_s()
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.request_duration.labels(endpoint).observe(elapsed_s)
        for stage, seconds in timings.stages.items():
            self.metrics.stage_duration.labels(stage.value).observe(seconds)
        logger.info(
            "%s %s -> %d in %.1f ms",
            scope["method"],
            scope["path"],
            status,
            elapsed_s * 1e3,
            extra={"endpoint": endpoint, "status": status, "duration_ms": round(elapsed_s * 1e3, 3)},
        )


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _has_body(headers: list[tuple[bytes, bytes]], declared: int | None) -> bool:
    """Whether the request has a body (HTTP/1.1: a Content-Length above 0, or a Transfer-Encoding)."""
    return bool(declared) or any(name.lower() == b"transfer-encoding" for name, _ in headers)


def _content_codings(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The request body's content codings other than `identity` (which is no coding), from every Content-Encoding."""
    codings = []
    for name, value in headers:
        if name.lower() == b"content-encoding":
            codings += [coding.strip() for coding in value.decode("latin-1").split(",")]
    return [coding for coding in codings if coding and coding.lower() != "identity"]


def _expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"expect" and value.lower() == b"100-continue" for name, value in headers)


async def _drain_rest(receive: Receive, *, received: int, budget: int, deadline: float) -> bool:
    """Read and drop the rest of a body refused with 413, `received` bytes of which were read already, until
    it ends, `deadline` (event-loop time) passes or more than `budget` bytes of it were read in all.

    Returns whether it ended: the connection then closes cleanly after the 413. Otherwise the client is
    still sending (a trickle past the deadline, or a huge upload), and is cut off. A client that hangs up
    meanwhile raises ClientDisconnect, as Starlette does for one that hangs up mid-body (499).
    """
    logger.debug("draining a refused body, %d bytes of it read so far", received)
    try:
        async with asyncio.timeout_at(deadline):
            while received <= budget:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return True
    except TimeoutError:
        pass
    logger.info("closing the connection of a refused body still arriving after %d bytes", received)
    return False


async def _drain_declared(receive: Receive, scope: Scope, limit: BodyLimit, declared: int, deadline: float) -> None:
    """Drain a body refused for its declared length, unless there is no point: the client waits for a
    100 Continue before sending it (`receive` would invite it), or it is over the drain budget."""
    if not _expects_continue(scope["headers"]) and declared <= limit.drain_budget:
        await _drain_rest(receive, received=0, budget=limit.drain_budget, deadline=deadline)


def _refuse_declared(limit: BodyLimit, declared: int, *, deadline: float) -> ASGIApp:
    """The 413 for a body declared over the gateway's limit, before any route: drained, then answered."""

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await _drain_declared(receive, scope, limit, declared, deadline)
        await gateway_error_response(limit.declared_too_large(declared))(scope, receive, send)

    return refuse


def _refuse_coded(limit: BodyLimit, declared: int | None, codings: list[str], *, deadline: float) -> ASGIApp:
    """The 415 for a body with a content coding, before any route: drained (as a refused body is), then answered."""

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        if declared is None:  # chunked: as much as the drain budget and the deadline allow, unless not sent yet
            if not _expects_continue(scope["headers"]):  # `receive` would send the 100 Continue that invites it
                await _drain_rest(receive, received=0, budget=limit.drain_budget, deadline=deadline)
        else:
            await _drain_declared(receive, scope, limit, declared, deadline)
        error = UnsupportedMediaType(
            f"Content-Encoding {', '.join(codings)}: the gateway does not accept compressed request bodies; "
            "send the body uncompressed (no Content-Encoding, or identity)",
            headers={**_CLOSE, "Accept-Encoding": "identity"},
        )
        await gateway_error_response(error)(scope, receive, send)

    return refuse


def _tighter(default: BodyLimit, route: BodyLimit | None) -> BodyLimit:
    """The route's own limit where it is tighter than the gateway's (or the same: its 413 says more)."""
    return route if route is not None and route.max_bytes <= default.max_bytes else default


def _guarded_receive(
    receive: Receive,
    scope: Scope,
    default: BodyLimit,
    declared: int | None,
    *,
    deadline: float,
    timeout_s: float,
    response_started: Callable[[], bool],
) -> Receive:
    """`receive` that raises PayloadTooLarge for a body over its limit, and RequestTimeout when the body is
    still incomplete at `deadline` (event-loop time; `timeout_s` names it in the message).

    The limit is `default`, or the matched route's tighter `body_limit`, looked up at the first read (the
    router has matched by then). A `declared` Content-Length over the route's limit is refused before
    anything is read (the default's was checked before the app ran); the streamed bytes are counted
    too, since a chunked body has no Content-Length to check up front. Before either 413 is raised, the
    rest of the body is drained (`_drain_rest`), unless a response has started (nothing more to say then).

    Once the body is complete the deadline no longer applies: what is left is `http.disconnect`,
    which handlers await while the images are purified, however long that takes.
    """
    received = 0
    body_complete = False
    limit: BodyLimit | None = None

    async def wrapped() -> Message:
        nonlocal received, body_complete, limit
        if body_complete:
            return await receive()
        if limit is None:
            limit = _tighter(default, route_body_limit(scope))
            if declared is not None and declared > limit.max_bytes:
                if not response_started():
                    await _drain_declared(receive, scope, limit, declared, deadline)
                raise limit.declared_too_large(declared)
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {timeout_s:g} s (body_read_timeout_s); send it in one go"
            ) from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit.max_bytes:
                if message.get("more_body", False) and not response_started():
                    await _drain_rest(receive, received=received, budget=limit.drain_budget, deadline=deadline)
                raise limit.streamed_too_large()
            body_complete = not message.get("more_body", False)
        return message

    return wrapped
