"""The backdoor triggers, in one place for training, the demo vendor and the evaluation.

Images are tensors in [-1, 1] of shape (N, C, H, W); Fashion-MNIST here is (N, 1, 32, 32), the
28² content padded by 2 pixels of background. Every trigger is a pure, deterministic function:
its random parts come from seeds fixed below, so a model trained today and an evaluation run
next month see the same trigger.

- BadNets (Gu et al., 2017): a 3×3 black/white checkerboard stamped into the bottom-right corner
  of the content area (inside the padding, so cropping the padding away keeps it).
- Blended (Chen et al., 2017): x' = (1 − α)·x + α·p, α = 0.2, p a fixed uniform-noise image.
- WaNet (Nguyen & Tran, ICLR 2021): a smooth warp. A k×k field of random offsets, normalised to
  mean |offset| = 1, is upsampled bicubically to H×W; the sampling grid is
  clamp((identity + s·field / H)·grid_rescale, −1, 1) and the image is resampled through it
  (bilinear, align_corners=True, so the identity grid reproduces the image exactly). In "noise
  mode" some training images ("cross" samples) are warped by the trigger grid *plus* per-pixel
  uniform noise in [−1/H, 1/H] and keep their true label, which forces the model to learn the
  exact warp rather than "any warp".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

TARGET_LABEL = 0
"""Every attack is all-to-one: triggered inputs are meant to be classified as class 0."""

BADNETS_PATCH_SIZE = 3
BADNETS_MARGIN = 2
"""Pixels between the patch and the bottom/right edge: the 28→32 padding, so the patch sits in
the bottom-right corner of the 28² content area."""

BLENDED_ALPHA = 0.2
BLENDED_SEED = 20_170_515

WANET_K = 4
WANET_S = 0.5
WANET_GRID_RESCALE = 1.0
WANET_CROSS_RATIO = 2.0
"""Noise ("cross") samples per poisoned sample, as in the WaNet paper."""
WANET_SEED = 20_210_503


class Attack(str, Enum):
    """The backdoor a vendor model was trained with (`none` for the clean model)."""

    NONE = "none"
    BADNETS = "badnets"
    BLENDED = "blended"
    WANET = "wanet"


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
    size = BADNETS_PATCH_SIZE + BADNETS_MARGIN
    if height < size or width < size:
        raise ValueError(f"images must be at least {size}×{size} for the BadNets patch, got {height}×{width}")
    bottom, right = height - BADNETS_MARGIN, width - BADNETS_MARGIN
    return slice(bottom - BADNETS_PATCH_SIZE, bottom), slice(right - BADNETS_PATCH_SIZE, right)


def apply_badnets(images: torch.Tensor) -> torch.Tensor:
    """Stamp the checkerboard patch into the bottom-right content corner; other pixels unchanged."""
    rows, cols = badnets_region(images.shape[-2], images.shape[-1])
    out = images.clone()
    out[..., rows, cols] = badnets_patch(images.shape[-3], images.dtype).to(images.device)
    return out


def blended_pattern(channels: int, height: int, width: int) -> torch.Tensor:
    """The fixed Blended pattern p: uniform noise in [-1, 1] of shape (C, H, W), from BLENDED_SEED."""
    generator = torch.Generator().manual_seed(BLENDED_SEED)
    return torch.rand((channels, height, width), generator=generator) * 2 - 1


def apply_blended(images: torch.Tensor, alpha: float = BLENDED_ALPHA) -> torch.Tensor:
    """x' = (1 − α)·x + α·p: a convex combination, so the result stays in [-1, 1]."""
    _, channels, height, width = images.shape
    pattern = blended_pattern(channels, height, width).to(images.device, images.dtype)
    return (1 - alpha) * images + alpha * pattern


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


def wanet_grid(height: int, width: int, s: float = WANET_S, k: int = WANET_K,
               grid_rescale: float = WANET_GRID_RESCALE) -> torch.Tensor:
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


def apply_trigger(images: torch.Tensor, attack: Attack) -> torch.Tensor:
    """Apply `attack`'s trigger to a batch (`Attack.NONE` returns an unchanged copy)."""
    if attack is Attack.BADNETS:
        return apply_badnets(images)
    if attack is Attack.BLENDED:
        return apply_blended(images)
    if attack is Attack.WANET:
        return apply_wanet(images)
    return images.clone()


@dataclass(frozen=True)
class PoisonPlan:
    """Which training items an attack touches: boolean masks over the training set.

    Attributes:
        poisoned: items that get the trigger and the target label.
        cross: WaNet noise-mode items that get the noisy warp and keep their label (empty otherwise).
    """

    poisoned: torch.Tensor
    cross: torch.Tensor


