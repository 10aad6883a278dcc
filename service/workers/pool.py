"""The worker pool: admission (backpressure, deadlines, cancellation), one worker per device, drain.

A request's images become queue items (all or none: a full queue rejects the whole request with
`Overloaded`); the batcher groups items of any requests into batches; each device's worker pulls
batches when free. The caller awaits `submit` and gets its images back in order.

Lifecycle: NEW → (start) → RUNNING → (drain) → DRAINING → DRAINED → (close) → CLOSED.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from service.errors import (
    DRAINING_RETRY_AFTER_S,
    LOADING_RETRY_AFTER_S,
    DeadlineExceeded,
    NotReady,
    Overloaded,
    PayloadTooLarge,
)
from service.metrics import DropReason, GatewayMetrics
from service.purify.imaging import check_batch
from service.purify.options import ZipConfig
from service.purify.seeds import canvas_seeds
from service.workers.batcher import Batch, DynamicBatcher, WorkItem
from service.workers.capacity import adaptive_steps, seconds_for, total_rate
from service.workers.pool_config import PoolConfig
from service.workers.purifier import BatchPurifier, PurifierFactory
from service.workers.worker import (
    DEFAULT_OOM_ERRORS,
    DeviceWorker,
    ItemPayload,
    ItemResult,
    PoolItem,
    WorkerInfo,
    settle_with_error,
)

__all__ = ["BatchPurifier", "PoolConfig", "PoolResult", "PurifierFactory", "WorkerInfo", "WorkerPool"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolResult:
    """A request's purified images and how long they took."""

    images: torch.Tensor  # (N, C, H, W) purified, CPU float32, same order as submitted
    steps: int  # steps actually used; the fewest of its images when adaptive steps varied by batch
    queue_s: float  # longest time an image of the request waited before compute
    purify_s: float  # compute time of the slowest batch holding its images


