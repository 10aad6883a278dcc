"""One fault-injection test per way a vendor can fail, each over real loopback sockets,
plus a healthy vendor as the control.

Every test checks three things a client and an operator depend on: the mapped error (status and
code), how many times the request went out (resent only when it could not connect), and that the
message names the failure, not the vendor's address. No assertion depends on elapsed time: every
time bound is generous for the work before it, and the vendor is many times slower than the bound.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.errors import UpstreamError, UpstreamRejected, UpstreamResponseTooLarge, UpstreamTimeout
from service.upstream import RetryPolicy, Upstream, UpstreamProtocol, build_upstream, make_http_client
from service.upstream.client import decodable_encodings
from tests.fault_servers import (
    EndlessBody,
    ScriptedTcp,
    StaticApp,
    http_response_head,
    read_request,
    refused_port,
    request_header,
    reset_connection,
    serve_asgi,
    serve_tcp,
)
from tests.gateway_servers import gateway_settings, png_bytes, post, running_gateway
from tests.mock_vendor import good_answer

RID = "req-fault"
RETRIES = RetryPolicy(max_retries=2, backoff_s=0.0)  # resends allowed: the tests count that none happen
SECRET = "zg-secret-42"  # distinctive, so no unrelated log text can contain it
LIMIT = 1024 * 1024
BOUND_S = 2.0  # a read timeout or a call's budget: ample for a loopback request on a loaded machine
SLOW_S = 30 * BOUND_S  # a vendor this slow never answers within the bound (it stops when the client hangs up)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(timeout_connect_s=2.0, timeout_read_s=10.0) as shared:
        yield shared


def vendor_adapter(
    client: httpx.AsyncClient, url: str, protocol: UpstreamProtocol = UpstreamProtocol.RAW, **kw: Any
) -> Upstream:
    kw.setdefault("retry", RETRIES)
    kw.setdefault("total_timeout_s", 30.0)
    return build_upstream(protocol, client, url, "fmnist", **kw)


def attempts_of(client: httpx.AsyncClient) -> list[httpx.Request]:
    """Every request `client` sends from now on (each resend is one more)."""
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    client.event_hooks["request"].append(record)
    return sent


def assert_names_no_vendor(error: UpstreamError) -> None:
    assert "127.0.0.1" not in error.message and "http://" not in error.message, error.message
    assert "the vendor" in error.message or "the vendor's" in error.message, error.message


async def both_calls_fail(upstream: Upstream) -> list[UpstreamError]:
    """`predict` and the sidecar `forward`, each expected to raise; their errors."""
    errors: list[UpstreamError] = []
    for call in (upstream.predict([b"img"], RID), upstream.forward("POST", "/predict", b"img", {})):
        with pytest.raises(UpstreamError) as info:
            await call
        errors.append(info.value)
    return errors


# --- the control: a healthy vendor ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
async def test_a_healthy_vendor_gets_the_request_as_encoded(
    client: httpx.AsyncClient, protocol: UpstreamProtocol
) -> None:
    vendor = StaticApp(200, json.dumps(good_answer(protocol)).encode())
    with serve_asgi(vendor) as url:
        upstream = vendor_adapter(client, url, protocol)
        result = await upstream.predict([b"\x89PNG"], RID)
    (received,) = vendor.requests
    assert received.path == upstream.predict_path and received.headers["x-request-id"] == RID
    assert len(result.predictions) == 1 and result.status_code == 200


# --- the connection ----------------------------------------------------------------------------


async def test_refused_is_resent_then_a_502_that_says_connection_refused(client: httpx.AsyncClient) -> None:
    attempts = attempts_of(client)
    with refused_port() as url, pytest.raises(UpstreamError) as info:
        await vendor_adapter(client, url).predict([b"img"], RID)
    # Refused: the request provably never reached the vendor, so it is the one failure resent.
    assert len(attempts) == 1 + RETRIES.max_retries
    assert type(info.value) is UpstreamError and info.value.status_code == 502
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.message == "could not connect to the vendor: connection refused"
    assert_names_no_vendor(info.value)


async def test_reset_after_the_request_is_a_502_and_not_resent(client: httpx.AsyncClient) -> None:
    connections: list[int] = []

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await read_request(reader)
        reset_connection(writer)

    with serve_tcp(reset) as url:
        errors = await both_calls_fail(vendor_adapter(client, url))
    assert len(connections) == 2  # one per call: the vendor may have run it, so never resent
    for error in errors:
        assert type(error) is UpstreamError and error.status_code == 502
        assert isinstance(error.__cause__, (httpx.ReadError, httpx.RemoteProtocolError))
        assert_names_no_vendor(error)


async def test_a_body_cut_short_is_a_502_and_not_resent(client: httpx.AsyncClient) -> None:
    vendor = ScriptedTcp(http_response_head(200, 100) + b'{"label":')  # 9 of the 100 bytes it promised
    with serve_tcp(vendor) as url:
        errors = await both_calls_fail(vendor_adapter(client, url))
    assert vendor.connections == 2
    for error in errors:
        assert type(error) is UpstreamError and error.status_code == 502
        assert_names_no_vendor(error)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (b"", "it closed the connection before the answer was complete"),
        (b"garbage\r\n\r\n", "a malformed status line or headers"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "an unrequested protocol switch (101)",
        ),
    ],
    ids=["closed-without-reply", "garbage-status-line", "switching-protocols-101"],
)
async def test_an_ambiguous_failure_is_a_502_and_never_resent(
    client: httpx.AsyncClient, reply: bytes, kind: str
) -> None:
    vendor = ScriptedTcp(reply)
    with serve_tcp(vendor) as url:
        errors = await both_calls_fail(vendor_adapter(client, url))
    # The request arrived whole before the vendor misbehaved: a resend could run the POST twice.
    assert vendor.connections == 2
    for error in errors:
        assert type(error) is UpstreamError and isinstance(error.__cause__, httpx.RemoteProtocolError)
        assert error.message == f"the vendor sent no usable HTTP answer: {kind}"
        assert_names_no_vendor(error)


# --- the status --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
async def test_a_4xx_is_relayed_with_its_body_and_retry_after(
    client: httpx.AsyncClient, protocol: UpstreamProtocol
) -> None:
    vendor = StaticApp(429, b'{"error": "slow down"}', headers=(("retry-after", "7"),))
    with serve_asgi(vendor) as url:
        upstream = vendor_adapter(client, url, protocol)
        with pytest.raises(UpstreamRejected) as info:
            await upstream.predict([b"img"], RID)
        relayed = await upstream.forward("POST", "/predict", b"img", {})
    assert info.value.status_code == info.value.upstream_status == 429
    assert info.value.headers == {"Retry-After": "7"}
    assert (info.value.body, info.value.content_type) == (b'{"error": "slow down"}', "application/json")
    assert info.value.message == "the vendor rejected the request with HTTP 429"
    assert (relayed.status_code, relayed.body) == (429, b'{"error": "slow down"}')
    assert relayed.content_type == "application/json" and ("retry-after", "7") in relayed.headers
    assert len(vendor.requests) == 2


async def test_a_5xx_is_a_502_with_its_status_and_not_resent(client: httpx.AsyncClient) -> None:
    vendor = StaticApp(503, b"down for maintenance", "text/plain")
    with serve_asgi(vendor) as url, pytest.raises(UpstreamError) as info:
        await vendor_adapter(client, url).predict([b"img"], RID)
    assert type(info.value) is UpstreamError and info.value.upstream_status == 503
    assert info.value.message == "the vendor answered HTTP 503"
    assert len(vendor.requests) == 1


@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
async def test_a_garbage_200_is_a_502(client: httpx.AsyncClient, protocol: UpstreamProtocol) -> None:
    vendor = StaticApp(200, b"\x00\xffnot json at all", content_type="text/html")
    with serve_asgi(vendor) as url, pytest.raises(UpstreamError) as info:
        await vendor_adapter(client, url, protocol).predict([b"img"], RID)
    assert type(info.value) is UpstreamError and info.value.upstream_status == 200
    assert_names_no_vendor(info.value)


# --- time ---------------------------------------------------------------------------------------


async def test_a_silent_vendor_is_a_504_after_the_read_timeout_and_not_resent() -> None:
    vendor = StaticApp(200, b"{}", delay_s=SLOW_S)
    with serve_asgi(vendor) as url:
        async with make_http_client(timeout_connect_s=2.0, timeout_read_s=BOUND_S) as client:
            attempts = attempts_of(client)
            with pytest.raises(UpstreamTimeout) as info:
                await vendor_adapter(client, url).predict([b"img"], RID)
    assert info.value.status_code == 504 and isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert info.value.message == f"the vendor sent no data: timed out after {BOUND_S:g} s"
    assert len(attempts) == 1 and len(vendor.requests) == 1  # it arrived: a read timeout, never resent


async def test_the_calls_own_budget_cuts_a_slow_vendor(client: httpx.AsyncClient) -> None:
    vendor = StaticApp(200, b'{"label": 1}', delay_s=SLOW_S)
    with serve_asgi(vendor) as url:
        upstream = vendor_adapter(client, url)  # adapter bound 30 s, read timeout 10 s: neither fires
        errors = await asyncio.gather(
            upstream.predict([b"img"], RID, timeout_s=BOUND_S),
            upstream.forward("POST", "/predict", b"img", {}, timeout_s=BOUND_S),
            return_exceptions=True,
        )
    for error in errors:
        assert type(error) is UpstreamTimeout and error.status_code == 504, error
        assert error.message == f"the vendor timed out: no complete answer within {BOUND_S:g} s"
    assert len(vendor.requests) == 2  # one each: a timed-out request is never resent


@pytest.mark.parametrize("bound", ["adapter", "call"])
async def test_a_trickling_body_is_cut_by_the_total_bound(client: httpx.AsyncClient, bound: str) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(http_response_head(200, 1200))
        for _ in range(1200):  # a byte per 50 ms: 60 s in all, each read well inside the 10 s read timeout
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    with serve_tcp(trickle) as url:
        if bound == "adapter":  # the adapter's own total_timeout_s
            call = vendor_adapter(client, url, total_timeout_s=BOUND_S).predict([b"img"], RID)
        else:  # the request's remaining budget, passed per call
            call = vendor_adapter(client, url).predict([b"img"], RID, timeout_s=BOUND_S)
        # "within 2 s" is the total bound's message: the 10 s read timeout never fired.
        with pytest.raises(UpstreamTimeout, match=f"within {BOUND_S:g} s"):
            await call


async def test_the_pool_limit_queues_requests_and_a_pool_timeout_is_a_504() -> None:
    vendor = StaticApp(200, b'{"label": 1}', delay_s=2.0)  # holds the only connection for 10 pool timeouts
    with serve_asgi(vendor) as url:
        async with make_http_client(max_connections=1, timeout_pool_s=0.2, timeout_read_s=30.0) as client:
            upstream = vendor_adapter(client, url)
            first, second = await asyncio.gather(
                upstream.predict([b"a"], RID), upstream.predict([b"b"], RID), return_exceptions=True
            )
    # One got the only connection; the other waited for it longer than the pool timeout.
    outcomes = sorted([first, second], key=lambda outcome: isinstance(outcome, Exception))
    assert outcomes[0].predictions == [{"label": 1}]
    assert type(outcomes[1]) is UpstreamTimeout and isinstance(outcomes[1].__cause__, httpx.PoolTimeout)
    assert len(vendor.requests) == 1


# --- the body -----------------------------------------------------------------------------------


async def test_a_huge_body_is_cut_off_while_it_streams(client: httpx.AsyncClient) -> None:
    vendor = EndlessBody(limit_bytes=64 * LIMIT)
    with serve_tcp(vendor) as url:
        errors = await both_calls_fail(vendor_adapter(client, url, max_response_bytes=LIMIT))
    for error in errors:
        assert type(error) is UpstreamResponseTooLarge and error.status_code == 502
        assert error.code == "upstream_response_too_large" and error.upstream_status == 200
        assert_names_no_vendor(error)
    assert vendor.sent_bytes < vendor.limit_bytes  # the gateway hung up instead of reading it all


async def test_a_gzip_bomb_is_cut_off_by_its_decoded_size(client: httpx.AsyncClient) -> None:
    bomb = gzip.compress(b"\0" * (8 * LIMIT))  # about 8 KB on the wire
    assert len(bomb) < LIMIT // 16
    reply = http_response_head(200, len(bomb), headers=(("content-encoding", "gzip"),)) + bomb
    with serve_tcp(ScriptedTcp(reply)) as url:
        errors = await both_calls_fail(vendor_adapter(client, url, max_response_bytes=LIMIT))
    for error in errors:
        assert type(error) is UpstreamResponseTooLarge and error.code == "upstream_response_too_large"


async def test_a_gzip_answer_within_the_limit_is_decoded_whole(client: httpx.AsyncClient) -> None:
    answer = json.dumps({"label": 5, "padding": "x" * (LIMIT // 2)}).encode()
    wire = gzip.compress(answer)
    reply = http_response_head(200, len(wire), headers=(("content-encoding", "gzip"),)) + wire
    with serve_tcp(ScriptedTcp(reply)) as url:
        upstream = vendor_adapter(client, url, max_response_bytes=LIMIT)
        result = await upstream.predict([b"img"], RID)
        relayed = await upstream.forward("POST", "/predict", b"img", {})
    assert result.predictions == [json.loads(answer)] and relayed.body == answer


async def test_a_brotli_answer_is_never_asked_for_nor_relayed_still_encoded(client: httpx.AsyncClient) -> None:
    if "br" in decodable_encodings():
        pytest.skip("brotli is installed here, so br is decodable and offered")
    vendor = ScriptedTcp(http_response_head(200, 4, headers=(("content-encoding", "br"),)) + b"\x8b\x03\x80{}")
    with serve_tcp(vendor) as url:
        upstream = vendor_adapter(client, url)
        with pytest.raises(UpstreamError) as predicted:
            await upstream.predict([b"img"], RID)
        # A sidecar client that accepts br must not make the vendor answer in it.
        with pytest.raises(UpstreamError) as forwarded:
            await upstream.forward("POST", "/predict", b"img", {"Accept-Encoding": "br"})
    for head in vendor.heads:
        offered = request_header(head, "accept-encoding") or ""
        assert "br" not in offered and offered == ", ".join(decodable_encodings())
    for error in (predicted.value, forwarded.value):
        assert type(error) is UpstreamError and "Content-Encoding br" in error.message
        assert_names_no_vendor(error)


# --- through the gateway: what a client and the logs see ----------------------------------------


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record's message and extra fields (the JSON log prints the extras too)."""
    return "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)


