"""Torch CPU threads: purification throughput and latency at 1..N threads, alone and next to other CPU load.

For each condition (no hogs: whatever else the machine runs; then `--hogs` busy-loop processes,
default one per core, as any other CPU-bound neighbour would be) and each torch thread count, the
gateway's own engine (the shipped
model, or `--tiny`) purifies batches of `--batch` images for `--seconds`; per-batch latencies give
p50 and p99. Every ratio is against 1 thread in the same condition of the same run; the last line
is the loaded p99 of torch's own default (one thread per core) against 1 thread.

    .venv/bin/python bench/threads.py [--tiny] [--seconds 6] [--batch 4] [--steps 20] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.cpus import default_torch_threads  # noqa: E402
from service.purify.options import DType, ZipConfig  # noqa: E402
from service.training.ddpm import UNetArchitecture  # noqa: E402
from service.workers.purifier import BatchPurifier, ZipBatchPurifier, zip_purifier_factory  # noqa: E402

TINY = UNetArchitecture(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=8)
HOG = "while True: pass"


@dataclass(frozen=True)
class Point:
    """One measured (condition, threads) point."""

    images_per_s: float
    p50_ms: float
    p99_ms: float
    batches: int


@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """`count` busy-loop processes (not niced) for the duration of the block."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]
    try:
        time.sleep(1.0)  # let them reach the run queue
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def measure(purifier: BatchPurifier, batch: torch.Tensor, steps: int, threads: int, seconds: float) -> Point:
    """Purify `batch` repeatedly for `seconds` with `threads` torch threads (after one warm-up batch)."""
    torch.set_num_threads(threads)
    purifier(batch, steps, None)
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(latencies) < 3:
        t = time.perf_counter()
        purifier(batch, steps, None)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return Point(len(latencies) * batch.shape[0] / elapsed, ordered[len(ordered) // 2] * 1e3, p99 * 1e3, len(latencies))


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random UNet instead of the shipped model")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "fmnist-ddpm")
    parser.add_argument("--threads", default=",".join(str(n) for n in range(1, cores + 1)))
    parser.add_argument("--hogs", type=int, default=cores, help="busy-loop processes in the loaded condition")
    parser.add_argument("--seconds", type=float, default=6.0, help="per point")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch_default = torch.get_num_threads()  # before anything sets it: one per core
    thread_counts = sorted({int(n) for n in args.threads.split(",")} | {1})

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model
        if args.tiny:
            model_path = Path(tmp) / "tiny"
            torch.manual_seed(0)
            TINY.build().save_pretrained(model_path)
        purifier = zip_purifier_factory(model_path, ZipConfig("blur:2"), DType.AUTO)("cpu")
        assert isinstance(purifier, ZipBatchPurifier)  # the factory's purifiers carry the model's info
    side = purifier.info.sample_size
    batch = (
        torch.rand(args.batch, purifier.info.channels, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )
    print(
        f"model: {'tiny random' if args.tiny else model_path.name} ({purifier.info.dtype}), batch {args.batch}, "
        f"steps {args.steps}, {args.seconds:g} s per point; cores={cores}, torch default threads={torch_default}, "
        f"zipgate default threads={default_torch_threads()}, hogs={args.hogs}"
    )

    results: dict[tuple[str, int], Point] = {}
    for condition in ("no hogs", "loaded"):
        hogs = cpu_hogs(args.hogs) if condition == "loaded" else contextlib.nullcontext()
        with hogs:
            for threads in thread_counts:
                point = measure(purifier, batch, args.steps, threads, args.seconds)
                results[(condition, threads)] = point
                base = results[(condition, 1)]
                print(
                    f"{condition:7s} threads={threads:2d}: {point.images_per_s:7.2f} images/s  "
                    f"p50 {point.p50_ms:8.1f} ms  p99 {point.p99_ms:8.1f} ms  ({point.batches} batches)  "
                    f"throughput x{point.images_per_s / base.images_per_s:.2f}, p99 x{point.p99_ms / base.p99_ms:.2f} "
                    "vs 1 thread",
                    flush=True,
                )
    worst = max(thread_counts, key=lambda n: results[("loaded", n)].p99_ms)
    default = min(torch_default, max(thread_counts))
    print(
        f"loaded: worst p99 at {worst} threads; no hogs: {max(thread_counts)} threads give "
        f"x{results[('no hogs', max(thread_counts))].images_per_s / results[('no hogs', 1)].images_per_s:.2f} "
        "the throughput of 1"
    )
    print(
        f"ratio loaded_p99(threads={default}, torch default)/loaded_p99(threads=1)="
        f"{results[('loaded', default)].p99_ms / results[('loaded', 1)].p99_ms:.2f}"
    )


if __name__ == "__main__":
    main()
