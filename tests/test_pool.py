"""WorkerPool: batching across requests, backpressure, deadlines, cancellation, OOM split, drain, adaptive steps.

Most tests use a fault-injectable fake purifier whose compute can be held on a gate, so the
queue can be filled deterministically; one test runs the real engine on a tiny random UNet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from service.errors import DeadlineExceeded, NotReady, Overloaded, PayloadTooLarge, PurificationFailed
from service.metrics import DropReason, GatewayMetrics
from service.purify.models import cpu_has_native_bf16
from service.purify.options import DType, Method, ZipConfig
from service.workers.batcher import Batch, WorkItem
from service.workers.devices import resolve_devices
from service.workers.pool import PoolConfig, WorkerPool
from service.workers.purifier import ZipBatchPurifier, zip_purifier_factory
from service.workers.worker import DeviceWorker, ItemPayload, WorkerInfo
from tests.fp_tolerance import accumulation_depth, reordering_atol
from tests.tiny_models import tiny_unet

WAIT_S = 5.0  # generous deadline for polling; tests finish far sooner


class FakeOOM(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError on a CPU-only machine."""


@dataclass
class FakePurifier:
    """Records every batch (item ids, steps); returns -x so each result can be traced to its input.

    Item ids are encoded in the pixels: an image filled with id / 100.
    """

    calls: list[tuple[list[int], int]] = field(default_factory=list)
    variants: list[object] = field(default_factory=list)  # per call, the variant it ran
    gate: threading.Event = field(default_factory=threading.Event)  # compute waits while it is clear
    seconds_per_image_step: float = 0.0
    oom_above: int | None = None  # raise FakeOOM for batches larger than this
    fail_ids: frozenset[int] = frozenset()  # raise RuntimeError for a batch holding one of these
    running: int = 0  # batches computing right now, across worker threads

    def __post_init__(self) -> None:
        self.gate.set()
        self._lock = threading.Lock()

    def __call__(
        self,
        batch: torch.Tensor,
        steps: int,
        generators: list[torch.Generator] | None,
        variant: ZipConfig | None = None,
    ) -> torch.Tensor:
        ids = [round(v * 100) for v in batch[:, 0, 0, 0].tolist()]
        assert generators is not None and len(generators) == len(ids)
        with self._lock:
            self.calls.append((ids, steps))
            self.variants.append(variant)
            self.running += 1
        try:
            assert self.gate.wait(WAIT_S), "test forgot to open the gate"
            if self.oom_above is not None and len(ids) > self.oom_above:
                raise FakeOOM("CUDA out of memory (fake)")
            if self.fail_ids & set(ids):
                raise RuntimeError("boom")
            time.sleep(self.seconds_per_image_step * len(ids) * steps)
            return -batch
        finally:
            with self._lock:
                self.running -= 1

    def seen_ids(self) -> set[int]:
        return {i for ids, _ in self.calls for i in ids}


def images(*ids: int) -> torch.Tensor:
    """A request whose image i is filled with ids[i] / 100 (ids < 100)."""
    return torch.stack([torch.full((1, 4, 4), i / 100) for i in ids])


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Poll `predicate` until it holds, failing after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.002)


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def dropped(metrics: GatewayMetrics, reason: DropReason) -> float:
    return sample(metrics, "zipgate_dropped_images_total", reason=reason.value)


@dataclass
class Harness:
    """A started pool, its fake purifier and its metrics."""

    pool: WorkerPool
    fake: FakePurifier
    metrics: GatewayMetrics


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., Harness]]:
    """Build and start pools around a fake purifier; closes them (and opens every gate) afterwards."""
    made: list[Harness] = []

    async def build(fake: FakePurifier | None = None, **config: object) -> Harness:
        fake = fake or FakePurifier()
        metrics = GatewayMetrics()
        settings = dict(devices=("cpu",), max_batch_size=4, max_wait_ms=20.0, queue_limit=16) | config
        pool = WorkerPool(
            PoolConfig(**settings),
            lambda device: fake,
            metrics,  # type: ignore[arg-type]
            oom_errors=(FakeOOM,),
        )
        await pool.start()
        made.append(Harness(pool, fake, metrics))
        return made[-1]

    yield build  # type: ignore[misc]
    for harness in made:
        harness.fake.gate.set()
        await harness.pool.close()


