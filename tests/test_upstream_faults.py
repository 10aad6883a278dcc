"""One fault-injection test per way a vendor can fail (issue 15), each over real loopback sockets.

Every test checks three things a client and an operator depend on: the mapped error (status and
code), how many times the request went out (resent only when it could not connect), and that the
message names the failure, not the vendor's address. No assertion depends on elapsed time.
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

RID = "req-fault"
RETRIES = RetryPolicy(max_retries=2, backoff_s=0.0)  # resends allowed: the tests count that none happen
SECRET = "zg-secret-42"  # distinctive, so no unrelated log text can contain it
LIMIT = 1024 * 1024


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(timeout_connect_s=2.0, timeout_read_s=10.0) as shared:
        yield shared


def raw_adapter(client: httpx.AsyncClient, url: str, **kw: Any) -> Upstream:
    kw.setdefault("retry", RETRIES)
    kw.setdefault("total_timeout_s", 30.0)
    return build_upstream(UpstreamProtocol.RAW, client, url, "fmnist", **kw)


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


# --- the connection ----------------------------------------------------------------------------


async def test_refused_is_resent_then_a_502_that_says_connection_refused(client: httpx.AsyncClient) -> None:
    attempts: list[httpx.Request] = []

    async def count(request: httpx.Request) -> None:
        attempts.append(request)

    client.event_hooks["request"].append(count)
    with refused_port() as url:
        with pytest.raises(UpstreamError) as info:
            await raw_adapter(client, url).predict([b"img"], RID)
    # Refused: the request provably never reached the vendor, so it is the one failure resent.
    assert len(attempts) == 1 + RETRIES.max_retries
    assert type(info.value) is UpstreamError and info.value.status_code == 502
    assert info.value.message == "could not connect to the vendor: connection refused"
    assert_names_no_vendor(info.value)


async def test_reset_after_the_request_is_a_502_and_not_resent(client: httpx.AsyncClient) -> None:
    connections: list[int] = []

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await read_request(reader)
        reset_connection(writer)

    with serve_tcp(reset) as url:
        errors = await both_calls_fail(raw_adapter(client, url))
    assert len(connections) == 2  # one per call: the vendor may have run it, so never resent
    for error in errors:
        assert type(error) is UpstreamError and error.status_code == 502
        assert_names_no_vendor(error)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (b"", "it closed the connection before the answer was complete"),
        (b"garbage\r\n\r\n", "a malformed status line or headers"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
         "an unrequested protocol switch (101)"),
    ],
    ids=["closed-without-reply", "garbage-status-line", "switching-protocols-101"],
)
async def test_an_ambiguous_failure_is_a_502_and_never_resent(
    client: httpx.AsyncClient, reply: bytes, kind: str
) -> None:
    vendor = ScriptedTcp(reply)
    with serve_tcp(vendor) as url:
        errors = await both_calls_fail(raw_adapter(client, url))
    # The request arrived whole before the vendor misbehaved: a resend could run the POST twice.
    assert vendor.connections == 2
    for error in errors:
        assert type(error) is UpstreamError and isinstance(error.__cause__, httpx.RemoteProtocolError)
        assert error.message == f"the vendor sent no usable HTTP answer: {kind}"
        assert_names_no_vendor(error)


# --- the status --------------------------------------------------------------------------------


async def test_a_429_keeps_its_retry_after(client: httpx.AsyncClient) -> None:
    vendor = StaticApp(429, b'{"error": "slow down"}', headers=(("retry-after", "7"),))
    with serve_asgi(vendor) as url:
        upstream = raw_adapter(client, url)
        with pytest.raises(UpstreamRejected) as info:
            await upstream.predict([b"img"], RID)
        relayed = await upstream.forward("POST", "/predict", b"img", {})
    assert info.value.status_code == 429 and info.value.headers == {"Retry-After": "7"}
    assert info.value.message == "the vendor rejected the request with HTTP 429"
    assert relayed.status_code == 429 and ("retry-after", "7") in relayed.headers
    assert len(vendor.requests) == 2


async def test_a_5xx_is_a_502_with_its_status_and_not_resent(client: httpx.AsyncClient) -> None:
    vendor = StaticApp(503, b"down for maintenance", "text/plain")
    with serve_asgi(vendor) as url:
        with pytest.raises(UpstreamError) as info:
            await raw_adapter(client, url).predict([b"img"], RID)
    assert type(info.value) is UpstreamError and info.value.upstream_status == 503
    assert info.value.message == "the vendor answered HTTP 503"
    assert len(vendor.requests) == 1


# --- time ---------------------------------------------------------------------------------------


async def test_the_calls_own_budget_cuts_a_slow_vendor(client: httpx.AsyncClient) -> None:
    vendor = StaticApp(200, b'{"label": 1}', delay_s=30.0)
    with serve_asgi(vendor) as url:
        upstream = raw_adapter(client, url)  # adapter bound 30 s, read timeout 10 s: neither fires
        with pytest.raises(UpstreamTimeout) as predicted:
            await upstream.predict([b"img"], RID, timeout_s=0.3)
        with pytest.raises(UpstreamTimeout) as forwarded:
            await upstream.forward("POST", "/predict", b"img", {}, timeout_s=0.3)
    for error in (predicted.value, forwarded.value):
        assert error.status_code == 504
        assert error.message == "the vendor timed out: no complete answer within 0.3 s"
    assert len(vendor.requests) == 2  # one each: a timed-out request is never resent


async def test_the_calls_own_budget_cuts_a_trickling_body(client: httpx.AsyncClient) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(http_response_head(200, 600))
        for _ in range(600):  # a byte per 50 ms: 30 s in all, each read well inside the read timeout
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    with serve_tcp(trickle) as url:
        with pytest.raises(UpstreamTimeout, match="within 0.3 s"):
            await raw_adapter(client, url).predict([b"img"], RID, timeout_s=0.3)


# --- the body -----------------------------------------------------------------------------------


async def test_a_huge_body_is_cut_off_while_it_streams(client: httpx.AsyncClient) -> None:
    vendor = EndlessBody(limit_bytes=64 * LIMIT)
    with serve_tcp(vendor) as url:
        errors = await both_calls_fail(raw_adapter(client, url, max_response_bytes=LIMIT))
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
        errors = await both_calls_fail(raw_adapter(client, url, max_response_bytes=LIMIT))
    for error in errors:
        assert type(error) is UpstreamResponseTooLarge and error.code == "upstream_response_too_large"


async def test_a_gzip_answer_within_the_limit_is_decoded_whole(client: httpx.AsyncClient) -> None:
    answer = json.dumps({"label": 5, "padding": "x" * (LIMIT // 2)}).encode()
    wire = gzip.compress(answer)
    reply = http_response_head(200, len(wire), headers=(("content-encoding", "gzip"),)) + wire
    with serve_tcp(ScriptedTcp(reply)) as url:
        upstream = raw_adapter(client, url, max_response_bytes=LIMIT)
        result = await upstream.predict([b"img"], RID)
        relayed = await upstream.forward("POST", "/predict", b"img", {})
    assert result.predictions == [json.loads(answer)] and relayed.body == answer


async def test_a_brotli_answer_is_never_asked_for_nor_relayed_still_encoded(client: httpx.AsyncClient) -> None:
    if "br" in decodable_encodings():
        pytest.skip("brotli is installed here, so br is decodable and offered")
    vendor = ScriptedTcp(http_response_head(200, 4, headers=(("content-encoding", "br"),)) + b"\x8b\x03\x80{}")
    with serve_tcp(vendor) as url:
        upstream = raw_adapter(client, url)
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
