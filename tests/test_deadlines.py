"""The request deadline (X-Request-Timeout) bounds the whole request: queue, compute and vendor call.

Each test makes a 200 impossible within the deadline (a vendor 30 times slower than it, or a purifier
that never finishes), so a 200 means the deadline was not enforced; no test reads the clock. The
deadline itself is long enough for everything before the slow part, even on a loaded machine.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import GatedPurifier, gateway_settings, png_bytes, post, running_gateway

DEADLINE = "2"  # seconds: ample for decoding one small image and reaching the vendor or the purifier
SLOW_VENDOR_S = 60.0  # the vendor's time, 30 deadlines (it stops waiting when the gateway hangs up)


def assert_deadline_504(response: httpx.Response, request_id: str) -> None:
    """A JSON 504 `deadline_exceeded` stamped with the client's request id."""
    assert response.status_code == 504, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "deadline_exceeded", error
    assert error["request_id"] == request_id == response.headers["x-request-id"]


@pytest.mark.parametrize("route", ["api", "sidecar"])
def test_the_deadline_bounds_the_vendor_call(route: str) -> None:
    slow_vendor = StaticApp(200, b'{"label": 1}', delay_s=SLOW_VENDOR_S)
    headers = {"X-Request-Timeout": DEADLINE, "X-Request-ID": f"late-vendor-{route}"}
    with serve_asgi(slow_vendor) as upstream_url, running_gateway(gateway_settings(None, upstream_url)) as url:
        if route == "api":
            response = post(f"{url}/predict", files=[("image", ("x.png", png_bytes(), "image/png"))], headers=headers)
        else:  # an image body on /predict is relayed to the vendor's raw path (gateway.forward)
            response = post(f"{url}/predict", content=png_bytes(), headers={**headers, "Content-Type": "image/png"})
    assert_deadline_504(response, f"late-vendor-{route}")
    assert len(slow_vendor.requests) == 1  # the vendor call itself was cut, not something before it


def test_the_deadline_bounds_compute_of_an_idle_gateway() -> None:
    purifier = GatedPurifier()  # never lets the batch through while the request waits
    vendor = StaticApp(200, b'{"label": 1}')
    with (
        serve_asgi(vendor) as upstream_url,
        running_gateway(
            gateway_settings(Path("unused"), upstream_url), purifier_factory=lambda device: purifier
        ) as url,
    ):
        try:
            response = post(
                f"{url}/predict",
                files=[("image", ("x.png", png_bytes(), "image/png"))],
                headers={"X-Request-Timeout": DEADLINE, "X-Request-ID": "late-compute"},
            )
            assert purifier.busy.is_set()  # the batch was computing when the deadline cut it
        finally:
            purifier.open()  # the pool's shutdown waits for the batch at the gate
    assert_deadline_504(response, "late-compute")
    assert vendor.requests == []  # a late image is never sent on
