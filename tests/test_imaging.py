"""PIL ⇄ tensor, resizing, and tiling small images into the model's canvas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from service.purify.imaging import pil_to_tensor, resize, tensor_to_pil, tile, tiles_per_side, untile
from service.purify.pipeline import fit_to_model


def test_pil_round_trip_is_exact_for_8_bit_images():
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = pil_to_tensor(Image.fromarray(array), channels=3)
    assert x.shape == (3, 5, 7) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(x)), array)


def test_grayscale_conversion_and_bad_channels():
    x = pil_to_tensor(Image.new("RGB", (4, 4), (255, 255, 255)), channels=1)
    assert x.shape == (1, 4, 4) and torch.allclose(x, torch.ones_like(x))
    with pytest.raises(ValueError):
        pil_to_tensor(Image.new("L", (4, 4)), channels=2)


def test_tile_untile_round_trip_and_layout():
    images = torch.arange(5 * 1 * 2 * 2, dtype=torch.float32).view(5, 1, 2, 2)
    canvases = tile(images, per_side=2, fill=-1)
    assert canvases.shape == (2, 1, 4, 4)
    assert torch.equal(canvases[0, 0, :2, 2:], images[1, 0])  # row-major: 2nd image top-right
    assert torch.equal(canvases[1, 0, 2:, 2:], torch.full((2, 2), -1.0))  # unused slot holds fill
    assert torch.equal(untile(canvases, 2, 5), images)


def test_paper_packing_64_cifar_images_per_256_canvas():
    assert tiles_per_side(32, 256) == 8
    images = torch.randn(64, 3, 32, 32)
    canvases = tile(images, 8)
    assert canvases.shape == (1, 3, 256, 256)
    assert torch.equal(untile(canvases, 8, 64), images)


def test_fit_to_model_resizes_large_and_tiles_small_then_restores_order():
    images = [torch.rand(3, 300, 200), torch.rand(3, 32, 32), torch.rand(3, 64, 64), torch.rand(3, 30, 30)]
    fitted = fit_to_model(images, model_size=256)
    assert fitted.canvases.shape[1:] == (3, 256, 256)
    restored = fitted.restore(fitted.canvases)
    assert [tuple(r.shape) for r in restored] == [tuple(i.shape) for i in images]
    # An exact-size tile is cut back unchanged.
    assert torch.allclose(restored[1], images[1], atol=1e-6)


def test_resize_is_a_no_op_at_the_same_size():
    x = torch.rand(1, 8, 8)
    assert resize(x, 8, 8) is x
    assert resize(x, 4, 6).shape == (1, 4, 6)
