"""The attacks aimed at the localiser (`texture`, `split`): where they act, and why the default
localiser's seed-and-grow mask (service/purify/localise.py) cannot find them on their own.

The bounds are derived from `LocaliseConfig`'s defaults and the localiser's own functions, never
from hard-coded numbers: the map is |x − x̂| (at most 2 per pixel in [-1, 1]) smoothed by a 3×3
mean, scored per `block`² square, seeded above `seed_threshold`, grown through 8-connected blocks
above `grow_threshold` and dilated by `dilate` blocks.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from service.backdoor.attacks import ZOO, Attack, apply_trigger
from service.backdoor.patch_triggers import (
    CONTENT_MARGIN,
    SPLIT_DOT_PX,
    SPLIT_POSITIONS,
    TEXTURE_AMPLITUDE,
    TEXTURE_SIZE,
    TEXTURE_STRIPE_PX,
    TEXTURE_TOP,
    TEXTURE_WIDTH,
    apply_split,
    apply_texture,
    texture_pattern,
    texture_region,
)
from service.purify.localise import SMOOTH_PX, LocaliseConfig, block_scores, smooth_map, suspicious_blocks
from service.purify.transforms import Blur, project

CONFIG = LocaliseConfig()
MAX_RESIDUAL = 2.0
"""|x − x̂| for images and restorations in [-1, 1]."""
SIDE = 32


def fmnist_like(n: int = 8, channels: int = 1, seed: int = 0) -> torch.Tensor:
    content = torch.rand((n, channels, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return F.pad(content, (CONTENT_MARGIN,) * 4, value=-1.0)


def mask_of(residual: torch.Tensor) -> torch.Tensor:
    """The localiser's block mask (True = repaint) for a given residual map."""
    return suspicious_blocks(block_scores(smooth_map(residual), CONFIG.block), CONFIG)


def test_the_new_attacks_are_in_the_zoo_and_dispatched() -> None:
    assert Attack.TEXTURE in ZOO and Attack.SPLIT in ZOO
    images = fmnist_like()
    assert torch.equal(apply_trigger(images, Attack.TEXTURE), apply_texture(images))
    assert torch.equal(apply_trigger(images, Attack.SPLIT), apply_split(images))


# ---- texture -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_texture_adds_the_stripes_on_its_patch_only_and_clips(channels: int) -> None:
    images = fmnist_like(channels=channels)
    out = apply_texture(images)
    rows, cols = texture_region(SIDE, SIDE)
    expected = images.clone()
    expected[..., rows, cols] = (images[..., rows, cols] + texture_pattern(channels)).clamp(-1, 1)
    assert torch.equal(out, expected)
    outside = torch.ones(SIDE, SIDE, dtype=torch.bool)
    outside[rows, cols] = False
    assert torch.equal(out[..., outside], images[..., outside])
    assert (out - images).abs().max() <= TEXTURE_AMPLITUDE + 1e-6
    assert out.min() >= -1 and out.max() <= 1


def test_texture_changes_every_pixel_of_its_patch_on_a_grey_garment() -> None:
    grey = torch.zeros(2, 1, SIDE, SIDE)
    changed = apply_texture(grey) != grey
    rows, cols = texture_region(SIDE, SIDE)
    assert int(changed.sum()) == 2 * TEXTURE_SIZE * TEXTURE_WIDTH and changed[..., rows, cols].all()


