"""Blur on a randomly offset grid: a degradation an attacker cannot align a trigger to.

`blur:s` averages fixed s×s blocks, so a trigger built constant over those blocks passes A⁺A
exactly and only the repainting can remove it (the `adaptive4` attack, docs/defense.md). `jblur:s`
draws an offset (dy, dx) ∈ [0, s)² per image and purification, and averages the blocks of the
grid shifted by it; cells cut by the image border average the pixels they hold. A⁺A is still an
orthogonal projection (onto images constant on each cell), so ZIP's equations hold unchanged
for each image (docs/design.md, "ZIP, step by step", jittered blur).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from service.purify.transforms import Blur, Compose, LinearTransform

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class ShiftedBlur:
    """s×s averaging on grids offset per batch item by `offsets[i]` = (dy, dx), 0 ≤ dy, dx < s.

    A maps (N, C, H, W) to (N, C, H/s + 1, W/s + 1) cell means (one spare row and column of
    cells, so that every offset gives one shape; empty cells hold 0). A⁺ copies each mean back
    over its cell. H and W must be multiples of s, as for `Blur`.
    """

    scale: int
    offsets: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"blur scale must be a positive integer, got {self.scale}")
        if any(not (0 <= dy < self.scale and 0 <= dx < self.scale) for dy, dx in self.offsets):
            raise ValueError(f"offsets must lie in [0, {self.scale}), got {self.offsets}")

    def _padding(self, dy: int, dx: int) -> tuple[int, int, int, int]:
        return dx, self.scale - dx, dy, self.scale - dy

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[0] != len(self.offsets):
            raise ValueError(f"ShiftedBlur was bound to {len(self.offsets)} images, got a batch of {x.shape[0]}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        height, width = x.shape[-2:]
        if height % self.scale or width % self.scale:
            raise ValueError(
                f"jblur:{self.scale} needs height and width divisible by {self.scale}, got {height}x{width}"
            )
        ones = torch.ones((1, 1, height, width), dtype=x.dtype, device=x.device)
        means = []
        for item, (dy, dx) in zip(x, self.offsets, strict=True):
            pad = self._padding(dy, dx)
            sums = F.avg_pool2d(F.pad(item.unsqueeze(0), pad), self.scale, divisor_override=1)
            counts = F.avg_pool2d(F.pad(ones, pad), self.scale, divisor_override=1)
            means.append(sums / counts.clamp(min=1))
        return torch.cat(means)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        s = self.scale
        upsampled = y.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
        height, width = (y.shape[-2] - 1) * s, (y.shape[-1] - 1) * s  # the spare cell row and column
        crops = [
            up[..., dy : dy + height, dx : dx + width] for up, (dy, dx) in zip(upsampled, self.offsets, strict=True)
        ]
        return torch.stack(crops)

    def __str__(self) -> str:
        return f"blur:{self.scale}@{list(self.offsets)}"


@dataclass(frozen=True)
class JitteredBlur(Blur):
    """The spec-level `jblur:s`: unbound, it is `blur:s` (offset 0); `bind` draws the per-image offsets.

    ZipPurifier binds it once per call, so one image keeps one grid through its whole reverse
    process (y = A x_in and every A⁺A step use the same A).
    """

    def bind(self, count: int, generators: Generators, device: torch.device) -> ShiftedBlur:
        """Draw (dy, dx) for `count` images: from each image's generator, so seeded runs repeat."""
        if generators is None or isinstance(generators, torch.Generator):
            drawn = torch.randint(0, self.scale, (count, 2), generator=generators, device=device)
            offsets = [tuple(row) for row in drawn.tolist()]
        else:
            offsets = [
                tuple(torch.randint(0, self.scale, (2,), generator=g, device=g.device).tolist()) for g in generators
            ]
        return ShiftedBlur(self.scale, tuple((int(dy), int(dx)) for dy, dx in offsets))

    def __str__(self) -> str:
        return f"jblur:{self.scale}"


def bind_transforms(
    transforms: Sequence[LinearTransform], count: int, generators: Generators, device: torch.device
) -> list[LinearTransform]:
    """Fix the random grids of `jblur` transforms (inside compositions too) for one purification call.

    Offsets are drawn before anything else, from each item's generator, so a seeded image repeats.
    """

    def bound(transform: LinearTransform) -> LinearTransform:
        if isinstance(transform, JitteredBlur):
            return transform.bind(count, generators, device)
        if isinstance(transform, Compose):
            return Compose(tuple(bound(part) for part in transform.parts))
        return transform

    return [bound(transform) for transform in transforms]
