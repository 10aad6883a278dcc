"""The codecs alone, without HTTP: each protocol's predict requests, answers and sidecar bodies.

A codec is pure (no client, no event loop, no httpx import): a predict request it encodes is read
back by a stand-in vendor written here, whose answer it decodes into one prediction per image, and
a sidecar body's images are extracted, replaced and extracted again.
"""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from service.upstream import RawCodec, TFServingCodec, UpstreamProtocol, V2Codec, VendorBody, VendorCodec, WireRequest
from service.upstream.v2_binary import decode_bytes_elements, encode_bytes_elements

UPSTREAM = Path(__file__).resolve().parents[1] / "service" / "upstream"
CODEC_MODULES = ["codec", "json_codec", "raw", "tfserving", "v2"]
IMAGES = [b"\x89PNG-one", b"\x89PNG-second", b"\x89PNG-the-third"]
NEW = [b"\x89PNG-ONE", b"\x89PNG-SECOND", b"\x89PNG-THE-THIRD"]
RID = "req-0123"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def imports_of(module: str) -> set[str]:
    """The top-level names `service/upstream/<module>.py` imports, and those its service.upstream imports import."""
    seen: set[str] = set()
    found: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((UPSTREAM / f"{name}.py").read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for imported in names:
                found.add(imported.split(".")[0])
                if imported.startswith("service.upstream."):
                    todo.append(imported.removeprefix("service.upstream.").split(".")[0])
    return found


@pytest.mark.parametrize("module", CODEC_MODULES)
def test_codec_modules_import_no_http_client(module: str) -> None:
    imported = imports_of(module)
    assert "service" in imported  # the walk sees imports
    assert not imported & {"httpx", "asyncio", "fastapi", "starlette", "torch"}


def test_the_transport_side_does_import_httpx() -> None:
    # Not vacuous: the same walk finds httpx where it belongs.
    assert "httpx" in imports_of("transport") and "httpx" in imports_of("adapter")


# --- a stand-in vendor: reads an encoded predict request, answers with each image's length -----


def vendor_answer(protocol: UpstreamProtocol, request: WireRequest) -> Any:
    """The JSON a vendor of `protocol` answers to `request`: image i's prediction is its byte length."""
    if protocol is UpstreamProtocol.RAW:
        return {"length": len(request.content)}
    payload = json.loads(request.content)
    if protocol is UpstreamProtocol.TFSERVING:
        return {"predictions": [{"length": len(base64.b64decode(item["b64"]))} for item in payload["instances"]]}
    (tensor,) = payload["inputs"]
    lengths = [len(base64.b64decode(text)) for text in tensor["data"]]
    return {"outputs": [{"name": "length", "shape": [len(lengths)], "datatype": "INT64", "data": lengths}]}


CODECS: dict[UpstreamProtocol, VendorCodec] = {
    UpstreamProtocol.RAW: RawCodec("/invocations"),
    UpstreamProtocol.TFSERVING: TFServingCodec("fmnist"),
    UpstreamProtocol.V2: V2Codec("fmnist"),
}


@pytest.mark.parametrize("protocol", list(UpstreamProtocol))
def test_encode_then_decode_gives_one_prediction_per_image_in_order(protocol: UpstreamProtocol) -> None:
    codec = CODECS[protocol]
    assert codec.protocol is protocol
    requests = codec.encode_predict(IMAGES, RID, "image/png")
    assert sum(request.image_count for request in requests) == len(IMAGES)
    predictions = [
        prediction
        for request in requests
        for prediction in codec.decode_predictions(vendor_answer(protocol, request), request.image_count)
    ]
    assert predictions == [{"length": len(image)} for image in IMAGES]


def test_raw_sends_each_image_as_its_own_body() -> None:
    requests = RawCodec().encode_predict(IMAGES, RID, "image/jpeg")
    assert requests == [WireRequest(image, "image/jpeg", 1) for image in IMAGES]
    assert RawCodec().predict_path == "/predict" and RawCodec("/invocations").predict_path == "/invocations"


def test_json_codecs_send_all_images_in_one_request() -> None:
    (tf,) = TFServingCodec("a/b").encode_predict(IMAGES, RID, "image/png")
    assert tf.content_type == "application/json" and tf.image_count == 3
    assert json.loads(tf.content) == {"instances": [{"b64": b64(image)} for image in IMAGES]}
    (v2,) = V2Codec("a/b").encode_predict(IMAGES, RID, "image/png")
    assert json.loads(v2.content)["id"] == RID
    assert TFServingCodec("a/b").predict_path == "/v1/models/a%2Fb:predict"
    assert V2Codec("a/b").predict_path == "/v2/models/a%2Fb/infer"


def test_v2_decoding_splits_every_output_by_image() -> None:
    answer = {
        "outputs": [
            {"name": "probs", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.9, 0.8, 0.2]},
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]},
        ]
    }
    assert V2Codec("m").decode_predictions(answer, 2) == [
        {"probs": [0.1, 0.9], "label": 1},
        {"probs": [0.8, 0.2], "label": 0},
    ]
    with pytest.raises(ValueError, match="batch size 3"):
        V2Codec("m").decode_predictions(answer, 3)


