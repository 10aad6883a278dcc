"""The gateway's life: starting → ready → draining (or failed), as `/readyz` reports it."""

from __future__ import annotations

import asyncio
import time

from service.api.schemas import Readiness


class Lifecycle:
    """Readiness of one app; flipped by the lifespan and by the server's signal handler.

    Plain attribute writes only, no locks and no logging: `begin_drain` runs inside a signal
    handler, which would deadlock on a lock the interrupted code holds (the `zipgate_ready`
    gauge is therefore computed at scrape time from `Gateway.ready`, not set from here).
    The end of the drain (`stop_in_flight`) runs on the event loop, from the server's shutdown.
    """

    def __init__(self) -> None:
        self.state = Readiness.STARTING
        self.detail = "loading the model and starting the workers"
        self.drain_started: float | None = None  # time.monotonic() when shutdown began
        self._in_flight_stopped: asyncio.Future[None] | None = None  # made on the loop that awaits it

    def drain_time_left(self, budget_s: float) -> float:
        """Seconds left of a drain budget that started at `begin_drain` (all of it if not yet begun).

        uvicorn's graceful wait for open requests and the pool's drain share one budget, so that
        shutdown takes at most `drain_timeout_s`, not twice that.
        """
        if self.drain_started is None:
            return budget_s
        return max(0.0, budget_s - (time.monotonic() - self.drain_started))

    @property
    def draining(self) -> bool:
        """True once shutdown began: requests that still arrive are refused with 503 (soon after, the
        server closes its listener, and new connections are refused)."""
        return self.state is Readiness.DRAINING

    def mark_ready(self) -> None:
        """The model is loaded and the workers run (ignored once draining: shutdown wins)."""
        if self.state is Readiness.STARTING:
            self.state, self.detail = Readiness.READY, ""

    def mark_failed(self, detail: str) -> None:
        """Start-up failed; the reason is shown by /readyz and in 503 answers."""
        if self.state is not Readiness.DRAINING:
            self.state, self.detail = Readiness.FAILED, detail

    def begin_drain(self) -> None:
        """Shutdown began: /readyz turns 503 and new requests are refused (503); running ones finish."""
        if self.state is not Readiness.DRAINING:
            self.drain_started = time.monotonic()
            self.state, self.detail = Readiness.DRAINING, "shutting down; retry on another replica"

    def in_flight_stopped(self) -> asyncio.Future[None]:
        """A future that completes when requests still in flight must stop (shared: never cancel it).

        Call on the event loop; request stages race their work against it (`Gateway` stages).
        """
        loop = asyncio.get_running_loop()
        if self._in_flight_stopped is None or self._in_flight_stopped.get_loop() is not loop:
            self._in_flight_stopped = loop.create_future()
        return self._in_flight_stopped

    def stop_in_flight(self) -> None:
        """The drain budget is spent: every request still waiting ends now with a 503 (call on the event loop).

        Without this, uvicorn cancels those requests at its graceful-shutdown timeout and answers
        them with a plain-text 500 and no request id.
        """
        stopped = self.in_flight_stopped()
        if not stopped.done():
            stopped.set_result(None)
