"""The shadow counts per minute, so the gateway can judge its two alarm rules over their own windows.

Prometheus evaluates the rules (docker/alerts.yml) over the counters' increase in the last 30
minutes (`WINDOW_S`) and, for the baseline rule, in the day before that window (`BASELINE_S`).
`ShadowHistory` keeps the same increments in one-minute buckets, counted where the counters are
counted (`ShadowMonitor`), so that `/ui` can show the alarms' state as this gateway's own counters
see them, without a Prometheus. Bounded: buckets older than the window and baseline go, and the
labels are the counters' (capped by `SHADOW_MAX_LABELS`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.shadow.alarm import LabelCounts

WINDOW_S = 30 * 60  # the rules' `[30m]`
BASELINE_S = 24 * 3600  # the baseline rule's `[1d] offset 30m`
BUCKET_S = 60


@dataclass(frozen=True)
class Windows:
    """Per raw label, the counts in the alarm window and in the baseline before it."""

    window: dict[str, LabelCounts]
    baseline: dict[str, LabelCounts]
    history_s: float  # how far back the history reaches (less than WINDOW_S + BASELINE_S after a start)


class ShadowHistory:
    """Disagreements and comparisons per raw label, in `BUCKET_S` buckets over `WINDOW_S + BASELINE_S`.

    Args:
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        # (bucket index, {raw label: [disagreements, comparisons]}), oldest first
        self._buckets: collections.deque[tuple[int, dict[str, list[float]]]] = collections.deque()

    def count(self, raw_label: str, disagreed: bool) -> None:
        """One comparison of an image whose raw label (as the counters label it) is `raw_label`."""
        index = int(self._clock() // BUCKET_S)
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != index:
                self._buckets.append((index, {}))
                self._prune(index)
            counts = self._buckets[-1][1].setdefault(raw_label, [0.0, 0.0])
            counts[0] += float(disagreed)
            counts[1] += 1.0

    def windows(self) -> Windows:
        """The counts in the last `WINDOW_S` and in the `BASELINE_S` before them (to the bucket)."""
        now = self._clock()
        index = int(now // BUCKET_S)
        window_from = index - WINDOW_S // BUCKET_S  # buckets after this one are in the window
        window: dict[str, list[float]] = {}
        baseline: dict[str, list[float]] = {}
        with self._lock:
            self._prune(index)
            for bucket, counts in self._buckets:
                into = window if bucket > window_from else baseline
                for label, (disagreed, compared) in counts.items():
                    total = into.setdefault(label, [0.0, 0.0])
                    total[0] += disagreed
                    total[1] += compared
        return Windows(
            {label: LabelCounts(*c) for label, c in window.items()},
            {label: LabelCounts(*c) for label, c in baseline.items()},
            history_s=now - self._started,
        )

    def _prune(self, index: int) -> None:
        oldest = index - (WINDOW_S + BASELINE_S) // BUCKET_S
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()
