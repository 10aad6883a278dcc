"""The sidecar side of the upstream adapters, units on httpx.MockTransport: `forward` relays a
vendor-format request and its answer unchanged (hop-by-hop headers cleaned), and each protocol
reads the images out of its own request format and writes purified ones back in."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.errors import BadRequest, InvalidShape, UnsupportedMediaType, UpstreamTimeout
from service.upstream import UpstreamProtocol, VendorBody
from service.upstream.v2_binary import decode_bytes_elements, encode_bytes_elements
from tests.mock_vendor import BASE, IMAGES, RID, adapter, b64, mock_client


@pytest.fixture
async def idle_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client for adapters that are built but send nothing (closed after the test)."""
    async with httpx.AsyncClient() as client:
        yield client


# --- relay (sidecar forward) -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 404, 500])
async def test_forward_relays_any_status_unchanged_and_cleans_headers(status: int) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            status,
            content=b'{"vendor": "says"}',
            headers=[
                ("content-type", "application/vnd.x+json"),
                ("x-vendor", "a"),
                ("x-vendor", "b"),
                ("connection", "close, x-vendor-hop"),
                ("x-vendor-hop", "1"),
                ("x-request-id", "vendor-made"),
            ],
        )

    async with mock_client(handler) as client:
        relayed = await adapter(UpstreamProtocol.V2, client).forward(
            "POST",
            "/v2/models/fmnist/infer?debug=1",
            b'{"inputs": []}',
            {
                "Content-Type": "text/plain",
                "Keep-Alive": "timeout=5",
                "Upgrade": "h2c",
                "TE": "trailers",
                "Connection": "X-Hop",
                "X-Hop": "h",
                "Host": "gateway",
                "X-Trace": "t1",
                "X-Request-ID": "client-made",
                "Content-Length": "999",
            },
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


def test_raw_sidecar_body_is_the_image(idle_client: httpx.AsyncClient) -> None:
    raw = adapter(UpstreamProtocol.RAW, idle_client)
    assert raw.extract_images(VendorBody(b"img", "image/png")) == [b"img"]
    assert raw.extract_images(VendorBody(b"img", "application/octet-stream")) == [b"img"]
    assert raw.replace_images(VendorBody(b"img", "image/jpeg"), [b"new"]) == VendorBody(b"new", "image/png")
    with pytest.raises(BadRequest):
        raw.extract_images(VendorBody(b"", "image/png"))
    with pytest.raises(UnsupportedMediaType):
        raw.extract_images(VendorBody(b'{"a": 1}', "application/json"))
    with pytest.raises(ValueError):
        raw.replace_images(VendorBody(b"img", "image/png"), [b"a", b"b"])


def test_tfserving_sidecar_round_trip_keeps_other_keys(idle_client: httpx.AsyncClient) -> None:
    tf = adapter(UpstreamProtocol.TFSERVING, idle_client)
    instances = [{"b64": b64(image)} for image in IMAGES]
    body = json.dumps({"signature_name": "serving_default", "instances": instances}).encode()
    assert tf.extract_images(VendorBody(body, "application/json; charset=utf-8")) == IMAGES
    new = tf.replace_images(VendorBody(body, "application/json"), [b"A", b"B", b"C"])
    assert new.content_type == "application/json" and new.json_length is None
    assert json.loads(new.content) == {
        "signature_name": "serving_default",
        "instances": [{"b64": b64(b"A")}, {"b64": b64(b"B")}, {"b64": b64(b"C")}],
    }
    with pytest.raises(ValueError):
        tf.replace_images(VendorBody(body, "application/json"), [b"A"])


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"{not json", "application/json", BadRequest),
        (b'{"instances": [{"b64": "a"}]}', "text/plain", UnsupportedMediaType),
        (json.dumps({"inputs": {"b64": b64(b"x")}}).encode(), "application/json", BadRequest),  # columnar
        # Both: TF-Serving refuses them, and "inputs" would reach the vendor unpurified.
        (json.dumps({"instances": [b64(b"x")], "inputs": [b64(b"y")]}).encode(), "application/json", BadRequest),
        (json.dumps({"instances": [b64(b"x")], "inputs": {"b64": b64(b"y")}}).encode(), "application/json", BadRequest),
        # Beside the images only small values pass: a long string or many values could be an image.
        (json.dumps({"instances": [b64(b"x")], "image2": "A" * 129}).encode(), "application/json", BadRequest),
        (json.dumps({"instances": [b64(b"x")], "pixels": [0] * 65}).encode(), "application/json", BadRequest),
        (json.dumps({"instances": [b64(b"x")], "signature_name": "s" * 129}).encode(), "application/json", BadRequest),
        (json.dumps({"instances": [7]}).encode(), "application/json", InvalidShape),
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
    idle_client: httpx.AsyncClient, body: bytes, content_type: str, error: type[Exception]
) -> None:
    tf = adapter(UpstreamProtocol.TFSERVING, idle_client)
    with pytest.raises(error) as info:
        tf.extract_images(VendorBody(body, content_type))
    assert type(info.value) is error


