"""Runs the shadow comparison after the client has its answer: bounded, sampled, shed first under load."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.metrics import ShadowMetrics
from service.shadow.capture import CaptureLimits, CaptureRing, FlaggedImage
from service.shadow.history import ShadowHistory
from service.shadow.labels import OTHER_LABEL, LabelCap, LabelExtractor, bounded_label
from service.upstream import Upstream

if TYPE_CHECKING:  # typing only: the monitor needs neither module to run
    from service.config import Settings
    from service.workers import WorkerPool

logger = logging.getLogger(__name__)

SHADOW_HEADER = "X-Zipgate-Shadow"
SHADOW_REQUEST_SUFFIX = "-shadow"  # the vendor's logs tell the shadow call from the real one


@dataclass(frozen=True)
class ShadowConfig:
    """What `SHADOW_*` settings say, validated.

    Attributes:
        rate: share of /predict requests compared (0 turns sampling off).
        allow_header: `X-Zipgate-Shadow: 1` may ask for a comparison whatever the rate.
        max_inflight: shadow vendor calls at once; more are dropped, never queued.
        max_labels: distinct labels the disagreement metric keeps before "other".
        timeout_s: bound on one shadow vendor call.
    """

    rate: float = 0.0
    allow_header: bool = False
    max_inflight: int = 4
    max_labels: int = 100
    timeout_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.allow_header


@dataclass(frozen=True)
class ShadowJob:
    """What one sampled request leaves for the comparison."""

    request_id: str
    raw_blobs: Sequence[bytes]
    raw_content_type: str
    purified_blobs: Sequence[bytes]
    purified_predictions: Sequence[Any]
    mask_pngs: Sequence[bytes] | None = None  # METHOD=local: each image's suspicion mask (the first vote's)


class ShadowMonitor:
    """Samples requests, asks the vendor about their raw images in the background, counts disagreements.

    The client's answer never waits for, or depends on, anything here: jobs start after the
    response is built, failures are counted and logged, and a busy gateway drops jobs rather
    than queueing them (`under_load`, `max_inflight`).
    """

    def __init__(
        self,
        config: ShadowConfig,
        upstream: Upstream,
        label: LabelExtractor,
        metrics: ShadowMetrics,
        *,
        capture: CaptureRing | None = None,
        under_load: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
        history: ShadowHistory | None = None,
        on_counted: Callable[[], object] = lambda: None,
    ) -> None:
        self.config = config
        self._upstream = upstream
        self._label = label
        self._metrics = metrics
        self._capture = capture
        self._under_load = under_load
        self._rng = rng or random.Random()
        self._cap = LabelCap(config.max_labels)
        # The counters' increments per minute: the alarms' state on /ui, and the gateway's own alarm.
        self.history = history or ShadowHistory()
        self._on_counted = on_counted  # after each request's comparisons: the gateway's alarm judges them
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        if capture is not None and capture.disabled:
            metrics.capture_disabled.set(1)

    def sampled(self, header_value: str | None) -> bool:
        """Whether this request is compared: the header (when allowed) or the sampling rate."""
        if header_value is not None and self.config.allow_header:
            return header_value.strip().lower() in ("1", "true", "yes", "on")
        return self.config.rate > 0 and self._rng.random() < self.config.rate

    def submit(self, job: ShadowJob) -> bool:
        """Start the comparison in the background; False when it was dropped (counted by reason)."""
        return self._start(self._compare(job), job.request_id, check_load=True)

    def compare_known(self, job: ShadowJob, raw_predictions: Sequence[Any]) -> list[str | None]:
        """Count the comparisons of a request whose raw answers the gateway already has (the closed loop asks
        the vendor about both images inline); disagreements are captured in the background.

        Returns:
            Per image, its raw label as the counters name it (bounded, capped); None where either answer has
            no readable label, or the raw label is past the cap ("other": no single label to judge).
        """
        raw_labels: list[str | None] = []
        flagged: list[FlaggedImage] = []
        for index, (raw, purified) in enumerate(zip(raw_predictions, job.purified_predictions, strict=True)):
            counted = self._tally(job, index, raw, purified)
            raw_labels.append(None if counted is None or counted[0] == OTHER_LABEL else counted[0])
            if counted is not None and counted[1] is not None:
                flagged.append(counted[1])
        self._on_counted()
        if flagged and self._capture is not None and not self._capture.disabled:
            # A capture is I/O: off the request path, bounded like the shadow calls (dropped when busy).
            self._start(self._capture_all(flagged), job.request_id, check_load=False)
        return raw_labels

    def _start(self, work: Coroutine[Any, Any, None], request_id: str, *, check_load: bool) -> bool:
        reason = (
            "closed"
            if self._closed
            else "busy"
            if len(self._tasks) >= self.config.max_inflight
            else "load"
            if check_load and self._under_load()
            else None
        )
        if reason is not None:
            work.close()
            self._metrics.dropped.labels(reason).inc()
            return False
        task = asyncio.get_running_loop().create_task(work, name=f"shadow-{request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait_idle(self) -> None:
        """Wait for the comparisons in flight (tests, and a drain that has time for them)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Stop taking jobs and cancel those in flight: shadow work never holds up a shutdown."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _compare(self, job: ShadowJob) -> None:
        try:
            result = await self._upstream.predict(
                list(job.raw_blobs),
                job.request_id + SHADOW_REQUEST_SUFFIX,
                job.raw_content_type,
                timeout_s=self.config.timeout_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (any failure of the shadow call stays here, counted)
            self._metrics.failures.inc()
            logger.warning("shadow vendor call failed: %s", exc, extra={"request_id": job.request_id})
            return
        if len(result.predictions) != len(job.purified_predictions):
            self._metrics.unlabelled.inc()
            logger.warning(
                "shadow vendor call answered %d predictions for %d images",
                len(result.predictions),
                len(job.purified_predictions),
                extra={"request_id": job.request_id},
            )
            return
        for index, (raw, purified) in enumerate(zip(result.predictions, job.purified_predictions, strict=True)):
            counted = self._tally(job, index, raw, purified)
            if counted is not None and counted[1] is not None:
                await self._capture_all([counted[1]])
        self._on_counted()

    def _tally(self, job: ShadowJob, index: int, raw: Any, purified: Any) -> tuple[str, FlaggedImage | None] | None:
        """Count one comparison; returns the raw label as counted and, for a disagreement to capture, the record
        (None: either answer has no readable label, nothing counted)."""
        raw_label, purified_label = self._label(raw), self._label(purified)
        if raw_label is None or purified_label is None:
            self._metrics.unlabelled.inc()
            logger.info(
                "shadow comparison skipped: no label in the vendor answer %.200r",  # repr: escaped, and cut
                raw if raw_label is None else purified,
                extra={"request_id": job.request_id},
            )
            return None
        # Compared in full; bounded (length, characters), then capped (how many), before any metric sees them.
        capped_raw = self._cap(bounded_label(raw_label))
        self._metrics.comparisons.labels(capped_raw).inc()
        self.history.count(capped_raw, disagreed=raw_label != purified_label)
        if raw_label == purified_label:
            return capped_raw, None
        self._metrics.disagreements.labels(capped_raw, self._cap(bounded_label(purified_label))).inc()
        if self._capture is None or self._capture.disabled:
            return capped_raw, None
        flagged = FlaggedImage(
            job.request_id,
            index,
            job.raw_blobs[index],
            job.raw_content_type,
            job.purified_blobs[index],
            raw,
            purified,
            bounded_label(raw_label),  # meta.json: bounded; raw_response.json has the answer in full
            bounded_label(purified_label),
            None if job.mask_pngs is None else job.mask_pngs[index],
        )
        return capped_raw, flagged

    async def _capture_all(self, flagged: Sequence[FlaggedImage]) -> None:
        capture = self._capture
        for image in flagged:
            if capture is None or capture.disabled:
                return
            if await asyncio.to_thread(capture.write, image) is not None:
                self._metrics.captured.inc()
            elif capture.disabled:
                self._metrics.capture_disabled.set(1)


def build_shadow_monitor(
    settings: Settings,
    upstream: Upstream,
    metrics: ShadowMetrics,
    pool: WorkerPool | None,
    label: LabelExtractor,
    *,
    history: ShadowHistory | None = None,
    on_counted: Callable[[], object] = lambda: None,
) -> ShadowMonitor | None:
    """Shadow mode when a setting asks for it, or the closed-loop policy compares every request inline, and
    there is purification to compare against."""
    config = ShadowConfig(
        rate=settings.shadow_rate,
        allow_header=settings.shadow_allow_header,
        max_inflight=settings.shadow_max_inflight,
        max_labels=settings.shadow_max_labels,
        timeout_s=settings.upstream_timeout_s,
    )
    if not (config.enabled or settings.policy.asks_raw) or pool is None:
        return None
    capture = None
    if settings.shadow_capture_dir is not None:
        capture = CaptureRing(
            settings.shadow_capture_dir,
            CaptureLimits(max_files=settings.shadow_capture_max_files, max_bytes=settings.shadow_capture_max_bytes),
        )
    # Shadow calls go first when the queue is half full: 429s would be next.
    queue_limit = settings.queue_limit
    return ShadowMonitor(
        config,
        upstream,
        label,
        metrics,
        capture=capture,
        under_load=lambda: 2 * pool.queue_depth >= queue_limit,
        history=history,
        on_counted=on_counted,
    )
