"""Purify lists of PIL images of any size: fit to the model's canvas, batch, and fit back."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from service.purify.imaging import pil_to_tensor, resize, tensor_to_pil, tile, tiles_per_side, untile
from service.purify.transforms import project
from service.purify.zip import ZipPurifier


@dataclass(frozen=True)
class FittedBatch:
    """Images fitted into model-size canvases, with what is needed to cut them back out."""

    canvases: torch.Tensor  # (M, C, S, S)
    restore: Callable[[torch.Tensor], list[torch.Tensor]]


class SmallImageFit(str, enum.Enum):
    """How an image smaller than its slot (the canvas, or a tile of it) is fitted."""

    PAD = "pad"  # centred on a background of `PAD_FILL`: the model sees the pixels as they are
    RESIZE = "resize"  # scaled up to the slot: softens the image and changes its proportions


PAD_FILL = -1.0
"""Black in [-1, 1]: the background the shipped model was trained on (28² padded to 32²)."""


def _pad_to(image: torch.Tensor, side: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    top, left = (side - height) // 2, (side - width) // 2
    return F.pad(image, (left, side - width - left, top, side - height - top), value=PAD_FILL)


def _crop_from(slot: torch.Tensor, height: int, width: int) -> torch.Tensor:
    side = slot.shape[-1]
    top, left = (side - height) // 2, (side - width) // 2
    return slot[..., top : top + height, left : left + width]


def fit_to_model(images: list[torch.Tensor], model_size: int, tile_small: bool = True,
                 small_fit: SmallImageFit = SmallImageFit.PAD) -> FittedBatch:
    """Fit each (C, H, W) image into the model's S×S canvas, or tile small ones k² to a canvas.

    An image whose longer side fits at least twice into S goes into a square tile of S // k
    (k = tiles per side), packed with others of the same k, as the paper packs 64 CIFAR images
    into one 256² canvas; others get the whole canvas. An image larger than its slot is resized
    to it; a smaller one is padded (`SmallImageFit.PAD`, e.g. a 28² Fashion-MNIST image in the
    32² canvas, as the model was trained) or resized up (`RESIZE`). `restore` maps purified
    canvases back to the original sizes and order.
    """
    sizes = [tuple(image.shape[-2:]) for image in images]
    per_side = [tiles_per_side(max(size), model_size) if tile_small else 1 for size in sizes]
    groups: dict[int, list[int]] = {}
    for index, k in enumerate(per_side):
        groups.setdefault(k, []).append(index)
    padded = [small_fit is SmallImageFit.PAD and max(size) <= model_size // k for size, k in zip(sizes, per_side)]

    def into_slot(i: int, side: int) -> torch.Tensor:
        return _pad_to(images[i], side) if padded[i] else resize(images[i], side, side)

    def out_of_slot(i: int, slot: torch.Tensor) -> torch.Tensor:
        return _crop_from(slot, *sizes[i]) if padded[i] else resize(slot, *sizes[i])

    canvases: list[torch.Tensor] = []
    layout: list[tuple[int, list[int], int]] = []  # (k, indices, first canvas row)
    for k, indices in sorted(groups.items()):
        side = model_size // k
        stack = torch.stack([into_slot(i, side) for i in indices])
        packed = tile(stack, k) if k > 1 else stack
        margin = model_size - k * side  # k does not divide S (e.g. 9 tiles of 28 in 256): fill the rest
        packed = F.pad(packed, (0, margin, 0, margin), value=PAD_FILL) if margin else packed
        layout.append((k, indices, sum(c.shape[0] for c in canvases)))
        canvases.append(packed)

    def restore(out: torch.Tensor) -> list[torch.Tensor]:
        result: list[torch.Tensor | None] = [None] * len(images)
        for k, indices, start in layout:
            count = -(-len(indices) // (k * k)) if k > 1 else len(indices)
            rows = out[start : start + count, :, : model_size // k * k, : model_size // k * k]
            items = untile(rows, k, len(indices)) if k > 1 else rows
            for i, item in zip(indices, items):
                result[i] = out_of_slot(i, item)
        return [r for r in result if r is not None]

    return FittedBatch(torch.cat(canvases), restore)


def batched(items: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    """Consecutive slices of at most `batch_size` rows."""
    for start in range(0, items.shape[0], batch_size):
        yield items[start : start + batch_size]


def purify_pil_images(
    purifier: ZipPurifier,
    images: list[Image.Image],
    model_size: int,
    channels: int,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    seed: int | None = None,
    tile_small: bool = True,
    small_fit: SmallImageFit = SmallImageFit.PAD,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Purify PIL images of any sizes; returns (purified, degraded A⁺A x) at the original sizes.

    With a seed, canvas i uses its own generator seeded seed + i, so results do not depend on
    batch_size. With several transforms, "degraded" shows the first one.
    """
    tensors = [pil_to_tensor(image, channels) for image in images]
    fitted = fit_to_model(tensors, model_size, tile_small, small_fit)
    outputs: list[torch.Tensor] = []
    offset = 0
    for chunk in batched(fitted.canvases, batch_size):
        chunk = chunk.to(device)
        generators = None
        if seed is not None:
            generators = [torch.Generator(device=chunk.device).manual_seed(seed + offset + i) for i in range(len(chunk))]
        outputs.append(purifier(chunk, generators).cpu())
        offset += len(chunk)
        if on_batch is not None:
            on_batch(len(chunk))
    first = purifier.transforms_for(channels)[0]
    degraded = project(first, fitted.canvases)
    return ([tensor_to_pil(x) for x in fitted.restore(torch.cat(outputs))],
            [tensor_to_pil(x) for x in fitted.restore(degraded)])