def test_v2_sidecar_round_trip_finds_the_bytes_input_and_keeps_the_rest(idle_client: httpx.AsyncClient) -> None:
    v2 = adapter(UpstreamProtocol.V2, idle_client)
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
    assert v2.extract_images(VendorBody(body, "application/json")) == IMAGES
    new = v2.replace_images(VendorBody(body, "application/json"), [b"A", b"B", b"C"])
    expected = json.loads(body)
    expected["inputs"][1]["data"] = [b64(b"A"), b64(b"B"), b64(b"C")]  # flat row-major, same shape
    assert json.loads(new.content) == expected and new.content_type == "application/json"

    # A second BYTES input could carry an image the gateway would not purify: refused, whatever its name.
    request["inputs"][0] = {"name": "caption", "shape": [1], "datatype": "BYTES", "data": [b64(b"hi")]}
    with pytest.raises(BadRequest) as info:
        v2.extract_images(VendorBody(json.dumps(request).encode(), "application/json"))
    assert type(info.value) is BadRequest and "'caption', 'image'" in info.value.message


def test_tfserving_sidecar_takes_bare_base64_instances_and_writes_them_back_bare(
    idle_client: httpx.AsyncClient,
) -> None:
    tf = adapter(UpstreamProtocol.TFSERVING, idle_client)
    body = json.dumps({"instances": [b64(IMAGES[0]), {"b64": b64(IMAGES[1])}]}).encode()  # KServe v1 takes both
    assert tf.extract_images(VendorBody(body, "application/json")) == IMAGES[:2]
    new = tf.replace_images(VendorBody(body, "application/json"), [b"A", b"B"])
    assert json.loads(new.content) == {"instances": [b64(b"A"), {"b64": b64(b"B")}]}


@pytest.mark.parametrize(
    ("request_json", "error"),
    [
        ({"inputs": []}, InvalidShape),
        ({"instances": [{"b64": "eA=="}]}, InvalidShape),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, InvalidShape),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["eA=="]}]}, InvalidShape),
        ({"inputs": [{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}]}, InvalidShape),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [1], "datatype": "BYTES", "data": ["eA=="]},
                    {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["eA=="]},
                ]
            },
            BadRequest,
        ),
        (  # beside the image, a numeric input large enough to hold an image's pixels
            {
                "inputs": [
                    {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]},
                    {"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784},
                ]
            },
            BadRequest,
        ),
        (  # an image in the parameters
            {
                "parameters": {"image2": b64(bytes(200))},
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}],
            },
            BadRequest,
        ),
        ({"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": ["no base64!"]}]}, BadRequest),
    ],
)
def test_v2_sidecar_rejects_undocumented_shapes(
    idle_client: httpx.AsyncClient, request_json: Any, error: type[Exception]
) -> None:
    v2 = adapter(UpstreamProtocol.V2, idle_client)
    with pytest.raises(error) as info:
        v2.extract_images(VendorBody(json.dumps(request_json).encode(), "application/json"))
    assert type(info.value) is error


