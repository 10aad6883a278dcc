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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from service.purify.transforms import Blur, Compose, LinearTransform

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class _GridPlan:
    """Flat gather indices of one `ShiftedBlur` at one image size (docs/design.md, jittered blur).

    windows: (N, 1, (H + s)(W + s)), each image's window into the batch padded by s on all sides.
    cells: (N, 1, H·W), the cell of each pixel in the (H/s + 1) × (W/s + 1) cell grid.
    counts: (N, 1, H/s + 1, W/s + 1) float32, pixels per cell, at least 1 (an empty cell's 0 stays 0).
    """

    windows: torch.Tensor
    cells: torch.Tensor
    counts: torch.Tensor

    @staticmethod
    def build(scale: int, height: int, width: int, dy: torch.Tensor, dx: torch.Tensor) -> _GridPlan:
        """Indices for offsets dy, dx, each (N, 1) on the target device."""
        device = dy.device
        padded_width = width + 2 * scale
        rows = scale - dy + torch.arange(height + scale, device=device)  # (N, H + s) rows of the padded image
        cols = scale - dx + torch.arange(width + scale, device=device)
        windows = rows[:, :, None] * padded_width + cols[:, None, :]
        cell_rows = (torch.arange(height, device=device) + dy) // scale  # (N, H)
        cell_cols = (torch.arange(width, device=device) + dx) // scale
        cells = cell_rows[:, :, None] * (width // scale + 1) + cell_cols[:, None, :]

        def spans(size: int, offset: torch.Tensor) -> torch.Tensor:
            # A cell's count is its row span times its column span: small integers, exact in any
            # float dtype, so the means equal the pooled sums over pooled ones.
            starts = torch.arange(size // scale + 1, device=device) * scale - offset
            return (starts + scale).clamp(max=size) - starts.clamp(min=0)

        counts = (spans(height, dy)[:, :, None] * spans(width, dx)[:, None, :]).clamp(min=1).float()
        return _GridPlan(windows.flatten(1)[:, None], cells.flatten(1)[:, None], counts[:, None])


@dataclass(frozen=True)
class ShiftedBlur:
    """s×s averaging on grids offset per batch item by `offsets[i]` = (dy, dx), 0 ≤ dy, dx < s.

    A maps (N, C, H, W) to (N, C, H/s + 1, W/s + 1) cell means (one spare row and column of
    cells, so that every offset gives one shape; empty cells hold 0). A⁺ copies each mean back
    over its cell. H and W must be multiples of s, as for `Blur`.
    """

    scale: int
    offsets: tuple[tuple[int, int], ...]
    # Index tensors by (height, width, device); a cache, not part of the value (equality, hash, repr).
    _plans: dict[tuple[int, int, str], _GridPlan] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"blur scale must be a positive integer, got {self.scale}")
        if any(not (0 <= dy < self.scale and 0 <= dx < self.scale) for dy, dx in self.offsets):
            raise ValueError(f"offsets must lie in [0, {self.scale}), got {self.offsets}")

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[0] != len(self.offsets):
            raise ValueError(f"ShiftedBlur was bound to {len(self.offsets)} images, got a batch of {x.shape[0]}")

    def _shifts(self, axis: int, device: torch.device) -> torch.Tensor:
        """(N, 1): each image's offset along rows (axis 0) or columns (axis 1)."""
        return torch.tensor([offset[axis] for offset in self.offsets], device=device)[:, None]

    def _plan(self, height: int, width: int, device: torch.device) -> _GridPlan:
        """The index tensors for images of height × width on `device`, built once per size."""
        key = (height, width, str(device))
        if key not in self._plans:
            dy, dx = self._shifts(0, device), self._shifts(1, device)
            self._plans[key] = _GridPlan.build(self.scale, height, width, dy, dx)
        return self._plans[key]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        height, width = x.shape[-2:]
        if height % self.scale or width % self.scale:
            raise ValueError(
                f"jblur:{self.scale} needs height and width divisible by {self.scale}, got {height}x{width}"
            )
        # One gather and one pooling for the whole batch, not one pad and pool per image: the per-image
        # loop cost more than the step's arithmetic. Every image is padded by s on all sides, and its
        # own (H + s) × (W + s) window, s − offset in, lines its cells up with the pooling grid; the
        # sums and counts are the per-image ones element for element, so the means are too.
        plan = self._plan(height, width, x.device)
        n, channels = x.shape[:2]
        padded = F.pad(x, (self.scale,) * 4).flatten(2)
        windows = padded.gather(2, plan.windows.expand(n, channels, -1))
        windows = windows.unflatten(2, (height + self.scale, width + self.scale))
        sums = F.avg_pool2d(windows, self.scale, divisor_override=1)
        return sums / plan.counts.to(x.dtype)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        height, width = (y.shape[-2] - 1) * self.scale, (y.shape[-1] - 1) * self.scale  # the spare cells
        # Pixel (r, c) of image n takes the mean of its cell ((r + dy_n) // s, (c + dx_n) // s): one
        # gather for the batch, the same values as upsampling and cropping per image.
        plan = self._plan(height, width, y.device)
        n, channels = y.shape[:2]
        cells = y.flatten(2).gather(2, plan.cells.expand(n, channels, -1))
        return cells.unflatten(2, (height, width))

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
