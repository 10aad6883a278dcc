"""Proxy overhead: the same upstream called directly and through the gateway (purification off).

Both paths get the identical request (`POST /predict`, a 28×28 PNG as the raw body, which the
gateway relays as a sidecar after validating the image), at the same concurrency, in
alternating rounds so background load hits both alike. The upstream answers a fixed JSON at
once, so everything measured beyond it is the gateway's own cost. Upstream and gateway each run
in their own process (uvicorn, one worker); the load generator runs here.
Last line: `ratio=<gateway rps / direct rps>`.

    .venv/bin/python bench/proxy_overhead.py [--requests 1000] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_BODY = b'{"label": 9, "class_name": "Ankle boot"}'
GATEWAY_SCRIPT = """
import socket, sys
from service.api.server import run_gateway
from service.config import load_settings
sys.exit(run_gateway(load_settings(), sockets=[socket.socket(fileno=int(sys.argv[1]))]))
"""
UPSTREAM_SCRIPT = """
import socket, sys, uvicorn
BODY = %r
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(
    sockets=[socket.socket(fileno=int(sys.argv[1]))])
""" % UPSTREAM_BODY


@dataclass(frozen=True)
class Round:
    """One measured round: throughput and latency percentiles."""

    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((28, 28), 64).save(buffer, format="PNG")
    return buffer.getvalue()


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _spawn(script: str, sock: socket.socket, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script, str(sock.fileno())], pass_fds=[sock.fileno()],
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout_s} s")


async def _load(url: str, body: bytes, requests: int, concurrency: int) -> Round:
    """Send `requests` POSTs with `concurrency` workers on one pooled client."""
    latencies: list[float] = []
    errors = 0
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        async def worker() -> None:
            nonlocal errors
            for _ in remaining:
                started = time.perf_counter()
                response = await client.post(url, content=body, headers={"Content-Type": "image/png"})
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return Round(len(latencies) / elapsed, pct(0.50), pct(0.95), pct(0.99), errors)


def _summary(name: str, rounds: list[Round]) -> Round:
    median = Round(*(statistics.median(getattr(r, field) for r in rounds)
                     for field in ("rps", "p50_ms", "p95_ms", "p99_ms")), sum(r.errors for r in rounds))
    print(f"{name:<8} {median.rps:8.0f} req/s   p50 {median.p50_ms:6.2f} ms   p95 {median.p95_ms:6.2f} ms   "
          f"p99 {median.p99_ms:6.2f} ms   errors {median.errors}   (median of {len(rounds)} rounds)")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per round and path")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/gateway rounds")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    body = _png()
    upstream_sock, gateway_sock = _bound_socket(), _bound_socket()
    upstream_url, gateway_url = _url(upstream_sock), _url(gateway_sock)
    upstream = _spawn(UPSTREAM_SCRIPT, upstream_sock, {})
    gateway = _spawn(GATEWAY_SCRIPT, gateway_sock, {
        "ZIPGATE_PURIFICATION_ENABLED": "false", "ZIPGATE_UPSTREAM_URL": upstream_url,
        "ZIPGATE_LOG_LEVEL": "warning", "ZIPGATE_UPSTREAM_MAX_CONNECTIONS": str(max(args.concurrency, 10))})
    try:
        _wait_ready(f"{upstream_url}/", upstream)
        _wait_ready(f"{gateway_url}/readyz", gateway)
        targets = {"direct": f"{upstream_url}/predict", "gateway": f"{gateway_url}/predict"}
        for url in targets.values():
            asyncio.run(_load(url, body, args.warmup, args.concurrency))
        rounds: dict[str, list[Round]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, url in targets.items():
                rounds[name].append(asyncio.run(_load(url, body, args.requests, args.concurrency)))
        print(f"proxy overhead: {args.requests} requests x {args.rounds} rounds per path, concurrency "
              f"{args.concurrency}, {len(body)} B PNG, purification off, {os.cpu_count()} CPUs")
        direct = _summary("direct", rounds["direct"])
        through = _summary("gateway", rounds["gateway"])
        print(f"added p50 latency: {through.p50_ms - direct.p50_ms:.2f} ms")
        print(f"ratio={through.rps / direct.rps:.3f}")
    finally:
        for process in (gateway, upstream):
            process.send_signal(signal.SIGTERM)
        for process in (gateway, upstream):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        upstream_sock.close()
        gateway_sock.close()


if __name__ == "__main__":
    main()
