"""Sidecar mode: vendor-format requests on vendor paths are purified, forwarded and relayed unchanged.

The v2 part is driven by NVIDIA's tritonclient too (JSON and binary tensor inputs, binary outputs,
health, metadata, unknown models refused before purification), against the demo vendor or a
recording stub; tests/test_kserve_upstream.py does the same against KServe's real ModelServer."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.upstream.v2_binary import decode_bytes_elements, encode_bytes_elements
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import (
    decode_png,
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    post,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
)

SEED = 21


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ddpm_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def vendor_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_vendor(tiny_vendor_dir(tmp_path_factory.mktemp("vendor"))) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(ddpm: Path, vendor_url: str) -> Iterator[str]:
    with running_gateway(gateway_settings(ddpm, vendor_url)) as url:
        yield url


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _purified(gateway: str, *images: bytes) -> list[bytes]:
    """What the gateway makes of these images with SEED (as /purify returns them)."""
    files = [("image", (str(i), image, "image/png")) for i, image in enumerate(images)]
    if len(images) == 1:
        return [post(f"{gateway}/purify", params={"seed": SEED}, files=files).content]
    return [base64.b64decode(b) for b in post(f"{gateway}/purify", params={"seed": SEED}, files=files).json()["images"]]


def _assert_relayed(through: httpx.Response, direct: httpx.Response) -> None:
    assert through.status_code == direct.status_code
    assert through.headers["content-type"] == direct.headers["content-type"]
    assert through.content == direct.content


@pytest.fixture(scope="module")
def recorded(ddpm: Path) -> Iterator[tuple[StaticApp, str]]:
    """The gateway in front of a vendor that records what reaches it (no model check: every call is the request)."""
    vendor = StaticApp(200, b'{"predictions": []}')
    with (
        serve_asgi(vendor) as vendor_url,
        running_gateway(gateway_settings(ddpm, vendor_url, upstream_model_check_ttl_s=0)) as url,
    ):
        yield vendor, url


def test_bare_base64_instances_are_purified_and_reach_the_vendor_bare(recorded: tuple[StaticApp, str]) -> None:
    vendor, url = recorded
    images = [png_bytes(seed=11), png_bytes(seed=12)]
    purified = _purified(url, *images)
    through = post(
        f"{url}/v1/models/fmnist:predict",
        params={"seed": SEED},
        json={"signature_name": "serving_default", "instances": [_b64(images[0]), {"b64": _b64(images[1])}]},
    )
    assert through.status_code == 200, through.text
    sent = json.loads(vendor.requests[-1].body)
    assert sent == {"signature_name": "serving_default", "instances": [_b64(purified[0]), {"b64": _b64(purified[1])}]}


IMAGE_B64 = _b64(png_bytes(seed=13))
V2_IMAGE = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [IMAGE_B64]}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/fmnist:predict", {"instances": [{"b64": IMAGE_B64}], "inputs": {"b64": IMAGE_B64}}),
        ("/v1/models/fmnist:predict", {"instances": [{"b64": IMAGE_B64}], "image2": IMAGE_B64}),
        ("/v2/models/fmnist/infer", {"inputs": [V2_IMAGE, {**V2_IMAGE, "name": "image2"}]}),
        (
            "/v2/models/fmnist/infer",
            {"inputs": [V2_IMAGE, {"name": "pixels", "shape": [784], "datatype": "UINT8", "data": [0] * 784}]},
        ),
        ("/v2/models/fmnist/infer", {"parameters": {"image2": IMAGE_B64}, "inputs": [V2_IMAGE]}),
    ],
    ids=["v1-instances-and-inputs", "v1-extra-key", "v2-two-bytes-inputs", "v2-pixel-input", "v2-parameter"],
)
def test_a_second_place_for_an_image_is_refused_before_anything_reaches_the_vendor(
    recorded: tuple[StaticApp, str], path: str, body: dict
) -> None:
    vendor, url = recorded
    before = len(vendor.requests)
    response = post(f"{url}{path}", json=body)
    assert response.status_code == 400 and response.json()["code"] == "bad_request", response.text
    assert len(vendor.requests) == before  # the unpurified image never left the gateway


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/fmnist/infer", 422),  # KServe's ModelServer: FastAPI refuses the body before the handler
        ("/v2/models/fmnist/versions/1/infer", 422),
        ("/v1/models/fmnist:predict", 400),  # TF-Serving and KServe's v1 both answer 400
    ],
)
def test_a_body_that_is_not_json_gets_the_status_the_protocols_server_answers(
    recorded: tuple[StaticApp, str], path: str, status: int
) -> None:
    vendor, url = recorded
    before = len(vendor.requests)
    response = post(f"{url}{path}", content=b'{"inputs": [', headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and "not valid JSON" in response.json()["error"]
    assert len(vendor.requests) == before


def test_raw_image_body_on_predict_is_the_vendors_raw_protocol(gateway: str, vendor_url: str) -> None:
    image = png_bytes(seed=1)
    (purified,) = _purified(gateway, image)
    direct = post(f"{vendor_url}/predict", content=purified, headers={"Content-Type": "image/png"})
    through = post(
        f"{gateway}/predict",
        params={"seed": SEED},
        content=image,
        headers={"Content-Type": "image/png", "X-Request-ID": "side-1"},
    )
    _assert_relayed(through, direct)
    assert through.headers["x-request-id"] == "side-1"
    assert "purify;dur=" in through.headers["server-timing"]


def test_tfserving_request_is_purified_and_relayed(gateway: str, vendor_url: str) -> None:
    images = [png_bytes(seed=2), png_bytes(seed=3)]
    purified = _purified(gateway, *images)
    path = "/v1/models/fmnist:predict"
    direct = post(f"{vendor_url}{path}", json={"instances": [{"b64": _b64(p)} for p in purified]})
    through = post(f"{gateway}{path}", params={"seed": SEED}, json={"instances": [{"b64": _b64(i)} for i in images]})
    assert direct.status_code == 200
    _assert_relayed(through, direct)


def test_v2_request_is_purified_and_relayed(gateway: str, vendor_url: str) -> None:
    images = [png_bytes(seed=4), png_bytes(seed=5)]
    purified = _purified(gateway, *images)
    path = "/v2/models/fmnist/infer"

    def body(pngs: list[bytes]) -> dict:
        return {
            "id": "req-9",
            "inputs": [{"name": "image", "shape": [len(pngs)], "datatype": "BYTES", "data": [_b64(p) for p in pngs]}],
        }

    direct = post(f"{vendor_url}{path}", json=body(purified))
    through = post(f"{gateway}{path}", params={"seed": SEED}, json=body(images))
    assert direct.status_code == 200
    _assert_relayed(through, direct)
    assert through.json()["id"] == "req-9"


def test_vendor_errors_are_relayed_unchanged(gateway: str, vendor_url: str) -> None:
    body = {"instances": [{"b64": _b64(png_bytes())}]}
    direct = post(f"{vendor_url}/v1/models/other:predict", json=body)
    through = post(f"{gateway}/v1/models/other:predict", json=body)
    assert direct.status_code == 404
    assert through.status_code == 404 and through.headers["content-type"] == direct.headers["content-type"]
    # The protocols' error shape, {"error": "<message>"}, with our code and request id beside it.
    assert through.json()["code"] == direct.json()["code"] == "model_not_found"
    assert isinstance(through.json()["error"], str) and "other" in through.json()["error"]


def test_a_bad_sidecar_body_is_the_gateways_json_error(gateway: str) -> None:
    response = post(f"{gateway}/v1/models/fmnist:predict", json={"instances": [1]})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"
    response = post(
        f"{gateway}/v2/models/fmnist/infer",
        json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [_b64(b"not an image")]}]},
    )
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_other_fields_path_query_and_headers_are_kept_and_gateway_credentials_dropped(ddpm: Path) -> None:
    recorder = StaticApp(207, b"vendor says hi", "text/x-vendor")
    image = png_bytes(seed=6)
    with (
        serve_asgi(recorder) as upstream_url,
        running_gateway(gateway_settings(ddpm, upstream_url, api_key="gateway-key-123")) as url,
    ):
        response = post(
            f"{url}/v1/models/my-model.v3:predict",
            params={"version": "3"},
            json={"signature_name": "serving_default", "instances": [{"b64": _b64(image)}]},
            headers={
                "X-API-Key": "gateway-key-123",
                "Authorization": "Bearer vendor-token",
                "X-Custom": "kept",
                "X-Request-Timeout": "30",
            },
        )
    assert response.status_code == 207
    assert response.content == b"vendor says hi" and response.headers["content-type"] == "text/x-vendor"
    question, sent = recorder.requests  # "do you serve my-model.v3?" (a 207 is no 404: go on), then the request
    assert (question.method, question.path, question.body) == ("GET", "/v1/models/my-model.v3", b"")
    assert question.headers["authorization"] == "Bearer vendor-token" and "x-api-key" not in question.headers
    assert sent.path == "/v1/models/my-model.v3:predict?version=3"
    assert sent.headers["authorization"] == "Bearer vendor-token"  # the vendor's credential passes
    assert "x-api-key" not in sent.headers and "x-request-timeout" not in sent.headers
    assert sent.headers["x-custom"] == "kept" and sent.headers["x-request-id"] == response.headers["x-request-id"]
    forwarded = json.loads(sent.body)
    assert forwarded["signature_name"] == "serving_default"
    purified = base64.b64decode(forwarded["instances"][0]["b64"])
    assert purified != image and decode_png(purified).size == (28, 28)


def test_a_custom_raw_path_is_a_sidecar_route_and_predict_keeps_its_api(ddpm: Path) -> None:
    recorder = StaticApp(200, b'{"label": 2}')
    with (
        serve_asgi(recorder) as upstream_url,
        running_gateway(gateway_settings(ddpm, upstream_url, upstream_raw_path="/invocations")) as url,
    ):
        relayed = post(f"{url}/invocations", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert relayed.status_code == 200 and relayed.json() == {"label": 2}
        # With the raw path elsewhere, an image body on /predict is one image for the gateway's own API.
        own = post(f"{url}/predict", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert own.status_code == 200 and own.json()["predictions"] == [{"label": 2}]
    assert [r.path for r in recorder.requests] == ["/invocations", "/invocations"]
    assert recorder.requests[0].headers["content-type"] == "image/png"


def test_purification_off_forwards_the_body_unchanged() -> None:
    recorder = StaticApp(200, b'{"predictions": []}')
    body = json.dumps({"instances": [{"b64": _b64(png_bytes(seed=7))}]}).encode()
    with serve_asgi(recorder) as upstream_url, running_gateway(gateway_settings(None, upstream_url)) as url:
        response = post(f"{url}/v1/models/fmnist:predict", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 200
        bad = post(f"{url}/v1/models/fmnist:predict", json={"instances": [{"b64": _b64(b"text")}]})
        assert bad.status_code == 415  # still validated: bad images never reach the vendor
    (sent,) = [request for request in recorder.requests if request.method == "POST"]
    assert sent.body == body


# --- NVIDIA's tritonclient (the real v2 client): JSON and binary inputs, binary outputs, health, metadata ---


def client_for(base_url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(base_url.removeprefix("http://"), network_timeout=60.0)


def image_input(elements: list[bytes], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def test_health_and_metadata_through_the_gateway(gateway: str, vendor_url: str) -> None:
    client = client_for(gateway)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fmnist") and not client.is_model_ready("other")
    assert client.get_model_metadata("fmnist") == get(f"{vendor_url}/v2/models/fmnist").json()
    assert client.get_server_metadata()["name"] == "zipgate-demo-vendor"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("other")
    assert info.value.status() == "404"
    bad = get(f"{gateway}/v2/models/fm%6eist")  # the sidecar's path checks hold here too: nothing encoded
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"


def test_json_inputs_are_purified_and_the_answer_relayed(gateway: str, vendor_url: str) -> None:
    images = [png_bytes(seed=11), png_bytes(seed=12)]
    expected = post(
        f"{vendor_url}/v2/models/fmnist/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(p).decode() for p in _purified(gateway, *images)],
                }
            ]
        },
    ).json()
    result = client_for(gateway).infer(
        "fmnist",
        [image_input([base64.b64encode(i) for i in images], binary=False)],
        request_id="tc-json",
        query_params={"seed": SEED},
    )
    assert result.get_response()["id"] == "tc-json"
    outputs = {output["name"]: output["data"] for output in expected["outputs"]}
    assert result.as_numpy("label").tolist() == outputs["label"]
    np.testing.assert_allclose(result.as_numpy("probabilities").ravel(), outputs["probabilities"], rtol=1e-6)


def test_an_unknown_model_is_refused_before_purification(gateway: str) -> None:
    def purified_so_far() -> float:
        return metric_value(get(f"{gateway}/metrics").text, "zipgate_images_purified_total")

    before = purified_so_far()
    with pytest.raises(InferenceServerException) as info:
        client_for(gateway).infer("other", [image_input([base64.b64encode(png_bytes())], binary=True)])
    assert info.value.status() == "404" and "does not serve model 'other'" in str(info.value.message())
    assert purified_so_far() == before


def test_binary_inputs_are_purified_in_place_and_binary_outputs_relayed(ddpm: Path) -> None:
    # The vendor answers with a binary output, as Triton and KServe do for binary_data_output.
    labels = np.array([3, 7], dtype=np.int64)
    header = json.dumps(
        {
            "model_name": "m",
            "outputs": [{"name": "label", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}],
        }
    ).encode()
    vendor = StaticApp(
        200,
        header + labels.tobytes(),
        "application/octet-stream",
        headers=(("inference-header-content-length", str(len(header))),),
    )
    images = [png_bytes(seed=21), png_bytes(seed=22)]
    scale = triton.InferInput("scale", [1], "FP32")
    scale.set_data_from_numpy(np.array([0.5], dtype=np.float32), binary_data=True)
    with serve_asgi(vendor) as vendor_url, running_gateway(gateway_settings(ddpm, vendor_url)) as url:
        result = client_for(url).infer("m", [scale, image_input(images, binary=True)], request_id="tc-bin")
        (sent,) = [request for request in vendor.requests if request.method == "POST"]
    assert result.as_numpy("label").tolist() == [3, 7]  # the binary answer, relayed as framed

    assert sent.path == "/v2/models/m/infer"
    length = int(sent.headers["inference-header-content-length"])
    forwarded = json.loads(sent.body[:length])
    assert forwarded["id"] == "tc-bin" and forwarded["parameters"]["binary_data_output"] is True
    scale_size = forwarded["inputs"][0]["parameters"]["binary_data_size"]
    image_size = forwarded["inputs"][1]["parameters"]["binary_data_size"]
    assert len(sent.body) == length + scale_size + image_size
    assert np.frombuffer(sent.body[length : length + scale_size], dtype=np.float32).tolist() == [0.5]
    elements = decode_bytes_elements(sent.body[length + scale_size :], "forwarded")
    assert len(elements) == 2 and encode_bytes_elements(elements) == sent.body[length + scale_size :]
    for element, original in zip(elements, images, strict=True):  # raw PNG in, raw purified PNG out
        assert element != original and decode_png(element).size == (28, 28)


def test_a_malformed_binary_body_is_a_json_400(gateway: str) -> None:
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
    ).encode()
    for body, length in (
        (header + b"\x05\x00\x00\x00ab", len(header)),  # sizes do not add up
        (header + b"\x09\x00", len(header) + 1),  # the header length cuts into the data
        (header, len(header) + 5),
    ):  # longer than the body
        response = post(
            f"{gateway}/v2/models/fmnist/infer", content=body, headers={"Inference-Header-Content-Length": str(length)}
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "bad_request" and response.json()["error"]
