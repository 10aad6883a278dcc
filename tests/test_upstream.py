"""Upstream adapters: wire encoding per protocol, error mapping, retries, relay, sidecar rewriting
(units on httpx.MockTransport) and fault upstreams on real loopback sockets (integration)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from service.errors import (
    BadRequest,
    InvalidShape,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamRejected,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
)
from service.upstream import (
    DEFAULT_MAX_RESPONSE_BYTES,
    RawUpstream,
    RetryPolicy,
    TFServingUpstream,
    Upstream,
    UpstreamProtocol,
    V2Upstream,
    build_upstream,
    make_http_client,
    redact_url,
)
from service.upstream.client import decodable_encodings
from tests.fault_servers import (
    StaticApp,
    http_response_head,
    read_request_head,
    refused_port,
    reset_after_head,
    serve_asgi,
    serve_tcp,
)

BASE = "http://vendor.test"
RID = "req-0123"
IMAGES = [b"\x89PNG-one", b"\x89PNG-second", b"\x89PNG-the-third"]
NO_BACKOFF = RetryPolicy(max_retries=2, backoff_s=0.0)

Handler = Callable[[httpx.Request], Any]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mock_client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def adapter(
    protocol: UpstreamProtocol, client: httpx.AsyncClient, base_url: str = BASE, **kw: Any
) -> Upstream:
    kw.setdefault("retry", NO_BACKOFF)
    return build_upstream(protocol, client, base_url, "fmnist", **kw)


def good_answer(protocol: UpstreamProtocol, count: int) -> dict[str, Any]:
    """A well-formed vendor answer for `count` images in `protocol` (raw: for one image)."""
    if protocol is UpstreamProtocol.RAW:
        return {"label": 0}
    if protocol is UpstreamProtocol.TFSERVING:
        return {"predictions": [{"label": i} for i in range(count)]}
    return {"outputs": [{"name": "label", "shape": [count], "datatype": "INT64", "data": list(range(count))}]}


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
                    {"name": "probabilities", "shape": [3, 10], "datatype": "FP32",
                     "data": [p for row in probabilities for p in row]},
                    {"name": "label", "shape": [3], "datatype": "INT64", "data": [3, 1, 4]},
                    # ... and nested data, also allowed
                    {"name": "grid", "shape": [3, 2, 2], "datatype": "INT32",
                     "data": [[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10], [11, 12]]]},
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


def test_model_names_are_percent_encoded_in_the_path() -> None:
    client = httpx.AsyncClient()
    assert adapter(UpstreamProtocol.TFSERVING, client).predict_path == "/v1/models/fmnist:predict"
    v2 = build_upstream(UpstreamProtocol.V2, client, BASE, "a/b c")
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
async def test_a_4xx_is_rejected_with_the_vendors_status_body_and_type(
    protocol: UpstreamProtocol, status: int
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=b"<bad image>", headers={"content-type": "text/plain"})

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamRejected) as info:
            await adapter(protocol, client).predict(IMAGES[:2], RID)
    assert info.value.status_code == info.value.upstream_status == status
    assert info.value.body == b"<bad image>" and info.value.content_type == "text/plain"


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


# --- relay (sidecar forward) -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 404, 500])
async def test_forward_relays_any_status_unchanged_and_cleans_headers(status: int) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            status,
            content=b'{"vendor": "says"}',
            headers=[("content-type", "application/vnd.x+json"), ("x-vendor", "a"), ("x-vendor", "b"),
                     ("connection", "close, x-vendor-hop"), ("x-vendor-hop", "1"),
                     ("x-request-id", "vendor-made")],
        )

    async with mock_client(handler) as client:
        relayed = await adapter(UpstreamProtocol.V2, client).forward(
            "POST",
            "/v2/models/fmnist/infer?debug=1",
            b'{"inputs": []}',
            {"Content-Type": "text/plain", "Keep-Alive": "timeout=5", "Upgrade": "h2c", "TE": "trailers",
             "Connection": "X-Hop", "X-Hop": "h", "Host": "gateway", "X-Trace": "t1",
             "X-Request-ID": "client-made", "Content-Length": "999"},
            request_id=RID,
            content_type="application/json",
        )

    (request,) = seen
    assert request.method == "POST" and request.url == f"{BASE}/v2/models/fmnist/infer?debug=1"
    assert request.content == b'{"inputs": []}'
    assert request.headers["content-length"] == str(len(request.content))
    assert request.headers["content-type"] == "application/json"
    assert request.headers.get_list("x-request-id") == [RID]
    assert request.headers["x-trace"] == "t1" and request.headers["host"] == "vendor.test"
    assert not {"keep-alive", "upgrade", "te", "x-hop"} & set(request.headers.keys())

    assert relayed.status_code == status and relayed.body == b'{"vendor": "says"}'
    assert relayed.content_type == "application/vnd.x+json"
    names = [name for name, _ in relayed.headers]
    assert [value for name, value in relayed.headers if name == "x-vendor"] == ["a", "b"]
    assert not {"connection", "x-vendor-hop", "content-length", "x-request-id"} & set(names)


async def test_forward_maps_only_transport_failures() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamTimeout):
            await adapter(UpstreamProtocol.RAW, client).forward("POST", "/predict", b"x", {})
        with pytest.raises(ValueError, match="start with '/'"):
            await adapter(UpstreamProtocol.RAW, client).forward("POST", "predict", b"x", {})


# --- sidecar: reading and rewriting the vendor's own request format ----------------------------


def test_raw_sidecar_body_is_the_image() -> None:
    raw = adapter(UpstreamProtocol.RAW, httpx.AsyncClient())
    assert raw.extract_images(b"img", "image/png") == [b"img"]
    assert raw.extract_images(b"img", "application/octet-stream") == [b"img"]
    assert raw.replace_images(b"img", "image/jpeg", [b"new"]) == (b"new", "image/png")
    with pytest.raises(BadRequest):
        raw.extract_images(b"", "image/png")
    with pytest.raises(UnsupportedMediaType):
        raw.extract_images(b'{"a": 1}', "application/json")
    with pytest.raises(ValueError):
        raw.replace_images(b"img", "image/png", [b"a", b"b"])


def test_tfserving_sidecar_round_trip_keeps_other_keys() -> None:
    tf = adapter(UpstreamProtocol.TFSERVING, httpx.AsyncClient())
    instances = [{"b64": b64(image)} for image in IMAGES]
    body = json.dumps({"signature_name": "serving_default", "instances": instances}).encode()
    assert tf.extract_images(body, "application/json; charset=utf-8") == IMAGES
    new_body, content_type = tf.replace_images(body, "application/json", [b"A", b"B", b"C"])
    assert content_type == "application/json"
    assert json.loads(new_body) == {
        "signature_name": "serving_default",
        "instances": [{"b64": b64(b"A")}, {"b64": b64(b"B")}, {"b64": b64(b"C")}],
    }
    with pytest.raises(ValueError):
        tf.replace_images(body, "application/json", [b"A"])


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"{not json", "application/json", BadRequest),
        (b'{"instances": [{"b64": "a"}]}', "text/plain", UnsupportedMediaType),
        (json.dumps({"instances": [b64(b"x")]}).encode(), "application/json", InvalidShape),  # bare strings
        (json.dumps({"inputs": {"b64": b64(b"x")}}).encode(), "application/json", InvalidShape),  # columnar
        (json.dumps({"instances": []}).encode(), "application/json", InvalidShape),
        (json.dumps({"instances": [{"b64": b64(b"x"), "k": 1}]}).encode(), "application/json", InvalidShape),
        (json.dumps({"instances": [{"b64": 7}]}).encode(), "application/json", InvalidShape),
        (json.dumps({"instances": [{"b64": "%%%"}]}).encode(), "application/json", BadRequest),
        (json.dumps({"instances": [{"b64": ""}]}).encode(), "application/json", BadRequest),
        (json.dumps([{"b64": "eA=="}]).encode(), "application/json", InvalidShape),
        (b"[" * 100_000, "application/json", BadRequest),
        (b'{"instances": ' + b"7" * 5000 + b"}", "application/json", BadRequest),
    ],
)
def test_tfserving_sidecar_rejects_undocumented_shapes(
    body: bytes, content_type: str, error: type[Exception]
) -> None:
    tf = adapter(UpstreamProtocol.TFSERVING, httpx.AsyncClient())
    with pytest.raises(error) as info:
        tf.extract_images(body, content_type)
    assert type(info.value) is error


def test_v2_sidecar_round_trip_finds_the_bytes_input_and_keeps_the_rest() -> None:
    v2 = adapter(UpstreamProtocol.V2, httpx.AsyncClient())
    request = {
        "id": "client-1",
        "parameters": {"x": 1},
        "inputs": [
            {"name": "scale", "shape": [1], "datatype": "FP32", "data": [0.5]},
            {"name": "image", "shape": [3, 1], "datatype": "BYTES", "data": [[b64(i)] for i in IMAGES]},
        ],
        "outputs": [{"name": "label"}],
    }
    body = json.dumps(request).encode()
    assert v2.extract_images(body, "application/json") == IMAGES
    new_body, content_type = v2.replace_images(body, "application/json", [b"A", b"B", b"C"])
    expected = json.loads(body)
    expected["inputs"][1]["data"] = [b64(b"A"), b64(b"B"), b64(b"C")]  # flat row-major, same shape
    assert json.loads(new_body) == expected and content_type == "application/json"

    # Two BYTES inputs: the one named like the configured input is the image.
    request["inputs"][0] = {"name": "caption", "shape": [1], "datatype": "BYTES", "data": [b64(b"hi")]}
    assert v2.extract_images(json.dumps(request).encode(), "application/json") == IMAGES


@pytest.mark.parametrize(
    ("request_json", "error"),
    [
        ({"inputs": []}, InvalidShape),
        ({"instances": [{"b64": "eA=="}]}, InvalidShape),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, InvalidShape),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["eA=="]}]}, InvalidShape),
        ({"inputs": [{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}]}, InvalidShape),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["eA=="]},
                     {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]}, InvalidShape),
        ({"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": ["no base64!"]}]}, BadRequest),
    ],
)
def test_v2_sidecar_rejects_undocumented_shapes(request_json: Any, error: type[Exception]) -> None:
    v2 = adapter(UpstreamProtocol.V2, httpx.AsyncClient())
    with pytest.raises(error) as info:
        v2.extract_images(json.dumps(request_json).encode(), "application/json")
    assert type(info.value) is error


# --- construction -----------------------------------------------------------------------------


def test_build_upstream_picks_the_class_by_enum_or_value_and_validates() -> None:
    client = httpx.AsyncClient()
    assert type(build_upstream("raw", client, BASE)) is RawUpstream
    assert type(build_upstream(UpstreamProtocol.TFSERVING, client, BASE, "m")) is TFServingUpstream
    assert type(build_upstream("v2", client, BASE + "/", "m")) is V2Upstream
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


def test_make_http_client_sets_timeouts() -> None:
    client = make_http_client(timeout_connect_s=1.5, timeout_read_s=7.0, max_connections=3)
    assert client.timeout == httpx.Timeout(connect=1.5, read=7.0, write=7.0, pool=7.0)
    assert client.follow_redirects is False


# --- integration: fault upstreams on real loopback sockets ------------------------------------


def counting_client(**kw: Any) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A real client (make_http_client) that records every attempt it sends."""
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    client = make_http_client(**{"timeout_connect_s": 1.0, "timeout_read_s": 2.0, **kw})
    client.event_hooks["request"].append(record)
    return client, sent


