"""Serving throughput: the engine offline vs the gateway with and without dynamic batching.

(a) the engine alone (ZipPurifier, in process) at `max_batch_size`; (b) the gateway at
concurrency C with dynamic batching; (c) the same with `max_batch_size=1`; all with the shipped
model, the same steps and dtype, one image per request, the demo vendor (raw protocol) upstream.
Then a 4x overload run with a small queue: 429s are counted and every accepted request must
succeed. Gateway and vendor run in their own processes on loopback.
Last line: `efficiency=<b images/s ÷ a images/s>`.

    .venv/bin/python bench/load.py [--steps 20] [--batch 16] [--concurrency 32] [--requests 128]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Round, bound_socket, gateway_process, load, spawn, stop, url_of, wait_ready  # noqa: E402
from service.purify.models import DType, load_eps_model  # noqa: E402
from service.purify.options import ZipConfig  # noqa: E402
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


def engine_images_per_second(model_path: Path, steps: int, batch: int, dtype: DType, repeats: int = 2) -> float:
    """Offline throughput of ZipPurifier at one batch size (best of `repeats` after a warm-up)."""
    model = load_eps_model(model_path, "cpu", dtype)
    purifier = ZipPurifier(model, ZipConfig("blur:2", steps=steps, guidance_power=0.25))
    x = torch.rand(batch, model.channels, model.sample_size, model.sample_size) * 2 - 1
    purifier(x)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        purifier(x)
        best = min(best, time.perf_counter() - started)
    return batch / best


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
    args = parser.parse_args()
    dtype = DType(args.dtype)
    body = _test_png()

    engine = engine_images_per_second(args.model, args.steps, args.batch, dtype)
    print(f"steps={args.steps} dtype={dtype.resolve('cpu')} concurrency={args.concurrency} model={args.model}")
    print(f"(a) engine offline, batch {args.batch}: {engine:6.2f} images/s")

    vendor_sock = bound_socket()
    vendor = spawn(VENDOR_SCRIPT, vendor_sock, {})
    common = {
        "ZIPGATE_UPSTREAM_URL": url_of(vendor_sock),
        "ZIPGATE_STEPS": str(args.steps),
        "ZIPGATE_DTYPE": args.dtype,
        "ZIPGATE_MODEL_PATH": str(args.model),
        "ZIPGATE_MAX_WAIT_MS": "20",
        "ZIPGATE_QUEUE_LIMIT": "1024",
        "ZIPGATE_REQUEST_TIMEOUT_S": "300",
    }
    try:
        wait_ready(f"{url_of(vendor_sock)}/healthz", vendor)
        with gateway_process({**common, "ZIPGATE_MAX_BATCH_SIZE": str(args.batch)}) as url:
            asyncio.run(load(f"{url}/predict", body, args.batch, args.batch))  # warm-up
            batched = asyncio.run(load(f"{url}/predict", body, args.requests, args.concurrency))
        _print(f"(b) gateway, dynamic batching (max {args.batch})", batched)
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
        print(f"efficiency={batched.rps / engine:.3f}")
    finally:
        stop(vendor)
        vendor_sock.close()


if __name__ == "__main__":
    main()
