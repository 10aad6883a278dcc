"""The HTTP edge's bounds on connections: a body must arrive within `body_read_timeout_s` (408,
the connection closed) without cutting the work after it, and `max_connections` caps open ones."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from service.api.server import gateway_server
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import (
    FakePurifier,
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    post,
    running_gateway,
    serving_gateway_server,
    wait_until,
)
from tests.raw_http import address, request_head


def _trickle_until_answered(base_url: str, path: str, *, deadline_s: float) -> bytes:
    """Send a request head promising 1000 bytes, then one byte every 0.1 s until an answer
    starts; then read until the server closes. Returns what came back."""
    with socket.create_connection(address(base_url), timeout=5) as sock:
        sock.sendall(request_head("POST", path, content_length=1000))
        sock.settimeout(0.1)
        received = b""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not received:
                    sock.sendall(b"{")
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break  # closed by the server
            received += chunk
        return received


def test_a_trickled_body_gets_408_and_the_connection_closes() -> None:
    recorder = StaticApp(200, b"{}")
    with (
        serve_asgi(recorder) as upstream_url,
        running_gateway(gateway_settings(None, upstream_url, body_read_timeout_s=0.5)) as url,
    ):
        received = _trickle_until_answered(url, "/predict", deadline_s=15)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), received[:300]
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert (
            metric_value(get(f"{url}/metrics").text, "zipgate_requests_total", endpoint="/predict", status="408") == 1
        )
    assert recorder.requests == []


def test_the_body_deadline_does_not_cut_work_after_the_body() -> None:
    """The deadline covers reading the body only: purification may take longer."""
    recorder = StaticApp(200, b'{"label": 1}')
    body_read_timeout_s = 2.0  # ample for one small upload on a loaded machine ...
    with (
        serve_asgi(recorder) as upstream_url,
        running_gateway(
            gateway_settings(Path("unused"), upstream_url, body_read_timeout_s=body_read_timeout_s),
            # ... and the purifier alone takes three times as long
            purifier_factory=lambda device: FakePurifier(delay_s=3 * body_read_timeout_s),
        ) as url,
    ):
        response = post(f"{url}/predict", files=[("image", png_bytes())])
    assert response.status_code == 200, response.text


def test_max_connections_bounds_open_connections() -> None:
    settings = gateway_settings(None, "http://127.0.0.1:9", max_connections=3)
    assert gateway_server(settings).config.limit_concurrency == 3
    with serving_gateway_server(settings) as (_, url):
        assert get(f"{url}/healthz").status_code == 200
        idle = [socket.create_connection(address(url), timeout=5) for _ in range(3)]
        try:
            wait_until(lambda: get(f"{url}/healthz").status_code == 503, what="503 at the connection bound")
        finally:
            for sock in idle:
                sock.close()
        wait_until(lambda: get(f"{url}/healthz").status_code == 200, what="200 once connections closed")
