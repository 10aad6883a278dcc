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

An error answered before the body ended is not left to uvicorn either: it discards the unread rest with no
deadline (httptools keeps reading it after the answer, so a client trickling bytes would hold the connection
for ever), or closes with data unread (h11), which can reset the connection and lose the answer. So every
error response (status >= 400) that starts while the body is incomplete - a 413, a 401 from the API key
check, a 404, the 503 of a gateway shutting down, a route's error raised before it read the body - first
drains the rest, as
nginx's "lingering close" does (`_RequestBody.drain`: read and dropped until it ends, the body's deadline,
or a byte budget). If the drain reached the end the connection stays open; otherwise the answer goes out
with Connection: close, and a client still sending is cut off. The client has normally finished sending by
then, so the close is clean (FIN, not RST) and the answer reaches it. A body that waits for a 100 Continue
is not read (that would invite it), and one declared over the budget neither (it could not end in time).
413s and 415s close the connection in any case. Only the 503 that ends a request still unanswered when the
shutdown's drain budget is spent (`_until_drain_stop`) drains nothing: it goes out at once, with the close.

A body with a content coding (`Content-Encoding: gzip`, ...) is refused before any route, drained and then
answered, with 415 and `Accept-Encoding: identity` (RFC 9110 §15.5.16): the gateway reads images out
of the bytes, and would otherwise fail on them as an undecodable image (a misleading 400). Decoding
it here would put a decompressed size, not the bytes sent, under the body limits.
"""

from __future__ import annotations

import asyncio
import contextlib
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

# How much of a refused body (a 413, or any error answered before the body ended) is read and dropped before
# the answer: DRAIN_LIMIT_FACTOR × the body's limit, at least DRAIN_FLOOR_BYTES. Dropping costs no memory (each
# chunk goes as it arrives) and the body's deadline bounds the time; this bounds the bytes, so a huge upload at
# full speed is cut off after about 64 MiB (4 × the default MAX_REQUEST_BYTES) rather than read for ever.
# Within it, a body up to 5 × its limit (a common mistake's size) still ends before the close and its client
# reliably reads the 413; the floor does the same for a route's small limit (the Alertmanager webhook's 1 MiB).
# A body declared larger than the budget is not read at all: it could not end before the close anyway.
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
        """At most this many bytes of a body this limit applies to are read (and dropped) before an error answer
        (its 413, or any other answered before the body ended)."""
        return max(DRAIN_LIMIT_FACTOR * self.max_bytes, DRAIN_FLOOR_BYTES)

    # Both with Connection: close, sent once the rest of the body is drained (`_RequestBody.drain`): kept
    # open, uvicorn would discard whatever the client sends next with no deadline.
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
    `max_request_bytes`, or over the route's tighter `body_limit` (declared or streamed) with 413, and bodies
    not complete within `body_read_timeout_s` of the request's arrival with 408; refuse work while draining
    with 503; before any error answer (>= 400) that starts while the body is incomplete, drain its rest, and
    close the connection after the answer unless the drain reached the body's end;
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
        body = _RequestBody(
            receive,
            scope,
            self.body_limit,
            _content_length(scope["headers"]),
            deadline=asyncio.get_running_loop().time() + self.body_read_timeout_s,  # from the request's arrival
            timeout_s=self.body_read_timeout_s,
            response_started=lambda: started_response,
        )

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                message = await body.before_response(message)  # an error's: the rest of the body drained first
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
                await self._handle(scope, body, send_with_headers, lambda: started_response)
            except ClientDisconnect:
                # Starlette's, raised while the app reads the body: nobody is left to answer.
                status = CLIENT_CLOSED_REQUEST
                logger.info("client disconnected while sending %s %s", scope["method"], scope["path"])
            except Exception:
                logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
                if started_response:
                    raise  # too late for a JSON body; the server closes the connection
                with contextlib.suppress(ClientDisconnect):  # hung up while the rest of its body was drained
                    await internal_error_response()(scope, body, send_with_headers)
            finally:
                if counted:
                    self.metrics.inflight.dec()
                self._record(scope, status, timings)

    async def _handle(self, scope: Scope, body: _RequestBody, send: Send, response_started: Callable[[], bool]) -> None:
        # Every error answered here (and by the app) before the body ended drains its rest first: `send` does.
        if self.lifecycle.draining and scope["path"] not in PROBE_PATHS:
            await gateway_error_response(NotReady(self.lifecycle.detail, retry_after_s=DRAINING_RETRY_AFTER_S))(
                scope, body, send
            )
            return
        declared = body.declared
        codings = _content_codings(scope["headers"]) if body.has_body else []
        app: ASGIApp = self.app
        if codings:  # before any route: no route reads a coded body
            app = gateway_error_response(_coded(codings))
        elif declared is not None and declared > self.body_limit.max_bytes:  # before any route: no work for it
            app = gateway_error_response(self.body_limit.declared_too_large(declared))
        await self._until_drain_stop(app(scope, body, send), scope, body, send, response_started)

    async def _until_drain_stop(
        self,
        call: Awaitable[None],
        scope: Scope,
        body: _RequestBody,
        send: Send,
        response_started: Callable[[], bool],
    ) -> None:
        """Run the app's `call`, ending it with a 503 JSON if the drain budget is spent before it answered.

        The request stages end themselves at that moment (`service.api.guard`, whose cleanup runs as
        the call is cancelled); this covers everything outside them, e.g. a body still arriving, which
        uvicorn's graceful timeout would otherwise cancel into a plain-text 500 without a request id.
        A response already under way is left to finish (uvicorn's timeout bounds it). The 503 drains
        nothing of a body still arriving (the gateway is going away): it goes out at once, with Connection: close.
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
        body.skip_drain()
        await gateway_error_response(error)(scope, body, send)

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
    """Read and drop the rest of a body refused with an error, `received` bytes of which were read already,
    until it ends, `deadline` (event-loop time) passes or more than `budget` bytes of it were read in all.

    Returns whether it ended: the connection can then stay open, or close cleanly after the answer. Otherwise
    the client is still sending (a trickle past the deadline, or a huge upload), and is cut off. A client that
    hangs up meanwhile raises ClientDisconnect, as Starlette does for one that hangs up mid-body (499).
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


def _coded(codings: list[str]) -> UnsupportedMediaType:
    """The 415 for a body with a content coding (drained before it goes out, as any early error's body is)."""
    return UnsupportedMediaType(
        f"Content-Encoding {', '.join(codings)}: the gateway does not accept compressed request bodies; "
        "send the body uncompressed (no Content-Encoding, or identity)",
        headers={**_CLOSE, "Accept-Encoding": "identity"},
    )


def _tighter(default: BodyLimit, route: BodyLimit | None) -> BodyLimit:
    """The route's own limit where it is tighter than the gateway's (or the same: its 413 says more)."""
    return route if route is not None and route.max_bytes <= default.max_bytes else default


def _with_close(message: Message) -> Message:
    """A response start with Connection: close (in place of any other Connection header)."""
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
    return {**message, "headers": [*headers, (b"connection", b"close")]}


class _RequestBody:
    """The request body as the app reads it (a guarded `receive`), and what became of it: the bytes received,
    whether it is complete, and the drain of its rest before an early error answer.

    As `receive` it raises PayloadTooLarge for a body over its limit, and RequestTimeout when the body is
    still incomplete at `deadline` (event-loop time; `timeout_s` names it in the message).

    The limit is `default`, or the matched route's tighter `body_limit`, looked up at the first read (the
    router has matched by then). A `declared` Content-Length over the route's limit is refused before
    anything is read (the default's was checked before the app ran); the streamed bytes are counted
    too, since a chunked body has no Content-Length to check up front. Before either 413 is raised, the
    rest of the body is drained (`drain`), unless a response has started (nothing more to say
    then). The drain runs at most once: the 413's start finds it done.

    Once the body is complete the deadline no longer applies: what is left is `http.disconnect`,
    which handlers await while the images are purified, however long that takes.
    """

    def __init__(
        self,
        receive: Receive,
        scope: Scope,
        default: BodyLimit,
        declared: int | None,
        *,
        deadline: float,
        timeout_s: float,
        response_started: Callable[[], bool],
    ) -> None:
        self._receive, self._scope, self._default = receive, scope, default
        self.declared = declared
        self.has_body = _has_body(scope.get("headers", []), declared)
        self._deadline, self._timeout_s, self._response_started = deadline, timeout_s, response_started
        self.received = 0
        self.complete = False  # the last chunk was received (by the app, or by a drain)
        self._read_started = False  # the server's `receive` was called: a 100 Continue went out, if expected
        self._drained = False  # the drain ran (or was skipped): it runs at most once
        self._limit: BodyLimit | None = None  # looked up at the first read, once the router has matched

    @property
    def ended(self) -> bool:
        """No body is left to arrive: it is complete, or there was none."""
        return self.complete or not self.has_body

    def _current_limit(self) -> BodyLimit:
        return self._limit or _tighter(self._default, route_body_limit(self._scope))

    def skip_drain(self) -> None:
        """No drain before the next error answer: it goes out at once (with Connection: close)."""
        self._drained = True

    async def drain(self) -> bool:
        """Read and drop the rest of the body before an error answer (`_drain_rest`; at most once), bounded by
        the body's deadline and its limit's drain budget. Whether the body ended.

        Nothing is read of a body waiting for a 100 Continue (reading would send it and invite the body), nor
        of one declared over the budget (it could not end before the close anyway).
        """
        if self.ended or self._drained:
            return self.ended
        self._drained = True
        budget = self._current_limit().drain_budget
        invites = not self._read_started and _expects_continue(self._scope["headers"])
        if not invites and (self.declared is None or self.declared <= budget):
            self.complete = await _drain_rest(
                self._receive, received=self.received, budget=budget, deadline=self._deadline
            )
        return self.complete

    async def before_response(self, message: Message) -> Message:
        """The `http.response.start` `message`, once the rest of the body is drained if it is an error's (status
        >= 400) and the body is incomplete; then with Connection: close unless the drain reached the body's end.
        """
        if message["status"] < 400 or self.ended:
            return message
        return message if await self.drain() else _with_close(message)

    async def __call__(self) -> Message:
        if self.complete:
            return await self._receive()
        if self._limit is None:
            self._limit = self._current_limit()
            if self.declared is not None and self.declared > self._limit.max_bytes:
                await self._drain_unless_answering()
                raise self._limit.declared_too_large(self.declared)
        self._read_started = True
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self._timeout_s:g} s (body_read_timeout_s); send it in one go"
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self._limit.max_bytes:
                await self._drain_unless_answering()
                raise self._limit.streamed_too_large()
        return message

    async def _drain_unless_answering(self) -> None:
        """Drain before a 413 (as its answer's start would), unless a response has started: nothing more to say."""
        if not self._response_started():
            await self.drain()