@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
async def test_real_socket_request_arrives_as_encoded(protocol: UpstreamProtocol) -> None:
    app = StaticApp(200, json.dumps(good_answer(protocol, 1)).encode())
    client, _ = counting_client()
    with serve_asgi(app) as url:
        async with client:
            result = await adapter(protocol, client, url).predict([b"\x89PNG"], RID)
    (received,) = app.requests
    assert received.path == adapter(protocol, client).predict_path
    assert received.headers["x-request-id"] == RID
    assert len(result.predictions) == 1 and result.status_code == 200


async def test_slow_upstream_times_out_promptly_without_retry() -> None:
    app = StaticApp(200, b"{}", delay_s=30.0)
    client, sent = counting_client(timeout_read_s=0.3)
    with serve_asgi(app) as url:
        async with client:
            with pytest.raises(UpstreamTimeout) as info:
                await adapter(UpstreamProtocol.RAW, client, url).predict([b"img"], RID)
    assert info.value.status_code == 504 and isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert info.value.message == "the vendor sent no data: timed out after 0.3 s"
    assert len(sent) == 1 and len(app.requests) == 1  # it arrived: a read timeout, never resent


async def test_upstream_500_is_a_502_with_the_status() -> None:
    app = StaticApp(500, b'{"error": "internal"}')
    client, sent = counting_client()
    with serve_asgi(app) as url:
        async with client:
            with pytest.raises(UpstreamError) as info:
                await adapter(UpstreamProtocol.TFSERVING, client, url).predict(IMAGES, RID)
    assert type(info.value) is UpstreamError and info.value.upstream_status == 500
    assert len(sent) == 1


