"""Where is the trigger? A suspicion map from the diffusion prior, and a block mask grown from it.

docs/design.md, "Localise, then restore". A trigger is content the prior finds implausible: noised
to t₀ and walked back with deterministic DDIM steps, an image comes back close to itself where it
looks like the training data and differs where it does not. The map is |x − x̂| averaged over a
few noise draws and the channels, smoothed 3×3; blocks of `block` px are scored by their mean.

The mask is grown from seeds, as BDMAE grows its token mask from seed tokens (Sun et al., CVPR
2023): the `seed_blocks` highest-scoring blocks that also score above `seed_threshold` seed
regions, which grow through the 8-connected blocks above `grow_threshold`; the regions are then
dilated by `dilate` blocks (a trigger's edge scores lower than its core). The prior's residual is
high along every garment edge too, so a low threshold alone masks half of a clean image: the
per-image top-k bounds the area, and the seed floor is set high, so that a region starts only
where the prior fails outright (a bright patch): most clean images get no mask at all, and what a
mask misses (blends, warps, faint patches) is the polish pass's (docs/design.md). Thresholds are in
the map's own unit, the mean absolute difference in [-1, 1] pixel units, and were chosen on the
shipped world (docs/defense.md).

Notation: x (N, C, H, W) in [-1, 1]; t₀ = noise_level·T; x̂ the DDIM restoration from x_t₀.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from service.purify.options import ZipConfig
from service.purify.schedule import alpha_bar, ddim_step, renoise

EpsFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSource = Callable[[], torch.Tensor]
"""Draws one float32 noise tensor of the batch's shape (per-item generators live behind it)."""


@dataclass(frozen=True)
class LocaliseConfig:
    """The localiser's knobs (docs/design.md, "Localise, then restore").

    Attributes:
        noise_level: t₀/T, how far the input is noised before it is restored.
        steps: deterministic DDIM steps from t₀ back to 0 (ε-model forwards per draw).
        draws: noise draws averaged into the map (forwards = steps · draws).
        block: mask block side in pixels (the image side must be a multiple of it).
        seed_blocks: at most this many of the highest-scoring blocks seed regions.
        seed_threshold: a seed block must also score above it (the setting MASK_SEED_THRESHOLD).
        grow_threshold: a region grows through neighbouring blocks scoring above it (MASK_GROW_THRESHOLD).
        dilate: blocks added around each region.

    Raises:
        ValueError: a knob out of range; the message names it.
    """

    noise_level: float = 0.5
    steps: int = 5
    draws: int = 2
    block: int = 2
    seed_blocks: int = 6
    # The two thresholds are settings: their defaults are ZipConfig's (one source), the rest are fixed.
    seed_threshold: float = ZipConfig.mask_seed_threshold
    grow_threshold: float = ZipConfig.mask_grow_threshold
    dilate: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_level < 1.0:
            raise ValueError(f"localise noise_level must be in (0, 1), got {self.noise_level}")
        if min(self.steps, self.draws, self.block, self.seed_blocks) < 1 or self.dilate < 0:
            raise ValueError(
                "localise steps, draws, block and seed_blocks must be >= 1 and dilate >= 0, "
                f"got {self.steps}, {self.draws}, {self.block}, {self.seed_blocks}, {self.dilate}"
            )
        if self.seed_threshold < 0 or self.grow_threshold < 0:
            raise ValueError(f"localise thresholds must be >= 0, got {self.seed_threshold}, {self.grow_threshold}")

    @property
    def forwards(self) -> int:
        """ε-model forwards per image for the map."""
        return self.steps * self.draws


