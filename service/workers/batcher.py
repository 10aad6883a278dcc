"""Dynamic batching: a bounded queue that groups items sharing a key into batches.

Modelled on Ray Serve's `@serve.batch` and Triton's dynamic batcher, in a pull form: a worker
that is free calls `next_batch()`, which waits for items, lets a partial batch fill for up to
`max_wait_s` after its oldest item arrived, and hands back at most `max_batch_size` items that
share a key (same image shape and steps, so they stack into one tensor). Callers await their
own item's future and never see batches. Items whose deadline passed, or whose future is
already done (cancelled), are dropped here, before any compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import DeadlineExceeded
from service.metrics import DropReason, GatewayMetrics

P = TypeVar("P")


@dataclass(eq=False)
class WorkItem(Generic[P]):
    """One image waiting for a worker; `future` receives its result or its error.

    Compared by identity (`eq=False`): two items with equal payloads are still two images.
    """

    key: Hashable
    payload: P
    future: asyncio.Future[Any]
    request_id: str
    enqueued_at: float  # time.monotonic() seconds
    deadline: float | None = None  # time.monotonic() seconds; None = no deadline
    cost: float = 1.0  # work units (image-steps) for wait estimates


@dataclass(frozen=True)
class Batch(Generic[P]):
    """Items sharing one key, handed to one worker, oldest first."""

    key: Hashable
    items: tuple[WorkItem[P], ...]
    dispatched_at: float  # time.monotonic() seconds

    @property
    def cost(self) -> float:
        """Total work units of the batch."""
        return sum(item.cost for item in self.items)


@dataclass
class _Groups(Generic[P]):
    """Queued items by key, in arrival order within each key."""

    by_key: dict[Hashable, deque[WorkItem[P]]] = field(default_factory=dict)

    def oldest_key(self) -> Hashable | None:
        if not self.by_key:
            return None
        return min(self.by_key, key=lambda key: self.by_key[key][0].enqueued_at)

    def take(self, key: Hashable, count: int) -> list[WorkItem[P]]:
        queue = self.by_key[key]
        taken = [queue.popleft() for _ in range(min(count, len(queue)))]
        if not queue:
            del self.by_key[key]
        return taken

    def remove_where(self, predicate: Callable[[WorkItem[P]], bool]) -> list[WorkItem[P]]:
        removed: list[WorkItem[P]] = []
        for key in list(self.by_key):
            kept = deque(item for item in self.by_key[key] if not predicate(item))
            removed.extend(item for item in self.by_key[key] if predicate(item))
            if kept:
                self.by_key[key] = kept
            else:
                del self.by_key[key]
        return removed


class DynamicBatcher(Generic[P]):
    """A bounded, keyed queue that forms batches for free workers.

    Args:
        max_batch_size: most items in one batch.
        max_wait_s: how long a partial batch may wait for more items, from its oldest item's arrival.
        queue_limit: most items queued at once (across keys and requests).
        metrics: updates `queue_depth`, `batch_size` and `dropped` (deadline, cancelled).
        clock: monotonic seconds; injectable for tests.

    Raises:
        ValueError: a non-positive size or limit, or a negative wait.
    """

    def __init__(
        self,
        max_batch_size: int,
        max_wait_s: float,
        queue_limit: int,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be >= 1, got {queue_limit}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self._metrics = metrics
        metrics.queue_limit.set(queue_limit)
        self._clock = clock
        self._groups: _Groups[P] = _Groups()
        self._depth = 0
        self._pending_cost = 0.0
        self._closed = False
        self._changed = asyncio.Event()
        # One worker forms a batch at a time, so two free workers never split one partial batch.
        self._forming = asyncio.Lock()

    @property
    def depth(self) -> int:
        """Items queued now (not yet handed to a worker)."""
        return self._depth

    @property
    def pending_cost(self) -> float:
        """Work units queued now."""
        return self._pending_cost

    @property
    def closed(self) -> bool:
        """True after `close()`: no new items; what is queued is still handed out."""
        return self._closed

    def offer(self, items: Iterable[WorkItem[P]]) -> bool:
        """Queue all of `items`, or none of them when there is not room for all.

        Args:
            items: the items of one request.

        Returns:
            True when queued; False when the queue lacks room (nothing was queued).

        Raises:
            RuntimeError: the batcher is closed.
        """
        items = list(items)
        if self._closed:
            raise RuntimeError("the batcher is closed; no new items are accepted")
        if self._depth + len(items) > self.queue_limit:
            return False
        for item in items:
            self._groups.by_key.setdefault(item.key, deque()).append(item)
        self._account(len(items), sum(item.cost for item in items))
        return True

    def remove(self, items: Iterable[WorkItem[P]]) -> list[WorkItem[P]]:
        """Take `items` out of the queue if they are still there (not yet handed to a worker).

        Args:
            items: items to withdraw, e.g. those of a cancelled request.

        Returns:
            The items that were still queued; their futures are left for the caller to settle.
        """
        wanted = {id(item) for item in items}
        return self._remove_where(lambda item: id(item) in wanted)

    def remove_all(self) -> list[WorkItem[P]]:
        """Empty the queue (shutdown); returns what was queued, futures left for the caller."""
        return self._remove_where(lambda item: True)

    def close(self) -> None:
        """Stop accepting items; queued items are still handed out, now without waiting to fill."""
        self._closed = True
        self._changed.set()

    async def next_batch(self) -> Batch[P] | None:
        """Wait for the next batch for a free worker.

        The oldest key goes first. A batch is handed out when it is full, when its oldest item
        has waited `max_wait_s`, or at once after `close()`.

        Returns:
            A batch of 1..max_batch_size live items, or None once closed and empty.
        """
        async with self._forming:
            while True:
                self._drop_dead()
                key = self._groups.oldest_key()
                if key is None:
                    if self._closed:
                        return None
                    await self._wait_for_change(None)
                    continue
                queue = self._groups.by_key[key]
                now = self._clock()
                window_end = queue[0].enqueued_at + self.max_wait_s
                if len(queue) >= self.max_batch_size or now >= window_end or self._closed:
                    items = self._groups.take(key, self.max_batch_size)
                    self._account(-len(items), -sum(item.cost for item in items))
                    self._metrics.batch_size.observe(len(items))
                    return Batch(key=key, items=tuple(items), dispatched_at=now)
                await self._wait_for_change(window_end - now)

    def _drop_dead(self) -> None:
        """Drop items nobody awaits any more and items whose deadline passed, before compute."""
        now = self._clock()
        cancelled = self._remove_where(lambda item: item.future.done())
        self._metrics.dropped.labels(DropReason.CANCELLED.value).inc(len(cancelled))
        expired = self._remove_where(lambda item: item.deadline is not None and item.deadline <= now)
        for item in expired:
            item.future.set_exception(
                DeadlineExceeded(
                    f"request {item.request_id}: deadline passed after "
                    f"{now - item.enqueued_at:.3f} s in the queue, before purification"
                )
            )
        self._metrics.dropped.labels(DropReason.DEADLINE.value).inc(len(expired))

    def _remove_where(self, predicate: Callable[[WorkItem[P]], bool]) -> list[WorkItem[P]]:
        removed = self._groups.remove_where(predicate)
        if removed:
            self._account(-len(removed), -sum(item.cost for item in removed))
            self._changed.set()  # a waiting worker re-reads the oldest key
        return removed

    def _account(self, items: int, cost: float) -> None:
        self._depth += items
        self._pending_cost = max(0.0, self._pending_cost + cost) if self._depth else 0.0
        self._metrics.queue_depth.set(self._depth)
        if items > 0:
            self._changed.set()

    async def _wait_for_change(self, timeout_s: float | None) -> None:
        # Cleared and awaited with no await in between: a put cannot slip past unnoticed.
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
