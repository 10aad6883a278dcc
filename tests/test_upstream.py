"""Upstream adapters, units on httpx.MockTransport: wire encoding per protocol, the error table,
retries, construction and hardening (credentials, encodings, limits, budgets).

The sidecar side (relay, rewriting a vendor's own request) is in test_upstream_sidecar.py; the
same adapters against misbehaving vendors on real sockets in test_upstream_faults.py.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.errors import UpstreamError, UpstreamRejected, UpstreamResponseTooLarge, UpstreamTimeout
from service.upstream import (
    DEFAULT_MAX_RESPONSE_BYTES,
    RawCodec,
    RetryPolicy,
    TFServingCodec,
    UpstreamProtocol,
    V2Codec,
    build_upstream,
    make_http_client,
    redact_url,
)
from service.upstream import client as client_module
from service.upstream.client import decodable_encodings
from tests.mock_vendor import BASE, IMAGES, RID, Handler, adapter, b64, good_answer, mock_client

CREDENTIALS = "vendoruser:s3cret-pw"


@pytest.fixture
async def idle_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client for adapters that are built but send nothing (closed after the test)."""
    async with httpx.AsyncClient() as client:
        yield client


# --- request encoding and response decoding, one protocol at a time ---------------------------


async def test_raw_sends_one_request_per_image_and_keeps_image_order() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        # Later images answer first: the result must still be in image order.
        await asyncio.sleep(0.02 * (len(IMAGES) - IMAGES.index(request.content)))
        return httpx.Response(200, json={"size": len(request.content), "class_name": "x"})

    async with mock_client(handler) as client:
        result = await adapter(UpstreamProtocol.RAW, client, raw_path="/invocations").predict(IMAGES, RID)

    assert result.predictions == [{"size": len(image), "class_name": "x"} for image in IMAGES]
    assert result.status_code == 200 and result.latency_s > 0
    assert sorted(r.content for r in seen) == sorted(IMAGES)
    for request in seen:
        assert request.method == "POST" and request.url == f"{BASE}/invocations"
        assert request.headers["content-type"] == "image/png"
        assert request.headers["x-request-id"] == RID


async def test_raw_takes_any_json_as_the_prediction_and_passes_the_content_type() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "image/jpeg"
        return httpx.Response(200, json=[0.1, 0.9])

    async with mock_client(handler) as client:
        result = await adapter(UpstreamProtocol.RAW, client).predict([b"jpg"], RID, content_type="image/jpeg")
    assert result.predictions == [[0.1, 0.9]]


async def test_tfserving_encodes_instances_and_decodes_predictions() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"predictions": [{"label": 3}, {"label": 1}, {"label": 4}]})

    async with mock_client(handler) as client:
        result = await adapter(UpstreamProtocol.TFSERVING, client).predict(IMAGES, RID)

    (request,) = seen
    assert request.url == f"{BASE}/v1/models/fmnist:predict"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-request-id"] == RID
    assert json.loads(request.content) == {"instances": [{"b64": b64(image)} for image in IMAGES]}
    assert result.predictions == [{"label": 3}, {"label": 1}, {"label": 4}]


async def test_v2_encodes_a_bytes_tensor_and_splits_outputs_by_row() -> None:
    seen: list[httpx.Request] = []
    probabilities = [[i / 10 + j / 100 for j in range(10)] for i in range(3)]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "model_name": "fmnist",
                "id": RID,
                "outputs": [
                    # flat row-major data, as the spec allows ...
                    {
                        "name": "probabilities",
                        "shape": [3, 10],
                        "datatype": "FP32",
                        "data": [p for row in probabilities for p in row],
                    },
                    {"name": "label", "shape": [3], "datatype": "INT64", "data": [3, 1, 4]},
                    # ... and nested data, also allowed
                    {
                        "name": "grid",
                        "shape": [3, 2, 2],
                        "datatype": "INT32",
                        "data": [[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10], [11, 12]]],
                    },
                ],
            },
        )

    async with mock_client(handler) as client:
        result = await adapter(UpstreamProtocol.V2, client).predict(IMAGES, RID)

    (request,) = seen
    assert request.url == f"{BASE}/v2/models/fmnist/infer"
    assert request.headers["x-request-id"] == RID
    assert json.loads(request.content) == {
        "id": RID,
        "inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": [b64(i) for i in IMAGES]}],
    }
    assert result.predictions == [
        {
            "probabilities": probabilities[i],
            "label": [3, 1, 4][i],
            "grid": [[4 * i + 1, 4 * i + 2], [4 * i + 3, 4 * i + 4]],
        }
        for i in range(3)
    ]