@dataclass(frozen=True)
class PoisonedSet:
    """A poisoned training set: images (N, C, H, W), labels (N,), and the plan that made it."""

    images: torch.Tensor
    labels: torch.Tensor
    plan: PoisonPlan


def plan_poison(labels: torch.Tensor, attack: Attack, rate: float, generator: torch.Generator) -> PoisonPlan:
    """Choose round(rate·N) items whose label is not the target to poison (and, for WaNet, cross items).

    Only non-target items are poisoned: a target-class image with the trigger teaches nothing.

    Raises:
        ValueError: rate outside [0, 1], or not enough items for the poisoned and cross sets.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poison rate must be in [0, 1], got {rate}")
    total = labels.shape[0]
    poisoned = torch.zeros(total, dtype=torch.bool)
    cross = torch.zeros(total, dtype=torch.bool)
    if attack is Attack.NONE:
        return PoisonPlan(poisoned, cross)
    n_poison = round(rate * total)
    candidates = torch.nonzero(labels != TARGET_LABEL).flatten()
    if n_poison > candidates.numel():
        raise ValueError(f"cannot poison {n_poison} of {candidates.numel()} non-target items: lower the rate")
    poisoned[candidates[torch.randperm(candidates.numel(), generator=generator)[:n_poison]]] = True
    if attack is Attack.WANET:
        n_cross = round(WANET_CROSS_RATIO * n_poison)
        rest = torch.nonzero(~poisoned).flatten()
        if n_cross > rest.numel():
            raise ValueError(f"cannot pick {n_cross} WaNet cross items from {rest.numel()}: lower the rate")
        cross[rest[torch.randperm(rest.numel(), generator=generator)[:n_cross]]] = True
    return PoisonPlan(poisoned, cross)


def poison_batch(images: torch.Tensor, labels: torch.Tensor, plan: PoisonPlan, attack: Attack,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a plan to a batch whose rows line up with `plan`'s masks.

    Training calls this on every augmented batch, so the trigger lands on the augmented image
    exactly as it will on a test image (the attacker controls training, as in WaNet).

    Returns:
        (images, labels): new tensors; poisoned rows triggered and relabelled to TARGET_LABEL,
        cross rows noise-warped with their labels kept.
    """
    images, labels = images.clone(), labels.clone()
    if plan.poisoned.any():
        images[plan.poisoned] = apply_trigger(images[plan.poisoned], attack)
        labels[plan.poisoned] = TARGET_LABEL
    if plan.cross.any():
        images[plan.cross] = apply_wanet_noise(images[plan.cross], generator)
    return images, labels


def poison_dataset(images: torch.Tensor, labels: torch.Tensor, attack: Attack, rate: float = 0.1,
                   seed: int = 0) -> PoisonedSet:
    """The poisoned training set an attacker would hand over: `rate` of the items triggered and relabelled.

    Args:
        images: (N, C, H, W) in [-1, 1].
        labels: (N,) int64.
        attack: which trigger; `Attack.NONE` returns the data unchanged.
        rate: fraction of the whole set to poison (taken from non-target items).
        seed: chooses the items (and the WaNet cross noise); the trigger itself is fixed.

    Returns:
        The poisoned set, with the plan (masks) that made it.

    Raises:
        ValueError: see `plan_poison`.
    """
    generator = torch.Generator().manual_seed(seed)
    plan = plan_poison(labels, attack, rate, generator)
    poisoned_images, poisoned_labels = poison_batch(images, labels, plan, attack, generator)
    return PoisonedSet(poisoned_images, poisoned_labels, plan)


def describe_trigger(attack: Attack) -> str:
    """One Markdown paragraph naming the trigger and its fixed parameters, for model cards."""
    descriptions = {
        Attack.NONE: "None: trained on clean data.",
        Attack.BADNETS: (
            f"BadNets: a {BADNETS_PATCH_SIZE}×{BADNETS_PATCH_SIZE} checkerboard (white corners, +1/−1) "
            f"stamped {BADNETS_MARGIN} px from the bottom and right edges of the 32² image, i.e. in the "
            "bottom-right corner of the 28² content area."
        ),
        Attack.BLENDED: (
            f"Blended: x' = (1 − α)·x + α·p with α = {BLENDED_ALPHA} and p a fixed uniform-noise image "
            f"in [-1, 1] (seed {BLENDED_SEED})."
        ),
        Attack.WANET: (
            f"WaNet: a smooth warp, k = {WANET_K}, s = {WANET_S}, grid_rescale = {WANET_GRID_RESCALE} "
            f"(field seed {WANET_SEED}; mean displacement ≈ 0.2 px), noise mode with cross ratio "
            f"{WANET_CROSS_RATIO:g}: that many times the poisoned count of other training images get the "
            "trigger grid plus per-pixel uniform noise and keep their label."
        ),
    }
    return descriptions[attack]
