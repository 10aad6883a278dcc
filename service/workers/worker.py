"""One worker per device: its own thread and model copy; runs batches, splits them on out-of-memory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from service.errors import DRAINING_RETRY_AFTER_S, DeadlineExceeded, GatewayError, NotReady, PurificationFailed
from service.metrics import DropReason, GatewayMetrics
from service.purify.models import EpsModelInfo
from service.purify.options import ZipConfig
from service.purify.seeds import seeded_generators
from service.workers.batcher import Batch, DynamicBatcher, WorkItem
from service.workers.capacity import ThroughputMeter
from service.workers.purifier import BatchPurifier, PurifierFactory

log = logging.getLogger(__name__)

# What counts as "out of memory, try a smaller batch"; the pool takes its own tuple (tests inject one).
DEFAULT_OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)


@dataclass(frozen=True)
class ItemPayload:
    """One image of a request, with what decides its result."""

    image: torch.Tensor  # (C, H, W), float, in [-1, 1]
    seed: int  # its own noise stream: same seed, same result in any batch
    steps: int  # steps the request asked for (adaptive steps may run fewer)
    variant: ZipConfig | None = None  # ZIP's knobs for it (a strength preset); None = the purifier's own


@dataclass(frozen=True)
class ItemResult:
    """One purified image and how it went."""

    image: torch.Tensor  # (C, H, W) CPU float32
    steps: int  # steps actually run
    queue_s: float  # from queueing to the start of its batch's compute
    purify_s: float  # compute time of its batch


@dataclass(frozen=True)
class WorkerInfo:
    """What one worker runs: its device and, when its purifier reports an `EpsModelInfo`, the model."""

    device: str  # e.g. "cpu" or "cuda:1"
    dtype: str = "unknown"  # compute dtype, e.g. "float32"
    model: str = "unknown"  # the model's name
    sample_size: int | None = None  # None: the purifier does not say (fakes in tests)
    channels: int | None = None


PoolItem = WorkItem[ItemPayload]
StepsPolicy = Callable[[Batch[ItemPayload]], int]  # batch → steps to run it with


def settle_with_error(items: Sequence[PoolItem], error: GatewayError) -> int:
    """Fail every item not yet settled; returns how many were failed."""
    failed = 0
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)
            failed += 1
    return failed


class DeviceWorker:
    """Runs batches on one device in a dedicated thread, so the event loop stays free.

    torch releases the GIL inside kernels, so one thread per device overlaps with the loop's I/O.

    Args:
        device: torch device name, e.g. "cpu" or "cuda:1".
        metrics: the gateway's collectors.
        oom_errors: exception types that mean "out of memory": the batch is split in half and
            retried, down to one item.
        steps_policy: picks the steps for each batch (adaptive steps).
    """

    def __init__(
        self,
        device: str,
        metrics: GatewayMetrics,
        oom_errors: tuple[type[BaseException], ...],
        steps_policy: StepsPolicy,
    ) -> None:
        self.device = device
        self.meter = ThroughputMeter()
        self._metrics = metrics
        self._oom_errors = oom_errors
        self._steps_policy = steps_policy
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"zipgate-worker-{device}")
        self._purifier: BatchPurifier | None = None
        self._busy_until: float | None = None  # expected end of the running batch (monotonic s)

    @property
    def info(self) -> WorkerInfo:
        """Device, dtype and model of this worker (the model's from the purifier's `info`, when it has one)."""
        model = getattr(self._purifier, "info", None)
        if not isinstance(model, EpsModelInfo):
            return WorkerInfo(self.device)
        return WorkerInfo(self.device, model.dtype, model.name, model.sample_size, model.channels)

    def remaining_s(self, now: float) -> float | None:
        """Expected seconds until this worker is free; None when idle."""
        if self._busy_until is None:
            return None
        return max(0.0, self._busy_until - now)

    async def load(self, factory: PurifierFactory) -> None:
        """Build this device's purifier (loads the model) in the worker's own thread.

        Raises:
            Exception: whatever the factory raises (a missing model, a bad device).
        """
        loop = asyncio.get_running_loop()
        self._purifier = await loop.run_in_executor(self._executor, factory, self.device)

    async def serve(self, batcher: DynamicBatcher[ItemPayload]) -> None:
        """Take batches while there are any; returns once the batcher is closed and empty."""
        while (batch := await batcher.next_batch()) is not None:
            try:
                await self.run(batch)
            except Exception:  # a bug outside compute must neither strand the batch nor stop the worker
                log.exception("worker %s failed around a batch", self.device)
                settle_with_error(batch.items, PurificationFailed(f"purification failed on {self.device}"))

    async def run(self, batch: Batch[ItemPayload]) -> None:
        """Compute one batch and settle every item's future; an error fails only this batch.

        An item whose deadline passed during compute gets DeadlineExceeded, not its image: the
        deadline bounds the request end to end, even when nobody noticed the moment it passed.
        """
        # No await since the batcher handed the batch out: a future done now was cancelled before compute.
        items = [item for item in batch.items if not item.future.done()]
        if not items:
            return
        steps = self._steps_policy(batch)
        pixels = [item.payload.image for item in items]
        seeds = [item.payload.seed for item in items]
        variant = items[0].payload.variant  # the batcher's key includes it: one variant per batch
        started = time.monotonic()
        if self.meter.rate:
            self._busy_until = started + len(items) * steps / self.meter.rate
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._executor, self._compute_batch, pixels, steps, seeds, variant)
        except asyncio.CancelledError:
            # Shutdown past the drain timeout: nobody will wait for this thread's result.
            dropped = settle_with_error(
                items,
                NotReady("the gateway shut down before this image was purified", retry_after_s=DRAINING_RETRY_AFTER_S),
            )
            self._metrics.dropped.labels(DropReason.DRAINING.value).inc(dropped)
            raise
        except Exception as exc:  # noqa: BLE001 — any failure is this batch's alone
            request_ids = sorted({item.request_id for item in items})
            log.exception("batch of %d on %s failed (requests %s)", len(items), self.device, request_ids)
            self._metrics.batch_failures.labels(self.device).inc()
            settle_with_error(
                items,
                PurificationFailed(f"purification failed on {self.device} ({type(exc).__name__}); see the server log"),
            )
            return
        finally:
            elapsed = time.monotonic() - started
            self._busy_until = None
            self._metrics.worker_busy.labels(self.device).inc(elapsed)
        self.meter.record(len(items) * steps, elapsed)
        self._metrics.images_purified.inc(len(items))
        self._metrics.steps_used.observe(steps)
        finished = started + elapsed
        for item, image in zip(items, out, strict=True):
            if item.future.done():  # cancelled or failed during compute: the result has no taker
                continue
            if item.deadline is not None and finished > item.deadline:
                item.future.set_exception(
                    DeadlineExceeded(
                        f"request {item.request_id}: deadline passed while its batch was purifying ({elapsed:.3f} s)"
                    )
                )
            else:
                item.future.set_result(ItemResult(image, steps, started - item.enqueued_at, elapsed))

    def close(self) -> None:
        """Stop the thread once its current batch ends; releases the model copy."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._purifier = None

    def _compute_batch(
        self, pixels: list[torch.Tensor], steps: int, seeds: list[int], variant: ZipConfig | None
    ) -> torch.Tensor:
        """Stack and purify in the worker thread, so the event loop does no tensor work."""
        return self._compute(torch.stack(pixels), steps, seeds, variant)

    def _compute(self, images: torch.Tensor, steps: int, seeds: list[int], variant: ZipConfig | None) -> torch.Tensor:
        """Purify; on out-of-memory split in half and retry, down to one image (runs in the thread)."""
        try:
            return self._purify(images, steps, seeds, variant)
        except self._oom_errors:
            if images.shape[0] == 1:
                raise
        # Split outside the except block, so the traceback (and the tensors its frames hold) is freed.
        self._metrics.oom_splits.labels(self.device).inc()
        self._release_cached_memory()
        half = images.shape[0] // 2
        return torch.cat(
            [
                self._compute(images[:half], steps, seeds[:half], variant),
                self._compute(images[half:], steps, seeds[half:], variant),
            ]
        )

    def _purify(self, images: torch.Tensor, steps: int, seeds: list[int], variant: ZipConfig | None) -> torch.Tensor:
        if self._purifier is None:
            raise RuntimeError(f"worker {self.device} has no purifier; start the pool first")
        out = self._purifier(images.to(self.device), steps, seeded_generators(seeds, self.device), variant)
        # A localising purifier appends its keep-mask as one more channel (`split_mask_channel`).
        if (
            out.shape[0] != images.shape[0]
            or out.shape[2:] != images.shape[2:]
            or out.shape[1] - images.shape[1] not in (0, 1)
        ):
            raise RuntimeError(f"purifier returned shape {tuple(out.shape)} for input {tuple(images.shape)}")
        return out.float().cpu()

    def _release_cached_memory(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()
