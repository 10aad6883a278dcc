"""Serving throughput: the engine offline vs the gateway with and without dynamic batching.

(a) the engine alone (ZipPurifier, in process) at `max_batch_size`; (b) the gateway at
concurrency C with dynamic batching; (c) the same with `max_batch_size=1`; all with the shipped
model, the same steps and dtype, one image per request, the demo vendor (raw protocol) upstream.
Then a 4x overload run with a small queue: 429s are counted and every accepted request must
succeed. Gateway and vendor run in their own processes on loopback.

(a) runs exactly what a gateway worker runs: the gateway's own ZIP knobs (`Settings.zip_config`,
the shipped jblur:4 and λ unless overridden), its torch thread count (`Settings.torch_threads`:
usable cores − 1, so 1 on two cores), one noise generator per image, and OpenMP waiting passively
as under `zipgate serve`. Runs before 2026-12 compared a 2-thread engine running blur:2 with a
1-thread gateway. The demo vendor stands in for a remote service but shares these cores: it runs
one torch thread, and its CPU time per image is printed, with the gateway's and the share of
(b)'s wall time its worker spent computing (from /metrics).
Last line: `efficiency=<b images/s ÷ a images/s>`.

    .venv/bin/python bench/load.py [--steps 20] [--batch 16] [--concurrency 32] [--requests 128] [--device cpu]

`--device cuda` (or `cuda:N`) runs (a) and the gateway's one worker on that GPU (bench/gpu.sh uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# As `zipgate serve` does, before torch loads OpenMP: (a) must run as the gateway's worker does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import (  # noqa: E402
    Round,
    bound_socket,
    cpu_seconds,
    gateway_process,
    gateway_server,
    load,
    spawn,
    stop,
    thread_times,
    url_of,
    wait_ready,
)
from service.config import Settings, load_settings  # noqa: E402
from service.purify.models import DType, load_eps_model  # noqa: E402
from service.purify.seeds import seeded_generators  # noqa: E402
from service.purify.zip import ZipPurifier  # noqa: E402

VENDOR_SCRIPT = """
import socket, sys, uvicorn
from pathlib import Path
from service.demo.vendor_app import create_vendor_app
app = create_vendor_app(Path("models/vendor-badnets"))
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(
    sockets=[socket.socket(fileno=int(sys.argv[1]))])
"""


def _test_png() -> bytes:
    from service.backdoor.data import load_split
    from service.purify.imaging import tensor_to_pil

    buffer = io.BytesIO()
    tensor_to_pil(load_split(train=False).images[0]).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class ComputeTimes:
    """One run of purifications: images, wall seconds, and the computing thread's CPU and run-queue seconds."""

    images: int
    wall_s: float
    on_cpu_s: float
    waiting_s: float  # runnable, but no CPU free: what the neighbours on these cores cost

    def per_image_ms(self) -> str:
        return (
            f"{self.wall_s * 1e3 / self.images:.1f} ms wall = {self.on_cpu_s * 1e3 / self.images:.1f} ms on a CPU "
            f"+ {self.waiting_s * 1e3 / self.images:.1f} ms waiting for one"
        )


def engine_images_per_second(settings: Settings, batch: int, images: int, device: str = "cpu") -> ComputeTimes:
    """Offline throughput of what one gateway worker runs: `images` images in batches of `batch`, after a warm-up.

    The gateway's knobs, dtype and torch threads, one generator per image (as `DeviceWorker` seeds
    them), and the same statistic as (b): all the images over the whole time, not the best batch.
    """
    torch.set_num_threads(settings.torch_threads)
    model = load_eps_model(settings.model_path, device, settings.dtype.resolve(device))
    purifier = ZipPurifier(model, settings.zip_config)
    x = (torch.rand(batch, model.channels, model.sample_size, model.sample_size) * 2 - 1).to(device)
    purifier(x, seeded_generators(list(range(batch)), device))  # warm-up
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    synchronize()
    batches = math.ceil(images / batch)
    me = threading.get_native_id()  # with one torch thread, this thread computes everything
    before, started = thread_times(os.getpid())[me], time.perf_counter()
    for i in range(batches):
        purifier(x, seeded_generators(list(range(i * batch, (i + 1) * batch)), device))
    synchronize()
    wall_s, after = time.perf_counter() - started, thread_times(os.getpid())[me]
    return ComputeTimes(batches * batch, wall_s, after[0] - before[0], after[1] - before[1])