class PoolState(enum.StrEnum):
    """Where the pool is in its lifecycle."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    DRAINED = "drained"
    CLOSED = "closed"


# A submit refused in these states may retry: after the models load, or on another replica.
_RETRY_AFTER_S = {
    PoolState.NEW: LOADING_RETRY_AFTER_S,
    PoolState.STARTING: LOADING_RETRY_AFTER_S,
    PoolState.DRAINING: DRAINING_RETRY_AFTER_S,
    PoolState.DRAINED: DRAINING_RETRY_AFTER_S,
    PoolState.CLOSED: DRAINING_RETRY_AFTER_S,
}


class WorkerPool:
    """Batches images from concurrent requests onto one worker per device.

    Args:
        config: batching, admission and drain settings.
        factory: builds a device's purifier (loads its model copy) inside that worker's thread.
        metrics: the gateway's collectors (queue depth, batch sizes, drops, OOM splits, ...).
        oom_errors: exception types treated as out-of-memory (default: CUDA OOM).
    """

    def __init__(
        self,
        config: PoolConfig,
        factory: PurifierFactory,
        metrics: GatewayMetrics,
        *,
        oom_errors: tuple[type[BaseException], ...] = DEFAULT_OOM_ERRORS,
    ) -> None:
        self.config = config
        self._factory = factory
        self._metrics = metrics
        self._batcher: DynamicBatcher[ItemPayload] = DynamicBatcher(
            config.max_batch_size, config.max_wait_ms / 1000.0, config.queue_limit, metrics
        )
        self._workers = [DeviceWorker(device, metrics, oom_errors, self._steps_for) for device in config.devices]
        self._tasks: list[asyncio.Task[None]] = []
        self._state = PoolState.NEW

    @property
    def ready(self) -> bool:
        """True while accepting work: started, not draining, every worker alive.

        Not written to `zipgate_ready`: the gateway owns that gauge, since it also knows the
        lifespan's loading and draining (`Gateway.ready`, read at scrape time).
        """
        return self._state is PoolState.RUNNING and all(not task.done() for task in self._tasks)

    @property
    def queue_depth(self) -> int:
        """Images waiting for a worker."""
        return self._batcher.depth

    @property
    def device_info(self) -> list[WorkerInfo]:
        """Per worker: device, dtype, model (and sample_size, channels when the purifier tells)."""
        return [worker.info for worker in self._workers]

    def estimated_wait_s(self) -> float:
        """Expected seconds before a newly queued image starts computing (0 until measured)."""
        rate = total_rate([worker.meter.rate for worker in self._workers])
        wait = seconds_for(self._batcher.pending_cost, rate)
        now = time.monotonic()
        remaining = [worker.remaining_s(now) for worker in self._workers]
        if remaining and all(r is not None for r in remaining):  # every worker busy: wait for the first
            wait += min(r for r in remaining if r is not None)
        return wait

    async def start(self) -> None:
        """Load one model copy per device (in parallel, off the event loop) and start the workers.

        Raises:
            RuntimeError: called twice.
            Exception: what the factory raises (e.g. a missing model); the pool is then closed.
        """
        if self._state is not PoolState.NEW:
            raise RuntimeError(f"the pool was already started (state {self._state.value})")
        self._state = PoolState.STARTING
        try:
            await asyncio.gather(*(worker.load(self._factory) for worker in self._workers))
        except BaseException:
            self._close_workers()
            self._state = PoolState.CLOSED
            raise
        if self._state is not PoolState.STARTING:  # drained or closed while the models loaded
            self._close_workers()
            return
        self._tasks = [
            asyncio.create_task(worker.serve(self._batcher), name=f"zipgate-worker-{worker.device}")
            for worker in self._workers
        ]
        for task in self._tasks:
            task.add_done_callback(self._on_worker_exit)
        self._state = PoolState.RUNNING
        workers = [dataclasses.asdict(info) for info in self.device_info]
        devices = ", ".join(f"{info.device} ({info.dtype})" for info in self.device_info)
        log.info("worker pool ready: %d worker(s) on %s", len(workers), devices, extra={"workers": workers})

    async def submit(
        self,
        images: torch.Tensor,
        *,
        request_id: str,
        deadline: float | None = None,
        seed: int | None = None,
        seeds: Sequence[int] | None = None,
        steps: int | None = None,
        variant: ZipConfig | None = None,
    ) -> PoolResult:
        """Purify a request's images; returns when all are done, in the order given.

        Args:
            images: (N, C, H, W) float in [-1, 1], on the CPU.
            request_id: for logs and error messages.
            deadline: `time.monotonic()` seconds; at it the request fails: queued images are
                dropped, and results of images still purifying are discarded.
            seed: image i uses seed + i (same seed, same result, whatever the batching); None = random.
            seeds: one seed per image instead (votes purify the same canvases with other seeds).
            steps: sampling steps; None = `config.default_steps`.
            variant: ZIP's knobs for these images instead of the purifier's configured ones (a strength
                preset); its `steps` is ignored (`steps` decides). Images of different variants never share
                a batch.

        Returns:
            The purified images and timings.

        Raises:
            ValueError: images not a non-empty 4-D float tensor of finite values, or steps < 1.
            NotReady: the pool is not started, or is draining.
            PayloadTooLarge: more images than the whole queue holds.
            Overloaded: the queue lacks room for all N images (none were queued).
            DeadlineExceeded: the deadline passed before the images were purified.
            PurificationFailed: a batch holding one of the images failed.
        """
        steps = self.config.default_steps if steps is None else steps
        check_batch(images)  # what would fail a whole batch: one bad request cannot fail its batch-mates
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        count = images.shape[0]
        # From here to the offer nothing awaits: admission, the seeds, the items and the offer happen
        # in one step of the event loop, so no drain or other submission interleaves with them; the
        # wait follows the offer at once, so a caller cancelled or failed there withdraws its items.
        now = self._admit(count, request_id, deadline)
        seeds = _request_seeds(seed, seeds, count)
        items = self._work_items(images, seeds, steps, variant, request_id=request_id, now=now, deadline=deadline)
        self._enqueue(items, steps)
        try:
            results = await self._wait(items, deadline)
        except BaseException:
            self._abandon(items)
            raise
        return _pool_result(results)

    def _admit(self, count: int, request_id: str, deadline: float | None) -> float:
        """Refuse `count` images the pool cannot take now (counting them as dropped where it says why).

        Returns:
            `time.monotonic()` at admission: the items' enqueue time.

        Raises:
            NotReady: the pool is not started, is draining, or lost a worker.
            PayloadTooLarge: more images than the whole queue holds.
            DeadlineExceeded: the deadline has already passed.
        """
        if not self.ready:
            if self._state in (PoolState.DRAINING, PoolState.DRAINED, PoolState.CLOSED):
                self._metrics.dropped.labels(DropReason.DRAINING.value).inc(count)
            # RUNNING yet not ready: a worker died, and waiting will not bring it back (no Retry-After).
            raise NotReady(
                f"the worker pool is {self._state.value}; not accepting images",
                retry_after_s=_RETRY_AFTER_S.get(self._state),
            )
        check_queue_room(count, self.config.queue_limit)
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._metrics.dropped.labels(DropReason.DEADLINE.value).inc(count)
            raise DeadlineExceeded(f"request {request_id}: deadline passed before queueing")
        return now

    def _work_items(
        self,
        images: torch.Tensor,
        seeds: Sequence[int],
        steps: int,
        variant: ZipConfig | None,
        *,
        request_id: str,
        now: float,
        deadline: float | None,
    ) -> list[PoolItem]:
        """One queue item per image, each with its own future on the running loop, in the order given."""
        loop = asyncio.get_running_loop()
        key = (*images.shape[1:], steps, variant)  # items that stack into one tensor and share a schedule
        pixels = images.detach().to("cpu", torch.float32)
        return [
            WorkItem(
                key=key,
                payload=ItemPayload(pixels[i], seeds[i], steps, variant),
                future=loop.create_future(),
                request_id=request_id,
                enqueued_at=now,
                deadline=deadline,
                cost=float(steps),
            )
            for i in range(images.shape[0])
        ]

    def _enqueue(self, items: list[PoolItem], steps: int) -> None:
        """Queue all the items or none.

        Raises:
            Overloaded: the queue lacks room for all of them (counted as dropped), with a Retry-After
                from measured throughput.
        """
        count = len(items)
        if not self._batcher.offer(items):
            self._metrics.dropped.labels(DropReason.OVERLOAD.value).inc(count)
            raise Overloaded(
                f"queue full ({self._batcher.depth}/{self.config.queue_limit} images); retry later",
                retry_after_s=self._retry_after_s(count, steps),
            )

    async def drain(self, timeout_s: float | None = None, *, began: float | None = None) -> None:
        """Stop accepting, let queued and running work finish, then stop the workers.

        After the timeout, images still queued fail with `NotReady` and running batches are
        abandoned (their requests get `NotReady`). Logs how long the drain took. Safe to call more than once.

        Args:
            timeout_s: seconds to wait; None = `config.drain_timeout_s`.
            began: `time.monotonic()` when the drain began, if before this call (the gateway's
                shutdown first waits for open requests, from the same budget); None = now.
        """
        if self._state in (PoolState.NEW, PoolState.STARTING):
            self._state = PoolState.DRAINED
        if self._state is not PoolState.RUNNING and self._state is not PoolState.DRAINING:
            return
        self._state = PoolState.DRAINING
        self._batcher.close()
        timeout_s = self.config.drain_timeout_s if timeout_s is None else timeout_s
        log.info("draining: %d images queued, up to %.1f s", self._batcher.depth, timeout_s)
        began = time.monotonic() if began is None else began
        _, unfinished = await asyncio.wait(self._tasks, timeout=timeout_s)
        # Since the drain began, not since this call: the budget may have been spent before it (then 0 s here).
        drain_s = time.monotonic() - began
        if not unfinished:
            log.info("pool drained %.2f s after the drain began", drain_s, extra={"drain_s": round(drain_s, 3)})
        else:
            leftover = self._batcher.remove_all()
            settle_with_error(
                leftover,
                NotReady("the gateway shut down before this image was purified", retry_after_s=DRAINING_RETRY_AFTER_S),
            )
            self._metrics.dropped.labels(DropReason.DRAINING.value).inc(len(leftover))
            log.warning(
                "pool drain timed out %.2f s after the drain began; %d queued images dropped",
                drain_s,
                len(leftover),
                extra={"drain_s": round(drain_s, 3)},
            )
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        self._state = PoolState.DRAINED

    async def close(self) -> None:
        """Drain without waiting (anything left fails with `NotReady`) and release threads and models."""
        if self._state is PoolState.CLOSED:
            return
        await self.drain(timeout_s=0.0)
        self._close_workers()
        self._state = PoolState.CLOSED

    async def _wait(self, items: list[PoolItem], deadline: float | None) -> list[ItemResult]:
        """Wait for every item; at the deadline, fail the request: drop queued images, discard running ones.

        A running batch cannot be stopped, but the deadline bounds the request, not the batch: its
        batch-mates still get their images, this request gets DeadlineExceeded at once.
        """
        futures = [item.future for item in items]
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, pending = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
        if pending and not any(_error_of(f) for f in done):
            expired = self._batcher.remove([item for item in items if not item.future.done()])
            self._metrics.dropped.labels(DropReason.DEADLINE.value).inc(len(expired))
            settle_with_error(
                items,
                DeadlineExceeded(  # running ones too: the worker skips settled futures
                    f"request {items[0].request_id}: deadline passed with {len(expired)} images still queued "
                    f"and {len(pending) - len(expired)} purifying"
                ),
            )
        errors = [_error_of(f) for f in futures if f.done()]  # reading marks them retrieved (no warnings)
        first_error = next((error for error in errors if error is not None), None)
        if first_error is not None:
            raise first_error
        return [f.result() for f in futures]

    def _abandon(self, items: list[PoolItem]) -> None:
        """Withdraw a request nobody waits for (client gone, or one of its images failed): queued items never run."""
        removed = self._batcher.remove(items)
        self._metrics.dropped.labels(DropReason.CANCELLED.value).inc(len(removed))
        for item in items:
            item.future.cancel()  # no-op when settled; a running batch skips cancelled futures

    def _steps_for(self, batch: Batch[ItemPayload]) -> int:
        """Adaptive steps: fewer steps when clearing the queue would take longer than the target."""
        requested = batch.items[0].payload.steps
        minimum = self.config.adaptive_steps_min
        rate = total_rate([worker.meter.rate for worker in self._workers])
        if minimum is None or rate is None:
            return requested
        expected_wait_s = seconds_for(self._batcher.pending_cost + batch.cost, rate)
        return adaptive_steps(requested, expected_wait_s, self.config.adaptive_target_wait_ms / 1000.0, minimum)

    def _retry_after_s(self, count: int, steps: int) -> float:
        """Seconds until the queue has room for `count` more images, from measured throughput (>= 1)."""
        must_leave = self._batcher.depth + count - self.config.queue_limit  # images to dequeue first
        rate = total_rate([worker.meter.rate for worker in self._workers])
        return max(1.0, seconds_for(must_leave * steps, rate))

    def _on_worker_exit(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("worker task %s crashed", task.get_name(), exc_info=task.exception())

    def _close_workers(self) -> None:
        for worker in self._workers:
            worker.close()


def _request_seeds(seed: int | None, seeds: Sequence[int] | None, count: int) -> Sequence[int]:
    """The seed of each of `count` images: `seeds` as given, else seed + i (a random seed when None).

    Raises:
        ValueError: `seeds` does not hold one seed per image.
    """
    if seeds is None:
        return canvas_seeds(secrets.randbits(63) if seed is None else seed, count)  # canvas i: seed + i
    if len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} images")
    return seeds


def _pool_result(results: list[ItemResult]) -> PoolResult:
    """A request's result from its images' results, in order: the fewest steps, the longest waits."""
    return PoolResult(
        images=torch.stack([r.image for r in results]),
        steps=min(r.steps for r in results),
        queue_s=max(r.queue_s for r in results),
        purify_s=max(r.purify_s for r in results),
    )


def _error_of(future: asyncio.Future[ItemResult]) -> BaseException | None:
    """A settled future's error (a cancelled one reads as `CancelledError`), or None."""
    return asyncio.CancelledError() if future.cancelled() else future.exception()


def check_queue_room(images: int, queue_limit: int, *, votes: int | None = None) -> None:
    """Refuse what a queue of `queue_limit` images could never hold, however empty (the queue's rule:
    the API asks it before decoding, for an early 413; `WorkerPool.submit` for every submission).

    Args:
        images: the request's images.
        queue_limit: the queue's size (`PoolConfig.queue_limit`, from the `queue_limit` setting).
        votes: the request's votes K, each a purification of every image (named in the message); None:
            `images` counts every canvas of one submission.

    Raises:
        PayloadTooLarge: more purifications than the whole queue holds.
    """
    if votes is None and images > queue_limit:
        raise PayloadTooLarge(
            f"{images} images in one request; the queue holds {queue_limit}; "
            "send fewer images per request or raise the queue limit"
        )
    if votes is not None and images * votes > queue_limit:
        raise PayloadTooLarge(
            f"{images} images × votes={votes} = {images * votes} purifications; the queue "
            f"holds {queue_limit}: send fewer images or ask for fewer votes"
        )
