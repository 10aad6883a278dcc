"""Every error answered before the request body ended (a 401 from the API key check, a 404 for no route, not
only a 413) drains the rest of the body first, then closes the connection unless the drain reached its end.

Left to uvicorn, the unread rest is discarded with no deadline (a client trickling bytes holds the connection
for ever), or the connection closes with data unread and the reset can lose the answer. The real gateway
(without purification, behind an API key) over real sockets."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import gateway_settings, running_gateway
from tests.raw_http import address, chunked_framing, post_head, request_head, trickle_until_closed, until_closed

API_KEY = "early-error-key"
# Larger than what the loopback socket buffers hold at once, far under the drain budget: closing before the
# whole body is read would reset the connection while the client still sends, and it could lose its answer.
BIG_BODY_BYTES = 2 << 20
# Refused before the body is read: the key is checked before the handler reads it, and no route reads one.
EARLY_ERRORS = {"401": (401, "/predict", "unauthorized"), "404": (404, "/no/such/route", "not_found")}


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve_asgi(StaticApp(200, b"{}")) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(upstream_url: str) -> Iterator[str]:
    with running_gateway(gateway_settings(None, upstream_url, api_key=API_KEY)) as url:
        yield url


def _error(received: bytes, status: int, code: str) -> bytes:
    """The response head, after checking the status and the JSON error's code."""
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), received[:300]
    error = httpx.Response(status, content=body, headers={"content-type": "application/json"}).json()["error"]
    assert error["code"] == code, error
    return head.lower()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
@pytest.mark.parametrize("which", list(EARLY_ERRORS))
def test_an_early_error_at_full_speed_reliably_reaches_the_client(gateway: str, which: str, chunked: bool) -> None:
    status, path, code = EARLY_ERRORS[which]
    body = b"x" * BIG_BODY_BYTES
    # The client asks for the close: uvicorn closes after the answer, with the rest of the body unread unless
    # the gateway drained it first (the reset would then lose the answer now and then).
    close = "Connection: close\r\n"
    if chunked:
        request = post_head(path, length=None, extra=close) + chunked_framing(body)
    else:
        request = post_head(path, length=len(body), extra=close) + body
    for attempt in range(20):  # a reset racing the answer would lose it now and then, not every time
        with socket.create_connection(address(gateway), timeout=30) as sock:
            sock.sendall(request)
            received = until_closed(sock)
        assert _error(received, status, code), attempt


def test_a_client_trickling_its_body_to_a_401_is_cut_off_at_the_body_deadline(upstream_url: str) -> None:
    """Before the drain, uvicorn read the rest after the 401 for ever: a byte every 0.5 s held the connection."""
    settings = gateway_settings(None, upstream_url, api_key=API_KEY, body_read_timeout_s=1.5)
    answers = []
    with running_gateway(settings) as url:
        # A byte of ours in flight at the close resets the connection and may lose the 401: rare, so a few tries.
        for _ in range(3):
            with socket.create_connection(address(url), timeout=30) as sock:
                sock.sendall(post_head("/predict", length=100_000) + b"x" * 100)
                closed, received = trickle_until_closed(sock, b"x")  # a minute: far past the 1.5 s deadline
            assert closed, f"the connection was still open a minute on; received {received[:300]!r}"
            if received:
                answers.append(_error(received, 401, "unauthorized"))
    assert answers, "every try was reset before its 401"
    assert all(b"\r\nconnection: close" in head for head in answers), answers


def test_a_401_for_a_body_waiting_for_100_continue_is_answered_without_inviting_it(gateway: str) -> None:
    with socket.create_connection(address(gateway), timeout=30) as sock:
        sock.sendall(post_head("/predict", length=BIG_BODY_BYTES, extra="Expect: 100-continue\r\n"))
        received = until_closed(sock)  # the head only, and the body is never sent: the close is clean
    assert b"100 Continue" not in received, "a 100 Continue would invite the body the gateway refuses"
    assert b"\r\nconnection: close" in _error(received, 401, "unauthorized")


def test_a_401_after_a_small_body_sent_whole_keeps_the_connection(gateway: str) -> None:
    with socket.create_connection(address(gateway), timeout=30) as sock:
        sock.sendall(post_head("/predict", length=100) + b"x" * 100)
        first = http.client.HTTPResponse(sock)
        first.begin()
        first.read()
        sock.sendall(request_head("GET", "/healthz"))  # the same connection: still open
        second = http.client.HTTPResponse(sock)
        second.begin()
        second.read()
    assert first.status == 401 and first.headers.get("connection") is None, dict(first.headers)
    assert second.status == 200
