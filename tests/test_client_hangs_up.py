"""A client that hangs up while the gateway waits on the vendor: the vendor call is cancelled at once
(its connection closed, so the vendor sees the disconnect) and the request is counted as 499, not
as the 504 the vendor's timeout would have given it much later."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.api.guard import guarded
from service.errors import ClientDisconnected
from tests.fault_servers import HangingApp, StaticApp, serve_asgi
from tests.gateway_servers import (
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    raw_request,
    running_gateway,
    wait_until,
)
from tests.raw_http import address, request_head


@pytest.fixture(scope="module")
def vendor() -> Iterator[tuple[HangingApp, str]]:
    app = HangingApp()
    with serve_asgi(app) as url:
        yield app, url


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
    vendor: tuple[HangingApp, str], case: str
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
            client.sendall(raw_request(path, **request))
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


def test_a_client_that_hangs_up_while_the_vendor_is_asked_about_its_model_is_counted_499(
    vendor: tuple[HangingApp, str],
) -> None:
    app, vendor_url = vendor
    # The model check on: the vendor is asked about the model first, and that question never answers.
    settings = gateway_settings(
        None, vendor_url, upstream_timeout_s=300, request_timeout_s=300, upstream_model_check_ttl_s=60
    )
    endpoint, path, request = CASES["v2-sidecar"]
    with running_gateway(settings) as url:
        before = len(app.arrived)
        with socket.create_connection(_address(url), timeout=10) as client:
            client.sendall(raw_request(path, **request))
            wait_until(lambda: len(app.arrived) > before, timeout_s=30, what="the question at the vendor")
        assert app.arrived[-1] == "/v2/models/m/ready"

        def counted(status: str) -> float:
            return metric_value(get(f"{url}/metrics").text, "zipgate_requests_total", endpoint=endpoint, status=status)

        wait_until(lambda: counted("499") == 1, timeout_s=30, what="the request counted as 499")
        assert counted("504") == 0


async def test_a_failing_receive_is_raised_not_reported_as_a_disconnect() -> None:
    stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def broken_receive() -> dict[str, Any]:
        raise RuntimeError("receive broke")

    with pytest.raises(RuntimeError, match="receive broke"):
        await guarded(
            asyncio.sleep(10), request_id="r", what="work", stopped=stopped, deadline=None, receive=broken_receive
        )

    async def disconnect() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnected):
        await guarded(
            asyncio.sleep(10), request_id="r", what="work", stopped=stopped, deadline=None, receive=disconnect
        )


def test_a_client_that_hangs_up_mid_body_is_499_not_500(caplog: pytest.LogCaptureFixture) -> None:
    recorder = StaticApp(200, b"{}")
    with serve_asgi(recorder) as upstream_url, running_gateway(gateway_settings(None, upstream_url)) as url:
        with caplog.at_level(logging.INFO):
            with socket.create_connection(address(url), timeout=5) as sock:
                sock.sendall(request_head("POST", "/predict", content_length=1000) + b'{"images": ["iVBO')
            wait_until(
                lambda: (
                    metric_value(
                        get(f"{url}/metrics").text, "zipgate_requests_total", endpoint="/predict", status="499"
                    )
                    == 1
                ),
                what="499 counted",
            )
        text = get(f"{url}/metrics").text
    assert metric_value(text, "zipgate_requests_total", endpoint="/predict", status="500") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(("service", "zipgate"))]
    assert any(r.levelno == logging.INFO and "disconnected" in r.getMessage() for r in caplog.records)
