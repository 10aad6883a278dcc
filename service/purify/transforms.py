"""Linear degradations A with pseudo-inverses A⁺ (A A⁺ A = A), and the spec-string registry.

Spec grammar: transforms separated by "," are *averaged* in ZIP's fusion step (the paper's
two-transform setting); "+" composes them into one transform. Examples: "blur:4",
"blur:4,gray" (two transforms), "blur:4+gray" (one: blur, then grayscale).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class LinearTransform(Protocol):
    """A linear map A on image batches (N, C, H, W) with a pseudo-inverse: A A⁺ A = A."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """y = A x."""
        ...

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺ y, back in image space."""
        ...


def project(transform: LinearTransform, x: torch.Tensor) -> torch.Tensor:
    """A⁺A x: the part of x that the degradation keeps (the "range" component)."""
    return transform.pinv(transform.apply(x))


@dataclass(frozen=True)
class Blur:
    """s×s average pooling; A⁺ copies each low-res pixel back into its s×s block."""

    scale: int

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"blur scale must be a positive integer, got {self.scale}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.scale or width % self.scale:
            raise ValueError(
                f"blur:{self.scale} needs height and width divisible by {self.scale}, got {height}x{width}; "
                "resize the image or pick a scale that divides the model size"
            )
        return F.avg_pool2d(x, self.scale)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        # repeat_interleave is exact nearest-neighbour upsampling for an integer factor.
        return y.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1)

    def __str__(self) -> str:
        return f"blur:{self.scale}"


@dataclass(frozen=True)
class Grayscale:
    """Mean over the channels; A⁺ copies the mean back to each of `channels` channels."""

    channels: int = 3

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"grayscale needs channels >= 1, got {self.channels}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] != self.channels:
            raise ValueError(f"gray was built for {self.channels} channels, got an input with {x.shape[-3]}")
        return x.mean(dim=-3, keepdim=True)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y.expand(*y.shape[:-3], self.channels, *y.shape[-2:])

    def __str__(self) -> str:
        return "gray"


@dataclass(frozen=True)
class Compose:
    """A = A_n ∘ … ∘ A_1 (applied left to right); A⁺ = A_1⁺ ∘ … ∘ A_n⁺.

    A A⁺ A = A holds when each A_k A_k⁺ = I (true for Blur and Grayscale); for arbitrary parts it
    is only guaranteed when they commute, which `tests/test_transforms.py` checks for the built-ins.
    """

    parts: tuple[LinearTransform, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("Compose needs at least one transform")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part.apply(x)
        return x

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        for part in reversed(self.parts):
            y = part.pinv(y)
        return y

    def __str__(self) -> str:
        return "+".join(str(part) for part in self.parts)


def _blur_from_arg(arg: str | None, channels: int) -> Blur:
    if arg is None or not arg.isdigit():
        raise ValueError(f"blur needs an integer scale, e.g. 'blur:4'; got 'blur:{arg}'")
    return Blur(int(arg))


def _gray_from_arg(arg: str | None, channels: int) -> Grayscale:
    if arg is not None:
        raise ValueError(f"gray takes no argument; got 'gray:{arg}'")
    return Grayscale(channels)


# Read-only by construction: user transforms are passed to ZipPurifier as objects, not registered.
def _jittered_blur_from_arg(arg: str | None, channels: int) -> LinearTransform:
    from service.purify.jitter import JitteredBlur  # jitter builds on Blur: imported here to avoid a cycle

    return JitteredBlur(_blur_from_arg(arg, channels).scale)


TRANSFORM_REGISTRY: Mapping[str, Callable[[str | None, int], LinearTransform]] = MappingProxyType(
    {"blur": _blur_from_arg, "jblur": _jittered_blur_from_arg, "gray": _gray_from_arg, "grayscale": _gray_from_arg}
)


def _parse_single(token: str, channels: int) -> LinearTransform:
    name, _, arg = token.strip().partition(":")
    factory = TRANSFORM_REGISTRY.get(name.strip().lower())
    if factory is None:
        known = ", ".join(sorted(TRANSFORM_REGISTRY))
        raise ValueError(f"unknown transform '{name.strip()}' in spec; known: {known} (e.g. 'blur:4,gray')")
    return factory(arg.strip() or None, channels)


def parse_transforms(spec: str, channels: int) -> tuple[LinearTransform, ...]:
    """Build the transforms of a spec string such as "blur:4,gray" or "blur:4+gray".

    Args:
        spec: comma-separated transforms to average; "+" inside one composes.
        channels: image channel count (grayscale's pseudo-inverse needs it).

    Returns:
        One transform per comma-separated item.

    Raises:
        ValueError: empty spec, unknown name, bad argument, or gray on a 1-channel model
            (a no-op that would silently disable purification).
    """
    if not spec or not spec.strip():
        raise ValueError("transforms spec is empty; use e.g. 'blur:4' or 'blur:4,gray'")
    transforms: list[LinearTransform] = []
    for item in spec.split(","):
        if not item.strip():
            raise ValueError(f"empty item in transforms spec '{spec}'")
        parts = tuple(_parse_single(token, channels) for token in item.split("+"))
        if any(isinstance(p, Grayscale) for p in parts) and channels == 1 and len(parts) == 1:
            raise ValueError("'gray' alone on a 1-channel model is the identity: the trigger would pass untouched")
        transforms.append(parts[0] if len(parts) == 1 else Compose(parts))
    return tuple(transforms)


def describe(transforms: tuple[LinearTransform, ...]) -> str:
    """The canonical spec string of a tuple of transforms (inverse of `parse_transforms`)."""
    return ",".join(str(t) for t in transforms)
