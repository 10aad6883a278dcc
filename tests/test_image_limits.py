"""Image limits: each image's own byte and pixel limits first, then the request's pixel budget,
checked on the headers (parsed once) before any pixel is decoded, on every route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.api.decode import ImageLimits, open_images
from service.config import load_settings
from service.errors import PayloadTooLarge
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import error_details, gateway_settings, png_bytes, png_header_claiming, post, running_gateway
from tests.raw_http import b64, tfserving_body, v2_body

# What tests/request_memory_probe.py may measure for one maximal request; README states this figure.
MAX_REQUEST_MEMORY_MIB = 1536


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plain_gateway() -> Iterator[tuple[str, StaticApp]]:
    """A gateway without purification (fast) in front of a recording vendor, default limits."""
    recorder = StaticApp(200, b'{"label": 1}')
    with serve_asgi(recorder) as upstream_url, running_gateway(gateway_settings(None, upstream_url)) as url:
        yield url, recorder


@pytest.mark.parametrize("side", [5000, 20000])  # over max_image_pixels; 20000² also trips PIL's bomb guard
def test_one_image_too_large_is_named_by_its_own_limit_not_the_request_budget(
    plain_gateway: tuple[str, StaticApp], side: int
) -> None:
    url, recorder = plain_gateway
    forwarded = len([r for r in recorder.requests if r.method == "POST"])  # GETs ask whether a model exists
    bomb = png_header_claiming(side, side)
    v2 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(bomb)]}]}
    for response in (
        post(f"{url}/predict", files=[("image", bomb)]),
        post(f"{url}/predict", json={"images": [b64(bomb)]}),
        post(f"{url}/v2/models/fmnist/infer", json=v2),
    ):
        assert response.status_code == 413, response.text
        message = error_details(response.json(), response.request.url.path)["message"]
        assert "max_image_pixels" in message and "max_request_pixels" not in message, message
    assert len([r for r in recorder.requests if r.method == "POST"]) == forwarded


def test_open_images_checks_each_image_then_the_sum() -> None:
    limits = ImageLimits(max_image_bytes=1 << 20, max_image_pixels=64 * 64)
    small = png_bytes(64, 64)
    opened = open_images([small, small], limits, max_request_pixels=2 * 64 * 64)
    assert [image.size for image in opened] == [(64, 64), (64, 64)]
    with pytest.raises(PayloadTooLarge, match="max_request_pixels"):
        open_images([small, small, small], limits, max_request_pixels=2 * 64 * 64)
    # A bomb after images that already spend the budget: still named by its own limit.
    with pytest.raises(PayloadTooLarge, match=r"image 2 .*max_image_pixels"):
        open_images([small, small, png_header_claiming(20000, 20000)], limits, max_request_pixels=64 * 64)


def test_each_image_header_is_parsed_once_per_request(
    plain_gateway: tuple[str, StaticApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = plain_gateway
    opened: list[object] = []
    real_open = Image.open

    def counting_open(*args: Any, **kwargs: Any) -> Image.Image:
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    response = post(f"{url}/predict", files=[("image", png_bytes(seed=1)), ("image", png_bytes(seed=2))])
    assert response.status_code == 200, response.text
    assert len(opened) == 2  # one Image.open per image: the budget reuses the opened images


def test_the_pixel_budget_covers_all_images_of_a_request() -> None:
    recorder = StaticApp(200, b'{"label": 1}')
    image = png_bytes(64, 64)
    settings = dict(max_request_pixels=2 * 64 * 64, max_image_pixels=64 * 65)  # 64×65 passes its own limit
    with serve_asgi(recorder) as upstream_url, running_gateway(gateway_settings(None, upstream_url, **settings)) as url:
        assert post(f"{url}/predict", files=[("image", image)] * 2).status_code == 200
        forwarded = len([r for r in recorder.requests if r.method == "POST"])  # the raw protocol: one per image
        for response in (
            post(f"{url}/predict", files=[("image", image)] * 3),
            post(f"{url}/predict", json={"images": [b64(image)] * 3}),
            post(
                f"{url}/v2/models/fmnist/infer",
                content=v2_body(image, image, image),
                headers={"Content-Type": "application/json"},
            ),
            # Declared sizes count before anything is decoded: two 64×64 and one claimed 64×65.
            post(
                f"{url}/v1/models/fmnist:predict",
                content=tfserving_body(image, image, png_header_claiming(64, 65)),
                headers={"Content-Type": "application/json"},
            ),
        ):
            assert response.status_code == 413, response.text
            error = error_details(response.json(), response.request.url.path)
            assert error["code"] == "payload_too_large" and "max_request_pixels" in error["message"]
    assert len([r for r in recorder.requests if r.method == "POST"]) == forwarded


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["one", "many"])  # the budget in one image, or spread over the most images
def test_a_maximal_request_stays_under_the_stated_memory(shape: str) -> None:
    """README, Configuration: one request at the default limits needs under 1.5 GiB (3-channel model)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak-RSS mark cannot be reset here (/proc/self/clear_refs)")
    # About 10 s; a hang fails here, well inside pytest's own 300 s timeout.
    probe = subprocess.run(
        [sys.executable, "-m", "tests.request_memory_probe", shape],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["pixels"] == load_settings().max_request_pixels
    assert result["peak_growth_mib"] < MAX_REQUEST_MEMORY_MIB, result
