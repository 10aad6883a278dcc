"""Per-request strength presets: named trade-offs between clean accuracy, attack coverage and compute.

A preset moves the gateway's configured ZIP setting in one direction, never the other: `light`
never purifies harder than configured and `strict` never lighter, and knobs a preset does not
name (the transforms, S, η) keep the operator's values. Each preset's measured row on the attack
zoo is in docs/defense.md ("Strength presets"):

- `light`: repaint less (λ at least 0.5) and start the reverse process from the input noised to
  t* = 0.6 T (SDEdit/DiffPure-style, with ZIP's range guidance): clearly more clean accuracy, and
  the common trigger families still held, but a bright low-frequency patch (a white square)
  survives it far more often.
- `balanced`: the configured setting as it is (the gateway's default).
- `strict`: repaint at least as much as λ = 0.25 and purify three times with independent seeds
  and grid offsets, answering with the vendor's majority label (docs/design.md "Votes"): three
  times the compute, for clean accuracy back and fewer attacks through.

Light on purpose (no torch): settings and the CLI import it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass

from service.purify.options import ZipConfig


class Strength(enum.StrEnum):
    """A request's purification strength (`?strength=`)."""

    LIGHT = "light"
    BALANCED = "balanced"
    STRICT = "strict"


@dataclass(frozen=True)
class StrengthPreset:
    """What a preset changes; None keeps the configured value.

    Attributes:
        noise_start: t*/T of the start at most (a configured lower start is kept).
        min_guidance_power: λ at least (light: a configured larger λ, which repaints less, is kept).
        max_guidance_power: λ at most (strict: a configured smaller λ, which repaints more, is kept).
        min_votes: purifications per image at least (a configured or requested larger K is kept).
    """

    noise_start: float | None = None
    min_guidance_power: float | None = None
    max_guidance_power: float | None = None
    min_votes: int = 1


PRESETS: dict[Strength, StrengthPreset] = {
    Strength.LIGHT: StrengthPreset(noise_start=0.6, min_guidance_power=0.5),
    Strength.BALANCED: StrengthPreset(),
    Strength.STRICT: StrengthPreset(max_guidance_power=0.25, min_votes=3),
}


@dataclass(frozen=True)
class StrengthChoice:
    """A preset applied to a configured setting: the ZIP knobs and purifications per image to run."""

    strength: Strength
    config: ZipConfig
    votes: int


@functools.lru_cache(maxsize=256)  # pure and on every request; ZipConfig's validation is not free
def apply_strength(strength: Strength, config: ZipConfig, votes: int) -> StrengthChoice:
    """The setting `strength` runs, given the configured ZIP knobs and votes.

    Pure: the same inputs always give the same choice (so it is cached).

    Args:
        strength: the preset.
        config: the configured ZIP knobs.
        votes: the configured (or requested) purifications per image.

    Returns:
        The preset's ZIP knobs and votes.
    """
    strength = Strength(strength)
    preset = PRESETS[strength]
    guidance_power = config.guidance_power
    if preset.min_guidance_power is not None:
        guidance_power = max(guidance_power, preset.min_guidance_power)
    if preset.max_guidance_power is not None:
        guidance_power = min(guidance_power, preset.max_guidance_power)
    noise_start = config.noise_start if preset.noise_start is None else min(config.noise_start, preset.noise_start)
    config = dataclasses.replace(config, guidance_power=guidance_power, noise_start=noise_start)
    return StrengthChoice(strength, config, max(votes, preset.min_votes))
