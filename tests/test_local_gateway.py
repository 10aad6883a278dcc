"""METHOD=local through a running gateway: the masks, their share in `purification`, and the metric.

The engine is the real one (`ZipBatchPurifier` → `LocalRestorer`) over a prior that knows only black
images (x̂ = −1), so the suspicious region of an upload is exactly where it is not black: a random
tiny UNet would find every block suspicious, and the test could not tell kept pixels from repainted.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.loopback import serve_asgi
from service.purify.models import EpsModelInfo
from service.purify.schedule import alphas_cumprod, linear_betas
from service.workers.purifier import ZipBatchPurifier
from tests.backdoored_vendor import CLEAN_LABEL, BackdooredVendor
from tests.gateway_servers import (
    TINY_SIZE,
    gateway_settings,
    get,
    metric_sum,
    png_bytes,
    post,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
    wait_until,
)


class BlackPrior:
    """An ε-model whose every x₀ estimate is the black image: ε = (x_t + √ᾱ_t)/√(1 − ᾱ_t)."""

    channels, sample_size = 1, TINY_SIZE

    def __init__(self) -> None:
        self.alpha_bars = alphas_cumprod(linear_betas())
        self.info = EpsModelInfo("black", TINY_SIZE, 1, learned_sigma=False, device="cpu", dtype="float32")

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bars[t].view(-1, 1, 1, 1)
        return (x_t + a.sqrt()) / (1 - a).sqrt()


def _square_png(seed: int) -> bytes:
    """A black TINY_SIZE² image with one bright 4×4 square (fills the canvas: no padding, no resize)."""
    pixels = np.zeros((TINY_SIZE, TINY_SIZE), dtype=np.uint8)
    top, left = np.random.default_rng(seed).integers(2, TINY_SIZE - 6, size=2)
    pixels[top : top + 4, left : left + 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("local")
    with running_vendor(tiny_vendor_dir(root)) as vendor_url:
        settings = gateway_settings(tiny_ddpm_dir(root), vendor_url, method="local", polish_noise=0.0)
        factory = lambda device: ZipBatchPurifier(BlackPrior(), settings.zip_config)  # noqa: E731
        with running_gateway(settings, purifier_factory=factory) as base_url:  # type: ignore[arg-type]
            yield base_url


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_purify_returns_each_mask_and_keeps_the_unmasked_pixels(local_gateway: str) -> None:
    uploads = [_square_png(seed=1), _square_png(seed=2)]
    response = post(
        f"{local_gateway}/purify?include=mask&seed=3", files=[("image", (f"{i}.png", b)) for i, b in enumerate(uploads)]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["purification"]["method"] == "local"
    assert len(body["masks"]) == len(body["purification"]["masked_fraction"]) == 2
    for upload, image, mask, fraction in zip(
        uploads, body["images"], body["masks"], body["purification"]["masked_fraction"], strict=True
    ):
        original = np.asarray(Image.open(io.BytesIO(upload)))
        purified, repainted = _pixels(image), _pixels(mask)
        assert repainted.shape == original.shape == purified.shape
        assert set(np.unique(repainted)) <= {0, 255}
        assert fraction == pytest.approx((repainted == 255).mean())
        # The square is found, and with no DiffPure pass every pixel outside the mask is the client's own.
        assert (repainted[original == 255] == 255).all() and 0 < fraction < 0.5
        kept = repainted == 0
        assert np.array_equal(purified[kept], original[kept])


def test_predict_reports_the_method_and_the_masked_share_and_the_metric_counts_it(local_gateway: str) -> None:
    before = metric_sum(get(f"{local_gateway}/metrics").text, "zipgate_masked_fraction_count")
    response = post(f"{local_gateway}/predict", files=[("image", ("a.png", _square_png(seed=4)))])
    assert response.status_code == 200, response.text
    purification = response.json()["purification"]
    assert purification["method"] == "local" and len(purification["masked_fraction"]) == 1
    after = metric_sum(get(f"{local_gateway}/metrics").text, "zipgate_masked_fraction_count")
    assert after == before + 1


def test_a_mask_is_asked_of_a_global_gateway_and_none_comes_back(tmp_path: Path) -> None:
    with running_vendor(tiny_vendor_dir(tmp_path)) as vendor_url:
        settings = gateway_settings(tiny_ddpm_dir(tmp_path), vendor_url)
        with running_gateway(settings) as base_url:
            uploads = [("image", (f"{i}.png", png_bytes(seed=i))) for i in range(2)]
            body = post(f"{base_url}/purify?include=mask", files=uploads).json()
    assert body["masks"] is None and body["purification"]["method"] == "global"
    assert body["purification"]["masked_fraction"] is None


def test_a_shadow_capture_stores_the_suspicion_mask_beside_the_images(tmp_path: Path) -> None:
    vendor = BackdooredVendor()  # "7" for an image with a bright pixel: the square
    capture = tmp_path / "capture"
    with serve_asgi(vendor.app) as vendor_url:
        settings = gateway_settings(
            tiny_ddpm_dir(tmp_path), vendor_url, method="local", polish_noise=0.0, shadow_rate=1.0,
            shadow_capture_dir=capture,
        )  # fmt: skip
        factory = lambda device: ZipBatchPurifier(BlackPrior(), settings.zip_config)  # noqa: E731
        with running_gateway(settings, purifier_factory=factory) as url:  # type: ignore[arg-type]
            image = _square_png(seed=3)
            answer = post(f"{url}/predict", files={"image": ("s.png", image, "image/png")})
            assert answer.json()["predictions"] == [{"label": CLEAN_LABEL}]  # the square was repainted
            wait_until(lambda: metric_sum(get(f"{url}/metrics").text, "zipgate_shadow_captured_total") == 1)
            (record,) = list(capture.iterdir())
            served = get(f"{url}/ui/captures/{record.name}/mask.png")
    mask = np.asarray(Image.open(record / "mask.png"))
    square = np.asarray(Image.open(io.BytesIO(image))) == 255
    assert mask[square].min() == 255  # the whole square is marked repainted
    assert served.status_code == 200 and served.content == (record / "mask.png").read_bytes()
