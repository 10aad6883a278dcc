"""The one engine pipeline: images of any size → model canvases → seeded ZIP → back, and A⁺A x.

The gateway, the CLI and the evaluation all go through these functions, so that they fit, seed
and restore alike (the evaluation measures what the gateway serves):

    fitted = fit_to_model(images, model_size, small_fit=...)       # canvases, tiles k² small images
    purified = purify_canvases(purifier, fitted.canvases, seed)    # canvas i uses seed + i
    images = restore_images(fitted, purified)                      # back to the original sizes
    degraded = degraded_images(fitted, transforms)                 # A⁺A x of the first transform

The gateway splits this across its pool (it fits per request, the pool batches canvases of many
requests with `canvas_seeds`' seeds, the gateway restores); `purify_images` runs it in one go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from service.purify.imaging import pil_to_tensor, resize, tensor_to_pil, tile, tiles_per_side, untile
from service.purify.options import SmallImageFit
from service.purify.seeds import canvas_seeds, seeded_generators
from service.purify.transforms import parse_transforms, project

CanvasPurifier = Callable[[torch.Tensor, list[torch.Generator] | None], torch.Tensor]
"""Purifies canvases (N, C, S, S) with one generator per canvas (a `ZipPurifier`)."""


@dataclass(frozen=True)
class FittedBatch:
    """Images fitted into model-size canvases, with what is needed to cut them back out."""

    canvases: torch.Tensor  # (M, C, S, S)
    restore: Callable[[torch.Tensor], list[torch.Tensor]]


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


def fit_to_model(
    images: list[torch.Tensor], model_size: int, tile_small: bool = True, small_fit: SmallImageFit = SmallImageFit.PAD
) -> FittedBatch:
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
    padded = [
        small_fit is SmallImageFit.PAD and max(size) <= model_size // k for size, k in zip(sizes, per_side, strict=True)
    ]

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
            for i, item in zip(indices, items, strict=True):
                result[i] = out_of_slot(i, item)
        return [r for r in result if r is not None]

    return FittedBatch(torch.cat(canvases), restore)


def batched(items: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    """Consecutive slices of at most `batch_size` rows."""
    for start in range(0, items.shape[0], batch_size):
        yield items[start : start + batch_size]


def purify_canvases(
    purifier: CanvasPurifier,
    canvases: torch.Tensor,
    seed: int | None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Purify canvases in batches on `device`; with a seed, canvas i uses seed + i (`canvas_seeds`).

    Per-canvas generators make the result independent of `batch_size`, and equal to the gateway's
    for the same seed (its pool batches canvases however requests arrive).

    Args:
        purifier: e.g. a `ZipPurifier`.
        canvases: (M, C, S, S) in [-1, 1].
        seed: the first canvas's seed; None = fresh noise.
        device: where the purifier runs.
        batch_size: canvases per call (None: all at once).
        on_batch: called with each batch's size when it is done (progress bars).

    Returns:
        The purified canvases, float32 on the CPU.
    """
    seeds = None if seed is None else canvas_seeds(seed, canvases.shape[0])
    outputs: list[torch.Tensor] = []
    offset = 0
    for chunk in batched(canvases, batch_size or max(1, canvases.shape[0])):
        chunk = chunk.to(device)
        generators = None if seeds is None else seeded_generators(seeds[offset : offset + len(chunk)], chunk.device)
        outputs.append(purifier(chunk, generators).float().cpu())
        offset += len(chunk)
        if on_batch is not None:
            on_batch(len(chunk))
    return torch.cat(outputs)


def restore_images(fitted: FittedBatch, purified: torch.Tensor, mirror: bool = False) -> list[torch.Tensor]:
    """Purified canvases cut back into the images at their original sizes and order.

    Args:
        fitted: what `fit_to_model` returned for these canvases.
        purified: the canvases after purification (same shape as `fitted.canvases`).
        mirror: flip each image left-right (the gateway's `vendor_mirror`: after purifying).
    """
    images = fitted.restore(purified)
    return [image.flip(-1) for image in images] if mirror else images


def degraded_images(fitted: FittedBatch, transforms: str) -> list[torch.Tensor]:
    """A⁺A x of the spec's first transform (what ZIP keeps of the input), at the original sizes.

    Computed on the canvases, as ZIP sees them, and clamped to [-1, 1].

    Raises:
        ValueError: a spec that does not suit the canvases' channel count.
    """
    first = parse_transforms(transforms, fitted.canvases.shape[1])[0]
    return fitted.restore(project(first, fitted.canvases).clamp(-1.0, 1.0))


def purify_images(
    purifier: CanvasPurifier,
    images: Sequence[torch.Tensor],
    model_size: int,
    seed: int | None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    small_fit: SmallImageFit = SmallImageFit.PAD,
    tile_small: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[FittedBatch, list[torch.Tensor]]:
    """The whole pipeline for (C, H, W) tensors in [-1, 1]: fit, purify with seeds, restore.

    With the defaults it does what the gateway does with one request's images and `?seed=`.

    Returns:
        (the fitted batch, for `degraded_images`; the purified images at their original sizes).
    """
    fitted = fit_to_model(list(images), model_size, tile_small, small_fit)
    purified = purify_canvases(purifier, fitted.canvases, seed, device, batch_size, on_batch)
    return fitted, restore_images(fitted, purified)


def purify_pil_images(
    purifier: CanvasPurifier,
    images: list[Image.Image],
    model_size: int,
    channels: int,
    transforms: str,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    seed: int | None = None,
    tile_small: bool = True,
    small_fit: SmallImageFit = SmallImageFit.PAD,
    on_batch: Callable[[int], None] | None = None,
    with_degraded: bool = False,
) -> tuple[list[Image.Image], list[Image.Image] | None]:
    """Purify PIL images of any sizes; returns (purified, degraded A⁺A x) at the original sizes.

    With a seed, canvas i uses seed + i, so results do not depend on batch_size. The degraded view
    is computed only `with_degraded` (None otherwise); with several transforms it shows the first.
    """
    tensors = [pil_to_tensor(image, channels) for image in images]
    fitted, purified = purify_images(
        purifier, tensors, model_size, seed, device, batch_size, small_fit, tile_small, on_batch
    )
    degraded = [tensor_to_pil(x) for x in degraded_images(fitted, transforms)] if with_degraded else None
    return [tensor_to_pil(x) for x in purified], degraded
