"""Pixel modes beyond 8-bit opaque: 16-bit, 32-bit integer and float images are scaled by their range
(never clipped at 255), and transparency is composited onto black on the L and the RGB path alike.

Every expectation is derived from the input: a high-depth image is built from a known 8-bit array,
and a transparent one's expected pixels are its colour × alpha / 255.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.purify.imaging import UnreadablePixels, pil_to_tensor
from tests.gateway_servers import TINY_SIZE, FakePurifier, gateway_settings, running_gateway

RNG = np.random.default_rng(2026)
GRAY8 = RNG.integers(0, 256, (TINY_SIZE, TINY_SIZE), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
ALPHA8 = RNG.integers(0, 256, (TINY_SIZE, TINY_SIZE), dtype=np.uint8)
ALPHA8[0, 0], ALPHA8[0, 1] = 0, 255  # a fully transparent and a fully opaque pixel, surely


def reopened(image: Image.Image, fmt: str = "PNG", **params: object) -> Image.Image:
    """`image` encoded as `fmt` and decoded again, as the gateway would receive it."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    decoded.load()
    return decoded


def encoded(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def as_255(x: torch.Tensor) -> np.ndarray:
    """A tensor of `pil_to_tensor` back in 0..255 (float, unrounded), channels last."""
    return ((x + 1.0) * 127.5).permute(1, 2, 0).numpy().astype(np.float64)


# --- high bit depths ------------------------------------------------------------------------------


def sixteen_bit(gray8: np.ndarray) -> np.ndarray:
    """The 16-bit image whose 8-bit version is `gray8`: v·257 maps 0..255 exactly onto 0..65535."""
    return gray8.astype(np.uint16) * 257


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: reopened(Image.fromarray(sixteen_bit(GRAY8))), id="png-I;16"),
        pytest.param(lambda: reopened(Image.fromarray(sixteen_bit(GRAY8)), "TIFF"), id="tiff-I;16"),
        pytest.param(lambda: reopened(Image.fromarray(sixteen_bit(GRAY8).astype(">u2")), "TIFF"), id="tiff-I;16B"),
        pytest.param(lambda: reopened(Image.fromarray(sixteen_bit(GRAY8).astype(np.int32)), "TIFF"), id="tiff-I"),
        pytest.param(lambda: reopened(Image.fromarray(GRAY8.astype(np.float32) / 255.0), "TIFF"), id="tiff-F"),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_high_depth_grayscale_equals_its_8_bit_version(make, channels: int) -> None:
    image = make()
    assert image.mode in ("I;16", "I;16B", "I", "F")  # what Pillow makes of it, not 8-bit already
    got = pil_to_tensor(image, channels)
    want = pil_to_tensor(Image.fromarray(GRAY8), channels)
    # Scaling 0..65535 (or 0..1) to 0..255 lands on the 8-bit values up to float32 rounding.
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_sixteen_bit_values_between_the_8_bit_ones_scale_linearly() -> None:
    values = RNG.integers(0, 65536, (TINY_SIZE, TINY_SIZE), dtype=np.uint16)
    got = as_255(pil_to_tensor(reopened(Image.fromarray(values)), 1))[:, :, 0]
    assert np.allclose(got, values.astype(np.float64) * 255.0 / 65535.0, atol=1e-3)
    assert len(np.unique(np.round(got))) > 100  # not black and white (clipping left 2 levels)


def test_sixteen_bit_transparent_colour_composites_onto_black() -> None:
    values = sixteen_bit(GRAY8)
    marked = int(GRAY8[3, 3])
    values[np.equal(GRAY8, marked)] = 7  # one grey level marked transparent (PNG tRNS)
    image = reopened(Image.fromarray(values), transparency=7)
    got = as_255(pil_to_tensor(image, 1))[:, :, 0]
    want = np.where(values == 7, 0.0, values.astype(np.float64) / 257.0)
    assert np.allclose(got, want, atol=1e-3)


@pytest.mark.parametrize(
    ("array", "what"),
    [
        (np.full((4, 4), 2.0, np.float32), "above 1"),
        (np.full((4, 4), -0.5, np.float32), "negative"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.full((4, 4), 70_000, np.int32), "beyond 16 bits"),
        (np.full((4, 4), -3, np.int32), "negative int"),
    ],
)
def test_values_a_mode_cannot_explain_are_refused_by_name(array: np.ndarray, what: str) -> None:
    image = reopened(Image.fromarray(array), "TIFF")
    with pytest.raises(UnreadablePixels, match="send an 8- or 16-bit PNG"):
        pil_to_tensor(image, 1)


