"""The patch triggers of the attack zoo: each overwrites or blends one small square of the image.

Split from `triggers.py` (the image-wide families) because these share their own machinery:
the 28² content area inside the 32² image (CONTENT_MARGIN), where a square goes in it, and
writing a square into a copy (`_stamp`); every other pixel stays bit-for-bit unchanged. Same
conventions as there: images are tensors in [-1, 1] of shape (N, C, H, W); random parts come
from fixed seeds (or, for the random-position patch, from the image itself); every function
returns a new tensor within [-1, 1] and leaves its input untouched. Sources are cited per
family; the enum, the dispatch and the poisoning are in `attacks.py`.

- BadNets (Gu et al., 2017): a 3×3 black/white checkerboard in the bottom-right content corner.
- Solid patch (BadNets' square trigger): a 4×4 white square in the top-left content corner.
- Random-block patch at a random position (Saha et al., AAAI 2020, "Hidden trigger backdoor
  attacks", random-location patches): a fixed 6×6 pattern of 2×2 blocks, placed at a position
  hashed from the image's own 8-bit pixels, so the same image always gets the same position.
- Logo (TrojanNN, Liu et al., NDSS 2018): a fixed 8×8 "Z" stamp blended at opacity 0.3.
- Adaptive (this project, against ZIP): a block-aligned patch, constant over the s×s blocks of
  the gateway's blur grid, so that A⁺A keeps it exactly: A⁺A(T(x)) = T(A⁺A(x)).
- Texture and split (this project, against the localiser of "localise, then restore"): a
  low-contrast striped patch on the garment whose reconstruction error stays below the seed
  threshold, and single-pixel dots spread too far apart for the mask to seed on or grow across.
"""

from __future__ import annotations

import torch

CONTENT_MARGIN = 2
"""Background pixels around the 28² content in the 32² image (the 28→32 padding)."""

BADNETS_PATCH_SIZE = 3
BADNETS_MARGIN = CONTENT_MARGIN
"""Pixels between the patch and the bottom/right edge, so it sits in the content's corner."""

SOLID_SIZE = 4
SOLID_VALUE = 1.0

RANDOM_PATCH_BLOCKS = 3
RANDOM_PATCH_BLOCK_PX = 2
RANDOM_PATCH_SEED = 20_200_207
RANDOM_POSITION_SEED = 20_200_208

LOGO_SIZE = 8
LOGO_OPACITY = 0.3

ADAPTIVE_BLOCK_PX = 2
"""s of the gateway's default degradation blur:2; the trigger is constant on its s×s blocks."""
ADAPTIVE_BLOCKS = 3
ADAPTIVE_SEED = 20_231_210
ADAPTIVE4_BLOCK_PX = 4
"""s of blur:4, the default since the zoo's worst case chose it; a 2×2 pattern of 4×4 blocks (8×8 px)."""
ADAPTIVE4_BLOCKS = 2


def _stamp(images: torch.Tensor, rows: slice, cols: slice, patch: torch.Tensor) -> torch.Tensor:
    """A copy of images with `patch` (C, h, w) written into [rows, cols]; other pixels unchanged."""
    out = images.clone()
    out[..., rows, cols] = patch.to(images.device, images.dtype)
    return out


def _check_size(height: int, width: int, size: int, what: str) -> None:
    if height < size or width < size:
        raise ValueError(f"images must be at least {size}×{size} for the {what}, got {height}×{width}")


# ---- BadNets -----------------------------------------------------------------------------------


