"""The request middleware's body limits: `max_request_bytes` for every route, and a tighter `body_limit` a
route declares (as `POST /targets/alerts` does), each checked on the declared Content-Length and on the
streamed bytes. A small app behind `GatewayMiddleware`, over a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute

from service.api.errors import install_error_handlers
from service.api.lifecycle import Lifecycle
from service.api.middleware import BodyLimit, GatewayMiddleware
from service.api.routes_alerts import ALERTS_PATH, MAX_ALERTS_BODY_BYTES
from service.loopback import serve_asgi
from service.metrics import GatewayMetrics
from tests.gateway_servers import gateway_settings, running_gateway

GATEWAY_LIMIT = 1000
TIGHT = BodyLimit(100, "the limit of /tight", "send less")
LOOSE = BodyLimit(5000, "the limit of /loose", "never quoted: the gateway's limit is tighter")


class _TightRoute(APIRoute):
    body_limit = TIGHT


class _LooseRoute(APIRoute):
    body_limit = LOOSE


async def _body_size(request: Request) -> dict[str, int]:
    return {"size": len(await request.body())}


def _app(max_request_bytes: int = GATEWAY_LIMIT) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter()  # included like the gateway's routers: the route class must survive it
    router.add_api_route("/tight", _body_size, methods=["POST"], route_class_override=_TightRoute)
    router.add_api_route("/loose", _body_size, methods=["POST"], route_class_override=_LooseRoute)
    router.add_api_route("/plain", _body_size, methods=["POST"])
    app.include_router(router)
    app.add_middleware(
        GatewayMiddleware,
        metrics=GatewayMetrics(),
        lifecycle=Lifecycle(),
        max_request_bytes=max_request_bytes,
        body_read_timeout_s=30.0,
    )
    return app


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_asgi(_app()) as base_url:
        yield base_url


def _post(url: str, path: str, body: bytes, *, chunked: bool = False) -> httpx.Response:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold on the stream
        yield body[: len(body) // 2]
        yield body[len(body) // 2 :]

    return httpx.post(f"{url}{path}", content=chunks() if chunked else body, timeout=10.0)


def _too_large(answer: httpx.Response) -> str:
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large" and error["request_id"] == answer.headers["x-request-id"]
    return str(error["message"])


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_a_route_that_declares_a_tighter_limit_gets_it(url: str, chunked: bool) -> None:
    at_limit = _post(url, "/tight", b"x" * TIGHT.max_bytes, chunked=chunked)
    message = _too_large(_post(url, "/tight", b"x" * (TIGHT.max_bytes + 1), chunked=chunked))
    plain = _post(url, "/plain", b"x" * (TIGHT.max_bytes + 1), chunked=chunked)  # the other routes keep theirs
    assert at_limit.status_code == 200 and at_limit.json() == {"size": TIGHT.max_bytes}
    assert f"{TIGHT.max_bytes} bytes (the limit of /tight): send less" in message
    assert plain.status_code == 200 and plain.json() == {"size": TIGHT.max_bytes + 1}


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_the_gateways_limit_holds_where_it_is_the_tighter(url: str, chunked: bool) -> None:
    over = b"x" * (GATEWAY_LIMIT + 1)
    for path in ("/loose", "/plain"):
        message = _too_large(_post(url, path, over, chunked=chunked))
        assert f"{GATEWAY_LIMIT} bytes (max_request_bytes)" in message, path


def test_a_long_stream_over_a_routes_limit_still_gets_its_413() -> None:
    # The answer goes out while most of the body (more than the socket buffers hold) is still on its way.
    def chunks() -> Iterator[bytes]:
        for _ in range(12):
            yield b"x" * 100_000

    with serve_asgi(_app(max_request_bytes=10_000_000)) as base_url:
        answer = httpx.post(f"{base_url}/tight", content=chunks(), timeout=30.0)
    assert "(the limit of /tight)" in _too_large(answer)


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_the_alertmanager_webhook_declares_its_limit_to_the_middleware(chunked: bool) -> None:
    over = b'{"alerts": [], "pad": "' + b"x" * MAX_ALERTS_BODY_BYTES + b'"}'
    settings = gateway_settings(None, "http://127.0.0.1:9")  # MAX_REQUEST_BYTES far above the webhook's limit
    assert settings.max_request_bytes > len(over)
    with running_gateway(settings) as gateway_url:
        message = _too_large(_post(gateway_url, ALERTS_PATH, over, chunked=chunked))
    assert f"{MAX_ALERTS_BODY_BYTES} bytes (the limit of {ALERTS_PATH}): set the receiver's max_alerts" in message
