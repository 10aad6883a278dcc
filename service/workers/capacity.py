"""Measured throughput and what follows from it: expected queue wait, Retry-After, adaptive steps.

Work is counted in image-steps (one image through one sampling step), so a rate measured while
adaptive steps ran fewer steps still predicts the cost of full-step work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class ThroughputMeter:
    """Exponentially weighted moving average of a worker's rate in image-steps per second.

    Args:
        smoothing: weight of the newest sample, in (0, 1]; 0.3 follows a change within a few batches
            while one slow batch (a warm-up, a neighbour's spike) moves it only partly.

    Raises:
        ValueError: smoothing outside (0, 1].
    """

    def __init__(self, smoothing: float = 0.3) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self._rate: float | None = None

    @property
    def rate(self) -> float | None:
        """Image-steps per second, or None before the first measurement."""
        return self._rate

    def record(self, work: float, seconds: float) -> None:
        """Add one batch: `work` image-steps computed in `seconds` (ignored when not positive)."""
        if work <= 0 or seconds <= 0 or not math.isfinite(seconds):
            return
        sample = work / seconds
        self._rate = sample if self._rate is None else self.smoothing * sample + (1 - self.smoothing) * self._rate


def total_rate(rates: Sequence[float | None]) -> float | None:
    """Pool throughput in image-steps/s; a worker not yet measured counts as the measured mean.

    Args:
        rates: each worker's `ThroughputMeter.rate`.

    Returns:
        The summed rate, or None when no worker has been measured yet.
    """
    measured = [rate for rate in rates if rate is not None and rate > 0]
    if not measured:
        return None
    return sum(measured) / len(measured) * len(rates)


def seconds_for(work: float, rate: float | None) -> float:
    """Seconds to compute `work` image-steps at `rate` (0 when nothing is measured yet)."""
    if rate is None or work <= 0:
        return 0.0
    return work / rate


def adaptive_steps(requested: int, expected_wait_s: float, target_wait_s: float, minimum: int) -> int:
    """Steps for a batch under load: scale by target/expected wait, never below `minimum`.

    Fewer steps make each image cheaper, so the queue clears sooner; when the expected wait is
    within the target the requested steps are kept.

    Args:
        requested: steps the request asked for.
        expected_wait_s: time to clear the queued work at the requested steps.
        target_wait_s: the wait the operator accepts before quality is traded for speed.
        minimum: lowest steps allowed (clamped to `requested`).

    Returns:
        Steps in [min(minimum, requested), requested].
    """
    if expected_wait_s <= target_wait_s or expected_wait_s <= 0:
        return requested
    floor = min(minimum, requested)
    return max(floor, min(requested, math.floor(requested * target_wait_s / expected_wait_s)))
