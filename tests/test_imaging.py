"""PIL ⇄ tensor, resizing, and tiling small images into the model's canvas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from service.purify.imaging import pil_to_tensor, resize, tensor_to_pil, tile, tiles_per_side, untile
from service.purify.options import SmallImageFit
from service.purify.pipeline import PAD_FILL, fit_to_model


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


def test_small_images_are_padded_centred_on_black_and_cropped_back_exactly():
    fashion = torch.rand(1, 28, 28) * 2 - 1
    wide = torch.rand(1, 20, 30) * 2 - 1
    fitted = fit_to_model([fashion, wide], model_size=32, small_fit=SmallImageFit.PAD)
    canvas = fitted.canvases[0]
    assert fitted.canvases.shape == (2, 1, 32, 32)
    assert torch.equal(canvas[:, 2:30, 2:30], fashion)  # as the shipped model was trained: 28² in 32²
    border = torch.ones_like(canvas, dtype=torch.bool)
    border[:, 2:30, 2:30] = False
    assert torch.all(canvas[border] == PAD_FILL)
    assert torch.equal(fitted.canvases[1][:, 6:26, 1:31], wide)
    restored = fitted.restore(fitted.canvases)
    assert torch.equal(restored[0], fashion) and torch.equal(restored[1], wide)


def test_resize_mode_scales_small_images_up_and_pad_mode_still_resizes_large_ones():
    small, large = torch.rand(1, 28, 28), torch.rand(1, 40, 40)
    resized = fit_to_model([small], model_size=32, small_fit=SmallImageFit.RESIZE)
    assert torch.allclose(resized.canvases[0], resize(small, 32, 32))
    padded = fit_to_model([large], model_size=32, small_fit=SmallImageFit.PAD)
    assert torch.allclose(padded.canvases[0], resize(large, 32, 32))
    assert padded.restore(padded.canvases)[0].shape == large.shape


def test_tiles_that_do_not_divide_the_canvas_still_make_full_canvases_and_pad_inside_tiles():
    images = [torch.rand(3, 28, 28) for _ in range(4)]  # 9 tiles of 28 per side: 252 of 256 used
    tiny = torch.rand(3, 25, 25)  # 10 tiles of 25 per side: 250 of 256 used
    odd = torch.rand(3, 60, 60)  # 4 tiles of 64 per side: padded by 2 on each side inside its tile
    fitted = fit_to_model([*images, tiny, odd], model_size=256)
    assert fitted.canvases.shape == (3, 3, 256, 256)
    restored = fitted.restore(fitted.canvases)
    assert all(torch.equal(r, i) for r, i in zip(restored, [*images, tiny, odd], strict=True))