@pytest.mark.parametrize(
    ("codec", "payload"), [(TFServingCodec("m"), {"outputs": []}), (V2Codec("m"), {"predictions": []})]
)
def test_an_answer_of_another_protocol_is_a_value_error(codec: VendorCodec, payload: Any) -> None:
    with pytest.raises(ValueError, match="expected"):
        codec.decode_predictions(payload, 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RawCodec("predict"), "start with '/'"),
        (lambda: TFServingCodec(""), "model name"),
        (lambda: V2Codec(""), "model name"),
    ],
)
def test_codec_settings_are_checked_when_built(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --- sidecar bodies: extract, replace, extract again -------------------------------------------


def test_a_predict_request_is_a_sidecar_body_its_codec_reads() -> None:
    for protocol in (UpstreamProtocol.TFSERVING, UpstreamProtocol.V2):
        codec = CODECS[protocol]
        (request,) = codec.encode_predict(IMAGES, RID, "image/png")
        assert codec.extract_images(VendorBody(request.content, request.content_type)) == IMAGES


def test_raw_body_is_the_image() -> None:
    body = VendorBody(b"\x89PNG-old", "image/jpeg")
    assert RawCodec().extract_images(body) == [b"\x89PNG-old"]
    assert RawCodec().replace_images(body, [NEW[0]]) == VendorBody(NEW[0], "image/png")
    with pytest.raises(ValueError, match="exactly one image"):
        RawCodec().replace_images(body, NEW[:2])


def test_tfserving_replacement_keeps_each_instance_form_and_the_other_keys() -> None:
    payload = {"signature_name": "serving_default", "instances": [{"b64": b64(IMAGES[0])}, b64(IMAGES[1])]}
    body = VendorBody(json.dumps(payload).encode(), "application/json")
    codec = TFServingCodec("m")
    assert codec.extract_images(body) == IMAGES[:2]
    replaced = codec.replace_images(body, NEW[:2])
    assert json.loads(replaced.content) == {
        "signature_name": "serving_default",
        "instances": [{"b64": b64(NEW[0])}, b64(NEW[1])],
    }
    assert codec.extract_images(replaced) == NEW[:2]
    with pytest.raises(ValueError, match="holds 2 images"):
        codec.replace_images(body, NEW)


def test_v2_json_replacement_keeps_the_other_inputs() -> None:
    payload = {
        "id": "x",
        "inputs": [
            {"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(image) for image in IMAGES[:2]]},
            {"name": "scale", "shape": [1], "datatype": "FP32", "data": [0.5]},
        ],
    }
    codec = V2Codec("m")
    replaced = codec.replace_images(VendorBody(json.dumps(payload).encode(), "application/json"), NEW[:2])
    assert replaced.json_length is None
    after = json.loads(replaced.content)
    assert after["inputs"][0]["data"] == [b64(image) for image in NEW[:2]]
    assert after["id"] == "x" and after["inputs"][1] == payload["inputs"][1]
    assert codec.extract_images(replaced) == NEW[:2]


def test_v2_binary_replacement_stays_binary_with_its_new_header_length() -> None:
    raw = encode_bytes_elements([IMAGES[0], b64(IMAGES[1]).encode()])  # one image raw, one as base64 text
    header = {
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]
    }
    header_json = json.dumps(header).encode()
    body = VendorBody(header_json + raw, "application/octet-stream", len(header_json))
    codec = V2Codec("m")
    assert codec.extract_images(body) == IMAGES[:2]
    replaced = codec.replace_images(body, NEW[:2])
    assert replaced.content_type == "application/octet-stream" and replaced.json_length is not None
    new_header = json.loads(replaced.content[: replaced.json_length])
    new_raw = replaced.content[replaced.json_length :]
    assert new_header["inputs"][0]["parameters"]["binary_data_size"] == len(new_raw)
    assert decode_bytes_elements(new_raw, "image") == [NEW[0], b64(NEW[1]).encode()]  # each in its original form
    assert codec.extract_images(replaced) == NEW[:2]
