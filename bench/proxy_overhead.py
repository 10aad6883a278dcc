"""Proxy overhead: the same upstream called directly and through the gateway (purification off).

Both paths get the identical request (`POST /predict`, a 28×28 PNG as the raw body, which the
gateway relays as a sidecar after validating the image), at the same concurrency, in
alternating rounds so background load hits both alike. The upstream answers a fixed JSON at
once, so everything measured beyond it is the gateway's own cost. Upstream and gateway each run
in their own process (uvicorn, one worker); the load generator runs here.
`cpu_ms_per_request` is the gateway process's own CPU time (user + system, from /proc) over its
measured rounds, divided by their requests: what the relay costs, whatever else shares the cores
(issue 18 asks ≤ 0.5 ms). /proc counts in clock ticks (10 ms), so keep requests × rounds ≥ 1000.
Last lines: `cpu_ms_per_request=<ms>`, then `ratio=<gateway rps / direct rps>`.

    .venv/bin/python bench/proxy_overhead.py [--requests 1000] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import (  # noqa: E402
    GATEWAY_SCRIPT,
    Round,
    bound_socket,
    cpu_seconds,
    load,
    median_round,
    spawn,
    stop,
    url_of,
    wait_ready,
)

UPSTREAM_BODY = b'{"label": 9, "class_name": "Ankle boot"}'
UPSTREAM_SCRIPT = """
import socket, sys, uvicorn
BODY = __BODY__
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(
    sockets=[socket.socket(fileno=int(sys.argv[1]))])
""".replace("__BODY__", repr(UPSTREAM_BODY))


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((28, 28), 64).save(buffer, format="PNG")
    return buffer.getvalue()


def _summary(name: str, rounds: list[Round]) -> Round:
    median = median_round(rounds)
    print(
        f"{name:<8} {median.rps:8.0f} req/s   p50 {median.p50_ms:6.2f} ms   p95 {median.p95_ms:6.2f} ms   "
        f"p99 {median.p99_ms:6.2f} ms   errors {median.errors}   (median of {len(rounds)} rounds)"
    )
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per round and path")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/gateway rounds")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    body = _png()
    upstream_sock, gateway_sock = bound_socket(), bound_socket()
    upstream_url, gateway_url = url_of(upstream_sock), url_of(gateway_sock)
    upstream = spawn(UPSTREAM_SCRIPT, upstream_sock, {})
    gateway = spawn(
        GATEWAY_SCRIPT,
        gateway_sock,
        {
            "ZIPGATE_PURIFICATION_ENABLED": "false",
            "ZIPGATE_UPSTREAM_URL": upstream_url,
            "ZIPGATE_LOG_LEVEL": "warning",
            "ZIPGATE_UPSTREAM_MAX_CONNECTIONS": str(max(args.concurrency, 10)),
        },
    )
    try:
        wait_ready(f"{upstream_url}/", upstream)
        wait_ready(f"{gateway_url}/readyz", gateway)
        targets = {"direct": f"{upstream_url}/predict", "gateway": f"{gateway_url}/predict"}
        for url in targets.values():
            asyncio.run(load(url, body, args.warmup, args.concurrency))
        rounds: dict[str, list[Round]] = {name: [] for name in targets}
        gateway_cpu_s = 0.0
        for _ in range(args.rounds):
            for name, url in targets.items():
                cpu_before = cpu_seconds(gateway.pid)
                rounds[name].append(asyncio.run(load(url, body, args.requests, args.concurrency)))
                if name == "gateway":
                    gateway_cpu_s += cpu_seconds(gateway.pid) - cpu_before
        print(
            f"proxy overhead: {args.requests} requests x {args.rounds} rounds per path, concurrency "
            f"{args.concurrency}, {len(body)} B PNG, purification off, {os.cpu_count()} CPUs"
        )
        direct = _summary("direct", rounds["direct"])
        through = _summary("gateway", rounds["gateway"])
        print(f"added p50 latency: {through.p50_ms - direct.p50_ms:.2f} ms")
        print(f"cpu_ms_per_request={gateway_cpu_s * 1e3 / (args.requests * args.rounds):.3f}")
        print(f"ratio={through.rps / direct.rps:.3f}")
    finally:
        stop(gateway, upstream)
        upstream_sock.close()
        gateway_sock.close()


if __name__ == "__main__":
    main()
