"""PIL ⇄ tensor conversion, fitting images to the model's size, and tiling small images."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}


def pil_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image → float tensor (C, H, W) in [-1, 1]; converted to L (C = 1) or RGB (C = 3).

    Raises:
        ValueError: a channel count other than 1 or 3.
    """
    mode = _MODE_FOR_CHANNELS.get(channels)
    if mode is None:
        raise ValueError(f"only 1- or 3-channel models are supported, got {channels}")
    if image.mode in ("RGBA", "LA", "P") and mode == "RGB":
        image = image.convert("RGBA")  # composite transparency on black, not on undefined colour
    array = np.asarray(image.convert(mode), dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).div(127.5).sub(1.0)


def check_batch(x: torch.Tensor, channels: int | None = None) -> None:
    """Check that `x` is a batch of images as purification takes it: (N, C, H, W), N ≥ 1, float, finite.

    Args:
        x: the batch.
        channels: the C the model expects (None: any).

    Raises:
        ValueError: the first of these that does not hold, named.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty batch")
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor in [-1, 1], got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"model expects {channels} channels, input has {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise ValueError("input contains NaN or infinite values")


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """A tensor (C, H, W) in [-1, 1] → 8-bit PIL image (L or RGB), rounded, clamped."""
    if x.ndim != 3 or x.shape[0] not in _MODE_FOR_CHANNELS:
        raise ValueError(f"expected (1|3, H, W), got {tuple(x.shape)}")
    array = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    array_np = array.permute(1, 2, 0).numpy()
    return Image.fromarray(array_np[:, :, 0] if x.shape[0] == 1 else array_np, _MODE_FOR_CHANNELS[x.shape[0]])


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize (..., C, H, W) with antialiased bilinear interpolation (no-op if already that size)."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    batched = x if x.ndim == 4 else x.unsqueeze(0)
    out = F.interpolate(batched, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out if x.ndim == 4 else out.squeeze(0)


def tiles_per_side(image_size: int, canvas_size: int) -> int:
    """How many images of side `image_size` fit along one side of the canvas (1 = no tiling)."""
    return max(1, canvas_size // image_size)


def tile(images: torch.Tensor, per_side: int, fill: float = 0.0) -> torch.Tensor:
    """Pack (N, C, h, w) into ⌈N / per_side²⌉ canvases (M, C, per_side·h, per_side·w), row-major.

    Empty slots of the last canvas hold `fill`; the paper packs 64 CIFAR images into one 256² image.
    """
    n, c, h, w = images.shape
    slots = per_side * per_side
    canvases = math.ceil(n / slots)
    padded = torch.full((canvases * slots, c, h, w), fill, dtype=images.dtype, device=images.device)
    padded[:n] = images
    grid = padded.view(canvases, per_side, per_side, c, h, w)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(canvases, c, per_side * h, per_side * w)


def untile(canvases: torch.Tensor, per_side: int, count: int) -> torch.Tensor:
    """Inverse of `tile`: cut (M, C, per_side·h, per_side·w) back into the first `count` images."""
    m, c, height, width = canvases.shape
    h, w = height // per_side, width // per_side
    grid = canvases.reshape(m, c, per_side, h, per_side, w).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(m * per_side * per_side, c, h, w)[:count]
