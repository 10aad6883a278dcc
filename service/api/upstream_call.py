"""Times a vendor call into the request's upstream stage and the upstream metrics."""

from __future__ import annotations

import asyncio
import time

from service.api.timing import RequestTimings
from service.errors import ClientDisconnected, DeadlineExceeded, UpstreamError, UpstreamTimeout
from service.metrics import GatewayMetrics, Stage


class UpstreamCall:
    """Times a vendor call into the request's upstream stage and the upstream metrics.

    The status label is the vendor's HTTP status, or: `timeout` (the vendor or the request's deadline
    ran out), `cancelled` (the gateway gave up on the call first: the client hung up, or another vote's
    call failed), `error` (no usable answer: refused, reset, unreadable).
    """

    def __init__(self, metrics: GatewayMetrics, timings: RequestTimings | None) -> None:
        self._metrics = metrics
        self._timings = timings
        self.status = "error"
        self._started = 0.0

    def __enter__(self) -> UpstreamCall:
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        seconds = time.perf_counter() - self._started
        if isinstance(exc, (UpstreamTimeout, DeadlineExceeded)):
            self.status = "timeout"
        elif isinstance(exc, (ClientDisconnected, asyncio.CancelledError)):
            self.status = "cancelled"
        elif isinstance(exc, UpstreamError) and exc.upstream_status is not None:
            self.status = str(exc.upstream_status)
        if self._timings is not None:  # None: one of several overlapping calls, timed together by the caller
            self._timings.add(Stage.UPSTREAM, seconds)
        self._metrics.upstream_requests.labels(self.status).inc()
        self._metrics.upstream_duration.observe(seconds)
