"""`--sweep` specs: "steps=10,20 guidance_power=1,2 transforms=blur:2,blur:4" → the grid of settings.

Grammar: whitespace-separated `knob=values` items; values are separated by ",", or by ";" when
the item contains one, which is how a multi-transform spec is swept as a single value:
`transforms=blur:2;blur:2,blur:4` sweeps "blur:2" and the averaged pair "blur:2,blur:4".
The grid is the cartesian product in the order the knobs are written (the last varies fastest);
knobs not named keep the base setting's value.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from service.defense_eval.defenses import DefenseSetting
from service.purify.options import Method


class SweepKnob(StrEnum):
    """A knob `--sweep` can vary; the value is the `DefenseSetting` field it sets."""

    TRANSFORMS = "transforms"
    STEPS = "steps"
    GUIDANCE_POWER = "guidance_power"
    ETA = "eta"
    VOTES = "votes"
    NOISE_START = "noise_start"
    TRAVEL_LENGTH = "travel_length"
    TRAVEL_REPEAT = "travel_repeat"
    MIRROR = "mirror"
    DIFFPURE_NOISE = "diffpure_noise"
    SHRINK_PX = "shrink_px"
    METHOD = "method"
    POLISH_NOISE = "polish_noise"
    POLISH_STEPS = "polish_steps"
    POLISH_ETA = "polish_eta"
    MASK_SEED_THRESHOLD = "mask_seed_threshold"
    MASK_GROW_THRESHOLD = "mask_grow_threshold"

    @property
    def integer(self) -> bool:
        """True for the knobs that take whole numbers."""
        return self in (
            SweepKnob.STEPS,
            SweepKnob.VOTES,
            SweepKnob.TRAVEL_LENGTH,
            SweepKnob.TRAVEL_REPEAT,
            SweepKnob.SHRINK_PX,
            SweepKnob.POLISH_STEPS,
        )

    def parse_value(self, text: str) -> str | int | float:
        """One value of this knob from its text ("inf" is a valid λ).

        Raises:
            ValueError: not a number where one is needed.
        """
        text = text.strip()
        if self is SweepKnob.TRANSFORMS:
            return text
        if self is SweepKnob.METHOD:
            try:
                return Method(text.lower()).value
            except ValueError:
                raise ValueError(f"sweep: method is global or local, got {text!r}") from None
        if self is SweepKnob.MIRROR:
            if text.lower() not in ("0", "1", "true", "false", "on", "off"):
                raise ValueError(f"sweep: mirror needs 0/1 (or on/off), got {text!r}")
            return text.lower() in ("1", "true", "on")
        try:
            return int(text) if self.integer else float(text)
        except ValueError:
            kind = "an integer" if self.integer else "a number"
            raise ValueError(f"sweep: {self.value} needs {kind}, got {text!r}") from None

    def format_value(self, value: str | int | float) -> str:
        """The value as a short label ("λ=0.25", "S=20", "blur:2")."""
        if self in (SweepKnob.TRANSFORMS, SweepKnob.METHOD):
            return str(value)
        if self is SweepKnob.MIRROR:
            return "mirror" if value else "no mirror"
        symbol = {
            SweepKnob.STEPS: "S",
            SweepKnob.GUIDANCE_POWER: "λ",
            SweepKnob.ETA: "η",
            SweepKnob.VOTES: "K",
            SweepKnob.NOISE_START: "t*",
            SweepKnob.TRAVEL_LENGTH: "L",
            SweepKnob.TRAVEL_REPEAT: "R",
            SweepKnob.DIFFPURE_NOISE: "t_dp",
            SweepKnob.SHRINK_PX: "shrink",
            SweepKnob.POLISH_NOISE: "polish",
            SweepKnob.POLISH_STEPS: "S_polish",
            SweepKnob.POLISH_ETA: "η_polish",
            SweepKnob.MASK_SEED_THRESHOLD: "mask_seed",
            SweepKnob.MASK_GROW_THRESHOLD: "mask_grow",
        }[self]
        shown = "∞" if isinstance(value, float) and math.isinf(value) else f"{value:g}"
        return f"{symbol}={shown}"


# Hyphenated and short spellings users type on the command line.
_ALIASES = {
    "guidance-power": SweepKnob.GUIDANCE_POWER,
    "lambda": SweepKnob.GUIDANCE_POWER,
    "transform": SweepKnob.TRANSFORMS,
    "step": SweepKnob.STEPS,
    "k": SweepKnob.VOTES,
    "t*": SweepKnob.NOISE_START,
    "noise-start": SweepKnob.NOISE_START,
    "l": SweepKnob.TRAVEL_LENGTH,
    "r": SweepKnob.TRAVEL_REPEAT,
    "t_dp": SweepKnob.DIFFPURE_NOISE,
    "diffpure-noise": SweepKnob.DIFFPURE_NOISE,
    "shrink": SweepKnob.SHRINK_PX,
    "polish-eta": SweepKnob.POLISH_ETA,
    "polish-steps": SweepKnob.POLISH_STEPS,
    "polish-noise": SweepKnob.POLISH_NOISE,
    "mask-seed-threshold": SweepKnob.MASK_SEED_THRESHOLD,
    "mask-grow-threshold": SweepKnob.MASK_GROW_THRESHOLD,
}


def _knob(name: str) -> SweepKnob:
    name = name.strip().lower()
    if name in _ALIASES:
        return _ALIASES[name]
    try:
        return SweepKnob(name)
    except ValueError:
        known = ", ".join(knob.value for knob in SweepKnob)
        raise ValueError(f"sweep: unknown knob {name!r}; known: {known} (e.g. 'steps=10,20')") from None


def parse_sweep(spec: str | Sequence[str]) -> dict[SweepKnob, tuple[str | int | float, ...]]:
    """The knobs and values of a sweep spec, in the order written.

    Args:
        spec: "steps=10,20 guidance_power=1,2", or the same items as a sequence (as a shell
            passes them).

    Returns:
        knob → its values (duplicates dropped, order kept).

    Raises:
        ValueError: an item without "=", an unknown or repeated knob, an empty or bad value.
    """
    items = spec.split() if isinstance(spec, str) else [part for item in spec for part in item.split()]
    if not items:
        raise ValueError("sweep spec is empty; use e.g. 'steps=10,20 guidance_power=0.25,1'")
    grid: dict[SweepKnob, tuple[str | int | float, ...]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"sweep: {item!r} is not knob=values (e.g. 'steps=10,20')")
        knob = _knob(name)
        if knob in grid:
            raise ValueError(f"sweep: {knob.value} is given twice")
        texts = raw.split(";") if ";" in raw else raw.split(",")
        if not all(text.strip() for text in texts):
            raise ValueError(f"sweep: empty value in {item!r}")
        grid[knob] = tuple(dict.fromkeys(knob.parse_value(text) for text in texts))
    return grid


def sweep_settings(base: DefenseSetting, spec: str | Sequence[str]) -> list[DefenseSetting]:
    """The cartesian grid of settings a sweep spec describes around `base`.

    Args:
        base: the values of the knobs the spec does not name.
        spec: see `parse_sweep`.

    Returns:
        One setting per grid point, the last knob varying fastest.

    Raises:
        ValueError: a bad spec, or a value the setting rejects (e.g. steps=0).
    """
    grid = parse_sweep(spec)
    points: list[dict[str, Any]] = [
        {knob.value: value for knob, value in zip(grid, values, strict=True)}
        for values in itertools.product(*grid.values())
    ]
    return [dataclasses.replace(base, **point) for point in points]  # each re-validated (`ZipConfig`)


def varying_knobs(settings: Sequence[DefenseSetting]) -> tuple[SweepKnob, ...]:
    """The knobs whose value differs between the settings (what a sweep plot puts on its x axis)."""
    return tuple(knob for knob in SweepKnob if len({getattr(s, knob.value) for s in settings}) > 1)


def setting_label(setting: DefenseSetting, knobs: Sequence[SweepKnob]) -> str:
    """A label of just the given knobs' values, e.g. "blur:2 λ=0.25" (the full one if none vary)."""
    if not knobs:
        return setting.describe()
    return " ".join(knob.format_value(getattr(setting, knob.value)) for knob in knobs)
