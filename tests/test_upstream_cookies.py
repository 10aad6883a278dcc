"""The gateway's one vendor client keeps no cookies: what the vendor sets for one client never
rides on another client's request (over sockets, through a running gateway)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from service.loopback import serve_asgi
from tests.gateway_servers import gateway_settings, running_gateway


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _cookie_setting_vendor(seen: list[str | None]) -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        await request.body()
        seen.append(request.headers.get("cookie"))
        response = JSONResponse({"label": 1})
        response.set_cookie("session", f"tenant-{len(seen)}")
        return response

    return app


def test_a_cookie_the_vendor_sets_is_never_sent_on_later_requests(tmp_path: Path) -> None:
    seen: list[str | None] = []
    with (
        serve_asgi(_cookie_setting_vendor(seen)) as vendor_url,
        running_gateway(gateway_settings(None, vendor_url)) as url,
    ):
        files = [("image", ("x.png", _png(), "image/png"))]
        first = httpx.post(f"{url}/predict", files=files, timeout=30.0)
        second = httpx.post(f"{url}/predict", files=files, timeout=30.0)
        sidecar = httpx.post(
            f"{url}/predict", content=_png(), headers={"content-type": "image/png"}, timeout=30.0
        )  # the raw sidecar: the vendor's answer relayed, Set-Cookie included
        own = httpx.post(
            f"{url}/predict", content=_png(), headers={"content-type": "image/png", "cookie": "mine=1"}, timeout=30.0
        )
    assert [r.status_code for r in (first, second, sidecar, own)] == [200] * 4
    assert seen == [None, None, None, "mine=1"]  # the vendor's cookies were never replayed; a client's own was
    assert sidecar.cookies.get("session") == "tenant-3"  # the client that caused it still gets it