async def test_upstream_4xx_is_relayed_with_its_body() -> None:
    app = StaticApp(415, b'{"detail": "bad type"}')
    client, _ = counting_client()
    with serve_asgi(app) as url:
        async with client:
            with pytest.raises(UpstreamRejected) as info:
                await adapter(UpstreamProtocol.V2, client, url).predict(IMAGES, RID)
            relayed = await adapter(UpstreamProtocol.V2, client, url).forward("POST", "/v2/x", b"{}", {})
    assert info.value.status_code == 415 and info.value.body == b'{"detail": "bad type"}'
    assert (relayed.status_code, relayed.body) == (415, b'{"detail": "bad type"}')
    assert relayed.content_type == "application/json"


async def test_refused_connection_is_a_502_after_the_retries() -> None:
    client, sent = counting_client()
    with refused_port() as url:
        async with client:
            with pytest.raises(UpstreamError) as info:
                upstream = adapter(UpstreamProtocol.RAW, client, url, retry=RetryPolicy(2, 0.01))
                await upstream.predict([b"i"], RID)
    assert type(info.value) is UpstreamError and isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(sent) == 3


@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
async def test_garbage_200_is_a_502(protocol: UpstreamProtocol) -> None:
    app = StaticApp(200, b"\x00\xffnot json at all", content_type="text/html")
    client, _ = counting_client()
    with serve_asgi(app) as url:
        async with client:
            with pytest.raises(UpstreamError) as info:
                await adapter(protocol, client, url).predict(IMAGES[:1], RID)
    assert type(info.value) is UpstreamError and info.value.upstream_status == 200


