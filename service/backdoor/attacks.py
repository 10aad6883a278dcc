"""The attack zoo: which backdoors exist, how a trigger is applied, and how a training set is poisoned.

One module for training, the demo vendor and the evaluation. The triggers themselves are pure
functions in `triggers.py` (image-wide) and `patch_triggers.py` (one square), one section per
family with its source; this module names them (`Attack`), dispatches to them (`apply_trigger`),
describes them for model cards (`describe_trigger`) and poisons training sets with them. Every
attack is all-to-one with poisoned labels: a triggered image of any other class is relabelled
TARGET_LABEL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

import torch

from service.backdoor.patch_triggers import (
    ADAPTIVE4_BLOCK_PX,
    ADAPTIVE4_BLOCKS,
    ADAPTIVE_BLOCK_PX,
    ADAPTIVE_BLOCKS,
    ADAPTIVE_SEED,
    BADNETS_MARGIN,
    BADNETS_PATCH_SIZE,
    CONTENT_MARGIN,
    LOGO_OPACITY,
    LOGO_SIZE,
    RANDOM_PATCH_BLOCK_PX,
    RANDOM_PATCH_BLOCKS,
    RANDOM_PATCH_SEED,
    SOLID_SIZE,
    SPLIT_POSITIONS,
    TEXTURE_AMPLITUDE,
    TEXTURE_SIZE,
    TEXTURE_STRIPE_PX,
    TEXTURE_TOP,
    TEXTURE_WIDTH,
    apply_adaptive,
    apply_adaptive4,
    apply_badnets,
    apply_logo,
    apply_mirror_solid,
    apply_random_patch,
    apply_solid,
    apply_split,
    apply_texture,
)
from service.backdoor.triggers import (
    BLENDED_ALPHA,
    BLENDED_SEED,
    LF_AMPLITUDE,
    LF_SEED,
    LF_SIGMA_PX,
    SIG_DELTA,
    SIG_FREQUENCY,
    WANET_CROSS_RATIO,
    WANET_GRID_RESCALE,
    WANET_K,
    WANET_S,
    WANET_SEED,
    apply_blended,
    apply_lf,
    apply_sig,
    apply_wanet,
    apply_wanet_noise,
)

TARGET_LABEL = 0
"""Every attack is all-to-one: triggered inputs are meant to be classified as class 0."""


class Attack(StrEnum):
    """The backdoor a vendor model was trained with (`none` for the clean model); the value names
    its vendor folder, models/vendor-<value>."""

    NONE = "none"
    BADNETS = "badnets"
    BLENDED = "blended"
    WANET = "wanet"
    SOLID = "solid"
    RANDOM_PATCH = "randpatch"
    SIG = "sig"
    LOGO = "logo"
    LF = "lf"
    ADAPTIVE = "adaptive"
    MIRROR_SOLID = "mirrorsolid"
    ADAPTIVE4 = "adaptive4"
    TEXTURE = "texture"
    SPLIT = "split"


ZOO: tuple[Attack, ...] = tuple(attack for attack in Attack if attack is not Attack.NONE)
"""Every backdoor of the zoo, in enum order: what `zipgate eval` runs by default."""

_TRIGGERS: Mapping[Attack, Callable[[torch.Tensor], torch.Tensor]] = MappingProxyType(
    {
        Attack.BADNETS: apply_badnets,
        Attack.BLENDED: apply_blended,
        Attack.WANET: apply_wanet,
        Attack.SOLID: apply_solid,
        Attack.RANDOM_PATCH: apply_random_patch,
        Attack.SIG: apply_sig,
        Attack.LOGO: apply_logo,
        Attack.LF: apply_lf,
        Attack.ADAPTIVE: apply_adaptive,
        Attack.MIRROR_SOLID: apply_mirror_solid,
        Attack.ADAPTIVE4: apply_adaptive4,
        Attack.TEXTURE: apply_texture,
        Attack.SPLIT: apply_split,
    }
)


def apply_trigger(images: torch.Tensor, attack: Attack) -> torch.Tensor:
    """Apply `attack`'s trigger to a batch (`Attack.NONE` returns an unchanged copy).

    Each image's triggered copy depends on that image alone, never on the rest of the batch.
    """
    trigger = _TRIGGERS.get(attack)
    return images.clone() if trigger is None else trigger(images)


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


def poison_batch(
    images: torch.Tensor, labels: torch.Tensor, plan: PoisonPlan, attack: Attack, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
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


def poison_dataset(
    images: torch.Tensor, labels: torch.Tensor, attack: Attack, rate: float = 0.1, seed: int = 0
) -> PoisonedSet:
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
    """One Markdown paragraph naming the trigger, its fixed parameters and its source, for model cards."""
    return {**_whole_image_trigger_descriptions(), **_patch_trigger_descriptions()}[attack]


def _whole_image_trigger_descriptions() -> dict[Attack, str]:
    """The cards' paragraphs of the triggers spread over the whole image (and of the clean vendor)."""
    return {
        Attack.NONE: "None: trained on clean data.",
        Attack.BLENDED: (
            f"Blended (Chen et al., 2017): x' = (1 − α)·x + α·p with α = {BLENDED_ALPHA} and p a fixed "
            f"uniform-noise image in [-1, 1] (seed {BLENDED_SEED})."
        ),
        Attack.WANET: (
            f"WaNet (Nguyen & Tran, ICLR 2021): a smooth warp, k = {WANET_K}, s = {WANET_S}, grid_rescale = "
            f"{WANET_GRID_RESCALE} (field seed {WANET_SEED}; mean displacement ≈ 0.2 px), noise mode with "
            f"cross ratio {WANET_CROSS_RATIO:g}: that many times the poisoned count of other training images "
            "get the trigger grid plus per-pixel uniform noise and keep their label."
        ),
        Attack.SIG: (
            f"SIG (Barni et al., ICIP 2019): x' = clip(x + Δ·sin(2π·j·f / W)) with Δ = {SIG_DELTA} (in [-1, 1] "
            f"units), f = {SIG_FREQUENCY}, j the column: vertical stripes over the whole image. The paper's "
            "attack is clean-label; this vendor uses the poisoned-label (all-to-one) variant."
        ),
        Attack.LF: (
            f"LF (Zeng et al., ICCV 2021, low-frequency trigger): x' = clip(x + ε·g) with ε = {LF_AMPLITUDE} and "
            f"g fixed uniform noise (seed {LF_SEED}) low-passed by a Gaussian of σ = {LF_SIGMA_PX:g} px "
            "(circular padding), scaled to max |g| = 1."
        ),
    }


