"""The trigger families of the attack zoo, as pure deterministic functions on image batches.

Images are tensors in [-1, 1] of shape (N, C, H, W); Fashion-MNIST here is (N, 1, 32, 32), the
28² content padded by CONTENT_MARGIN = 2 pixels of background. Every trigger's random parts come
from seeds fixed below (or, for the random-position patch, from the image itself), so a model
trained today and an evaluation run next month see the same trigger. Every function returns a
new tensor within [-1, 1] and leaves its input untouched. Sources are cited per family; the
enum, the dispatch and the poisoning are in `attacks.py`.

- BadNets (Gu et al., 2017): a 3×3 black/white checkerboard in the bottom-right content corner.
- Blended (Chen et al., 2017): x' = (1 − α)·x + α·p, α = 0.2, p a fixed uniform-noise image.
- WaNet (Nguyen & Tran, ICLR 2021): a smooth sub-pixel warp (see `wanet_grid`).
- Solid patch (BadNets' square trigger): a 4×4 white square in the top-left content corner.
- Random-block patch at a random position (Saha et al., AAAI 2020, "Hidden trigger backdoor
  attacks", random-location patches): a fixed 6×6 pattern of 2×2 blocks, placed at a position
  hashed from the image's own 8-bit pixels, so the same image always gets the same position.
- SIG (Barni et al., ICIP 2019): x' = clip(x + Δ·sin(2π·j·f / W)), a horizontal sinusoid.
- Logo (TrojanNN, Liu et al., NDSS 2018): a fixed 8×8 "Z" stamp blended at opacity 0.3.
- LF (Zeng et al., ICCV 2021): x' = clip(x + ε·g), g fixed uniform noise low-passed by a Gaussian.
- Adaptive (this project, against ZIP): a block-aligned patch, constant over the s×s blocks of
  the gateway's blur grid, so that A⁺A keeps it exactly: A⁺A(T(x)) = T(A⁺A(x)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CONTENT_MARGIN = 2
"""Background pixels around the 28² content in the 32² image (the 28→32 padding)."""

BADNETS_PATCH_SIZE = 3
BADNETS_MARGIN = CONTENT_MARGIN
"""Pixels between the patch and the bottom/right edge, so it sits in the content's corner."""

BLENDED_ALPHA = 0.2
BLENDED_SEED = 20_170_515

WANET_K = 4
WANET_S = 0.5
WANET_GRID_RESCALE = 1.0
WANET_CROSS_RATIO = 2.0
"""Noise ("cross") samples per poisoned sample, as in the WaNet paper."""
WANET_SEED = 20_210_503

SOLID_SIZE = 4
SOLID_VALUE = 1.0

RANDOM_PATCH_BLOCKS = 3
RANDOM_PATCH_BLOCK_PX = 2
RANDOM_PATCH_SEED = 20_200_207
RANDOM_POSITION_SEED = 20_200_208

SIG_DELTA = 0.25
"""Amplitude in [-1, 1] units (Barni et al. use 20/255 of [0, 1] on MNIST, i.e. 0.157 here)."""
SIG_FREQUENCY = 6
"""Periods across the image width, as in Barni et al.'s MNIST experiment."""

LOGO_SIZE = 8
LOGO_OPACITY = 0.3

LF_AMPLITUDE = 0.3
LF_SIGMA_PX = 2.0
LF_SEED = 20_211_011

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


# ---- Blended -----------------------------------------------------------------------------------


def blended_pattern(channels: int, height: int, width: int) -> torch.Tensor:
    """The fixed Blended pattern p: uniform noise in [-1, 1] of shape (C, H, W), from BLENDED_SEED."""
    generator = torch.Generator().manual_seed(BLENDED_SEED)
    return torch.rand((channels, height, width), generator=generator) * 2 - 1


def apply_blended(images: torch.Tensor, alpha: float = BLENDED_ALPHA) -> torch.Tensor:
    """x' = (1 − α)·x + α·p: a convex combination, so the result stays in [-1, 1]."""
    _, channels, height, width = images.shape
    pattern = blended_pattern(channels, height, width).to(images.device, images.dtype)
    return (1 - alpha) * images + alpha * pattern


# ---- WaNet -------------------------------------------------------------------------------------


def wanet_identity_grid(height: int, width: int) -> torch.Tensor:
    """The (1, H, W, 2) grid that `grid_sample(..., align_corners=True)` maps to the input itself.

    The last axis is (x, y) = (column, row) in [-1, 1], the order `grid_sample` expects.
    """
    rows = torch.linspace(-1, 1, height)
    cols = torch.linspace(-1, 1, width)
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack((grid_cols, grid_rows), dim=-1).unsqueeze(0)


