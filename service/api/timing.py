"""Per-request stage timings: one source for `latency_ms`, `Server-Timing` and the stage histogram."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from service.api.schemas import LatencyMs
from service.metrics import Stage


@dataclass
class RequestTimings:
    """Seconds spent per stage by one request (a stage timed twice adds up).

    Attributes:
        started: `time.perf_counter()` when the request arrived.
        stages: seconds per stage recorded so far.
    """

    started: float = field(default_factory=time.perf_counter)
    stages: dict[Stage, float] = field(default_factory=dict)

    def add(self, stage: Stage, seconds: float) -> None:
        """Add `seconds` to a stage."""
        self.stages[stage] = self.stages.get(stage, 0.0) + max(0.0, seconds)

    @contextmanager
    def measure(self, stage: Stage) -> Iterator[None]:
        """Time the block into `stage` (also when it raises: a failed upstream call took time too)."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - begun)

    def elapsed_s(self) -> float:
        """Seconds since the request arrived."""
        return time.perf_counter() - self.started

    def latency_ms(self) -> LatencyMs:
        """The response body's `latency_ms`; stages not reached count 0."""
        ms = {stage: round(self.stages.get(stage, 0.0) * 1e3, 3) for stage in Stage}
        return LatencyMs(
            decode=ms[Stage.DECODE],
            queue=ms[Stage.QUEUE],
            purify=ms[Stage.PURIFY],
            upstream=ms[Stage.UPSTREAM],
            total=round(self.elapsed_s() * 1e3, 3),
        )

    def server_timing(self, total_s: float) -> str:
        """The `Server-Timing` header value: `decode;dur=0.4, …, total;dur=186.0` (milliseconds).

        Every stage is listed, 0 when not reached, so clients parse one fixed set of names.
        """
        parts = [f"{stage.value};dur={self.stages.get(stage, 0.0) * 1e3:.3f}" for stage in Stage]
        parts.append(f"total;dur={total_s * 1e3:.3f}")
        return ", ".join(parts)