def test_model_names_are_percent_encoded_in_the_path(idle_client: httpx.AsyncClient) -> None:
    assert adapter(UpstreamProtocol.TFSERVING, idle_client).predict_path == "/v1/models/fmnist:predict"
    v2 = build_upstream(UpstreamProtocol.V2, idle_client, BASE, "a/b c")
    assert v2.predict_path == "/v2/models/a%2Fb%20c/infer"


# --- the error table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "mapped"),
    [
        (httpx.ConnectError, UpstreamError),
        (httpx.ReadError, UpstreamError),
        (httpx.WriteError, UpstreamError),
        (httpx.RemoteProtocolError, UpstreamError),
        (httpx.ConnectTimeout, UpstreamTimeout),
        (httpx.ReadTimeout, UpstreamTimeout),
        (httpx.WriteTimeout, UpstreamTimeout),
        (httpx.PoolTimeout, UpstreamTimeout),
        (httpx.UnsupportedProtocol, UpstreamError),
    ],
)
@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
async def test_transport_errors_map_through_one_table(
    protocol: UpstreamProtocol, raised: type[httpx.TransportError], mapped: type[UpstreamError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised("boom", request=request)

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter(protocol, client).predict(IMAGES[:1], RID)
    assert type(info.value) is mapped
    assert info.value.status_code == (504 if mapped is UpstreamTimeout else 502)
    assert isinstance(info.value.__cause__, raised)
    assert info.value.upstream_status is None
    assert "vendor.test" not in info.value.message and "boom" not in info.value.message


@pytest.mark.parametrize("status", [400, 404, 413, 422, 429])
@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
async def test_a_4xx_is_rejected_with_the_vendors_status_body_and_type(protocol: UpstreamProtocol, status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=b"<bad image>", headers={"content-type": "text/plain"})

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamRejected) as info:
            await adapter(protocol, client).predict(IMAGES[:2], RID)
    assert info.value.status_code == info.value.upstream_status == status
    assert info.value.body == b"<bad image>" and info.value.content_type == "text/plain"
    assert info.value.headers == {}  # no Retry-After from the vendor, none made up


@pytest.mark.parametrize("status", [500, 502, 503, 302, 101])
async def test_a_5xx_or_unexpected_status_is_a_502_carrying_the_upstream_status(status: int) -> None:
    async with mock_client(lambda request: httpx.Response(status, json={"error": "x"})) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter(UpstreamProtocol.TFSERVING, client).predict(IMAGES, RID)
    assert type(info.value) is UpstreamError
    assert info.value.status_code == 502 and info.value.upstream_status == status


@pytest.mark.parametrize(
    ("protocol", "answer"),
    [
        (UpstreamProtocol.RAW, b"not json"),
        (UpstreamProtocol.TFSERVING, b"<html>"),
        (UpstreamProtocol.TFSERVING, {"predictions": [{"label": 1}]}),  # 1 prediction for 2 images
        (UpstreamProtocol.TFSERVING, {"outputs": [1, 2]}),
        (UpstreamProtocol.TFSERVING, {"error": "model not loaded"}),
        (UpstreamProtocol.TFSERVING, [1, 2]),
        (UpstreamProtocol.V2, {"outputs": []}),
        # 3 rows for 2 images
        (UpstreamProtocol.V2, {"outputs": [{"name": "l", "shape": [3], "data": [1, 2, 3]}]}),
        (UpstreamProtocol.V2, {"outputs": [{"name": "label", "shape": [2, 2], "data": [1, 2, 3]}]}),
        (UpstreamProtocol.V2, {"outputs": [{"name": "label", "shape": [2], "data": "12"}]}),
        (UpstreamProtocol.V2, {"outputs": [{"name": "p", "shape": ["2"], "data": [1, 2]}]}),
        (UpstreamProtocol.V2, {"outputs": [{"shape": [2], "data": [1, 2]}]}),
        (UpstreamProtocol.V2, {"outputs": [{"name": "a", "shape": [2], "data": [1, 2]}] * 2}),
        (UpstreamProtocol.V2, {"predictions": [1, 2]}),
        (UpstreamProtocol.V2, {"outputs": [{"name": "a", "shape": [2, 1000, 0], "data": []}]}),
        (UpstreamProtocol.V2, b"[" * 100_000),  # nesting past the recursion limit
        (UpstreamProtocol.RAW, b"7" * 5000),  # an integer past Python's conversion limit
    ],
)
async def test_a_2xx_that_cannot_be_read_is_a_502(protocol: UpstreamProtocol, answer: Any) -> None:
    content = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    async with mock_client(lambda request: httpx.Response(200, content=content)) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter(protocol, client).predict(IMAGES[:2], RID)
    assert type(info.value) is UpstreamError
    assert info.value.status_code == 502 and info.value.upstream_status == 200


# --- retries: connection errors only -----------------------------------------------------------


def failing_then_ok(failures: int, error: type[Exception], calls: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= failures:
            raise error("flaky", request=request)
        return httpx.Response(200, json=good_answer(UpstreamProtocol.V2, 1))

    return handler


@pytest.mark.parametrize("error", [httpx.ConnectError])
async def test_failures_to_connect_are_retried_up_to_the_limit(error: type[Exception]) -> None:
    calls: list[httpx.Request] = []
    async with mock_client(failing_then_ok(2, error, calls)) as client:
        result = await adapter(UpstreamProtocol.V2, client).predict(IMAGES[:1], RID)
    assert result.predictions == [{"label": 0}] and len(calls) == 3
    assert all(call.headers["x-request-id"] == RID for call in calls)

    calls.clear()
    async with mock_client(failing_then_ok(3, error, calls)) as client:
        with pytest.raises(UpstreamError):
            await adapter(UpstreamProtocol.V2, client).predict(IMAGES[:1], RID)
    assert len(calls) == 3  # 1 attempt + max_retries=2, not one more

    calls.clear()
    async with mock_client(failing_then_ok(1, error, calls)) as client:
        with pytest.raises(UpstreamError):
            no_retry = adapter(UpstreamProtocol.V2, client, retry=RetryPolicy(max_retries=0))
            await no_retry.predict(IMAGES[:1], RID)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.RemoteProtocolError],
)
async def test_timeouts_resets_and_protocol_errors_are_not_retried(error: type[Exception]) -> None:
    calls: list[httpx.Request] = []
    async with mock_client(failing_then_ok(1, error, calls)) as client:
        with pytest.raises(UpstreamError):
            await adapter(UpstreamProtocol.V2, client).predict(IMAGES[:1], RID)
    assert len(calls) == 1