def test_gateway_502_and_logs_hide_the_vendors_credentials_and_host(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with refused_port() as closed:
        url = closed.replace("http://", f"http://zg-user:{SECRET}@")
        with running_gateway(gateway_settings(None, url, upstream_retries=1)) as gateway:
            response = post(f"{gateway}/predict", files=[("image", png_bytes())])
    assert response.status_code == 502, response.text
    assert response.json()["error"]["message"] == "could not connect to the vendor: connection refused"
    assert SECRET not in response.text and "zg-user" not in response.text and "127.0.0.1" not in response.text
    logs = all_log_text(caplog)
    assert "could not connect" in logs  # the failure was logged ...
    assert SECRET not in logs and "zg-user" not in logs  # ... without the credentials


def test_gateway_sends_url_credentials_as_basic_auth_and_logs_none(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    vendor = StaticApp(200, b'{"label": 3}')
    with serve_asgi(vendor) as vendor_url:
        url = vendor_url.replace("http://", f"http://zg-user:{SECRET}@")
        with running_gateway(gateway_settings(None, url)) as gateway:
            response = post(f"{gateway}/predict", files=[("image", png_bytes())])
    assert response.status_code == 200, response.text
    (received,) = vendor.requests
    assert received.headers["authorization"] == "Basic " + base64.b64encode(f"zg-user:{SECRET}".encode()).decode()
    assert SECRET not in all_log_text(caplog)  # httpx logs every request URL at INFO


def test_gateway_relays_the_vendors_retry_after() -> None:
    vendor = StaticApp(429, b'{"error": "slow down"}', headers=(("retry-after", "7"),))
    with serve_asgi(vendor) as vendor_url, running_gateway(gateway_settings(None, vendor_url)) as gateway:
        response = post(f"{gateway}/predict", files=[("image", png_bytes())])
    assert response.status_code == 429 and response.json()["error"]["code"] == "upstream_rejected"
    assert response.headers["retry-after"] == "7"