def test_a_v2_body_that_is_not_json_is_422_as_kserve_answers_and_a_binary_header_400(
    idle_client: httpx.AsyncClient,
) -> None:
    v2 = adapter(UpstreamProtocol.V2, idle_client)
    with pytest.raises(InvalidShape):
        v2.extract_images(VendorBody(b'{"inputs": [', "application/json"))
    with pytest.raises(BadRequest) as info:
        v2.extract_images(VendorBody(b'{"inputs": [' + b"\x00" * 8, "application/octet-stream", 12))
    assert type(info.value) is BadRequest


# --- v2 binary tensor data extension -----------------------------------------------------------


def _binary_v2(elements: list[bytes], *, extra: bytes = b"", scale: bool = True) -> VendorBody:
    """A binary v2 request as tritonclient builds it: an FP32 input and the BYTES image input, both binary."""
    image_raw = encode_bytes_elements(elements)
    header = {
        "id": "bin-1",
        "parameters": {"binary_data_output": True},
        "inputs": [
            {
                "name": "image",
                "shape": [len(elements)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(image_raw)},
            }
        ],
    }
    raws = [image_raw]
    if scale:
        header["inputs"].insert(
            0, {"name": "scale", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
        )
        raws.insert(0, struct.pack("<f", 0.5))
    header_json = json.dumps(header).encode()
    return VendorBody(header_json + b"".join(raws) + extra, "application/octet-stream", len(header_json))


@pytest.mark.parametrize("as_base64", [False, True])
def test_v2_binary_request_round_trip_keeps_the_framing_and_each_elements_form(
    idle_client: httpx.AsyncClient, as_base64: bool
) -> None:
    v2 = adapter(UpstreamProtocol.V2, idle_client)
    elements = [b64(i).encode() if as_base64 else i for i in IMAGES]
    body = _binary_v2(elements)
    assert v2.extract_images(body) == IMAGES

    new = v2.replace_images(body, [b"A", b"BB", b"CCC"])
    assert new.content_type == "application/octet-stream" and new.json_length is not None
    header = json.loads(new.content[: new.json_length])
    replaced = [b64(x).encode() if as_base64 else x for x in (b"A", b"BB", b"CCC")]
    image_raw = encode_bytes_elements(replaced)
    assert header["inputs"][1]["parameters"]["binary_data_size"] == len(image_raw)
    assert header["id"] == "bin-1" and header["parameters"] == {"binary_data_output": True}
    assert new.content[new.json_length :] == struct.pack("<f", 0.5) + image_raw  # the FP32 input untouched
    assert v2.extract_images(new) == [b"A", b"BB", b"CCC"]


def test_v2_binary_request_refuses_a_non_image_input_large_enough_to_hold_pixels(
    idle_client: httpx.AsyncClient,
) -> None:
    v2 = adapter(UpstreamProtocol.V2, idle_client)
    pixels = bytes(784)  # a 28 x 28 UINT8 image, beside the image input: the vendor would see it unpurified
    image_raw = encode_bytes_elements([IMAGES[0]])
    header = {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(image_raw)}},
            {"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "parameters": {"binary_data_size": 784}},
        ]
    }
    header_json = json.dumps(header).encode()
    with pytest.raises(BadRequest) as info:
        v2.extract_images(VendorBody(header_json + image_raw + pixels, "application/octet-stream", len(header_json)))
    assert type(info.value) is BadRequest and "inputs[1]" in info.value.message