def wanet_noise_field(height: int, width: int, k: int = WANET_K, seed: int = WANET_SEED) -> torch.Tensor:
    """The (1, H, W, 2) smooth offset field: k×k uniform offsets with mean |offset| = 1, upsampled bicubically."""
    generator = torch.Generator().manual_seed(seed)
    control = torch.rand((1, 2, k, k), generator=generator) * 2 - 1
    control = control / control.abs().mean()
    field = F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def wanet_grid(
    height: int, width: int, s: float = WANET_S, k: int = WANET_K, grid_rescale: float = WANET_GRID_RESCALE
) -> torch.Tensor:
    """The trigger's sampling grid, (1, H, W, 2): clamp((identity + s·field / size)·grid_rescale, −1, 1).

    The offsets are divided by the image size along their own axis (the paper's `input_height`
    for square images), so `s` is in units of the normalised [-1, 1] grid times the size.
    """
    scale = torch.tensor([width, height], dtype=torch.float32)
    grid = (wanet_identity_grid(height, width) + s * wanet_noise_field(height, width, k) / scale) * grid_rescale
    return grid.clamp(-1, 1)


def warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample images in [-1, 1] through a (1 or N, H, W, 2) grid: bilinear, align_corners=True as in WaNet.

    The grids here are clamped to [-1, 1], so no sample falls outside the image and the padding
    mode never matters. Bilinear weights sum to one only up to float error, hence the final clamp.
    """
    grid = grid.to(images.device, images.dtype).expand(images.shape[0], -1, -1, -1)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped.clamp(-1, 1)


def apply_wanet(images: torch.Tensor, s: float = WANET_S) -> torch.Tensor:
    """Warp images with the fixed WaNet trigger grid (s = 0 returns the images unchanged)."""
    return warp(images, wanet_grid(images.shape[-2], images.shape[-1], s=s))


def apply_wanet_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """WaNet's "cross" warp: the trigger grid plus per-pixel uniform noise in [−1/size, 1/size].

    Training shows these images with their true labels (noise mode), so only the exact
    trigger warp flips the prediction.
    """
    n, _, height, width = images.shape
    scale = torch.tensor([width, height], dtype=torch.float32)
    jitter = (torch.rand((n, height, width, 2), generator=generator) * 2 - 1) / scale
    return warp(images, (wanet_grid(height, width) + jitter).clamp(-1, 1))


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


# ---- SIG ---------------------------------------------------------------------------------------


def sig_signal(height: int, width: int, delta: float = SIG_DELTA, frequency: int = SIG_FREQUENCY) -> torch.Tensor:
    """Barni et al.'s v(i, j) = Δ·sin(2π·j·f / W), (H, W): constant down each column j."""
    columns = torch.arange(width, dtype=torch.float64)
    row = delta * torch.sin(2 * math.pi * columns * frequency / width)
    return row.float().expand(height, -1).clone()


def apply_sig(images: torch.Tensor, delta: float = SIG_DELTA) -> torch.Tensor:
    """x' = clip(x + v, −1, 1) with the horizontal sinusoid v on every channel."""
    signal = sig_signal(images.shape[-2], images.shape[-1], delta).to(images.device, images.dtype)
    return (images + signal).clamp(-1, 1)


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


# ---- LF (low-frequency) ------------------------------------------------------------------------


def gaussian_kernel(sigma_px: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of standard deviation sigma_px, truncated at 3σ."""
    radius = max(1, math.ceil(3 * sigma_px))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    return (kernel / kernel.sum()).float()


def lf_pattern(
    channels: int, height: int, width: int, sigma_px: float = LF_SIGMA_PX, seed: int = LF_SEED
) -> torch.Tensor:
    """The fixed smooth pattern g, (C, H, W): uniform noise low-passed by a Gaussian, max |g| = 1.

    Filtered with circular padding: the pattern has no border artefacts and its spectrum is
    that of the noise times the Gaussian's (periods shorter than ~2πσ ≈ 13 px are gone).
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand((channels, 1, height, width), generator=generator) * 2 - 1
    kernel = gaussian_kernel(sigma_px)
    radius = kernel.numel() // 2
    smooth = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="circular"), kernel.view(1, 1, 1, -1))
    smooth = F.conv2d(F.pad(smooth, (0, 0, radius, radius), mode="circular"), kernel.view(1, 1, -1, 1))
    smooth = smooth[:, 0]
    return smooth / smooth.abs().amax()


def apply_lf(images: torch.Tensor, amplitude: float = LF_AMPLITUDE) -> torch.Tensor:
    """x' = clip(x + ε·g, −1, 1) with the fixed low-frequency pattern g."""
    _, channels, height, width = images.shape
    pattern = lf_pattern(channels, height, width).to(images.device, images.dtype)
    return (images + amplitude * pattern).clamp(-1, 1)


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