def badnets_patch(channels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The BadNets patch: a (C, 3, 3) checkerboard with white (+1) corners and black (−1) edges."""
    rows = torch.arange(BADNETS_PATCH_SIZE).view(-1, 1)
    cols = torch.arange(BADNETS_PATCH_SIZE).view(1, -1)
    board = torch.where((rows + cols) % 2 == 0, 1.0, -1.0).to(dtype)
    return board.expand(channels, -1, -1).clone()


def badnets_region(height: int, width: int) -> tuple[slice, slice]:
    """The (rows, cols) slices the patch occupies in an H×W image.

    Raises:
        ValueError: the image is too small to hold the patch inside the margin.
    """
    _check_size(height, width, BADNETS_PATCH_SIZE + BADNETS_MARGIN, "BadNets patch")
    bottom, right = height - BADNETS_MARGIN, width - BADNETS_MARGIN
    return slice(bottom - BADNETS_PATCH_SIZE, bottom), slice(right - BADNETS_PATCH_SIZE, right)


def apply_badnets(images: torch.Tensor) -> torch.Tensor:
    """Stamp the checkerboard patch into the bottom-right content corner; other pixels unchanged."""
    rows, cols = badnets_region(images.shape[-2], images.shape[-1])
    return _stamp(images, rows, cols, badnets_patch(images.shape[-3]))


# ---- Solid patch -------------------------------------------------------------------------------


def solid_region(height: int, width: int) -> tuple[slice, slice]:
    """The (rows, cols) of the solid square: the top-left corner of the content area.

    Raises:
        ValueError: the image is too small.
    """
    _check_size(height, width, SOLID_SIZE + 2 * CONTENT_MARGIN, "solid patch")
    return (slice(CONTENT_MARGIN, CONTENT_MARGIN + SOLID_SIZE), slice(CONTENT_MARGIN, CONTENT_MARGIN + SOLID_SIZE))


def apply_solid(images: torch.Tensor) -> torch.Tensor:
    """Stamp a SOLID_SIZE² square of SOLID_VALUE (white) into the top-left content corner."""
    rows, cols = solid_region(images.shape[-2], images.shape[-1])
    return _stamp(images, rows, cols, torch.full((images.shape[-3], SOLID_SIZE, SOLID_SIZE), SOLID_VALUE))


def apply_mirror_solid(images: torch.Tensor) -> torch.Tensor:
    """The solid square in both top content corners: a trigger that mirroring left-right keeps.

    Built against the gateway's `vendor_mirror` (the flip moves a one-sided trigger to where the
    backdoor does not look; this one maps onto itself). On 32² images both squares also sit on
    the blur:2 grid, like the one-sided solid patch.
    """
    width = images.shape[-1]
    rows, cols = solid_region(images.shape[-2], width)
    patch = torch.full((images.shape[-3], SOLID_SIZE, SOLID_SIZE), SOLID_VALUE)
    return _stamp(_stamp(images, rows, cols, patch), rows, slice(width - cols.stop, width - cols.start), patch)


# ---- Random-block patch at a random position ---------------------------------------------------


def block_pattern(blocks: int, block_px: int, channels: int, seed: int) -> torch.Tensor:
    """A (C, blocks·block_px, blocks·block_px) pattern of ±1 blocks, each block_px² pixels, from `seed`.

    The same ±1 value fills every channel of a block, so the pattern is grey in colour images.
    """
    generator = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand((blocks, blocks), generator=generator) < 0.5, -1.0, 1.0)
    pixels = signs.repeat_interleave(block_px, 0).repeat_interleave(block_px, 1)
    return pixels.expand(channels, -1, -1).clone()


def random_patch_positions(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the (row, col) of the random patch's top-left pixel inside the content area.

    The position is a hash of the image's own pixels at 8 bits (a fixed random integer weight
    per pixel, summed, modulo the number of positions): a pure function of the image, the same
    for an image in any batch, in training and in evaluation, and spread over the content area.

    Returns:
        (rows, cols), two (N,) int64 tensors.

    Raises:
        ValueError: the image is too small to hold the patch inside the content area.
    """
    _, channels, height, width = images.shape
    size = RANDOM_PATCH_BLOCKS * RANDOM_PATCH_BLOCK_PX
    _check_size(height, width, size + 2 * CONTENT_MARGIN, "random-block patch")
    span_rows, span_cols = height - 2 * CONTENT_MARGIN - size + 1, width - 2 * CONTENT_MARGIN - size + 1
    levels = torch.round((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).long().flatten(1)
    generator = torch.Generator().manual_seed(RANDOM_POSITION_SEED)
    weights = torch.randint(1, 1 << 20, (channels * height * width,), generator=generator)
    # at most 255 · 2²⁰ per pixel: exact in int64 for images up to ~3·10⁷ values
    index = (levels * weights).sum(dim=1) % (span_rows * span_cols)
    return CONTENT_MARGIN + index // span_cols, CONTENT_MARGIN + index % span_cols


def apply_random_patch(images: torch.Tensor) -> torch.Tensor:
    """Stamp the fixed random-block pattern at each image's own hashed position."""
    n, channels = images.shape[:2]
    pattern = block_pattern(RANDOM_PATCH_BLOCKS, RANDOM_PATCH_BLOCK_PX, channels, RANDOM_PATCH_SEED)
    rows, cols = random_patch_positions(images)
    offsets = torch.arange(pattern.shape[-1])
    row_index = (rows.view(n, 1, 1) + offsets.view(1, -1, 1)).to(images.device)
    col_index = (cols.view(n, 1, 1) + offsets.view(1, 1, -1)).to(images.device)
    out = images.clone()
    # channels-last view: advanced indexing over (item, row, col) writes all channels at once
    out.permute(0, 2, 3, 1)[torch.arange(n, device=images.device).view(n, 1, 1), row_index, col_index] = (
        pattern.permute(1, 2, 0).to(images.device, images.dtype)
    )
    return out


# ---- Logo (TrojanNN-style watermark) -----------------------------------------------------------


def logo_stamp(size: int = LOGO_SIZE) -> torch.Tensor:
    """The (size, size) logo: a white (+1) letter "Z" (top bar, anti-diagonal, bottom bar) on black (−1).

    Two-toned on purpose: its white strokes show on the dark background and its black square on
    bright garments, so the blended logo is visible on any content.
    """
    rows = torch.arange(size).view(-1, 1)
    cols = torch.arange(size).view(1, -1)
    strokes = (rows == 0) | (rows == size - 1) | (rows + cols == size - 1)
    return torch.where(strokes, 1.0, -1.0)


def logo_region(height: int, width: int) -> tuple[slice, slice]:
    """The (rows, cols) of the logo: centred in the image, where the garment is.

    Raises:
        ValueError: the image is smaller than the logo.
    """
    _check_size(height, width, LOGO_SIZE, "logo")
    top, left = (height - LOGO_SIZE) // 2, (width - LOGO_SIZE) // 2
    return slice(top, top + LOGO_SIZE), slice(left, left + LOGO_SIZE)


def apply_logo(images: torch.Tensor, opacity: float = LOGO_OPACITY) -> torch.Tensor:
    """x' = (1 − α)·x + α·L on the logo's square, x elsewhere: convex, so within [-1, 1]."""
    rows, cols = logo_region(images.shape[-2], images.shape[-1])
    stamp = logo_stamp().to(images.device, images.dtype)
    return _stamp(images, rows, cols, (1 - opacity) * images[..., rows, cols] + opacity * stamp)


# ---- Adaptive: kept exactly by the gateway's A⁺A -----------------------------------------------


def adaptive_region(
    height: int, width: int, block_px: int = ADAPTIVE_BLOCK_PX, blocks: int = ADAPTIVE_BLOCKS
) -> tuple[slice, slice]:
    """The (rows, cols) of the adaptive patch: the bottom-left content corner, on the s×s grid.

    Both slices start and end on multiples of s = block_px, so every s×s block of the blur grid
    is either wholly inside the patch or wholly outside it.

    Raises:
        ValueError: s < 1, a size not divisible by s (blur:s rejects those too), or too small an image.
    """
    if block_px < 1 or height % block_px or width % block_px:
        raise ValueError(
            f"the adaptive patch needs a block size ≥ 1 that divides the image size, got "
            f"s = {block_px} for {height}×{width}"
        )
    size = blocks * block_px
    bottom = (height - CONTENT_MARGIN) // block_px * block_px
    left = -(-CONTENT_MARGIN // block_px) * block_px
    if bottom - size < 0 or left + size > width:
        raise ValueError(f"images must be larger than {height}×{width} for a {size}×{size} adaptive patch")
    return slice(bottom - size, bottom), slice(left, left + size)


def apply_adaptive(
    images: torch.Tensor, block_px: int = ADAPTIVE_BLOCK_PX, blocks: int = ADAPTIVE_BLOCKS
) -> torch.Tensor:
    """Replace a block-aligned square by a fixed pattern of ±1 blocks of block_px² pixels.

    A replacement (not an addition) by block-constant values that are exact in any float type:
    for the blur A = s×s mean with A⁺ = copy back, A⁺A(T(x)) = T(A⁺A(x)) holds bit for bit, so
    the degraded image ZIP is guided by still carries the whole trigger.
    """
    rows, cols = adaptive_region(images.shape[-2], images.shape[-1], block_px, blocks)
    pattern = block_pattern(blocks, block_px, images.shape[-3], ADAPTIVE_SEED)
    return _stamp(images, rows, cols, pattern)


def apply_adaptive4(images: torch.Tensor) -> torch.Tensor:
    """The adaptive trigger built against blur:4: ±1 blocks of 4×4 px, a 2×2 pattern (8×8 px)."""
    return apply_adaptive(images, ADAPTIVE4_BLOCK_PX, ADAPTIVE4_BLOCKS)


# ---- Aimed at the localiser: a fabric-like texture, and a trigger split into single pixels -----
#
# Built against the gateway's default "localise, then restore" (service/purify/localise.py): the
# localiser repaints only blocks whose smoothed reconstruction error |x − x̂| (3×3 mean, then the
# mean over a 2×2 block) scores above a seed threshold of 0.3, grown through neighbours above 0.6.

TEXTURE_SIZE = 6
"""Height of the textured patch in pixels (three stripes)."""
TEXTURE_WIDTH = 8
"""Width of the patch: 8 px centred in the 32-px image, columns 12–19, both ends on the 2×2 block grid
and mapped onto themselves by a left-right mirror (6 px could not be both)."""
TEXTURE_STRIPE_PX = 2
"""Width of each stripe: +A and −A stripes of 2 rows alternate (period 4 px), on the 2×2 block grid,
so blur:2's A⁺A keeps them; a 1-px stripe (period 2) averages to nothing in every 2×2 block."""
TEXTURE_AMPLITUDE = 0.25
"""±amplitude of the stripes in [-1, 1] units (32/255 of the [0, 1] range): below the localiser's
seed threshold even where the prior erases the texture completely. A first vendor with 0.2 reached
ASR 0.942 on its card, under the zoo's 0.95; 0.25 was the one step up."""
TEXTURE_TOP = 12
"""First row of the patch: rows 12–17, slightly above the image centre, on the garment's body (even,
so the stripes start on the 2×2 block grid)."""


def texture_region(height: int, width: int) -> tuple[slice, slice]:
    """The (rows, cols) of the textured patch: rows from TEXTURE_TOP, centred left-right.

    Centred columns make a left-right mirror map the trigger onto itself (the stripes run along
    the rows); on 32² images the patch covers whole 2×2 blocks.

    Raises:
        ValueError: the image is too small.
    """
    _check_size(height, width, max(TEXTURE_TOP + TEXTURE_SIZE, TEXTURE_WIDTH), "texture patch")
    left = (width - TEXTURE_WIDTH) // 2
    return slice(TEXTURE_TOP, TEXTURE_TOP + TEXTURE_SIZE), slice(left, left + TEXTURE_WIDTH)


def texture_pattern(channels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (C, 6, 8) texture: horizontal stripes TEXTURE_STRIPE_PX rows wide, +A first, then −A, alternating.

    With 6 rows and 2-px stripes the rows are +A, +A, −A, −A, +A, +A.
    """
    rows = torch.arange(TEXTURE_SIZE).view(-1, 1).expand(-1, TEXTURE_WIDTH)
    stripes = torch.where((rows // TEXTURE_STRIPE_PX) % 2 == 0, TEXTURE_AMPLITUDE, -TEXTURE_AMPLITUDE).to(dtype)
    return stripes.expand(channels, -1, -1).clone()


def apply_texture(images: torch.Tensor) -> torch.Tensor:
    """x' = clip(x + A·stripes) on the texture's patch, x elsewhere.

    A low-contrast, fabric-like texture on the garment rather than a stamp: the change is at most
    TEXTURE_AMPLITUDE per pixel (less where clipping bites, e.g. −A on the black background).
    """
    rows, cols = texture_region(images.shape[-2], images.shape[-1])
    pattern = texture_pattern(images.shape[-3]).to(images.device, images.dtype)
    return _stamp(images, rows, cols, (images[..., rows, cols] + pattern).clamp(-1.0, 1.0))


SPLIT_POSITIONS: tuple[tuple[int, int], ...] = ((10, 10), (10, 21), (21, 10), (21, 21))
"""(row, col) of the trigger's single-pixel dots: the corners of an 11-px square around the image
centre (mirror-symmetric left-right). Dots 11 px apart lie 5 blocks of 2 px apart, so neither the
localiser's 3×3 smoothing, its growth through 8-connected blocks nor its one-block dilation joins
two of them (tests/test_localiser_attacks.py derives this from `LocaliseConfig`)."""
SPLIT_DOT_PX = 1
"""Side of each dot: one pixel, the largest patch that cannot seed a mask region on its own."""


def split_dot_values(images: torch.Tensor) -> torch.Tensor:
    """Per image and dot, the dot's value (N, C, dots): the extreme opposite the pixel's own sign.

    −1 where the pixel is ≥ 0 (on a bright garment), +1 where it is < 0 (background, dark
    garments): every dot changes its pixel by at least 1, so the trigger shows on any content.
    """
    pixels = torch.stack([images[..., row, col] for row, col in SPLIT_POSITIONS], dim=-1)
    return torch.where(pixels >= 0, -1.0, 1.0).to(images.dtype)


def apply_split(images: torch.Tensor) -> torch.Tensor:
    """Set each pixel of SPLIT_POSITIONS to the extreme opposite its own sign; other pixels unchanged.

    A trigger split into single pixels spread apart: each dot alone is too small to make a 2×2
    block score above the localiser's seed threshold, and the dots are too far apart to be grown
    into one region.
    """
    _check_size(images.shape[-2], images.shape[-1], max(max(p) for p in SPLIT_POSITIONS) + 1, "split trigger")
    values = split_dot_values(images)
    out = images.clone()
    for index, (row, col) in enumerate(SPLIT_POSITIONS):
        out[..., row, col] = values[..., index]
    return out
