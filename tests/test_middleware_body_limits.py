"""The request middleware's body limits: `max_request_bytes` for every route, and a tighter `body_limit` a
route declares (as `POST /targets/alerts` does), each checked on the declared Content-Length and on the
streamed bytes. A small app behind `GatewayMiddleware`, over a real socket.

Before a 413 the rest of the body is drained, then the connection closes: a client sending at full speed
still reads its 413 (the close is clean), and one that keeps trickling after it is cut off at the body's
deadline instead of holding the connection for ever."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute

from service.api.errors import install_error_handlers
from service.api.lifecycle import Lifecycle
from service.api.middleware import DRAIN_FLOOR_BYTES, BodyLimit, GatewayMiddleware, _RequestBody
from service.api.routes_alerts import ALERTS_PATH, MAX_ALERTS_BODY_BYTES
from service.errors import PayloadTooLarge
from service.loopback import serve_asgi
from service.metrics import GatewayMetrics
from tests.gateway_servers import gateway_settings, running_gateway, wait_until
from tests.raw_http import address, chunked_framing, post_head, trickle_until_closed, until_closed

GATEWAY_LIMIT = 1000
TIGHT = BodyLimit(100, "the limit of /tight", "send less")
LOOSE = BodyLimit(5000, "the limit of /loose", "never quoted: the gateway's limit is tighter")


class _TightRoute(APIRoute):
    body_limit = TIGHT


class _LooseRoute(APIRoute):
    body_limit = LOOSE


async def _body_size(request: Request) -> dict[str, int]:
    return {"size": len(await request.body())}


def _app(
    max_request_bytes: int = GATEWAY_LIMIT, *, body_read_timeout_s: float = 30.0, metrics: GatewayMetrics | None = None
) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter()  # included like the gateway's routers: the route class must survive it
    router.add_api_route("/tight", _body_size, methods=["POST"], route_class_override=_TightRoute)
    router.add_api_route("/loose", _body_size, methods=["POST"], route_class_override=_LooseRoute)
    router.add_api_route("/plain", _body_size, methods=["POST"])
    app.include_router(router)
    app.add_middleware(
        GatewayMiddleware,
        metrics=metrics or GatewayMetrics(),
        lifecycle=Lifecycle(),
        max_request_bytes=max_request_bytes,
        body_read_timeout_s=body_read_timeout_s,
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


# Larger than what the loopback socket buffers hold at once, under the drain budget: closing before the
# whole body is read would reset the connection while the client still sends, and it could lose its 413.
BIG_BODY_BYTES = 2 << 20
# Where each case is refused: the gateway's limit before any route, or a route's own at its first read.
PATHS = {"gateway": "/plain", "route": "/tight"}


def _closing_413(received: bytes) -> str:
    """The 413's message, after checking it closes the connection and has the JSON error shape."""
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), received[:300]
    assert b"\r\nconnection: close" in head.lower(), head
    error = httpx.Response(413, content=body, headers={"content-type": "application/json"}).json()["error"]
    assert error["code"] == "payload_too_large", error
    return str(error["message"])


@pytest.mark.parametrize("where", list(PATHS))
@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_a_body_over_the_limit_at_full_speed_reliably_gets_its_413_then_the_close(chunked: bool, where: str) -> None:
    body, path = b"x" * BIG_BODY_BYTES, PATHS[where]
    request = (
        post_head(path, length=None) + chunked_framing(body) if chunked else post_head(path, length=len(body)) + body
    )
    # For the route's limit to be the one broken, the gateway's is above the body.
    gateway_limit = GATEWAY_LIMIT if where == "gateway" else 2 * BIG_BODY_BYTES
    expected = "(the limit of /tight)" if where == "route" else f"{GATEWAY_LIMIT} bytes (max_request_bytes)"
    with serve_asgi(_app(max_request_bytes=gateway_limit)) as base_url:
        for attempt in range(20):  # a reset racing the answer would lose it now and then, not every time
            with socket.create_connection(address(base_url), timeout=30) as sock:
                sock.sendall(request)
                message = _closing_413(until_closed(sock))
            assert expected in message, (attempt, message)