def restore_from(
    eps: EpsFunction, x: torch.Tensor, noise: torch.Tensor, alpha_bars: torch.Tensor, noise_level: float, steps: int
) -> torch.Tensor:
    """x̂: x noised to t₀ with `noise`, then `steps` deterministic DDIM steps (η = 0) down to 0.

    The grid is t_k = t₀·k/steps for k = steps … 1, then ᾱ(−1) = 1 ends the walk at x₀.
    """
    t_start = round(noise_level * alpha_bars.shape[0])
    times = [(t_start * k) // steps for k in range(steps, 0, -1)]
    x_t = renoise(x, alpha_bar(alpha_bars, times[0]), noise)
    n = x.shape[0]
    for t, t_next in zip(times, [*times[1:], -1], strict=True):
        eps_t = eps(x_t, torch.full((n,), t, dtype=torch.long, device=x.device)).float()[:, : x.shape[1]]
        x_t, _ = ddim_step(x_t, eps_t, alpha_bar(alpha_bars, t), alpha_bar(alpha_bars, t_next), 0.0, noise)
    return x_t


def suspicion_map(
    eps: EpsFunction, x: torch.Tensor, config: LocaliseConfig, alpha_bars: torch.Tensor, draw: NoiseSource
) -> torch.Tensor:
    """The per-pixel map (N, 1, H, W): mean over draws and channels of |x − x̂|, smoothed 3×3."""
    total = torch.zeros((x.shape[0], 1, *x.shape[-2:]), dtype=torch.float32, device=x.device)
    for _ in range(config.draws):
        restored = restore_from(eps, x.float(), draw(), alpha_bars, config.noise_level, config.steps)
        total += (x.float() - restored).abs().mean(dim=1, keepdim=True)
    return smooth_map(total / config.draws)


SMOOTH_PX = 3
"""The suspicion map's smoothing window: one stray pixel of residual cannot seed a block alone."""


def smooth_map(pixel_map: torch.Tensor) -> torch.Tensor:
    """The `SMOOTH_PX`² mean of a per-pixel map (N, 1, H, W), the same size (edges average what they have)."""
    return F.avg_pool2d(pixel_map, SMOOTH_PX, stride=1, padding=SMOOTH_PX // 2, count_include_pad=False)


def block_scores(pixel_map: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of the map over each block × block square: (N, 1, H/block, W/block)."""
    return F.avg_pool2d(pixel_map, block)


def _neighbours(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Boolean dilation by `radius` blocks in the 8-connected sense (a (2r+1)² square)."""
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0


def seed_blocks(scores: torch.Tensor, count: int, threshold: float) -> torch.Tensor:
    """The `count` highest-scoring blocks of each image that also score above `threshold` (ties kept)."""
    flat = scores.flatten(1)
    kth = flat.topk(min(count, flat.shape[1]), dim=1).values[:, -1:]
    return ((flat >= kth) & (flat > threshold)).view_as(scores)


def grow_regions(seeds: torch.Tensor, scores: torch.Tensor, grow_threshold: float) -> torch.Tensor:
    """The seeds grown through the 8-connected blocks scoring above `grow_threshold`.

    Returns:
        A boolean block mask of `scores`' shape, holding every seed.
    """
    candidates = scores > grow_threshold
    region = seeds
    # Each pass grows every region by one block; a region spans at most all blocks, so this ends.
    for _ in range(scores.shape[-2] * scores.shape[-1]):
        grown = _neighbours(region) & candidates
        if torch.equal(grown | region, region):
            break
        region = grown | region
    return region


def suspicious_blocks(scores: torch.Tensor, config: LocaliseConfig) -> torch.Tensor:
    """The final block mask (N, 1, h, w), True = repaint: grown regions, dilated by `config.dilate`."""
    seeds = seed_blocks(scores, config.seed_blocks, config.seed_threshold)
    regions = grow_regions(seeds, scores, config.grow_threshold)
    return _neighbours(regions, config.dilate) if config.dilate else regions


def keep_mask(blocks: torch.Tensor, block: int) -> torch.Tensor:
    """The pixel keep-mask (N, 1, H, W) float, 1 = keep, from a block mask with True = repaint."""
    pixels = blocks.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return (~pixels).float()


def localise(
    eps: EpsFunction, x: torch.Tensor, config: LocaliseConfig, alpha_bars: torch.Tensor, draw: NoiseSource
) -> tuple[torch.Tensor, torch.Tensor]:
    """The suspicion map and the pixel keep-mask of a batch.

    Returns:
        (map (N, 1, H, W) float32, keep-mask (N, 1, H, W) float32 with 1 = keep).

    Raises:
        ValueError: an image side that is not a multiple of `config.block`.
    """
    if x.shape[-1] % config.block or x.shape[-2] % config.block:
        raise ValueError(f"localise block {config.block} must divide the image size {tuple(x.shape[-2:])}")
    pixel_map = suspicion_map(eps, x, config, alpha_bars, draw)
    blocks = suspicious_blocks(block_scores(pixel_map, config.block), config)
    return pixel_map, keep_mask(blocks, config.block)
