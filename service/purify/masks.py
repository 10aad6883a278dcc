"""Per-image keep-masks as linear degradations: A = diag(m), optionally followed by a block blur.

Localise-and-restore (docs/design.md, "Localise, then restore") repaints only the region the
localiser suspects. In ZIP's terms the degradation keeps every other pixel: A x = m ⊙ x with a
binary keep-mask m per image, so A⁺ = A and A⁺A = diag(m) is an orthogonal projection. Under
λ = ∞ the kept pixels of x₀ are the input's at every step and only the masked ones are drawn from
the prior: inpainting, with ZIP's equations unchanged.

`MaskedBlur` keeps less: the s×s block means of the kept pixels (the mask is constant on those
blocks, so the mask and the blur commute and A⁺A = diag(m)·B stays an orthogonal projection).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from service.purify.transforms import Blur


def _check_keep(keep: torch.Tensor) -> None:
    if keep.ndim != 4 or keep.shape[1] != 1:
        raise ValueError(f"a keep-mask is (N, 1, H, W), got shape {tuple(keep.shape)}")
    if not torch.all((keep == 0) | (keep == 1)):
        raise ValueError("a keep-mask holds only 0 (repaint) and 1 (keep)")


def _masked(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """m ⊙ x, the mask checked against the batch (validated once, at construction, not every step)."""
    if x.shape[0] != keep.shape[0] or x.shape[-2:] != keep.shape[-2:]:
        raise ValueError(f"keep-mask of shape {tuple(keep.shape)} does not fit a batch of shape {tuple(x.shape)}")
    return x * keep.to(device=x.device, dtype=x.dtype)


@dataclass(frozen=True, eq=False)
class KeepMask:
    """A x = m ⊙ x for a binary keep-mask m (N, 1, H, W), broadcast over channels; A⁺ = A."""

    keep: torch.Tensor

    def __post_init__(self) -> None:
        _check_keep(self.keep)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return _masked(x, self.keep)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return _masked(y, self.keep)

    def __str__(self) -> str:
        return f"mask:{1.0 - float(self.keep.float().mean()):.3f}"


@dataclass(frozen=True, eq=False)
class MaskedBlur:
    """A x = blur_s(m ⊙ x) with m constant on the s×s blocks: the kept region at 1/s resolution."""

    keep: torch.Tensor
    scale: int

    def __post_init__(self) -> None:
        _check_keep(self.keep)
        blocks = F.avg_pool2d(self.keep.float(), self.scale)
        if not torch.all((blocks == 0) | (blocks == 1)):
            raise ValueError(f"the keep-mask must be constant on the {self.scale}×{self.scale} blocks of the blur")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return Blur(self.scale).apply(_masked(x, self.keep))

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return _masked(Blur(self.scale).pinv(y), self.keep)

    def __str__(self) -> str:
        return f"mask:{1.0 - float(self.keep.float().mean()):.3f}+blur:{self.scale}"
