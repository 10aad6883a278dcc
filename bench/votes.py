"""The cost of majority votes in the gateway: latency and vendor calls of `?votes=K` against K = 1.

One gateway process (the shipped model) in front of the demo vendor (raw protocol), requests of
one image sent one at a time, K = 1 and each K of `--votes` interleaved round by round so that
machine noise hits both alike. Vendor calls are read off the gateway's own metrics.
Last line: `latency_ratio_k<K>=<median latency at K ÷ median at 1>` for the largest K.

    .venv/bin/python bench/votes.py [--votes 3,5] [--requests 10] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import bound_socket, gateway_process, spawn, stop, url_of, wait_ready  # noqa: E402
from bench.load import VENDOR_SCRIPT, _test_png  # noqa: E402


def vendor_calls(client: httpx.Client, url: str) -> float:
    """Vendor calls the gateway has made so far (every status)."""
    text = client.get(f"{url}/metrics").text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "zipgate_upstream_requests")
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", default="3,5")
    parser.add_argument("--requests", type=int, default=10, help="requests per K")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", type=Path, default=Path("models/fmnist-ddpm"))
    args = parser.parse_args()
    ks = [1, *(int(k) for k in args.votes.split(","))]
    body = _test_png()
    vendor_sock = bound_socket()
    vendor = spawn(VENDOR_SCRIPT, vendor_sock, {})
    env = {
        "ZIPGATE_UPSTREAM_URL": url_of(vendor_sock),
        "ZIPGATE_STEPS": str(args.steps),
        "ZIPGATE_MODEL_PATH": str(args.model),
        "ZIPGATE_MAX_VOTES": str(max(ks)),
        "ZIPGATE_REQUEST_TIMEOUT_S": "300",
    }
    latencies: dict[int, list[float]] = {k: [] for k in ks}
    calls: dict[int, float] = dict.fromkeys(ks, 0.0)
    try:
        wait_ready(f"{url_of(vendor_sock)}/healthz", vendor)
        with gateway_process(env) as url, httpx.Client(timeout=300.0) as client:
            files = [("image", ("x.png", body, "image/png"))]
            client.post(f"{url}/predict", files=files, params={"votes": max(ks)})  # warm-up
            for _ in range(args.requests):
                for k in ks:
                    before = vendor_calls(client, url)
                    started = time.perf_counter()
                    response = client.post(f"{url}/predict", files=files, params={"votes": k})
                    latencies[k].append((time.perf_counter() - started) * 1e3)
                    response.raise_for_status()
                    calls[k] += vendor_calls(client, url) - before
    finally:
        stop(vendor)
        vendor_sock.close()
    base = statistics.median(latencies[1])
    print(f"steps={args.steps} model={args.model} requests={args.requests} per K, one image each, sequential")
    for k in ks:
        median = statistics.median(latencies[k])
        print(
            f"votes={k}: p50 {median:7.1f} ms (x{median / base:.2f}), vendor calls per image "
            f"{calls[k] / args.requests:.1f}"
        )
    print(f"latency_ratio_k{max(ks)}={statistics.median(latencies[max(ks)]) / base:.2f}")


if __name__ == "__main__":
    main()
