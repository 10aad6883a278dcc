"""A client that hangs up while the gateway waits on the vendor: the vendor call is cancelled at once
(its connection closed, so the vendor sees the disconnect) and the request is counted as 499, not
as the 504 the vendor's timeout would have given it much later."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.fault_servers import serve_asgi
from tests.gateway_servers import gateway_settings, get, metric_value, png_bytes, running_gateway, wait_until

Scope = dict[str, Any]


@dataclass
class HangingVendor:
    """A vendor that never answers: it records each request, then waits for the caller to hang up."""

    arrived: list[str] = field(default_factory=list)
    hung_up: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        with self._lock:
            self.arrived.append(scope["path"])
        async with asyncio.timeout(600):  # far past the test: only the caller's hang-up ends the wait
            while (await receive())["type"] != "http.disconnect":
                pass
        with self._lock:
            self.hung_up.append(scope["path"])


@pytest.fixture(scope="module")
def vendor() -> Iterator[tuple[HangingVendor, str]]:
    app = HangingVendor()
    with serve_asgi(app) as url:
        yield app, url


def _raw_request(url: str, path: str, **kwargs: Any) -> bytes:
    """An HTTP/1.1 request as bytes, built by httpx, to send on a socket the test closes itself."""
    request = httpx.Request("POST", f"{url}{path}", **kwargs)
    body = request.read()
    head = f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in request.headers.items() if name.lower() == "content-type")
    return (head + "\r\n").encode() + body


def _address(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    assert parsed.host and parsed.port
    return parsed.host, parsed.port


PNG_B64 = base64.b64encode(png_bytes()).decode()
V2_BODY = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [PNG_B64]}]}
CASES = {
    "predict": ("/predict", "/predict", {"files": [("image", ("x.png", png_bytes(), "image/png"))]}),
    "tfserving-sidecar": (
        "/v1/models/{name}:predict",
        "/v1/models/m:predict",
        {"content": json.dumps({"instances": [{"b64": PNG_B64}]}), "headers": {"Content-Type": "application/json"}},
    ),
    "v2-sidecar": (
        "/v2/models/{name}/infer",
        "/v2/models/m/infer",
        {
            "content": json.dumps(V2_BODY),
            "headers": {"Content-Type": "application/json"},
        },
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_client_that_hangs_up_during_the_vendor_call_cancels_it_and_is_counted_499(
    vendor: tuple[HangingVendor, str], case: str
) -> None:
    app, vendor_url = vendor
    endpoint, path, request = CASES[case]
    # The vendor's timeout is far away: only the client's hang-up can end the call within the test.
    settings = gateway_settings(
        None, vendor_url, upstream_timeout_s=300, request_timeout_s=300, upstream_model_check_ttl_s=0
    )
    with running_gateway(settings) as url:
        before = len(app.hung_up)
        with socket.create_connection(_address(url), timeout=10) as client:
            client.sendall(_raw_request(url, path, **request))
            wait_until(lambda: len(app.arrived) > before, timeout_s=30, what="the call at the vendor")
        # Hung up: the gateway cancels its call (the vendor sees its connection close) and counts a 499.
        wait_until(lambda: len(app.hung_up) > before, timeout_s=30, what="the vendor call cancelled")

        def counted(status: str) -> float:
            return metric_value(get(f"{url}/metrics").text, "zipgate_requests_total", endpoint=endpoint, status=status)

        wait_until(lambda: counted("499") == 1, timeout_s=30, what="the request counted as 499")
        text = get(f"{url}/metrics").text
        assert counted("504") == 0
        assert metric_value(text, "zipgate_upstream_requests_total", status="cancelled") == 1
        assert metric_value(text, "zipgate_upstream_requests_total", status="timeout") == 0
