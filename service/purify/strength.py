"""Per-request strength presets: named trade-offs between clean accuracy, attack coverage and compute.

A preset is a change to the gateway's configured ZIP setting, not a setting of its own, so an
operator who tunes `TRANSFORMS` or λ keeps that tuning under every preset. Each preset's
measured row on the attack zoo is in docs/defense.md ("Strength presets"):

- `light`: start the reverse process from the noised input at t* = 0.6 T (SDEdit/DiffPure-style,
  with ZIP's range guidance). It keeps about 5 more points of clean accuracy and holds the common
  trigger families, but a low-frequency white square survives it more often.
- `balanced`: the configured setting as it is (the gateway's default).
- `strict`: purify three times with independent seeds and answer with the vendor's majority label
  (votes, docs/design.md "Votes"): three times the compute for more clean accuracy and fewer
  attacks through.

Light on purpose (no torch): settings and the CLI import it.
"""

from __future__ import annotations

import dataclasses
import enum
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
        noise_start: t*/T of the start; a configured start below it is kept (a preset never starts higher).
        min_votes: purifications per image at least (a configured or requested larger K is kept).
    """

    noise_start: float | None = None
    min_votes: int = 1


PRESETS: dict[Strength, StrengthPreset] = {
    Strength.LIGHT: StrengthPreset(noise_start=0.6),
    Strength.BALANCED: StrengthPreset(),
    Strength.STRICT: StrengthPreset(min_votes=3),
}


@dataclass(frozen=True)
class StrengthChoice:
    """A preset applied to a configured setting: the ZIP knobs and purifications per image to run."""

    strength: Strength
    config: ZipConfig
    votes: int


def apply_strength(strength: Strength, config: ZipConfig, votes: int) -> StrengthChoice:
    """The setting `strength` runs, given the configured ZIP knobs and votes.

    Pure: the same inputs always give the same choice (the gateway computes it once per preset).

    Args:
        strength: the preset.
        config: the configured ZIP knobs.
        votes: the configured (or requested) purifications per image.

    Returns:
        The preset's ZIP knobs and votes.
    """
    strength = Strength(strength)
    preset = PRESETS[strength]
    if preset.noise_start is not None:
        config = dataclasses.replace(config, noise_start=min(config.noise_start, preset.noise_start))
    return StrengthChoice(strength, config, max(votes, preset.min_votes))
