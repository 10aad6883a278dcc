"""The demo vendor's one model version ("1", as its metadata and status list it) under the protocols'
`/versions/{v}` paths, directly and through the gateway's sidecar; another version is a 404 in the
protocol's error shape. Real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.demo.vendor_app import MODEL_VERSION
from tests.gateway_servers import (
    error_details,
    gateway_settings,
    png_bytes,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
)
from tests.raw_http import tfserving_body, v2_body

NAME = "fmnist"
TIMEOUT_S = 60.0
V1_PREDICT = "/v1/models/fmnist/versions/{v}:predict"
V2_INFER = "/v2/models/fmnist/versions/{v}/infer"
QUESTIONS = ("/v1/models/fmnist/versions/{v}", "/v2/models/fmnist/versions/{v}", "/v2/models/fmnist/versions/{v}/ready")


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The demo vendor (a tiny model) and a purifying gateway in front of it."""
    root: Path = tmp_path_factory.mktemp("versions")
    with (
        running_vendor(tiny_vendor_dir(root)) as vendor_url,
        running_gateway(gateway_settings(tiny_ddpm_dir(root), vendor_url)) as gateway_url,
    ):
        yield vendor_url, gateway_url


def _predict(base_url: str, version: str) -> tuple[httpx.Response, httpx.Response]:
    image = png_bytes()
    json = {"Content-Type": "application/json"}
    v1 = httpx.post(f"{base_url}{V1_PREDICT.format(v=version)}", content=tfserving_body(image), headers=json,
                    timeout=TIMEOUT_S)  # fmt: skip
    v2 = httpx.post(f"{base_url}{V2_INFER.format(v=version)}", content=v2_body(image), headers=json,
                    timeout=TIMEOUT_S)  # fmt: skip
    return v1, v2


@pytest.mark.parametrize("through", ["vendor", "gateway"])
def test_the_advertised_version_predicts(urls: tuple[str, str], through: str) -> None:
    base_url = urls[0] if through == "vendor" else urls[1]
    v1, v2 = _predict(base_url, MODEL_VERSION)
    assert v1.status_code == 200, v1.text
    assert len(v1.json()["predictions"]) == 1
    assert v2.status_code == 200, v2.text
    assert v2.json()["model_version"] == MODEL_VERSION
    assert {output["name"] for output in v2.json()["outputs"]} == {"probabilities", "label"}


@pytest.mark.parametrize("through", ["vendor", "gateway"])
def test_another_version_is_404_in_the_protocols_shape(urls: tuple[str, str], through: str) -> None:
    base_url = urls[0] if through == "vendor" else urls[1]
    for answer in _predict(base_url, "2"):
        assert answer.status_code == 404, answer.text
        error = error_details(answer.json(), answer.request.url.path)
        assert error["code"] == "model_not_found" and "'fmnist'" in error["message"], error


def test_the_versions_metadata_status_and_readiness(urls: tuple[str, str]) -> None:
    vendor_url = urls[0]
    for base_url in urls:
        status, metadata, ready = (
            httpx.get(f"{base_url}{path.format(v=MODEL_VERSION)}", timeout=TIMEOUT_S) for path in QUESTIONS
        )
        assert status.json()["model_version_status"][0]["version"] == MODEL_VERSION, status.text
        assert metadata.json()["versions"] == [MODEL_VERSION], metadata.text
        assert ready.json() == {"name": NAME, "ready": True}, ready.text
    for path in QUESTIONS:
        other = httpx.get(f"{vendor_url}{path.format(v='2')}", timeout=TIMEOUT_S)
        assert other.status_code == 404
        assert error_details(other.json(), other.request.url.path)["message"] == (
            f"model 'fmnist' version '2' not found; this server serves version {MODEL_VERSION!r}"
        )
