"""The gateway's life: starting → ready → draining (or failed), as `/readyz` reports it."""

from __future__ import annotations

from service.api.schemas import Readiness


class Lifecycle:
    """Readiness of one app; flipped by the lifespan and by the server's signal handler.

    Plain attribute writes only, no locks and no logging: `begin_drain` runs inside a signal
    handler, which would deadlock on a lock the interrupted code holds (the `zipgate_ready`
    gauge is therefore computed at scrape time from `Gateway.ready`, not set from here).
    """

    def __init__(self) -> None:
        self.state = Readiness.STARTING
        self.detail = "loading the model and starting the workers"

    @property
    def draining(self) -> bool:
        """True once shutdown began: new requests are refused with 503."""
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
        """Shutdown began: /readyz turns 503 and new requests are refused; running ones finish."""
        if self.state is not Readiness.DRAINING:
            self.state, self.detail = Readiness.DRAINING, "shutting down; retry on another replica"
