"""Sidecar mode: vendor-format requests on vendor paths are purified, forwarded and relayed unchanged."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import (
    decode_png,
    gateway_settings,
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
    return [base64.b64decode(b) for b in
            post(f"{gateway}/purify", params={"seed": SEED}, files=files).json()["images"]]


def _assert_relayed(through: httpx.Response, direct: httpx.Response) -> None:
    assert through.status_code == direct.status_code
    assert through.headers["content-type"] == direct.headers["content-type"]
    assert through.content == direct.content


def test_raw_image_body_on_predict_is_the_vendors_raw_protocol(gateway: str, vendor_url: str) -> None:
    image = png_bytes(seed=1)
    (purified,) = _purified(gateway, image)
    direct = post(f"{vendor_url}/predict", content=purified, headers={"Content-Type": "image/png"})
    through = post(f"{gateway}/predict", params={"seed": SEED}, content=image,
                         headers={"Content-Type": "image/png", "X-Request-ID": "side-1"})
    _assert_relayed(through, direct)
    assert through.headers["x-request-id"] == "side-1"
    assert "purify;dur=" in through.headers["server-timing"]


def test_tfserving_request_is_purified_and_relayed(gateway: str, vendor_url: str) -> None:
    images = [png_bytes(seed=2), png_bytes(seed=3)]
    purified = _purified(gateway, *images)
    path = "/v1/models/fmnist:predict"
    direct = post(f"{vendor_url}{path}", json={"instances": [{"b64": _b64(p)} for p in purified]})
    through = post(f"{gateway}{path}", params={"seed": SEED},
                         json={"instances": [{"b64": _b64(i)} for i in images]})
    assert direct.status_code == 200
    _assert_relayed(through, direct)


def test_v2_request_is_purified_and_relayed(gateway: str, vendor_url: str) -> None:
    images = [png_bytes(seed=4), png_bytes(seed=5)]
    purified = _purified(gateway, *images)
    path = "/v2/models/fmnist/infer"

    def body(pngs: list[bytes]) -> dict:
        return {"id": "req-9", "inputs": [{"name": "image", "shape": [len(pngs)], "datatype": "BYTES",
                                           "data": [_b64(p) for p in pngs]}]}

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
    assert through.json()["error"]["code"] == direct.json()["error"]["code"] == "model_not_found"


def test_a_bad_sidecar_body_is_the_gateways_json_error(gateway: str) -> None:
    response = post(f"{gateway}/v1/models/fmnist:predict", json={"inputs": [1]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    response = post(f"{gateway}/v2/models/fmnist/infer", json={"inputs": [
        {"name": "image", "shape": [1], "datatype": "BYTES", "data": [_b64(b"not an image")]}]})
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"


def test_other_fields_path_query_and_headers_are_kept_and_gateway_credentials_dropped(ddpm: Path) -> None:
    recorder = StaticApp(207, b"vendor says hi", "text/x-vendor")
    image = png_bytes(seed=6)
    with serve_asgi(recorder) as upstream_url, running_gateway(
            gateway_settings(ddpm, upstream_url, api_key="gateway-key-123")) as url:
        response = post(
            f"{url}/v1/models/my-model.v3:predict", params={"version": "3"},
            json={"signature_name": "serving_default", "instances": [{"b64": _b64(image)}]},
            headers={"X-API-Key": "gateway-key-123", "Authorization": "Bearer vendor-token",
                     "X-Custom": "kept", "X-Request-Timeout": "30"})
    assert response.status_code == 207
    assert response.content == b"vendor says hi" and response.headers["content-type"] == "text/x-vendor"
    (sent,) = recorder.requests
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
    with serve_asgi(recorder) as upstream_url, running_gateway(
            gateway_settings(ddpm, upstream_url, upstream_raw_path="/invocations")) as url:
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
        response = post(f"{url}/v1/models/fmnist:predict", content=body,
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 200
        bad = post(f"{url}/v1/models/fmnist:predict", json={"instances": [{"b64": _b64(b"text")}]})
        assert bad.status_code == 415  # still validated: bad images never reach the vendor
    (sent,) = recorder.requests
    assert sent.body == body
