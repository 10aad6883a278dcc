"""Purify lists of PIL images of any size: fit to the model's canvas, batch, and fit back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from PIL import Image

from service.purify.imaging import pil_to_tensor, resize, tensor_to_pil, tile, tiles_per_side, untile
from service.purify.transforms import project
from service.purify.zip import ZipPurifier


@dataclass(frozen=True)
class FittedBatch:
    """Images fitted into model-size canvases, with what is needed to cut them back out."""

    canvases: torch.Tensor  # (M, C, S, S)
    restore: Callable[[torch.Tensor], list[torch.Tensor]]


def fit_to_model(images: list[torch.Tensor], model_size: int, tile_small: bool = True) -> FittedBatch:
    """Resize each (C, H, W) image to the model's S×S canvas, or tile small ones k² to a canvas.

    An image whose longer side fits at least twice into S is resized to a square tile of S // k
    (k = tiles per side) and packed with others of the same k, as the paper packs 64 CIFAR images
    into one 256² canvas; others are resized to S×S. `restore` maps purified canvases back to the
    original sizes and order.
    """
    groups: dict[int, list[int]] = {}
    for index, image in enumerate(images):
        k = tiles_per_side(max(image.shape[-2:]), model_size) if tile_small else 1
        groups.setdefault(k, []).append(index)
    canvases: list[torch.Tensor] = []
    layout: list[tuple[int, list[int], int]] = []  # (k, indices, first canvas row)
    for k, indices in sorted(groups.items()):
        side = model_size // k
        stack = torch.stack([resize(images[i], side, side) for i in indices])
        packed = tile(stack, k) if k > 1 else stack
        layout.append((k, indices, sum(c.shape[0] for c in canvases)))
        canvases.append(packed)
    sizes = [tuple(image.shape[-2:]) for image in images]

    def restore(out: torch.Tensor) -> list[torch.Tensor]:
        result: list[torch.Tensor | None] = [None] * len(images)
        for k, indices, start in layout:
            count = -(-len(indices) // (k * k)) if k > 1 else len(indices)
            rows = out[start : start + count]
            items = untile(rows, k, len(indices)) if k > 1 else rows
            for i, item in zip(indices, items):
                result[i] = resize(item, *sizes[i])
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
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Purify PIL images of any sizes; returns (purified, degraded A⁺A x) at the original sizes.

    With a seed, canvas i uses its own generator seeded seed + i, so results do not depend on
    batch_size. With several transforms, "degraded" shows the first one.
    """
    tensors = [pil_to_tensor(image, channels) for image in images]
    fitted = fit_to_model(tensors, model_size, tile_small)
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