# --- transparency -----------------------------------------------------------------------------------


def composited(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """colour over black: colour × alpha / 255 (colour H×W or H×W×C)."""
    a = alpha.astype(np.float64) / 255.0
    return colour.astype(np.float64) * (a[:, :, None] if colour.ndim == 3 else a)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's RGB → L, ITU-R 601-2, as the opaque path converts."""
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)


@pytest.mark.parametrize("channels", [1, 3])
def test_la_composites_onto_black(channels: int) -> None:
    image = reopened(Image.fromarray(np.stack([GRAY8, ALPHA8], axis=-1), mode="LA"))
    got = as_255(pil_to_tensor(image, channels))
    want = composited(GRAY8, ALPHA8)
    for c in range(channels):
        assert np.allclose(got[:, :, c], want, atol=1e-3)
    assert np.all(got[0, 0] == 0.0) and np.allclose(got[0, 1], GRAY8[0, 1], atol=1e-4)


def test_rgba_composites_onto_black_on_both_paths() -> None:
    image = reopened(Image.fromarray(np.dstack([RGB8, ALPHA8])))
    assert np.allclose(as_255(pil_to_tensor(image, 3)), composited(RGB8, ALPHA8), atol=1e-3)
    gray = as_255(pil_to_tensor(image, 1))[:, :, 0]
    assert np.allclose(gray, composited(luma(RGB8), ALPHA8), atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
def test_palette_transparency_composites_onto_black(channels: int) -> None:
    palette_image = Image.fromarray(RGB8).quantize(colors=16)
    indices = np.asarray(palette_image)
    transparent = int(indices[5, 5])
    image = reopened(palette_image, transparency=transparent)
    assert image.mode == "P" and image.info.get("transparency") == transparent
    opaque_rgb = np.asarray(image.convert("RGB"))
    alpha = np.where(indices == transparent, 0, 255).astype(np.uint8)
    want = composited(opaque_rgb if channels == 3 else luma(opaque_rgb), alpha)
    got = as_255(pil_to_tensor(image, channels))
    assert np.allclose(got if channels == 3 else got[:, :, 0], want, atol=1e-3)
    assert np.all(got[5, 5] == 0.0)


def test_grayscale_trns_composites_onto_black() -> None:
    gray = GRAY8.copy()
    gray[:4] = 9
    image = reopened(Image.fromarray(gray), transparency=9)
    got = as_255(pil_to_tensor(image, 1))[:, :, 0]
    assert np.allclose(got, np.where(gray == 9, 0.0, gray), atol=1e-4)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("channels", [1, 3])
def test_opaque_8_bit_images_are_converted_as_before(mode: str, channels: int) -> None:
    image = Image.fromarray(GRAY8 if mode == "L" else RGB8)
    target = "L" if channels == 1 else "RGB"
    want = np.asarray(image.convert(target), dtype=np.float64).reshape(TINY_SIZE, TINY_SIZE, channels)
    assert np.array_equal(np.round(as_255(pil_to_tensor(image, channels)), 3), want)


# --- over the running gateway (a purifier that returns its input, so the answer shows the decode) -------


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    settings = gateway_settings(None, "http://127.0.0.1:9", purification_enabled=True)
    with running_gateway(settings, purifier_factory=lambda device: FakePurifier()) as url:
        yield url


def purify(url: str, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(f"{url}/purify", content=body, headers={"Content-Type": content_type}, timeout=60)


def test_gateway_purifies_a_16_bit_png_as_its_8_bit_version(gateway: str) -> None:
    response = purify(gateway, encoded(Image.fromarray(sixteen_bit(GRAY8))), "image/png")
    assert response.status_code == 200, response.text
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), GRAY8)


def test_gateway_purifies_a_transparent_la_png_composited_onto_black(gateway: str) -> None:
    body = encoded(Image.fromarray(np.stack([GRAY8, ALPHA8], axis=-1), mode="LA"))
    response = purify(gateway, body, "image/png")
    assert response.status_code == 200, response.text
    got = np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.float64)
    assert np.abs(got - composited(GRAY8, ALPHA8)).max() <= 0.5 + 1e-6  # the 8-bit PNG's rounding only


def test_gateway_refuses_an_uninterpretable_float_tiff_without_a_500(gateway: str) -> None:
    body = encoded(Image.fromarray(np.full((TINY_SIZE, TINY_SIZE), 40.0, np.float32)), "TIFF")
    response = purify(gateway, body, "image/tiff")
    assert 400 <= response.status_code < 500, response.text
    assert "[0, 1]" in response.json()["error"]["message"]