async def test_reset_connection_is_a_502() -> None:
    client, _ = counting_client()
    with serve_tcp(reset_after_head) as url:
        async with client:
            with pytest.raises(UpstreamError) as info:
                await adapter(UpstreamProtocol.RAW, client, url).predict([b"i"], RID)
    assert type(info.value) is UpstreamError
    assert isinstance(info.value.__cause__, (httpx.ReadError, httpx.RemoteProtocolError))


async def test_a_body_cut_short_is_a_502_and_not_resent() -> None:
    connections: list[int] = []

    async def cut_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await read_request_head(reader)
        writer.write(http_response_head(200, 100) + b'{"label":')
        await writer.drain()
        writer.close()

    client, _ = counting_client()
    with serve_tcp(cut_body) as url:
        async with client:
            with pytest.raises(UpstreamError) as info:
                await adapter(UpstreamProtocol.RAW, client, url).predict([b"i"], RID)
    assert type(info.value) is UpstreamError and len(connections) == 1


async def test_a_trickling_upstream_is_cut_by_the_total_timeout() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(http_response_head(200, 60))
        for _ in range(60):  # one byte per 50 ms never trips a 2 s read timeout, yet takes 3 s
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    client, _ = counting_client(timeout_read_s=2.0)
    with serve_tcp(trickle) as url:
        async with client:
            # "within 0.4 s" is the total bound's message: the 2 s read timeout never fired.
            with pytest.raises(UpstreamTimeout, match="within 0.4 s"):
                await adapter(UpstreamProtocol.RAW, client, url, total_timeout_s=0.4).predict([b"i"], RID)