def test_v2_binary_request_with_the_images_in_the_json_header(idle_client: httpx.AsyncClient) -> None:
    v2 = adapter(UpstreamProtocol.V2, idle_client)
    header = {
        "inputs": [
            {"name": "scale", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(IMAGES[0])]},
        ]
    }
    header_json = json.dumps(header).encode()
    body = VendorBody(header_json + b"\x00\x00\x00\x3f", "", len(header_json))
    assert v2.extract_images(body) == IMAGES[:1]
    new = v2.replace_images(body, [b"A"])
    assert new.content_type == "" and new.content.endswith(b"\x00\x00\x00\x3f")
    assert json.loads(new.content[: new.json_length])["inputs"][1]["data"] == [b64(b"A")]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (_binary_v2([b"\x89PNG"], extra=b"!"), BadRequest),  # bytes after the declared inputs
        (VendorBody(b'{"inputs": [', "", 12), BadRequest),  # header is not JSON
        (VendorBody(b"[1]", "", 3), InvalidShape),
        (VendorBody(b"\xff\xfe", "", 2), BadRequest),
    ],
)
def test_v2_binary_framing_errors_are_the_clients(
    idle_client: httpx.AsyncClient, body: VendorBody, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        adapter(UpstreamProtocol.V2, idle_client).extract_images(body)
    assert type(info.value) is error


def test_v2_binary_elements_and_sizes_are_checked_against_the_bytes(idle_client: httpx.AsyncClient) -> None:
    v2 = adapter(UpstreamProtocol.V2, idle_client)

    def with_raw(raw: bytes, size: object, shape: int = 1) -> VendorBody:
        header = json.dumps(
            {
                "inputs": [
                    {"name": "image", "shape": [shape], "datatype": "BYTES", "parameters": {"binary_data_size": size}}
                ]
            }
        ).encode()
        return VendorBody(header + raw, "", len(header))

    with pytest.raises(BadRequest, match="claims 99 bytes"):
        v2.extract_images(with_raw(struct.pack("<I", 99) + b"abc", 7))
    with pytest.raises(BadRequest, match="cut-off"):
        v2.extract_images(with_raw(b"\x01\x00", 2))
    with pytest.raises(BadRequest, match="non-negative integer"):
        v2.extract_images(with_raw(b"", -1))
    with pytest.raises(InvalidShape, match="needs 2"):
        v2.extract_images(with_raw(encode_bytes_elements([b"\x89PNG"]), 8, shape=2))
    with pytest.raises(BadRequest, match="empty image"):
        v2.extract_images(with_raw(encode_bytes_elements([b""]), 4))
    with pytest.raises(BadRequest, match="belongs to the v2"):  # TF-Serving has no binary extension
        adapter(UpstreamProtocol.TFSERVING, idle_client).extract_images(VendorBody(b"{}", "", 2))


@pytest.mark.parametrize("value", ["abc", "-1", "1e3", "999"])
def test_a_bad_inference_header_length_is_a_400(value: str) -> None:
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        VendorBody.from_headers(b"{}" * 10, {"Inference-Header-Content-Length": value})


def test_vendor_body_reads_and_rewrites_its_framing_headers() -> None:
    body = VendorBody.from_headers(
        b'{"inputs": []}xx', {"content-type": "application/octet-stream", "inference-header-content-length": " 14 "}
    )
    assert body == VendorBody(b'{"inputs": []}xx', "application/octet-stream", 14)
    client = {"content-type": "text/plain", "Inference-Header-Content-Length": "3", "X-Trace": "t"}
    assert VendorBody(b"", "application/json").reframe(client) == {"X-Trace": "t", "Content-Type": "application/json"}
    assert VendorBody(b"", "", 7).reframe(client) == {"X-Trace": "t", "Inference-Header-Content-Length": "7"}


def test_bytes_elements_round_trip() -> None:
    elements = [b"", b"a", b"\x00" * 300]
    raw = encode_bytes_elements(elements)
    assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:8] == b"\x01\x00\x00\x00"
    assert decode_bytes_elements(raw, "t") == elements