@pytest.mark.parametrize("where", list(PATHS))
@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_a_client_trickling_after_its_body_went_over_the_limit_is_cut_off_at_the_deadline(
    chunked: bool, where: str
) -> None:
    """Before the drain, uvicorn discarded the rest for ever: a byte every 0.5 s held the connection open."""
    over = b"x" * (GATEWAY_LIMIT + 1)
    if chunked:
        request, byte = (
            post_head(PATHS[where], length=None) + chunked_framing(over)[: -len(b"0\r\n\r\n")],
            b"1\r\nx\r\n",
        )
    else:
        request, byte = post_head(PATHS[where], length=len(over) + 1000) + over, b"x"
    with (
        serve_asgi(_app(body_read_timeout_s=2.0)) as base_url,
        socket.create_connection(address(base_url), timeout=30) as sock,
    ):
        sock.sendall(request)
        closed, received = trickle_until_closed(sock, byte)  # a minute: far past the 2 s deadline
    assert closed, f"the connection was still open a minute on; received {received[:300]!r}"
    if received:  # a byte of ours in flight at the close resets it, and the 413 may be lost: fine here
        _closing_413(received)


def test_a_body_declared_past_the_drain_budget_is_refused_without_reading_it(url: str) -> None:
    with socket.create_connection(address(url), timeout=30) as sock:
        sock.sendall(post_head("/plain", length=10**12))  # nothing sent after the head: the close is clean
        assert "of 1000000000000 bytes" in _closing_413(until_closed(sock))


def test_a_body_waiting_for_100_continue_gets_its_413_instead() -> None:
    with serve_asgi(_app()) as base_url:
        for path in PATHS.values():
            with socket.create_connection(address(base_url), timeout=30) as sock:
                sock.sendall(post_head(path, length=GATEWAY_LIMIT + 1, extra="Expect: 100-continue\r\n"))
                _closing_413(until_closed(sock))  # no 100 Continue first: that would invite the body


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_an_upload_past_the_drain_budget_at_full_speed_is_cut_off(url: str, chunked: bool) -> None:
    piece = b"x" * (1 << 20)
    sent = 0
    with socket.create_connection(address(url), timeout=30) as sock:
        if chunked:
            sock.sendall(post_head("/tight", length=None))
            piece = chunked_framing(piece)[: -len(b"0\r\n\r\n")]
        else:
            sock.sendall(post_head("/tight", length=100 * DRAIN_FLOOR_BYTES))  # over the budget: not drained at all
        with pytest.raises(OSError):  # a reset or broken pipe once the server has closed
            while sent < 20 * DRAIN_FLOOR_BYTES:
                sock.sendall(piece)
                sent += len(piece)


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_a_client_that_hangs_up_while_its_body_is_drained_is_counted_499(
    chunked: bool, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = GatewayMetrics()
    endpoint = "/tight" if chunked else "unmatched"  # the gateway's declared limit is checked before routing

    def counted(status: str) -> float:
        labels = {"endpoint": endpoint, "status": status}
        return metrics.registry.get_sample_value("zipgate_requests_total", labels) or 0.0

    with caplog.at_level(logging.DEBUG, logger="zipgate.access"), serve_asgi(_app(metrics=metrics)) as base_url:
        with socket.create_connection(address(base_url), timeout=30) as sock:
            if chunked:
                sock.sendall(post_head("/tight", length=None) + chunked_framing(b"x" * (TIGHT.max_bytes + 1))[:-5])
            else:
                sock.sendall(post_head("/plain", length=GATEWAY_LIMIT + 1) + b"x")
            wait_until(
                lambda: any("draining a refused body" in r.getMessage() for r in caplog.records),
                timeout_s=30,
                what="the drain under way",
            )
        wait_until(lambda: counted("499") == 1, timeout_s=30, what="the request counted as 499")
    assert counted("413") == 0 and counted("500") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_the_drain_never_runs_once_a_response_has_started() -> None:
    messages = [{"type": "http.request", "body": b"x" * (GATEWAY_LIMIT + 1), "more_body": True}]

    async def receive() -> Any:
        return messages.pop(0)  # a second read (a drain) would fail: nothing left

    limit = BodyLimit(GATEWAY_LIMIT, "max_request_bytes", "send less")
    deadline = asyncio.get_running_loop().time() + 30
    guarded = _RequestBody(receive, {}, limit, None, deadline=deadline, timeout_s=30, response_started=lambda: True)
    with pytest.raises(PayloadTooLarge):
        await guarded()
