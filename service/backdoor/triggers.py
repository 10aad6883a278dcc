"""The image-wide trigger families of the attack zoo, as pure deterministic functions on image batches.

Images are tensors in [-1, 1] of shape (N, C, H, W); Fashion-MNIST here is (N, 1, 32, 32), the
28² content padded by 2 pixels of background. Every trigger's random parts come from seeds
fixed below, so a model trained today and an evaluation run next month see the same trigger.
Every function returns a new tensor within [-1, 1] and leaves its input untouched. These
families change every pixel (a blend, a warp or an added signal); the triggers that write one
small square are in `patch_triggers.py`. Sources are cited per family; the enum, the dispatch
and the poisoning are in `attacks.py`.

- Blended (Chen et al., 2017): x' = (1 − α)·x + α·p, α = 0.2, p a fixed uniform-noise image.
- WaNet (Nguyen & Tran, ICLR 2021): a smooth sub-pixel warp (see `wanet_grid`).
- SIG (Barni et al., ICIP 2019): x' = clip(x + Δ·sin(2π·j·f / W)), a horizontal sinusoid.
- LF (Zeng et al., ICCV 2021): x' = clip(x + ε·g), g fixed uniform noise low-passed by a Gaussian.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLENDED_ALPHA = 0.2
BLENDED_SEED = 20_170_515

WANET_K = 4
WANET_S = 0.5
WANET_GRID_RESCALE = 1.0
WANET_CROSS_RATIO = 2.0
"""Noise ("cross") samples per poisoned sample, as in the WaNet paper."""
WANET_SEED = 20_210_503

SIG_DELTA = 0.25
"""Amplitude in [-1, 1] units (Barni et al. use 20/255 of [0, 1] on MNIST, i.e. 0.157 here)."""
SIG_FREQUENCY = 6
"""Periods across the image width, as in Barni et al.'s MNIST experiment."""

LF_AMPLITUDE = 0.3
LF_SIGMA_PX = 2.0
LF_SEED = 20_211_011


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
