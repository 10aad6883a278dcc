"""A request body with a content coding (`Content-Encoding: gzip`, ...) is a 415 that says to send it
uncompressed, on every route and before any is read, instead of a 400 for an image that does not decode.
`identity` is no coding, and a request without a body is not refused for the header."""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import error_details, gateway_settings, get, png_bytes, post, running_gateway
from tests.raw_http import address, request_head, v2_body

V2_INFER = "/v2/models/fmnist/infer"


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, StaticApp]]:
    """A gateway without purification (fast) in front of a recording vendor."""
    recorder = StaticApp(200, b'{"ok": true}')
    with serve_asgi(recorder) as upstream_url, running_gateway(gateway_settings(None, upstream_url)) as url:
        yield url, recorder


def _assert_refused(answer: httpx.Response, path: str, coding: str) -> None:
    assert answer.status_code == 415, answer.text
    assert answer.headers["accept-encoding"] == "identity"
    error = error_details(answer.json(), path)
    assert error["code"] == "unsupported_media_type"
    assert error["message"].startswith(f"Content-Encoding {coding}: the gateway does not accept compressed")
    assert "uncompressed" in error["message"]


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip", "identity, gzip"])
def test_a_coded_body_is_415_and_reaches_no_vendor(gateway: tuple[str, StaticApp], coding: str) -> None:
    url, recorder = gateway
    recorder.requests.clear()
    answer = post(
        f"{url}{V2_INFER}",
        content=gzip.compress(v2_body(png_bytes())),
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    )
    _assert_refused(answer, V2_INFER, coding.removeprefix("identity, "))
    assert recorder.requests == []


def test_a_coded_image_on_predict_is_415_not_an_undecodable_image(gateway: tuple[str, StaticApp]) -> None:
    url, _ = gateway
    files = {"image": ("x.png", png_bytes(), "image/png")}
    body = httpx.Request("POST", url, files=files)
    answer = post(
        f"{url}/predict",
        content=gzip.compress(body.read()),
        headers={"Content-Type": body.headers["content-type"], "Content-Encoding": "gzip"},
    )
    _assert_refused(answer, "/predict", "gzip")


def test_a_chunked_coded_body_is_415(gateway: tuple[str, StaticApp]) -> None:
    url, _ = gateway
    compressed = gzip.compress(v2_body(png_bytes()))
    answer = post(
        f"{url}{V2_INFER}",
        content=iter([compressed[:10], compressed[10:]]),  # no Content-Length: chunked
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    _assert_refused(answer, V2_INFER, "gzip")


def test_identity_is_no_coding(gateway: tuple[str, StaticApp]) -> None:
    url, recorder = gateway
    recorder.requests.clear()
    answer = post(
        f"{url}{V2_INFER}",
        content=v2_body(png_bytes()),
        headers={"Content-Type": "application/json", "Content-Encoding": "identity"},
    )
    assert answer.status_code == 200, answer.text
    assert [request.method for request in recorder.requests][-1] == "POST"


def test_a_request_without_a_body_is_not_refused_for_the_header(gateway: tuple[str, StaticApp]) -> None:
    url, _ = gateway
    assert get(f"{url}/healthz", headers={"Content-Encoding": "gzip"}).status_code == 200


def test_a_chunked_coded_body_waiting_for_100_continue_gets_its_415_without_sending_it(
    gateway: tuple[str, StaticApp],
) -> None:
    url, _ = gateway
    extra = "Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\nExpect: 100-continue\r\n"
    with socket.create_connection(address(url), timeout=30) as sock:
        sock.sendall(request_head("POST", V2_INFER, extra=extra))  # the head only: the body waits for a 100
        sock.settimeout(30)
        received = b""
        while chunk := sock.recv(65536):  # the 415 closes the connection
            received += chunk
    assert received.startswith(b"HTTP/1.1 415"), received[:300]
    assert b"100 Continue" not in received, "a 100 Continue would invite the body the gateway refuses"
