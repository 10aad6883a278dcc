"""`zipgate_inflight_requests` counts client requests in progress, not the /metrics scrape that reads it
(nor health probes); over a real loopback socket."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx

from tests.gateway_servers import gateway_settings, metric_value, running_gateway, wait_until

INFLIGHT = "zipgate_inflight_requests"


def inflight(url: str) -> float:
    response = httpx.get(f"{url}/metrics", timeout=30)
    response.raise_for_status()
    return metric_value(response.text, INFLIGHT)


def test_a_scrape_does_not_count_itself_but_a_request_in_progress_counts() -> None:
    settings = gateway_settings(None, "http://127.0.0.1:9", body_read_timeout_s=60.0)
    with running_gateway(settings) as url:
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        assert inflight(url) == 0  # an idle gateway, read by the scrape itself
        # A request whose body is still arriving is in flight (a raw image for the sidecar path).
        split = urlsplit(url)
        with socket.create_connection((split.hostname, split.port), timeout=30) as client:
            client.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 100\r\n\r\n" + b"x" * 10
            )
            wait_until(lambda: inflight(url) == 1, timeout_s=30, what="the slow request counted in flight")
        wait_until(lambda: inflight(url) == 0, timeout_s=30, what="the closed request no longer in flight")