async def test_statuses_are_not_retried() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError):
            await adapter(UpstreamProtocol.RAW, client).predict(IMAGES[:1], RID)
    assert len(calls) == 1


class _BrokenBody(httpx.AsyncByteStream):
    """A response body that fails after its first chunk, as when a vendor dies mid-answer."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"predictions": ['
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def test_a_protocol_error_after_the_response_head_is_not_retried() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, stream=_BrokenBody())

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter(UpstreamProtocol.TFSERVING, client).predict(IMAGES[:1], RID)
    assert type(info.value) is UpstreamError and len(calls) == 1


async def test_a_raw_failure_cancels_the_other_images_requests() -> None:
    finished: list[bytes] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.content == IMAGES[0]:
            return httpx.Response(500)
        await asyncio.sleep(5)
        finished.append(request.content)
        return httpx.Response(200, json={})

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError):
            await adapter(UpstreamProtocol.RAW, client).predict(IMAGES, RID)
    assert finished == []  # cancelled, not left to finish (it would append after its sleep)


# --- construction -----------------------------------------------------------------------------


def test_build_upstream_picks_the_codec_by_enum_or_value_and_validates(idle_client: httpx.AsyncClient) -> None:
    client = idle_client
    assert type(build_upstream("raw", client, BASE).codec) is RawCodec
    assert type(build_upstream(UpstreamProtocol.TFSERVING, client, BASE, "m").codec) is TFServingCodec
    assert type(build_upstream("v2", client, BASE + "/", "m").codec) is V2Codec
    with pytest.raises(ValueError, match="raw, tfserving, v2"):
        build_upstream("grpc", client, BASE, "m")
    with pytest.raises(ValueError, match="model name"):
        build_upstream("tfserving", client, BASE)
    with pytest.raises(ValueError, match="http://host:port"):
        build_upstream("raw", client, "vendor:8080")
    with pytest.raises(ValueError, match="start with '/'"):
        build_upstream("raw", client, BASE, raw_path="predict")
    with pytest.raises(ValueError, match="total_timeout_s"):
        build_upstream("raw", client, BASE, total_timeout_s=0)
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="timeout_read_s"):
        make_http_client(timeout_read_s=0)


async def test_a_base_url_path_prefix_is_kept() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"predictions": [1]})

    async with mock_client(handler) as client:
        await build_upstream("tfserving", client, BASE + "/vendor/", "m").predict([b"x"], RID)
    assert seen[0].url == f"{BASE}/vendor/v1/models/m:predict"


async def test_make_http_client_sets_timeouts() -> None:
    async with make_http_client(timeout_connect_s=1.5, timeout_read_s=7.0, max_connections=3) as client:
        assert client.timeout == httpx.Timeout(connect=1.5, read=7.0, write=7.0, pool=7.0)
        assert client.follow_redirects is False


# --- hardening: credentials, messages, encodings, per-call budget -------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("http://user:pass@10.0.0.7:9000/v1", "http://***@10.0.0.7:9000/v1"),
        ("https://token@vendor/x?q=a@b", "https://***@vendor/x?q=a@b"),  # an @ in the query is not userinfo
        ("http://us%40er:p@ss@vendor", "http://***@vendor"),  # the last @ of the authority ends it
        ("user:pass@vendor:80", "***@vendor:80"),  # no scheme: still redacted
        ("http://vendor:9000/predict", "http://vendor:9000/predict"),
    ],
)
def test_redact_url_hides_userinfo_only(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


async def test_url_credentials_go_as_basic_auth_and_never_into_the_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"label": 0})

    async with mock_client(handler) as client:
        upstream = adapter(UpstreamProtocol.RAW, client, "http://alice:s3cret@vendor.test/root/")
        await upstream.predict([b"i"], RID)
        await upstream.forward("POST", "/x", b"i", {"Authorization": "Bearer client-own"})
    expected = "Basic " + b64(b"alice:s3cret")
    for request in seen:
        assert "s3cret" not in str(request.url) and request.url.host == "vendor.test"
        assert request.headers["authorization"] == expected  # the configured vendor credential wins
    assert str(seen[0].url) == "http://vendor.test/root/predict"


def test_a_bad_base_url_is_named_without_its_credentials(idle_client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="http://host:port") as info:
        build_upstream("raw", idle_client, "ftp://alice:s3cret@vendor")
    assert "s3cret" not in str(info.value) and "***@vendor" in str(info.value)


async def test_the_client_offers_only_the_codings_it_can_decode() -> None:
    offered = decodable_encodings()
    assert {"gzip", "deflate"} <= set(offered) and "identity" not in offered
    for coding, module in (("br", "brotli"), ("zstd", "zstandard")):
        try:
            __import__(module)
        except ImportError:
            assert coding not in offered
    async with make_http_client() as client:
        assert client.headers["accept-encoding"] == ", ".join(offered)


async def test_a_body_that_does_not_decode_as_declared_is_a_502() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not gzip at all", headers={"Content-Encoding": "gzip"})

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamError) as info:
            await adapter(UpstreamProtocol.RAW, client).predict(IMAGES[:1], RID)
    assert type(info.value) is UpstreamError and isinstance(info.value.__cause__, httpx.DecodingError)


async def test_no_time_left_means_no_request() -> None:
    calls: list[httpx.Request] = []
    async with mock_client(failing_then_ok(0, httpx.ConnectError, calls)) as client:
        for protocol in UpstreamProtocol:
            with pytest.raises(UpstreamTimeout):
                await adapter(protocol, client).predict(IMAGES[:1], RID, timeout_s=0.0)
        with pytest.raises(UpstreamTimeout):
            await adapter(UpstreamProtocol.V2, client).forward("POST", "/p", b"", {}, timeout_s=-1.0)
    assert calls == []


def test_max_response_bytes_is_validated_and_defaults_to_16_mib(idle_client: httpx.AsyncClient) -> None:
    assert DEFAULT_MAX_RESPONSE_BYTES == 16 * 1024 * 1024
    with pytest.raises(ValueError, match="max_response_bytes"):
        build_upstream("raw", idle_client, BASE, max_response_bytes=0)


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async with mock_client(lambda request: httpx.Response(200, content=b"7" * 2000)) as client:
        with pytest.raises(UpstreamResponseTooLarge) as info:
            await adapter(UpstreamProtocol.RAW, client, max_response_bytes=1000).predict(IMAGES[:1], RID)
    assert info.value.status_code == 502 and info.value.upstream_status == 200


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