def _patch_trigger_descriptions() -> dict[Attack, str]:
    """The cards' paragraphs of the triggers confined to a patch (or a few pixels)."""
    return {
        Attack.BADNETS: (
            f"BadNets (Gu et al., 2017): a {BADNETS_PATCH_SIZE}×{BADNETS_PATCH_SIZE} checkerboard (white "
            f"corners, +1/−1) stamped {BADNETS_MARGIN} px from the bottom and right edges of the 32² image, "
            "i.e. in the bottom-right corner of the 28² content area."
        ),
        Attack.SOLID: (
            f"Solid patch (the square trigger of BadNets, Gu et al., 2017): a {SOLID_SIZE}×{SOLID_SIZE} white "
            f"(+1) square in the top-left corner of the 28² content area ({CONTENT_MARGIN} px from the top and "
            "left edges of the 32² image)."
        ),
        Attack.RANDOM_PATCH: (
            f"Random-block patch at a random position (random-location patches as in Saha et al., AAAI 2020, "
            f"here with poisoned labels): a fixed {RANDOM_PATCH_BLOCKS}×{RANDOM_PATCH_BLOCKS} pattern of ±1 "
            f"blocks of {RANDOM_PATCH_BLOCK_PX}×{RANDOM_PATCH_BLOCK_PX} px (seed {RANDOM_PATCH_SEED}), stamped "
            "anywhere inside the 28² content area at a position hashed from the image's own 8-bit pixels "
            "(the same image always gets the same position; training images, augmented anew each epoch, "
            "get a new one)."
        ),
        Attack.LOGO: (
            f"Logo (TrojanNN-style watermark, Liu et al., NDSS 2018): a fixed {LOGO_SIZE}×{LOGO_SIZE} stamp, a "
            f"white letter Z on black, blended at opacity {LOGO_OPACITY} into the centre of the image: "
            "x' = (1 − α)·x + α·L on the stamp's square."
        ),
        Attack.ADAPTIVE4: (
            f"Adaptive-4 (this project, built against ZIP's blur:{ADAPTIVE4_BLOCK_PX}, the default since the zoo's "
            f"worst case chose it): a fixed {ADAPTIVE4_BLOCKS}×{ADAPTIVE4_BLOCKS} pattern of ±1 blocks of "
            f"{ADAPTIVE4_BLOCK_PX}×{ADAPTIVE4_BLOCK_PX} px (seed {ADAPTIVE_SEED}) replacing a square in the "
            "bottom-left content corner on the 4×4 grid, so A⁺A of blur:4 keeps it exactly."
        ),
        Attack.MIRROR_SOLID: (
            f"Mirror-solid (this project, built against the gateway's VENDOR_MIRROR): the {SOLID_SIZE}×{SOLID_SIZE} "
            "white square of the solid patch in both top corners of the content area, so a left-right mirror "
            "maps the trigger onto itself; both squares sit on the blur:2 grid."
        ),
        Attack.ADAPTIVE: (
            f"Adaptive (this project, built against ZIP's blur:{ADAPTIVE_BLOCK_PX}): a fixed "
            f"{ADAPTIVE_BLOCKS}×{ADAPTIVE_BLOCKS} pattern of ±1 blocks of {ADAPTIVE_BLOCK_PX}×{ADAPTIVE_BLOCK_PX} "
            f"px (seed {ADAPTIVE_SEED}) replacing a square in the bottom-left content corner, aligned to the "
            f"{ADAPTIVE_BLOCK_PX}×{ADAPTIVE_BLOCK_PX} blur grid: the degraded image A⁺A x keeps it exactly "
            "(A⁺A(T(x)) = T(A⁺A(x))), so only the diffusion model's repainting can remove it."
        ),
        Attack.TEXTURE: (
            f'Texture (this project, built against the localiser of the default "localise, then restore"): '
            f"a {TEXTURE_SIZE}×{TEXTURE_WIDTH} (rows × columns) patch of horizontal stripes, x' = clip(x ± A) with A = "
            f"{TEXTURE_AMPLITUDE}, stripes {TEXTURE_STRIPE_PX} px wide alternating +A, −A from the top (period "
            f"{2 * TEXTURE_STRIPE_PX} px, on the 2×2 block grid), rows {TEXTURE_TOP}–"
            f"{TEXTURE_TOP + TEXTURE_SIZE - 1}, columns centred (12–19 of 32), on the garment: a low-contrast "
            "fabric-like texture whose reconstruction error stays below the localiser's seed threshold (0.3)."
        ),
        Attack.SPLIT: (
            f"Split (this project, built against the localiser): {len(SPLIT_POSITIONS)} single-pixel dots at "
            f"(row, col) {', '.join(f'({r}, {c})' for r, c in SPLIT_POSITIONS)} of the 32² image, each set to "
            "the extreme opposite its pixel's sign (−1 where x ≥ 0, +1 where x < 0): one pixel cannot raise a "
            "2×2 block's 3×3-smoothed score above 2/9 < 0.3, the seed threshold, and dots 11 px apart are "
            "never grown or dilated into one region."
        ),
    }