async def hold_worker(h: Harness, *ids: int) -> asyncio.Task:
    """Submit `ids` and wait until their batch is computing, held on the closed gate."""
    h.fake.gate.clear()
    task = asyncio.create_task(h.pool.submit(images(*ids), request_id="held"))
    await eventually(lambda: any(set(ids) & set(batch) for batch, _ in h.fake.calls), "held batch started")
    return task


async def test_concurrent_requests_are_batched_and_answered_in_order(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(max_batch_size=4, max_wait_ms=50.0)
    requests = [images(i) for i in range(6)] + [images(10, 11, 12, 13, 14, 15)]
    results = await asyncio.gather(*(h.pool.submit(x, request_id=f"r{n}") for n, x in enumerate(requests)))
    for x, result in zip(requests, results, strict=True):
        torch.testing.assert_close(result.images, -x)  # each request's own images, in its order
        assert result.steps == 20 and result.queue_s >= 0 and result.purify_s >= 0
    sizes = [len(ids) for ids, _ in h.fake.calls]
    assert sum(sizes) == 12 and max(sizes) > 1
    assert sample(h.metrics, "zipgate_batch_size_count") < 12
    assert sample(h.metrics, "zipgate_batch_size_bucket", le="1.0") < sample(h.metrics, "zipgate_batch_size_count")
    assert sample(h.metrics, "zipgate_images_purified_total") == 12
    assert sample(h.metrics, "zipgate_worker_busy_seconds_total", device="cpu") > 0
    assert h.pool.queue_depth == 0 and sample(h.metrics, "zipgate_queue_depth") == 0


async def test_images_of_different_variants_never_share_a_batch(make_pool: Callable[..., Harness]) -> None:
    """A strength preset changes ZIP's knobs: its images batch with their own kind only, and the purifier
    is told which knobs to run."""
    h = await make_pool(max_batch_size=8, max_wait_ms=50.0)
    light = ZipConfig(noise_start=0.6)
    await hold_worker(h, 90)  # the queue fills behind it, so both variants are waiting when batches form
    plain = asyncio.create_task(h.pool.submit(images(1, 2, 3), request_id="plain"))
    varied = asyncio.create_task(h.pool.submit(images(4, 5, 6), request_id="light", variant=light))
    await eventually(lambda: h.pool.queue_depth == 6, "both requests queued")
    h.fake.gate.set()
    results = await asyncio.gather(plain, varied)
    torch.testing.assert_close(results[1].images, -images(4, 5, 6))
    by_call = dict(zip((tuple(ids) for ids, _ in h.fake.calls), h.fake.variants, strict=True))
    assert by_call[(1, 2, 3)] is None and by_call[(4, 5, 6)] == light  # one batch each, not one of six


async def test_full_queue_rejects_the_whole_request_and_accepted_ones_complete(
    make_pool: Callable[..., Harness],
) -> None:
    fake = FakePurifier(seconds_per_image_step=0.01)  # 20 steps → 0.2 s per image: a known throughput
    h = await make_pool(fake, max_batch_size=2, max_wait_ms=0.0, queue_limit=4)
    await h.pool.submit(images(1), request_id="warm-up")  # measures ~100 image-steps/s
    fake.seconds_per_image_step = 0.0
    held = await hold_worker(h, 2, 3)
    queued = [
        asyncio.create_task(h.pool.submit(images(4, 5), request_id="b")),
        asyncio.create_task(h.pool.submit(images(6), request_id="c")),
    ]
    await eventually(lambda: h.pool.queue_depth == 3, "3 images queued")
    with pytest.raises(Overloaded) as rejected:
        await asyncio.wait_for(h.pool.submit(images(7, 8), request_id="d"), timeout=1.0)
    # 1 image must leave the queue first: 20 steps at ~100 image-steps/s ≈ 0.2 s, reported as at least 1 s.
    assert rejected.value.retry_after_s >= 1.0
    assert 0 <= int(rejected.value.headers["Retry-After"]) - rejected.value.retry_after_s < 1  # rounded up
    assert h.pool.queue_depth == 3  # nothing of "d" was queued
    assert dropped(h.metrics, DropReason.OVERLOAD) == 2
    fake.gate.set()
    results = await asyncio.wait_for(asyncio.gather(held, *queued), WAIT_S)
    torch.testing.assert_close(results[1].images, -images(4, 5))
    assert {7, 8}.isdisjoint(fake.seen_ids())


async def test_retry_after_follows_measured_throughput(make_pool: Callable[..., Harness]) -> None:
    fake = FakePurifier(seconds_per_image_step=0.005)  # 1 image × 20 steps = 0.1 s → 200 image-steps/s
    h = await make_pool(fake, max_batch_size=1, max_wait_ms=0.0, queue_limit=16)
    await h.pool.submit(images(1), request_id="warm-up")
    fake.seconds_per_image_step = 0.0
    held = await hold_worker(h, 2)
    queued = asyncio.create_task(h.pool.submit(images(*range(10, 26)), request_id="full"))
    await eventually(lambda: h.pool.queue_depth == 16, "queue full")
    # 16 × 20 image-steps at ≤ 200 image-steps/s (a loaded machine only sleeps longer): ≥ 1.6 s.
    wait_s = h.pool.estimated_wait_s()
    assert wait_s > 1.5
    with pytest.raises(Overloaded) as rejected:
        await h.pool.submit(images(*range(30, 46)), request_id="too-many")
    assert rejected.value.retry_after_s == pytest.approx(wait_s, rel=0.1)  # all 16 queued must leave first
    assert 0 <= int(rejected.value.headers["Retry-After"]) - rejected.value.retry_after_s < 1  # rounded up
    with pytest.raises(PayloadTooLarge):
        await h.pool.submit(images(*range(50, 67)), request_id="never-fits")  # 17 > queue_limit
    fake.gate.set()
    await asyncio.wait_for(asyncio.gather(held, queued), WAIT_S)


async def test_deadline_drops_queued_images_without_computing_them(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(max_wait_ms=0.0)
    held = await hold_worker(h, 1)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await h.pool.submit(images(2, 3), request_id="late", deadline=time.monotonic() + 0.1)
    assert time.monotonic() - start > 0.09  # dropped at the deadline (a loaded machine only takes longer)
    assert h.pool.queue_depth == 0 and dropped(h.metrics, DropReason.DEADLINE) == 2
    with pytest.raises(DeadlineExceeded):
        await h.pool.submit(images(4), request_id="already-late", deadline=time.monotonic() - 1)
    h.fake.gate.set()
    await asyncio.wait_for(held, WAIT_S)
    after = await h.pool.submit(images(5), request_id="next", deadline=time.monotonic() + WAIT_S)
    torch.testing.assert_close(after.images, -images(5))
    assert {2, 3, 4}.isdisjoint(h.fake.seen_ids())


async def test_an_image_whose_batch_ends_after_its_deadline_is_late(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(max_batch_size=4, max_wait_ms=50.0)
    h.fake.gate.clear()
    deadline = time.monotonic() + 0.1
    late = asyncio.create_task(h.pool.submit(images(1), request_id="late", deadline=deadline))
    patient = asyncio.create_task(h.pool.submit(images(2), request_id="patient"))
    await eventually(lambda: [1, 2] in [ids for ids, _ in h.fake.calls], "both images computing in one batch")
    await eventually(lambda: time.monotonic() > deadline, "the deadline passed during compute")
    h.fake.gate.set()
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(late, WAIT_S)
    result = await asyncio.wait_for(patient, WAIT_S)  # its batch-mate still gets its image
    torch.testing.assert_close(result.images, -images(2))


async def test_a_worker_drops_the_result_of_an_item_whose_deadline_passed_during_compute() -> None:
    fake = FakePurifier()
    fake.gate.clear()
    worker = DeviceWorker("cpu", GatewayMetrics(), (FakeOOM,), lambda batch: 1)
    await worker.load(lambda device: fake)
    loop = asyncio.get_running_loop()
    now = time.monotonic()
    late, on_time = (
        WorkItem(
            key="k",
            payload=ItemPayload(images(i)[0], seed=i, steps=1),
            future=loop.create_future(),
            request_id=f"r{i}",
            enqueued_at=now,
            deadline=deadline,
        )
        for i, deadline in ((1, now + 0.05), (2, None))
    )
    try:
        running = asyncio.create_task(worker.run(Batch(key="k", items=(late, on_time), dispatched_at=now)))
        await eventually(lambda: fake.running == 1, "the batch computing")
        await eventually(lambda: time.monotonic() > now + 0.05, "the deadline passed during compute")
        fake.gate.set()
        await asyncio.wait_for(running, WAIT_S)
        assert isinstance(late.future.exception(), DeadlineExceeded)  # nobody awaited it: the worker decided
        torch.testing.assert_close(on_time.future.result().image, -images(2)[0])
    finally:
        fake.gate.set()
        worker.close()


async def test_cancelling_a_request_removes_its_queued_images(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(max_wait_ms=0.0)
    held = await hold_worker(h, 1)
    gone = asyncio.create_task(h.pool.submit(images(2, 3, 4), request_id="disconnected"))
    await eventually(lambda: h.pool.queue_depth == 3, "request queued")
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert h.pool.queue_depth == 0 and dropped(h.metrics, DropReason.CANCELLED) == 3
    h.fake.gate.set()
    await asyncio.wait_for(held, WAIT_S)
    await h.pool.submit(images(5), request_id="next")
    assert {2, 3, 4}.isdisjoint(h.fake.seen_ids())


async def test_out_of_memory_splits_the_batch_until_it_fits(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(FakePurifier(oom_above=2), max_batch_size=8, max_wait_ms=0.0)
    x = images(*range(1, 9))
    result = await h.pool.submit(x, request_id="big")
    torch.testing.assert_close(result.images, -x)  # every item, in order, after 8 → 4+4 → 2+2+2+2
    assert [len(ids) for ids, _ in h.fake.calls] == [8, 4, 2, 2, 4, 2, 2]
    assert sample(h.metrics, "zipgate_oom_splits_total", device="cpu") == 3
    assert sample(h.metrics, "zipgate_batch_failures_total", device="cpu") == 0
    h.fake.oom_above = 0  # not even one image fits: that batch fails, after one more split
    with pytest.raises(PurificationFailed, match="FakeOOM"):
        await h.pool.submit(images(1, 2), request_id="too-big")
    assert sample(h.metrics, "zipgate_oom_splits_total", device="cpu") == 4
    assert sample(h.metrics, "zipgate_batch_failures_total", device="cpu") == 1


async def test_a_crashing_batch_fails_only_its_own_images(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(FakePurifier(fail_ids=frozenset({13})), max_batch_size=1, max_wait_ms=0.0)
    bad, good = await asyncio.gather(
        h.pool.submit(images(13), request_id="bad"),
        h.pool.submit(images(14), request_id="good"),
        return_exceptions=True,
    )
    assert isinstance(bad, PurificationFailed) and "RuntimeError" in bad.message and "boom" not in bad.message
    torch.testing.assert_close(good.images, -images(14))  # type: ignore[union-attr]
    after = await h.pool.submit(images(15), request_id="after")  # the worker keeps serving
    torch.testing.assert_close(after.images, -images(15))
    assert sample(h.metrics, "zipgate_batch_failures_total", device="cpu") == 1
    assert h.pool.ready


async def test_drain_finishes_queued_and_running_work_then_rejects(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(max_batch_size=1, max_wait_ms=0.0)
    held = await hold_worker(h, 1)
    queued = [asyncio.create_task(h.pool.submit(images(i), request_id=f"q{i}")) for i in (2, 3)]
    await eventually(lambda: h.pool.queue_depth == 2, "queued")
    draining = asyncio.create_task(h.pool.drain(timeout_s=WAIT_S))
    await eventually(lambda: not h.pool.ready, "draining")
    with pytest.raises(NotReady):
        await h.pool.submit(images(4), request_id="too-late")
    h.fake.gate.set()
    await asyncio.wait_for(draining, WAIT_S)
    results = [await task for task in (held, *queued)]
    for i, result in zip((1, 2, 3), results, strict=True):
        torch.testing.assert_close(result.images, -images(i))
    with pytest.raises(NotReady):
        await h.pool.submit(images(5), request_id="after")
    assert dropped(h.metrics, DropReason.DRAINING) == 2
    assert 4 not in h.fake.seen_ids()


async def test_drain_timeout_fails_what_is_left_with_not_ready(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(max_batch_size=1, max_wait_ms=0.0)
    held = await hold_worker(h, 1)  # the gate stays closed: this batch outlives the drain
    queued = asyncio.create_task(h.pool.submit(images(2), request_id="queued"))
    await eventually(lambda: h.pool.queue_depth == 1, "queued")
    await asyncio.wait_for(h.pool.drain(timeout_s=0.05), WAIT_S)
    for task in (held, queued):
        with pytest.raises(NotReady):
            await asyncio.wait_for(task, WAIT_S)
    assert dropped(h.metrics, DropReason.DRAINING) == 2
    assert 2 not in h.fake.seen_ids()


async def test_adaptive_steps_lower_steps_under_load_and_report_them(make_pool: Callable[..., Harness]) -> None:
    fake = FakePurifier(seconds_per_image_step=0.001)  # 1000 image-steps/s
    h = await make_pool(
        fake,
        max_batch_size=4,
        max_wait_ms=0.0,
        queue_limit=32,
        default_steps=20,
        adaptive_steps_min=4,
        adaptive_target_wait_ms=100.0,
    )
    first = await h.pool.submit(images(1), request_id="warm-up")
    assert first.steps == 20  # an empty queue waits less than the target
    # 16 images × 20 steps queued ≈ 0.32 s of work, well over the 100 ms target.
    results = await asyncio.gather(*(h.pool.submit(images(i), request_id=f"r{i}") for i in range(10, 26)))
    steps_by_id = {i: steps for ids, steps in fake.calls for i in ids}
    assert min(r.steps for r in results) < 20
    assert all(4 <= r.steps <= 20 for r in results)
    for i, result in zip(range(10, 26), results, strict=True):
        assert result.steps == steps_by_id[i]  # what the response reports is what ran
    assert sample(h.metrics, "zipgate_purify_steps_bucket", le="15.0") >= 1
    idle = await h.pool.submit(images(2), request_id="after")
    assert idle.steps == 20  # load gone: full quality again


async def test_without_adaptive_steps_the_requested_steps_always_run(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(FakePurifier(seconds_per_image_step=0.001), max_wait_ms=0.0, default_steps=20)
    await h.pool.submit(images(1), request_id="warm-up")
    results = await asyncio.gather(*(h.pool.submit(images(i), request_id=f"r{i}") for i in range(10, 22)))
    assert {r.steps for r in results} == {20} and {steps for _, steps in h.fake.calls} == {20}
    custom = await h.pool.submit(images(2), request_id="custom", steps=7)
    assert custom.steps == 7 and h.fake.calls[-1][1] == 7


async def test_one_worker_per_device_each_in_its_own_thread(make_pool: Callable[..., Harness]) -> None:
    h = await make_pool(devices=("cpu", "cpu"), max_batch_size=1, max_wait_ms=0.0)
    h.fake.gate.clear()
    tasks = [asyncio.create_task(h.pool.submit(images(i), request_id=f"r{i}")) for i in (1, 2)]
    await eventually(lambda: h.fake.running == 2, "both workers computing at once")
    h.fake.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert [info.device for info in h.pool.device_info] == ["cpu", "cpu"]


async def test_lifecycle_errors(make_pool: Callable[..., Harness]) -> None:
    metrics = GatewayMetrics()
    pool = WorkerPool(PoolConfig(devices=("cpu",)), lambda device: FakePurifier(), metrics)
    assert not pool.ready
    with pytest.raises(NotReady):
        await pool.submit(images(1), request_id="early")
    with pytest.raises(ValueError, match="NaN"):
        await pool.submit(images(1) * float("nan"), request_id="nan")

    failing = WorkerPool(PoolConfig(devices=("cpu",)), lambda device: torch.load(f"/nonexistent/{device}"), metrics)
    with pytest.raises(FileNotFoundError):
        await failing.start()
    assert not failing.ready
    await failing.close()
    h = await make_pool()
    with pytest.raises(RuntimeError, match="already started"):
        await h.pool.start()


@pytest.mark.parametrize(
    "bad",
    [
        dict(devices=()),
        dict(max_batch_size=0),
        dict(queue_limit=0),
        dict(adaptive_steps_min=21),
        dict(adaptive_target_wait_ms=0.0),
    ],
)
def test_pool_config_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        PoolConfig(**(dict(devices=("cpu",)) | bad))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("auto", 0, ("cpu",)),
        ("auto", 2, ("cuda:0", "cuda:1")),
        ("cpu", 2, ("cpu",)),
        (" cuda:1 , cuda ", 2, ("cuda:1", "cuda:0")),
        ("CUDA:0,cpu", 1, ("cuda:0", "cpu")),
    ],
)
def test_resolve_devices(spec: str, count: int, expected: tuple[str, ...]) -> None:
    assert resolve_devices(spec, cuda_device_count=count) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu0", "unknown device"),
        ("cuda:2", "not visible"),
        ("cuda:0,cuda:0", "twice"),
        ("", "empty"),
        ("cpu,", "empty"),
        ("cuda", "not visible"),
    ],
)
def test_resolve_devices_rejects_with_a_fix(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        resolve_devices(spec, cuda_device_count=0 if spec == "cuda" else 2)
    assert "'auto', 'cpu', or 'cuda:N'" in str(error.value) or "one worker per device" in str(error.value)


def test_auto_dtype_per_device() -> None:
    assert DType.AUTO.resolve("cuda:0") == torch.float16
    assert DType.AUTO.resolve("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert DType.FP32.resolve("cpu") == torch.float32


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The 2-core test machine is shared: a second intra-op thread mostly waits for a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_torch_thread")
async def test_real_engine_batch_equals_single_runs_with_the_same_seeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Also: the ZIP purifier keeps one ZipPurifier per steps count."""
    caplog.set_level(logging.INFO, logger="service.workers.pool")
    tiny_unet(channels=1, size=16).save_pretrained(tmp_path / "tiny")
    factory = zip_purifier_factory(
        tmp_path / "tiny", ZipConfig("blur:2", guidance_power=1.0, method=Method.GLOBAL), dtype=DType.FP32
    )
    metrics = GatewayMetrics()
    pool = WorkerPool(
        PoolConfig(devices=("cpu",), max_batch_size=4, max_wait_ms=0.0, default_steps=3), factory, metrics
    )
    await pool.start()
    try:
        assert pool.device_info == [WorkerInfo(device="cpu", dtype="float32", model="tiny", sample_size=16, channels=1)]
        (ready,) = [record for record in caplog.records if record.getMessage().startswith("worker pool ready")]
        assert ready.getMessage() == "worker pool ready: 1 worker(s) on cpu (float32)"  # fields, not a repr
        assert ready.workers == [dataclasses.asdict(pool.device_info[0])]  # type: ignore[attr-defined]
        x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        batched = await pool.submit(x, request_id="batch", seed=11)
        assert sample(metrics, "zipgate_batch_size_sum") == 3  # one batch of 3
        singles = [await pool.submit(x[i : i + 1], request_id=f"single{i}", seed=11 + i) for i in range(3)]
        want = torch.cat([s.images for s in singles])
        # The batch's convolutions add in another order: 3 model calls' worth of fp32 reordering at most.
        atol = reordering_atol(accumulation_depth(tiny_unet(channels=1, size=16), calls=3), want.abs().max().item())
        torch.testing.assert_close(batched.images, want, atol=atol, rtol=0)
        assert batched.images.dtype == torch.float32 and batched.images.device.type == "cpu"
        assert batched.steps == 3
        other_seed = await pool.submit(x[:1], request_id="other", seed=12)
        assert not torch.allclose(other_seed.images, singles[0].images, atol=1e-3)  # the seed matters
    finally:
        await pool.close()
    purifier = factory("cpu")
    assert isinstance(purifier, ZipBatchPurifier)
    assert purifier.purifier_for(5) is purifier.purifier_for(5)
    assert purifier.purifier_for(5) is not purifier.purifier_for(4)
    assert len(purifier.purifier_for(4).pairs) == 4
    light = ZipConfig("blur:2", guidance_power=1.0, noise_start=0.5, method=Method.GLOBAL)
    assert purifier.purifier_for(4, light).config == dataclasses.replace(light, steps=4)  # the variant's knobs
    assert purifier.purifier_for(4, light) is purifier.purifier_for(4, dataclasses.replace(light, steps=9))
