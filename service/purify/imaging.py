"""PIL ⇄ tensor conversion, fitting images to the model's size, and tiling small images."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}


class UnreadablePixels(ValueError):
    """An image whose pixel values cannot be read as intensities (e.g. a float image outside [0, 1])."""


# Pillow's modes of more than 8 bits per sample (grayscale only: Pillow has no 16-bit colour mode).
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_UINT16_MAX = 65535
_TIFF_BITS_PER_SAMPLE = 258


def _declared_bits(image: Image.Image) -> int | None:
    """Bits per sample a TIFF declares (one value for a grayscale image), or None where not known."""
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(_TIFF_BITS_PER_SAMPLE) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return bits if isinstance(bits, int) else None


def _high_depth_gray(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Gray in [0, 255] (float32, H×W) of a mode with more than 8 bits, and its alpha (tRNS) in [0, 1] or None.

    `convert("L")` would clip these at 255 instead of scaling them, so each is scaled by its range:
    - "I;16*": unsigned 16-bit, 65535 → 255;
    - "I" (32-bit signed, how Pillow reads 16- and 32-bit integer TIFFs): by the declared bit depth
      where it is at most 16, else read as 16-bit data (what such files hold in practice), and
      refused where a value lies outside 0..65535 (no range to scale by);
    - "F" (float TIFF): the float-image convention, [0, 1] → [0, 255]; refused outside [0, 1] or not finite.

    Raises:
        UnreadablePixels: values the mode's range cannot explain.
    """
    raw = np.asarray(image)
    if image.mode == "F":
        values = raw.astype(np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            raise UnreadablePixels(
                "a floating-point image must hold values in [0, 1]; send an 8- or 16-bit PNG instead"
            )
        top = 1.0
    else:
        values = raw.astype(np.int64)
        bits = _declared_bits(image) if image.mode == "I" else 16
        top = float((1 << bits) - 1) if bits is not None and 1 <= bits <= 16 else float(_UINT16_MAX)
        if values.size and (values.min() < 0 or values.max() > top):
            raise UnreadablePixels(
                f"{image.mode} pixels must lie in 0..{int(top)} to be read as {int(top).bit_length()}-bit "
                "intensities; send an 8- or 16-bit PNG instead"
            )
    gray = (values * (255.0 / top)).astype(np.float32)
    transparency = image.info.get("transparency")
    alpha = (raw != transparency).astype(np.float32) if isinstance(transparency, int | float) else None
    return gray, alpha


def _gray_as(gray: np.ndarray, mode: str) -> np.ndarray:
    """A gray (H, W) array as `mode` wants it: itself for L, three equal bands (H, W, 3) for RGB."""
    return gray if mode == "L" else np.repeat(gray[:, :, None], 3, axis=2)


def _colour_and_alpha(image: Image.Image, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The image in `mode` (L or RGB) as float32 in [0, 255], and its alpha in [0, 1] where it has any."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        gray, alpha = _high_depth_gray(image)
        return _gray_as(gray, mode), alpha
    if image.mode == "La":  # premultiplied: the L band is already composited onto black
        return _gray_as(np.asarray(image.getchannel(0), dtype=np.float32), mode), None
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")  # Pillow reads tRNS and palette transparency into the alpha band
        colour = np.asarray(rgba.convert(mode), dtype=np.float32)
        return colour, np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    return np.asarray(image.convert(mode), dtype=np.float32), None


def pil_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image → float tensor (C, H, W) in [-1, 1]; converted to L (C = 1) or RGB (C = 3).

    Images of more than 8 bits per sample (16-bit PNG and TIFF, integer and float TIFF) are scaled
    by their range, not clipped (`_high_depth_gray`). Transparency (an alpha band, a palette's or a
    tRNS transparent colour) is composited onto black, the models' background (Fashion-MNIST's, and
    the zero of the canvas fill), on both the L and the RGB path: colour × alpha, so what the vendor
    would not see does not become a colour the model must purify.

    Raises:
        ValueError: a channel count other than 1 or 3.
        UnreadablePixels: pixel values the image's mode cannot explain (a ValueError).
    """
    mode = _MODE_FOR_CHANNELS.get(channels)
    if mode is None:
        raise ValueError(f"only 1- or 3-channel models are supported, got {channels}")
    colour, alpha = _colour_and_alpha(image, mode)
    if alpha is not None:
        colour = colour * (alpha[:, :, None] if colour.ndim == 3 else alpha)
    if colour.ndim == 2:
        colour = colour[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(colour, dtype=np.float32)).permute(2, 0, 1).div(127.5).sub(1.0)


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