def gateway_counters(url: str) -> dict[str, float]:
    """The gateway's worker compute seconds and batch-size sums so far, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text

    def total(name: str) -> float:
        return sum(float(value) for value in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))

    return {
        "busy_s": total("zipgate_worker_busy_seconds_total"),
        "batches": total("zipgate_batch_size_count"),
        "images": total("zipgate_batch_size_sum"),
    }


def _print(name: str, result: Round) -> None:
    print(
        f"{name}: {result.rps:6.2f} images/s   p50 {result.p50_ms:8.1f} ms   p95 {result.p95_ms:8.1f} ms   "
        f"p99 {result.p99_ms:8.1f} ms   statuses {result.statuses}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size of (a) and (b)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=128, help="requests per gateway run (one image each)")
    parser.add_argument("--unbatched-requests", type=int, default=48)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", type=Path, default=Path("models/fmnist-ddpm"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where (a) and the gateway's worker run")
    args = parser.parse_args()
    device = "cuda:0" if args.device == "cuda" else args.device
    dtype = DType(args.dtype)
    body = _test_png()
    # The gateway's settings as its environment below makes them (the upstream URL only has to parse).
    settings = load_settings(upstream_url="http://127.0.0.1:1", steps=args.steps, dtype=dtype, model_path=args.model)

    offline = engine_images_per_second(settings, args.batch, args.requests, device)
    engine = offline.images / offline.wall_s
    print(
        f"steps={args.steps} device={device} dtype={dtype.resolve(device)} concurrency={args.concurrency} "
        f"model={args.model} "
        f"transforms={settings.zip_config.transforms} λ={settings.zip_config.guidance_power} "
        f"torch_threads={settings.torch_threads} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    print(f"(a) engine offline, batch {args.batch}: {engine:6.2f} images/s   per image: {offline.per_image_ms()}")

    vendor_sock = bound_socket()
    # One thread, waiting passively: a stand-in for a remote vendor takes as little of these cores as it can.
    vendor = spawn(VENDOR_SCRIPT, vendor_sock, {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    common = {
        "ZIPGATE_UPSTREAM_URL": url_of(vendor_sock),
        "ZIPGATE_STEPS": str(args.steps),
        "ZIPGATE_DTYPE": args.dtype,
        "ZIPGATE_MODEL_PATH": str(args.model),
        "ZIPGATE_DEVICES": device,
        "ZIPGATE_MAX_WAIT_MS": "20",
        "ZIPGATE_QUEUE_LIMIT": "1024",
        "ZIPGATE_REQUEST_TIMEOUT_S": "300",
    }
    try:
        wait_ready(f"{url_of(vendor_sock)}/healthz", vendor)
        with gateway_server({**common, "ZIPGATE_MAX_BATCH_SIZE": str(args.batch)}) as (url, gateway):
            asyncio.run(load(f"{url}/predict", body, args.batch, args.batch))  # warm-up
            gateway_cpu_s, vendor_cpu_s = -cpu_seconds(gateway.pid), -cpu_seconds(vendor.pid)
            counters, threads, started = gateway_counters(url), thread_times(gateway.pid), time.perf_counter()
            client_cpu_s = -time.process_time()
            batched = asyncio.run(load(f"{url}/predict", body, args.requests, args.concurrency))
            wall_s = time.perf_counter() - started
            client_cpu_s += time.process_time()
            counters = {name: value - counters[name] for name, value in gateway_counters(url).items()}
            # The worker is the gateway's busiest thread (the model); the event loop is the next.
            spent = {
                tid: (on_cpu - threads.get(tid, (0.0, 0.0))[0], waiting - threads.get(tid, (0.0, 0.0))[1])
                for tid, (on_cpu, waiting) in thread_times(gateway.pid).items()
            }
            worker_cpu_s, worker_wait_s = max(spent.values())
            worker = ComputeTimes(int(counters["images"]), counters["busy_s"], worker_cpu_s, worker_wait_s)
            gateway_cpu_s += cpu_seconds(gateway.pid)
            vendor_cpu_s += cpu_seconds(vendor.pid)
        _print(f"(b) gateway, dynamic batching (max {args.batch})", batched)
        print(
            f"    during (b): worker computing {counters['busy_s'] / wall_s:.1%} of the wall time, "
            f"{counters['batches']:.0f} batches of {counters['images'] / max(1.0, counters['batches']):.1f} images "
            f"on average; worker per image: {worker.per_image_ms()}"
        )
        print(
            f"    CPU per image during (b): gateway process {gateway_cpu_s * 1e3 / args.requests:.1f} ms (model "
            f"included), demo vendor {vendor_cpu_s * 1e3 / args.requests:.1f} ms, "
            f"this load generator {client_cpu_s * 1e3 / args.requests:.1f} ms"
        )
        with gateway_process({**common, "ZIPGATE_MAX_BATCH_SIZE": "1"}) as url:
            asyncio.run(load(f"{url}/predict", body, 2, 1))  # warm-up
            unbatched = asyncio.run(load(f"{url}/predict", body, args.unbatched_requests, args.concurrency))
        _print("(c) gateway, max_batch_size=1", unbatched)
        queue_limit = args.batch * 2
        with gateway_process(
            {**common, "ZIPGATE_MAX_BATCH_SIZE": str(args.batch), "ZIPGATE_QUEUE_LIMIT": str(queue_limit)}
        ) as url:
            overload = asyncio.run(load(f"{url}/predict", body, args.requests, queue_limit * 4))
        accepted_failed = sum(n for status, n in overload.statuses.items() if status not in (200, 429))
        print(
            f"overload (concurrency {queue_limit * 4} = 4x queue_limit {queue_limit}): "
            f"{overload.statuses.get(429, 0)} rejected with 429, {overload.statuses.get(200, 0)} succeeded, "
            f"{accepted_failed} accepted requests failed"
        )
        print(f"batching speedup (b/c)={batched.rps / unbatched.rps:.2f}")
        # What (b)/(a) would be if neither waited for a CPU: the gateway's own cost on its worker.
        cpu_ratio = (offline.on_cpu_s / offline.images) / (worker.on_cpu_s / max(1, worker.images))
        print(f"cpu_efficiency={cpu_ratio:.3f} (model CPU per image offline ÷ in the gateway's worker)")
        print(f"efficiency={batched.rps / engine:.3f}")
    finally:
        stop(vendor)
        vendor_sock.close()


if __name__ == "__main__":
    main()
