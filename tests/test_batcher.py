"""DynamicBatcher: grouping by key, the max-wait window, bounded all-or-nothing admission, drops."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.errors import DeadlineExceeded
from service.metrics import DropReason, GatewayMetrics
from service.workers.batcher import DynamicBatcher, WorkItem
from service.workers.capacity import ThroughputMeter, adaptive_steps, total_rate


def make_item(key: str = "a", payload: str = "x", deadline: float | None = None, cost: float = 1.0) -> WorkItem[str]:
    return WorkItem(
        key=key,
        payload=payload,
        future=asyncio.get_running_loop().create_future(),
        request_id="r",
        enqueued_at=time.monotonic(),
        deadline=deadline,
        cost=cost,
    )


def dropped(metrics: GatewayMetrics, reason: DropReason) -> float:
    return metrics.registry.get_sample_value("zipgate_dropped_images_total", {"reason": reason.value}) or 0.0


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


async def test_full_batch_leaves_at_once_and_the_rest_after_the_window(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=4, max_wait_s=0.2, queue_limit=10, metrics=metrics)
    items = [make_item(payload=str(i)) for i in range(5)]
    assert batcher.offer(items)
    start = time.monotonic()
    first = await batcher.next_batch()
    assert first is not None and [i.payload for i in first.items] == ["0", "1", "2", "3"]
    assert batcher.depth == 1  # full: it left at once, the fifth item still waits for company
    second = await batcher.next_batch()
    assert second is not None and [i.payload for i in second.items] == ["4"]
    assert time.monotonic() - start >= 0.19  # partial: waited for company until the window closed
    assert batcher.depth == 0 and batcher.pending_cost == 0
    assert metrics.registry.get_sample_value("zipgate_queue_depth") == 0
    assert metrics.registry.get_sample_value("zipgate_batch_size_sum") == 5
    assert metrics.registry.get_sample_value("zipgate_batch_size_count") == 2


async def test_items_arriving_in_the_window_join_the_batch(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=3, max_wait_s=5.0, queue_limit=10, metrics=metrics)
    assert batcher.offer([make_item(payload="0")])
    waiter = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)  # let the waiter start its window
    assert not waiter.done()
    assert batcher.offer([make_item(payload="1"), make_item(payload="2")])
    batch = await asyncio.wait_for(waiter, timeout=1.0)  # filled: leaves long before the 5 s window
    assert batch is not None and [i.payload for i in batch.items] == ["0", "1", "2"]


async def test_keys_are_never_mixed_and_the_oldest_key_goes_first(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=8, max_wait_s=0.0, queue_limit=10, metrics=metrics)
    assert batcher.offer([make_item("b", "b0")])
    assert batcher.offer([make_item("a", "a0"), make_item("b", "b1"), make_item("a", "a1")])
    first, second = await batcher.next_batch(), await batcher.next_batch()
    assert first is not None and second is not None
    assert (first.key, [i.payload for i in first.items]) == ("b", ["b0", "b1"])
    assert (second.key, [i.payload for i in second.items]) == ("a", ["a0", "a1"])


async def test_offer_is_all_or_nothing(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=8, max_wait_s=0.0, queue_limit=4, metrics=metrics)
    assert batcher.offer([make_item(cost=2.0) for _ in range(3)])
    assert not batcher.offer([make_item(), make_item()])  # 3 + 2 > 4: neither is queued
    assert batcher.depth == 3 and batcher.pending_cost == 6.0
    assert batcher.offer([make_item()])  # exactly full is fine
    assert batcher.depth == 4


async def test_expired_items_are_dropped_before_dispatch(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=8, max_wait_s=0.0, queue_limit=10, metrics=metrics)
    expired = make_item(payload="late", deadline=time.monotonic() - 0.001)
    alive = make_item(payload="ok", deadline=time.monotonic() + 60)
    assert batcher.offer([expired, alive])
    batch = await batcher.next_batch()
    assert batch is not None and [i.payload for i in batch.items] == ["ok"]
    with pytest.raises(DeadlineExceeded):
        expired.future.result()
    assert dropped(metrics, DropReason.DEADLINE) == 1


async def test_cancelled_and_removed_items_are_skipped(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=8, max_wait_s=0.0, queue_limit=10, metrics=metrics)
    items = [make_item(payload=str(i)) for i in range(4)]
    assert batcher.offer(items)
    items[0].future.cancel()
    removed = batcher.remove([items[1], items[1]])
    assert removed == [items[1]] and batcher.depth == 3
    assert batcher.remove([items[1]]) == []  # already gone
    batch = await batcher.next_batch()
    assert batch is not None and [i.payload for i in batch.items] == ["2", "3"]
    assert dropped(metrics, DropReason.CANCELLED) == 1  # the removed one is the remover's to count
    assert batcher.remove([items[2]]) == []  # handed out: no longer removable


async def test_close_hands_out_the_rest_without_waiting_then_none(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=8, max_wait_s=30.0, queue_limit=10, metrics=metrics)
    assert batcher.offer([make_item("a"), make_item("b")])
    idle = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.offer([make_item()])
    keys = {(await asyncio.wait_for(idle, 1.0)).key, (await asyncio.wait_for(batcher.next_batch(), 1.0)).key}
    assert keys == {"a", "b"}
    assert await asyncio.wait_for(batcher.next_batch(), 1.0) is None


async def test_concurrent_takers_get_disjoint_batches(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=3, max_wait_s=0.05, queue_limit=20, metrics=metrics)
    takers = [asyncio.create_task(batcher.next_batch()) for _ in range(3)]
    items = [make_item(payload=str(i)) for i in range(7)]
    assert batcher.offer(items)
    batches = await asyncio.wait_for(asyncio.gather(*takers), 2.0)
    seen = [i.payload for b in batches if b is not None for i in b.items]
    assert sorted(seen, key=int) == [str(i) for i in range(7)]
    assert sorted(len(b.items) for b in batches if b is not None) == [1, 3, 3]


async def test_an_idle_taker_wakes_on_the_first_offer(metrics: GatewayMetrics) -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(max_batch_size=1, max_wait_s=0.0, queue_limit=2, metrics=metrics)
    taker = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    assert not taker.done()
    assert batcher.offer([make_item(payload="p")])
    batch = await asyncio.wait_for(taker, 1.0)
    assert batch is not None and batch.items[0].payload == "p"


@pytest.mark.parametrize("bad", [dict(max_batch_size=0), dict(max_wait_s=-1.0), dict(queue_limit=0)])
def test_bad_settings_are_rejected(metrics: GatewayMetrics, bad: dict[str, float]) -> None:
    settings = dict(max_batch_size=1, max_wait_s=0.0, queue_limit=1) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        DynamicBatcher(metrics=metrics, **settings)  # type: ignore[arg-type]


def test_throughput_meter_is_an_ewma() -> None:
    meter = ThroughputMeter(smoothing=0.5)
    assert meter.rate is None
    meter.record(work=100, seconds=1.0)
    assert meter.rate == 100
    meter.record(work=200, seconds=1.0)
    assert meter.rate == pytest.approx(150)
    meter.record(work=10, seconds=0.0)  # not a measurement
    assert meter.rate == pytest.approx(150)
    assert total_rate([None, None]) is None
    assert total_rate([100.0, None, 50.0]) == pytest.approx(225.0)  # the unmeasured one counts as the mean


@pytest.mark.parametrize(("wait", "expected"), [(1.0, 20), (2.0, 20), (4.0, 10), (8.0, 5), (100.0, 4)])
def test_adaptive_steps_scale_by_target_over_wait(wait: float, expected: int) -> None:
    assert adaptive_steps(20, expected_wait_s=wait, target_wait_s=2.0, minimum=4) == expected
    assert adaptive_steps(3, expected_wait_s=100.0, target_wait_s=2.0, minimum=4) == 3  # never above requested
