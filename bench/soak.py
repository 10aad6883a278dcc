"""Soak: N minutes at a fixed concurrency through a real gateway (purification on) and the demo vendor.

Gateway and vendor run in their own processes on loopback, with the shipped models (or `--tiny`,
the test suite's tiny random ones). Each request is one image as multipart to `/predict`, the
gateway's own API (an image/png body there would be the raw sidecar relay: UPSTREAM_RAW_PATH's
default is /predict). After `--warmup-s` of load (not counted), the load runs for
`--minutes`; every `--window-s` a line gives that window's requests, errors, p50/p99 and the
gateway's RSS. The last lines give the whole run's errors and p50/p99, the RSS at the start (after
the warm-up) and at the end, and, last, `rss_ratio=<end ÷ start>`: the run is its own baseline.

    .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 8] [--steps 20] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import bound_socket, gateway_server, percentile_ms, rss_bytes, spawn, stop, url_of, wait_ready  # noqa: E402

VENDOR_SCRIPT = """
import os, socket, sys, uvicorn
from pathlib import Path
from service.demo.vendor_app import create_vendor_app
app = create_vendor_app(Path(os.environ["SOAK_VENDOR_DIR"]))
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(
    sockets=[socket.socket(fileno=int(sys.argv[1]))])
"""
MIB = 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """One request: when it started, how long it took, its status (0: no HTTP answer)."""

    started: float
    seconds: float
    status: int


def noise_pngs(count: int, side: int = 28) -> list[bytes]:
    """`count` different grayscale noise PNGs (purification costs the same whatever the content)."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(side, side), dtype=np.uint8), "L").save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


async def run_load(url: str, bodies: list[bytes], concurrency: int, until: float, answers: list[Answer]) -> None:
    """`concurrency` workers, each sending one image per request (multipart: the gateway API) back to back,
    until `until` (monotonic)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as client:

        async def worker(index: int) -> None:
            sent = index
            while time.monotonic() < until:
                started = time.monotonic()
                try:
                    image = bodies[sent % len(bodies)]
                    response = await client.post(url, files={"image": ("x.png", image, "image/png")})
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                answers.append(Answer(started, time.monotonic() - started, status))
                sent += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))


def summary(answers: list[Answer]) -> tuple[int, float, float, Counter[int]]:
    """Requests' error count, p50 and p99 (ms, of 200s) and statuses."""
    statuses = Counter(answer.status for answer in answers)
    ordered = sorted(answer.seconds for answer in answers if answer.status == 200)
    return len(answers) - statuses[200], percentile_ms(ordered, 0.5), percentile_ms(ordered, 0.99), statuses


async def soak(url: str, pid: int, args: argparse.Namespace) -> None:
    answers: list[Answer] = []
    rss_ready = rss_bytes(pid)
    begin = time.monotonic()
    start = begin + args.warmup_s
    end = start + args.minutes * 60
    load = asyncio.create_task(run_load(f"{url}/predict", noise_pngs(8), args.concurrency, end, answers))
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    rss_start = rss_peak = rss_bytes(pid)
    window_start = start
    while time.monotonic() < end and not load.done():
        window_end = min(window_start + args.window_s, end)
        await asyncio.wait({load}, timeout=max(0.0, window_end - time.monotonic()))
        rss_peak = max(rss_peak, rss_bytes(pid))
        window = [a for a in answers if window_start <= a.started + a.seconds < window_end]
        errors, p50, p99, _ = summary(window)
        print(
            f"t={window_end - start:6.0f} s  requests {len(window):5d}  errors {errors}  p50 {p50:7.1f} ms  "
            f"p99 {p99:7.1f} ms  rss {rss_bytes(pid) / MIB:7.1f} MiB",
            flush=True,
        )
        window_start = window_end
    await load  # the requests in flight at the end finish; a worker's failure is re-raised
    rss_end = rss_bytes(pid)
    rss_peak = max(rss_peak, rss_end)
    counted = [answer for answer in answers if answer.started >= start]
    errors, p50, p99, statuses = summary(counted)
    elapsed = max(a.started + a.seconds for a in counted) - start if counted else 0.0
    print(
        f"errors={errors} of {len(counted)} requests in {elapsed:.0f} s at concurrency {args.concurrency} "
        f"(statuses {dict(statuses)}); {len(counted) / max(elapsed, 1e-9):.2f} requests/s"
    )
    print(f"latency p50 {p50:.1f} ms  p99 {p99:.1f} ms")
    print(
        f"rss at ready {rss_ready / MIB:.1f} MiB, start {rss_start / MIB:.1f} MiB, end {rss_end / MIB:.1f} MiB, "
        f"peak {rss_peak / MIB:.1f} MiB"
    )
    print(f"rss_ratio={rss_end / rss_start:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: 20, or 2 with --tiny)")
    parser.add_argument("--warmup-s", type=float, default=30.0, help="load before the counted run starts")
    parser.add_argument("--window-s", type=float, default=60.0, help="seconds per progress line")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny random models")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ddpm, vendor_dir = REPO / "models" / "fmnist-ddpm", REPO / "models" / "vendor-badnets"
        if args.tiny:
            from tests.gateway_servers import tiny_ddpm_dir, tiny_vendor_dir

            ddpm, vendor_dir = tiny_ddpm_dir(Path(tmp)), tiny_vendor_dir(Path(tmp))
        steps = args.steps or (2 if args.tiny else 20)
        vendor_sock = bound_socket()
        vendor = spawn(VENDOR_SCRIPT, vendor_sock, {"SOAK_VENDOR_DIR": str(vendor_dir)})
        try:
            wait_ready(f"{url_of(vendor_sock)}/healthz", vendor)
            env = {
                "ZIPGATE_MODEL_PATH": str(ddpm),
                "ZIPGATE_UPSTREAM_URL": url_of(vendor_sock),
                "ZIPGATE_STEPS": str(steps),
                "ZIPGATE_DEVICES": "cpu",
            }
            with gateway_server(env) as (url, gateway):
                print(
                    f"soak: {args.minutes:g} min at concurrency {args.concurrency}, {ddpm.name}, {steps} steps, "
                    f"one 28x28 image per multipart request to /predict (the gateway API), after "
                    f"{args.warmup_s:g} s of warm-up",
                    flush=True,
                )
                asyncio.run(soak(url, gateway.pid, args))
        finally:
            stop(vendor)
            vendor_sock.close()


if __name__ == "__main__":
    main()