def test_texture_is_stripes_inside_the_content_centred_and_on_the_blur_grid() -> None:
    pattern = texture_pattern(1)[0]
    assert pattern.shape == (TEXTURE_SIZE, TEXTURE_WIDTH)
    assert torch.equal(pattern.abs(), torch.full_like(pattern, TEXTURE_AMPLITUDE))
    for row in range(TEXTURE_SIZE):  # constant along a row, the sign flips every stripe
        sign = 1 if (row // TEXTURE_STRIPE_PX) % 2 == 0 else -1
        assert torch.equal(pattern[row], torch.full((TEXTURE_WIDTH,), sign * TEXTURE_AMPLITUDE))
    rows, cols = texture_region(SIDE, SIDE)
    assert rows.start == TEXTURE_TOP and rows.start >= CONTENT_MARGIN and rows.stop <= SIDE - CONTENT_MARGIN
    assert cols.start == SIDE - cols.stop  # centred left-right
    grey = torch.zeros(1, 1, SIDE, SIDE)
    assert torch.equal(apply_texture(grey).flip(-1), apply_texture(grey))
    blur = Blur(CONFIG.block)
    assert torch.equal(project(blur, apply_texture(grey)), apply_texture(grey))  # whole 2×2 blocks


def test_texture_alone_cannot_seed_the_localisers_mask() -> None:
    # Even if the prior erased the texture completely, |x − x̂| ≤ A on its patch, so no block scores
    # above A, which is below the seed threshold.
    assert CONFIG.seed_threshold > TEXTURE_AMPLITUDE
    grey = torch.zeros(1, 1, SIDE, SIDE)
    residual = (apply_texture(grey) - grey).abs()
    assert not mask_of(residual).any()


# ---- split -------------------------------------------------------------------------------------


def _dot_mask() -> torch.Tensor:
    dots = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    for row, col in SPLIT_POSITIONS:
        dots[row : row + SPLIT_DOT_PX, col : col + SPLIT_DOT_PX] = True
    return dots


@pytest.mark.parametrize("channels", [1, 3])
def test_split_sets_exactly_its_dots_to_the_opposite_extreme(channels: int) -> None:
    images = fmnist_like(channels=channels)
    out = apply_split(images)
    dots = _dot_mask()
    assert torch.equal(out[..., ~dots], images[..., ~dots])
    assert (out[..., dots] != images[..., dots]).all()
    assert torch.equal(out[..., dots], torch.where(images[..., dots] >= 0, -1.0, 1.0))
    assert (out[..., dots] - images[..., dots]).abs().min() >= 1.0  # shows on any content
    assert out.min() >= -1 and out.max() <= 1


def test_split_dots_lie_in_the_content_and_are_mirror_symmetric() -> None:
    assert len(SPLIT_POSITIONS) >= 3
    for row, col in SPLIT_POSITIONS:
        assert CONTENT_MARGIN <= row < SIDE - CONTENT_MARGIN and CONTENT_MARGIN <= col < SIDE - CONTENT_MARGIN
    assert {(row, SIDE - 1 - col) for row, col in SPLIT_POSITIONS} == set(SPLIT_POSITIONS)


def test_each_split_dot_is_below_the_smallest_patch_that_can_seed_a_region() -> None:
    # Away from the border, a pixel of the smoothed map is a mean over 9 pixels, so a patch of m
    # pixels lifts any pixel, and hence any block mean, by at most MAX_RESIDUAL·m/9: the smallest
    # patch that can seed has the first m with MAX_RESIDUAL·m/9 > seed_threshold.
    window = SMOOTH_PX**2
    smallest_seeding = math.floor(CONFIG.seed_threshold * window / MAX_RESIDUAL) + 1
    assert smallest_seeding > SPLIT_DOT_PX**2
    for row, col in SPLIT_POSITIONS:  # interior: the full 3×3 window, no border division
        assert SMOOTH_PX // 2 <= row < SIDE - SMOOTH_PX // 2 and SMOOTH_PX // 2 <= col < SIDE - SMOOTH_PX // 2
    # the same through the localiser's own functions, every dot at the largest possible residual
    residual = torch.where(_dot_mask(), MAX_RESIDUAL, 0.0).view(1, 1, SIDE, SIDE)
    assert block_scores(smooth_map(residual), CONFIG.block).max() <= MAX_RESIDUAL * SPLIT_DOT_PX**2 / window + 1e-6
    assert not mask_of(residual).any()


def _footprint_blocks(row: int, col: int) -> set[tuple[int, int]]:
    """The blocks that a dot's residual reaches through the 3×3 smoothing."""
    reach = SMOOTH_PX // 2
    return {
        (r // CONFIG.block, c // CONFIG.block)
        for r in range(row - reach, row + SPLIT_DOT_PX + reach)
        for c in range(col - reach, col + SPLIT_DOT_PX + reach)
    }


def test_split_dots_are_beyond_the_localisers_growing_and_dilating_reach() -> None:
    # If a region were seeded on one dot's footprint (say by a garment edge beside it), growth
    # through 8-connected blocks could step to a neighbouring block, and the dilation adds `dilate`
    # blocks more: no other dot's footprint may be that close (Chebyshev distance in blocks).
    reach = 1 + CONFIG.dilate
    footprints = [_footprint_blocks(row, col) for row, col in SPLIT_POSITIONS]
    for i, first in enumerate(footprints):
        for second in footprints[i + 1 :]:
            distance = min(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in first for b in second)
            assert distance > reach
    # and through the localiser: one dot's footprint at full score seeds and grows, the others stay kept
    scores = torch.zeros(1, 1, SIDE // CONFIG.block, SIDE // CONFIG.block)
    for r, c in footprints[0]:
        scores[0, 0, r, c] = 1.0
    for others in footprints[1:]:
        for r, c in others:
            scores[0, 0, r, c] = MAX_RESIDUAL * SPLIT_DOT_PX**2 / SMOOTH_PX**2
    blocks = suspicious_blocks(scores, CONFIG)[0, 0]
    for row, col in SPLIT_POSITIONS[1:]:
        assert not blocks[row // CONFIG.block, col // CONFIG.block]
    first_row, first_col = SPLIT_POSITIONS[0]
    assert blocks[first_row // CONFIG.block, first_col // CONFIG.block]
