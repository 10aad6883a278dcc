"""`jblur`: the randomly offset blur grid is a valid ZIP degradation and breaks grid-aligned triggers."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.purify.jitter import JitteredBlur, ShiftedBlur
from service.purify.transforms import Blur, project

ALL_OFFSETS_4 = tuple(itertools.product(range(4), range(4)))


def _batch(n: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    return torch.randn(n, 2, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(32, 32), (28, 28), (8, 20)])
def test_shifted_blur_is_an_orthogonal_projection_for_every_offset(size: tuple[int, int]) -> None:
    blur = ShiftedBlur(4, ALL_OFFSETS_4)
    x, y = _batch(16, 0, size), _batch(16, 1, size)
    px = project(blur, x)
    torch.testing.assert_close(project(blur, px), px, atol=1e-5, rtol=0)  # idempotent
    torch.testing.assert_close((px * y).sum((1, 2, 3)), (x * project(blur, y)).sum((1, 2, 3)), atol=1e-3, rtol=1e-5)
    a = blur.apply(x)
    torch.testing.assert_close(blur.apply(blur.pinv(a)), a, atol=1e-5, rtol=0)  # A A⁺ A = A


def test_shifted_blur_at_offset_zero_is_blur() -> None:
    x = _batch(3)
    torch.testing.assert_close(project(ShiftedBlur(4, ((0, 0),) * 3), x), project(Blur(4), x))


def test_cells_cut_by_the_border_average_only_their_own_pixels() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[..., 0, 0] = 3.0
    corner_alone = project(ShiftedBlur(4, ((3, 3),)), x)  # the grid starts 3 px before the image: a 1×1 cell
    assert corner_alone[0, 0, 0, 0] == 3.0 and corner_alone[0, 0, 0, 1] == 0.0 and corner_alone[0, 0, 1, 1] == 0.0
    three_by_three = project(ShiftedBlur(4, ((1, 1),)), x)  # a 3×3 cell at the corner
    torch.testing.assert_close(three_by_three[0, 0, :3, :3], torch.full((3, 3), 3.0 / 9))
    assert three_by_three[0, 0, 3, 3] == 0.0


def test_a_grid_aligned_trigger_survives_blur_but_not_a_shifted_grid() -> None:
    blocks = torch.randint(0, 2, (1, 1, 2, 2), generator=torch.Generator().manual_seed(3)).float() * 2 - 1
    trigger = blocks.repeat_interleave(4, -2).repeat_interleave(4, -1)  # constant over aligned 4×4 blocks
    image = torch.zeros(1, 1, 16, 16)
    image[..., 8:16, 8:16] = trigger
    torch.testing.assert_close(project(Blur(4), image), image)
    shifted = project(ShiftedBlur(4, ((2, 1),)), image)
    assert (shifted - image).abs().max() > 0.4


def test_jittered_blur_binds_seeded_offsets_per_image() -> None:
    jblur = JitteredBlur(4)
    first = jblur.bind(8, [torch.Generator().manual_seed(i) for i in range(8)], torch.device("cpu"))
    again = jblur.bind(8, [torch.Generator().manual_seed(i) for i in range(8)], torch.device("cpu"))
    assert first == again and len(set(first.offsets)) > 1
    assert all(0 <= dy < 4 and 0 <= dx < 4 for dy, dx in first.offsets)
    x = _batch(2)
    torch.testing.assert_close(project(jblur, x), project(Blur(4), x))  # unbound: the plain grid
    assert str(jblur) == "jblur:4"


def test_shifted_blur_rejects_mismatched_batches_and_offsets() -> None:
    with pytest.raises(ValueError, match="offsets"):
        ShiftedBlur(4, ((4, 0),))
    with pytest.raises(ValueError, match="bound to 2"):
        ShiftedBlur(4, ((0, 0), (1, 1))).apply(_batch(3))
    with pytest.raises(ValueError, match="divisible"):
        ShiftedBlur(4, ((0, 0),)).apply(_batch(1, size=(30, 32)))


def test_zip_with_jblur_keeps_each_images_grid_for_the_whole_run_and_repeats_with_a_seed() -> None:
    from service.purify.options import ZipConfig
    from service.purify.zip import ZipPurifier

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * x

    purifier = ZipPurifier(eps, ZipConfig(transforms="jblur:4", steps=5))
    x = _batch(4)[:, :1]
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]  # noqa: E731
    first, again = purifier(x, gens()), purifier(x, gens())
    torch.testing.assert_close(first, again)
    # The range guidance pins each output's cell means to the input's, on that image's own grid.
    grids = JitteredBlur(4).bind(4, gens(), torch.device("cpu"))
    unclipped = ZipPurifier(eps, ZipConfig(transforms="jblur:4", steps=5, guidance_power=float("inf")), clip=False)
    out = unclipped(x, gens())
    torch.testing.assert_close(grids.apply(out), grids.apply(x), atol=1e-4, rtol=0)
    assert (Blur(4).apply(out) - Blur(4).apply(x)).abs().max() > 1e-3  # …and not on the unshifted grid