async def test_the_pool_limit_queues_requests_and_a_pool_timeout_is_a_504() -> None:
    app = StaticApp(200, b'{"label": 1}', delay_s=0.6)
    client, sent = counting_client(max_connections=1, timeout_pool_s=0.2)
    with serve_asgi(app) as url:
        async with client:
            upstream = adapter(UpstreamProtocol.RAW, client, url)
            first, second = await asyncio.gather(
                upstream.predict([b"a"], RID), upstream.predict([b"b"], RID), return_exceptions=True
            )
    # One got the only connection; the other waited for it longer than the pool timeout.
    outcomes = sorted([first, second], key=lambda outcome: isinstance(outcome, Exception))
    assert outcomes[0].predictions == [{"label": 1}]
    assert type(outcomes[1]) is UpstreamTimeout and isinstance(outcomes[1].__cause__, httpx.PoolTimeout)
    assert len(app.requests) == 1


# --- hardening (issue 15): credentials, messages, Retry-After, encodings, per-call budget -------


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


def test_a_bad_base_url_is_named_without_its_credentials() -> None:
    with pytest.raises(ValueError, match="http://host:port") as info:
        build_upstream("raw", httpx.AsyncClient(), "ftp://alice:s3cret@vendor")
    assert "s3cret" not in str(info.value) and "***@vendor" in str(info.value)


@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
async def test_a_4xx_keeps_the_vendors_retry_after(protocol: UpstreamProtocol) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": "slow down"}, headers={"Retry-After": "7"})

    async with mock_client(handler) as client:
        with pytest.raises(UpstreamRejected) as info:
            await adapter(protocol, client).predict(IMAGES[:1], RID)
    assert info.value.headers == {"Retry-After": "7"}
    assert info.value.message == "the vendor rejected the request with HTTP 429"


async def test_a_4xx_without_retry_after_sets_no_header() -> None:
    async with mock_client(lambda request: httpx.Response(404)) as client:
        with pytest.raises(UpstreamRejected) as info:
            await adapter(UpstreamProtocol.RAW, client).predict(IMAGES[:1], RID)
    assert info.value.headers == {}


def test_the_client_offers_only_the_codings_it_can_decode() -> None:
    offered = decodable_encodings()
    assert {"gzip", "deflate"} <= set(offered) and "identity" not in offered
    for coding, module in (("br", "brotli"), ("zstd", "zstandard")):
        try:
            __import__(module)
        except ImportError:
            assert coding not in offered
    assert make_http_client().headers["accept-encoding"] == ", ".join(offered)


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


def test_max_response_bytes_is_validated_and_defaults_to_16_mib() -> None:
    assert DEFAULT_MAX_RESPONSE_BYTES == 16 * 1024 * 1024
    with pytest.raises(ValueError, match="max_response_bytes"):
        build_upstream("raw", httpx.AsyncClient(), BASE, max_response_bytes=0)


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async with mock_client(lambda request: httpx.Response(200, content=b"7" * 2000)) as client:
        with pytest.raises(UpstreamResponseTooLarge) as info:
            await adapter(UpstreamProtocol.RAW, client, max_response_bytes=1000).predict(IMAGES[:1], RID)
    assert info.value.status_code == 502 and info.value.upstream_status == 200
