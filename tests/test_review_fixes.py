"""Review of issue 15's hardening: each test pins one finding, and fails on the code before its fix.

Pixel limits per image before the request's budget, headers parsed once; max_connections ≥ 2; a
body still arriving when the drain runs out (503 JSON, not uvicorn's text 500); a failing receive
in the stage guard; credentials out of repr and tracebacks; the private httpx APIs the client uses;
OMP_WAIT_POLICY; the pool's drain log; Retry-After by cause; the request-pixel default; the key in
Proxy-Authorization and Basic auth; 404 only on the sidecar's model routes.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image
from pydantic import SecretStr

from service import cli
from service.api.app import create_app
from service.api.decode import ImageLimits, open_images
from service.api.errors import ClientDisconnected
from service.api.guard import guarded
from service.api.security import headers_for_vendor
from service.config import DEFAULT_MAX_REQUEST_PIXELS, ConfigError, load_settings
from service.errors import (
    DRAINING_RETRY_AFTER_S,
    LOADING_RETRY_AFTER_S,
    NotReady,
    PayloadTooLarge,
    UpstreamResponseTooLarge,
)
from service.metrics import GatewayMetrics
from service.upstream import RetryPolicy, UpstreamProtocol, build_upstream
from service.upstream import client as client_module
from service.workers.pool import PoolConfig, WorkerPool
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import (
    FakePurifier,
    error_details,
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    png_header_claiming,
    post,
    running_gateway,
    serving_gateway_server,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]
CREDENTIALS = "vendoruser:s3cret-pw"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def plain_gateway() -> Iterator[tuple[str, StaticApp]]:
    """A gateway without purification (fast) in front of a recording vendor, default limits."""
    recorder = StaticApp(200, b'{"label": 1}')
    with serve_asgi(recorder) as upstream_url, running_gateway(gateway_settings(None, upstream_url)) as url:
        yield url, recorder


# --- 6: each image's own limits first, then the request's budget; headers parsed once -----------


@pytest.mark.parametrize("side", [5000, 20000])  # over max_image_pixels; 20000² also trips PIL's bomb guard
def test_one_image_too_large_is_named_by_its_own_limit_not_the_request_budget(
    plain_gateway: tuple[str, StaticApp], side: int
) -> None:
    url, recorder = plain_gateway
    forwarded = len([r for r in recorder.requests if r.method == "POST"])  # GETs ask whether a model exists
    bomb = png_header_claiming(side, side)
    v2 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [_b64(bomb)]}]}
    for response in (
        post(f"{url}/predict", files=[("image", bomb)]),
        post(f"{url}/predict", json={"images": [_b64(bomb)]}),
        post(f"{url}/v2/models/fmnist/infer", json=v2),
    ):
        assert response.status_code == 413, response.text
        message = error_details(response.json(), response.request.url.path)["message"]
        assert "max_image_pixels" in message and "max_request_pixels" not in message, message
    assert len([r for r in recorder.requests if r.method == "POST"]) == forwarded


def test_open_images_checks_each_image_then_the_sum() -> None:
    limits = ImageLimits(max_image_bytes=1 << 20, max_image_pixels=64 * 64)
    small = png_bytes(64, 64)
    opened = open_images([small, small], limits, max_request_pixels=2 * 64 * 64)
    assert [image.size for image in opened] == [(64, 64), (64, 64)]
    with pytest.raises(PayloadTooLarge, match="max_request_pixels"):
        open_images([small, small, small], limits, max_request_pixels=2 * 64 * 64)
    # A bomb after images that already spend the budget: still named by its own limit.
    with pytest.raises(PayloadTooLarge, match=r"image 2 .*max_image_pixels"):
        open_images([small, small, png_header_claiming(20000, 20000)], limits, max_request_pixels=64 * 64)


def test_each_image_header_is_parsed_once_per_request(
    plain_gateway: tuple[str, StaticApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = plain_gateway
    opened: list[object] = []
    real_open = Image.open

    def counting_open(*args: Any, **kwargs: Any) -> Image.Image:
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    response = post(f"{url}/predict", files=[("image", png_bytes(seed=1)), ("image", png_bytes(seed=2))])
    assert response.status_code == 200, response.text
    assert len(opened) == 2  # one Image.open per image: the budget reuses the opened images


# --- 7: max_connections counts the request's own connection -------------------------------------


def test_max_connections_must_leave_room_for_the_request_itself() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        load_settings(max_connections=1)
    assert load_settings(max_connections=2).max_connections == 2


# --- 8: a body still arriving when the drain runs out -------------------------------------------


@pytest.mark.slow
def test_a_body_still_arriving_when_the_drain_runs_out_gets_a_503_json() -> None:
    recorder = StaticApp(200, b"{}")
    with (
        serve_asgi(recorder) as upstream_url,
        serving_gateway_server(gateway_settings(None, upstream_url, drain_timeout_s=1.0, body_read_timeout_s=60.0)) as (
            server,
            url,
        ),
    ):
        host, port = httpx.URL(url).host, httpx.URL(url).port
        assert port is not None
        with socket.create_connection((host, port), timeout=10) as client:
            client.sendall(
                b"POST /predict HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\nX-Request-ID: trickle-1\r\n\r\n" + b'{"images": ['
            )
            wait_until(
                lambda: metric_value(get(f"{url}/metrics").text, "zipgate_inflight_requests") >= 1,
                what="the trickled request in flight (the scrape does not count itself)",
            )
            server.handle_exit(signal.SIGTERM, None)
            client.settimeout(0.1)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # a byte every 0.1 s, past the drain budget, until it answers
                try:
                    first = client.recv(1, socket.MSG_PEEK)
                except TimeoutError:
                    client.sendall(b" ")
                    continue
                assert first, "closed without an answer"
                break
            client.settimeout(10)
            answer = http.client.HTTPResponse(client)
            answer.begin()
            body = answer.read()
    assert answer.status == 503, (answer.status, body[:300])
    assert answer.headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "not_ready" and error["request_id"] == "trickle-1" == answer.headers["x-request-id"]
    assert int(answer.headers["retry-after"]) == DRAINING_RETRY_AFTER_S
    assert recorder.requests == []


# --- 9: the stage guard's disconnect watcher -----------------------------------------------------


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


# --- 11: credentials in UPSTREAM_URL never reach repr or a traceback -----------------------------


def test_settings_repr_hides_the_upstream_url() -> None:
    settings = load_settings(upstream_url=f"http://{CREDENTIALS}@vendor:9000")
    assert settings.upstream_url == f"http://{CREDENTIALS}@vendor:9000"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)


@pytest.mark.parametrize(
    "overrides",
    [
        {"request_timeout_s": 1000.0},  # a model-level error: pydantic's input_value is every input
        {"max_image_pixels": "many"},
        {"upstream_url": f"ftp://{CREDENTIALS}@vendor"},
        {"upstream_url": f"http://{CREDENTIALS}@vendor:port"},  # httpx.InvalidURL, not a ValueError
    ],
)
def test_a_config_error_carries_no_credentials(overrides: dict[str, Any]) -> None:
    values = {"upstream_url": f"http://{CREDENTIALS}@vendor:9000", **overrides}
    with pytest.raises(ConfigError) as info:
        load_settings(**values)
    printed = "".join(traceback.format_exception(info.value))
    assert "invalid zipgate settings" in printed
    assert "s3cret" not in printed, printed
    assert info.value.__cause__ is None and info.value.__context__ is None


# --- 12: the private httpx APIs the client relies on ----------------------------------------------


def test_the_private_httpx_apis_the_client_uses_are_still_there() -> None:
    """If this fails, httpx moved them: re-check service/upstream/client.py before raising its bound."""
    from httpx._decoders import SUPPORTED_DECODERS

    assert {"identity", "gzip", "deflate"} <= set(SUPPORTED_DECODERS)
    decoder = httpx.Response(200, headers={"content-encoding": "gzip"})._get_content_decoder()
    assert decoder.decode(gzip.compress(b"zipgate")) + decoder.flush() == b"zipgate"


async def test_the_decoding_generator_is_closed_when_the_answer_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []
    real_chunks = client_module._decoded_chunks

    async def recording_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in real_chunks(response):
                yield chunk
        finally:
            closed.append(True)

    monkeypatch.setattr(client_module, "_decoded_chunks", recording_chunks)
    body = gzip.compress(b"\0" * 200_000)
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-encoding": "gzip"})
    )
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(UpstreamResponseTooLarge):
            await client_module.send_with_retries(
                http,
                http.build_request("POST", "http://vendor/predict"),
                RetryPolicy(max_retries=0),
                max_response_bytes=10_000,
            )
        assert closed == [True]  # at once, not whenever the event loop finalizes the generator


# --- 13: OMP_WAIT_POLICY before torch loads ------------------------------------------------------


def test_the_cli_sets_a_passive_openmp_wait_unless_the_environment_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli._openmp_waits_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli._openmp_waits_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_zipgate_serve_sets_it_before_torch_loads_openmp() -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "OMP_WAIT_POLICY" and not name.startswith("ZIPGATE_")
    }
    # libgomp prints its settings when it loads (with torch); a bad setting then ends `serve` (exit 2).
    env.update(OMP_DISPLAY_ENV="VERBOSE", ZIPGATE_MAX_CONNECTIONS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", "from service.cli import app; app(['serve'])"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 2 and "max_connections" in result.stderr, result.stderr[-2000:]
    if "OPENMP DISPLAY ENVIRONMENT" not in result.stderr:
        pytest.skip("this torch's OpenMP runtime is not libgomp (it prints nothing to check)")
    # PASSIVE: no spinning at all (libgomp's default spins 300000 rounds; ACTIVE for ever).
    assert "GOMP_SPINCOUNT = '0'" in result.stderr, result.stderr[-2000:]


def test_the_image_sets_a_passive_openmp_wait() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "OMP_WAIT_POLICY=PASSIVE" in dockerfile


# --- 14: the pool's drain log counts from when the drain began -----------------------------------


def _pool(delay_s: float) -> WorkerPool:
    return WorkerPool(
        PoolConfig(devices=("cpu",), max_batch_size=1, max_wait_ms=0.0),
        lambda device: FakePurifier(delay_s=delay_s),
        GatewayMetrics(),
    )


async def test_the_drain_log_gives_the_time_since_the_drain_began(caplog: pytest.LogCaptureFixture) -> None:
    pool = _pool(delay_s=1.0)
    await pool.start()
    submitted = asyncio.create_task(pool.submit(torch.zeros(1, 1, 16, 16), request_id="r"))
    await asyncio.sleep(0.1)  # the batch is computing
    with caplog.at_level(logging.INFO, logger="service.workers.pool"):
        await pool.drain(timeout_s=0.0, began=time.monotonic() - 2.0)  # the budget was spent before the call
    with pytest.raises(NotReady) as info:
        await submitted
    await pool.close()
    timed_out = [record for record in caplog.records if "timed out" in record.getMessage()]
    assert len(timed_out) == 1, [record.getMessage() for record in caplog.records]
    assert timed_out[0].drain_s >= 2.0, timed_out[0].getMessage()  # not "after 0.00 s"
    assert info.value.retry_after_s == DRAINING_RETRY_AFTER_S


# --- 15: Retry-After by cause -------------------------------------------------------------------


def test_not_ready_sends_retry_after_only_where_waiting_helps() -> None:
    assert NotReady("loading", retry_after_s=LOADING_RETRY_AFTER_S).headers == {"Retry-After": "5"}
    assert NotReady("stopped", retry_after_s=None).headers == {}


async def test_a_pool_not_started_yet_says_come_back_after_loading() -> None:
    with pytest.raises(NotReady) as info:
        await _pool(delay_s=0.0).submit(torch.zeros(1, 1, 16, 16), request_id="r")
    assert info.value.retry_after_s == LOADING_RETRY_AFTER_S


def test_http_503s_carry_retry_after_by_cause() -> None:
    loaded = threading.Event()

    def slow_to_load(device: str) -> FakePurifier:
        assert loaded.wait(60)
        return FakePurifier()

    def broken(device: str) -> FakePurifier:
        raise RuntimeError("no such model")

    with serve_asgi(StaticApp(200, b'{"label": 1}')) as upstream_url:
        settings = gateway_settings(Path("unused"), upstream_url)
        with serve_asgi(create_app(settings, purifier_factory=slow_to_load)) as url:
            try:
                loading = post(f"{url}/predict", files=[("image", png_bytes())])
            finally:
                loaded.set()
            assert loading.status_code == 503 and loading.headers["retry-after"] == "5", loading.text
        with serve_asgi(create_app(settings, purifier_factory=broken)) as url:
            wait_until(lambda: get(f"{url}/readyz").json()["status"] == "failed", what="start-up failed")
            failed = post(f"{url}/predict", files=[("image", png_bytes())])
            assert failed.status_code == 503 and "retry-after" not in failed.headers, failed.headers
        app = create_app(settings, purifier_factory=lambda device: FakePurifier())
        with serve_asgi(app, ready_path="/readyz", startup_timeout_s=60) as url:
            app.state.lifecycle.begin_drain()
            draining = post(f"{url}/predict", files=[("image", png_bytes())])
            assert draining.status_code == 503 and draining.headers["retry-after"] == "1", draining.text


# --- 17: the request-pixel default follows a raised image limit ----------------------------------


def test_the_request_pixel_budget_follows_a_raised_image_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().max_request_pixels == DEFAULT_MAX_REQUEST_PIXELS == 4096 * 4096
    assert load_settings(max_image_pixels=1000).max_request_pixels == DEFAULT_MAX_REQUEST_PIXELS
    monkeypatch.setenv("ZIPGATE_MAX_IMAGE_PIXELS", str(5000 * 5000))  # a deployment that raised only this
    assert load_settings().max_request_pixels == 5000 * 5000
    assert load_settings(max_request_pixels=6000 * 6000).max_request_pixels == 6000 * 6000
    with pytest.raises(ConfigError, match="max_image_pixels"):
        load_settings(max_request_pixels=4096 * 4096)  # set explicitly below the image limit: still refused


# --- 18: the gateway key in Proxy-Authorization; URL credentials as Basic auth --------------------


def test_proxy_authorization_holding_the_gateway_key_is_stripped() -> None:
    key = SecretStr("gateway-key-123")
    assert "Proxy-Authorization" not in headers_for_vendor({"Proxy-Authorization": "Basic gateway-key-123"}, key)
    kept = headers_for_vendor({"Proxy-Authorization": "Basic other"}, key)
    assert kept == {"Proxy-Authorization": "Basic other"}  # not the gateway's (the adapter drops it as hop-by-hop)


async def test_url_credentials_go_as_basic_auth_and_replace_the_clients_authorization() -> None:
    seen: list[httpx.Request] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(vendor)) as http:
        adapter = build_upstream(UpstreamProtocol.V2, http, f"http://{CREDENTIALS}@vendor:9000", "fmnist")
        await adapter.forward(
            "POST",
            "/v2/models/fmnist/infer",
            b"{}",
            {"Authorization": "Bearer vendor-token"},
            content_type="application/json",
        )
    expected = "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()
    assert seen[0].headers.get_list("authorization") == [expected]
    assert seen[0].url.userinfo == b""


# --- 19: 404 only where a model name is in the path ----------------------------------------------


def test_404_is_documented_only_on_the_sidecar_model_routes() -> None:
    paths = create_app(
        gateway_settings(Path("unused"), "http://127.0.0.1:9", upstream_raw_path="/invocations"),
        purifier_factory=lambda device: FakePurifier(),
    ).openapi()["paths"]
    posts = {path: operations["post"]["responses"] for path, operations in paths.items() if "post" in operations}
    assert set(posts) == {
        "/predict",
        "/purify",
        "/v1/models/{name}:predict",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/invocations",
    }
    for path, responses in posts.items():
        assert "408" in responses, path  # every route that reads a body
        assert ("404" in responses) == path.startswith(("/v1/models/", "/v2/models/")), path
