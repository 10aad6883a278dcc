"""The defenses under evaluation (none, blur = A⁺A x, ZIP) and how one is applied in process.

A defense maps a batch (N, C, H, W) in [-1, 1] to a batch of the same shape. `none` and `blur` are
deterministic; ZIP draws noise, so each image gets its own seed (`item_seed`), which makes a result
independent of batching and lets `--votes K` purify the same image K times with K different seeds.
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum

import torch

from service.purify.models import EpsModel
from service.purify.pipeline import fit_to_model
from service.purify.transforms import parse_transforms, project
from service.purify.zip import ZipPurifier
from service.workers.purifier import seeded_generators

VOTE_SEED_SHIFT = 20
"""Seeds are (seed << 32) + (vote << 20) + position: room for 2²⁰ images and 2¹² votes per seed."""
SEED_SHIFT = 32


class Defense(str, Enum):
    """What stands between the triggered image and the vendor model."""

    NONE = "none"
    BLUR = "blur"
    ZIP = "zip"

    @property
    def stochastic(self) -> bool:
        """True when repeated runs differ (only then do votes buy anything)."""
        return self is Defense.ZIP


@dataclasses.dataclass(frozen=True)
class DefenseSetting:
    """The knobs of one evaluated setting: ZIP's (transforms, S, λ, η, t*, L, R) and the vote count K.

    `noise_start` (t*/T), `travel_length` and `travel_repeat` (RePaint's L, R) are the levers
    measured beside the gateway's knobs; their defaults (1, 1, 1) are plain ZIP. `mirror` flips the
    defended image left-right before the vendor sees it, as the gateway's `vendor_mirror` does.

    Raises:
        ValueError: steps, votes, L or R < 1, λ ≤ 0, η outside [0, 1], t* outside (0, 1], or an
            empty transforms spec.
    """

    transforms: str = "blur:4"
    steps: int = 20
    guidance_power: float = 0.5
    eta: float = 1.0
    votes: int = 1
    noise_start: float = 1.0
    travel_length: int = 1
    travel_repeat: int = 1
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if not self.guidance_power > 0:
            raise ValueError(f"guidance_power must be > 0 (inf disables the mix), got {self.guidance_power}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if not 1 <= self.votes < 1 << (SEED_SHIFT - VOTE_SEED_SHIFT):
            raise ValueError(f"votes must be in [1, {(1 << (SEED_SHIFT - VOTE_SEED_SHIFT)) - 1}], got {self.votes}")
        if not self.transforms.strip():
            raise ValueError("transforms spec is empty; use e.g. 'blur:2'")
        if not 0.0 < self.noise_start <= 1.0:
            raise ValueError(f"noise_start must be in (0, 1] (1 = pure noise), got {self.noise_start}")
        if self.travel_length < 1 or self.travel_repeat < 1:
            raise ValueError(f"travel_length and travel_repeat must be ≥ 1, got {self.travel_length}, "
                             f"{self.travel_repeat}")

    def purifications(self, defense: Defense) -> int:
        """Defended copies of each image this setting costs: K for ZIP, 1 for a deterministic defense."""
        return self.votes if defense.stochastic else 1

    def output_key(self, defense: Defense) -> tuple[object, ...]:
        """What a defense's output depends on (the vote index aside): equal keys, equal images."""
        if defense is Defense.NONE:
            return (defense,)
        if defense is Defense.BLUR:
            return (defense, self.transforms.split(",")[0].strip(), self.mirror)
        return (defense, self.transforms, self.steps, self.guidance_power, self.eta, self.noise_start,
                self.travel_length, self.travel_repeat, self.mirror)

    def describe(self) -> str:
        """A short label, e.g. "blur:2 S=20 λ=0.25 η=1 K=1"."""
        power = "∞" if math.isinf(self.guidance_power) else f"{self.guidance_power:g}"
        label = f"{self.transforms} S={self.steps} λ={power} η={self.eta:g} K={self.votes}"
        if self.noise_start < 1.0:
            label += f" t*={self.noise_start:g}"
        if (self.travel_length, self.travel_repeat) != (1, 1):
            label += f" L={self.travel_length} R={self.travel_repeat}"
        if self.mirror:
            label += " mirror"
        return label


def item_seed(seed: int, vote: int, position: int) -> int:
    """The noise seed of the image at `position` of an evaluated set, for purification `vote`.

    Consecutive positions get consecutive seeds, as the gateway's `?seed=s` gives image i the
    seed s + i: a batch sent with `?seed=item_seed(seed, vote, start)` is purified with the same
    seeds as in process.

    Raises:
        ValueError: negative arguments or a position beyond 2²⁰.
    """
    if seed < 0 or vote < 0 or not 0 <= position < 1 << VOTE_SEED_SHIFT:
        raise ValueError(f"need seed, vote ≥ 0 and 0 ≤ position < {1 << VOTE_SEED_SHIFT}; got {seed}, {vote}, "
                         f"{position}")
    return (seed << SEED_SHIFT) + (vote << VOTE_SEED_SHIFT) + position


def degrade(images: torch.Tensor, transforms: str) -> torch.Tensor:
    """The naive baseline: A⁺A x for the first transform of the spec (what ZIP keeps of the input).

    Raises:
        ValueError: a bad transforms spec for the images' channel count.
    """
    first = parse_transforms(transforms, images.shape[1])[0]
    return project(first, images).clamp(-1.0, 1.0)


class InProcessDefender:
    """Applies any defense in this process; ZIP purifiers are built once per setting and kept.

    Args:
        model: the ε-model for ZIP (None when no ZIP defense is evaluated).
        device: where the images are defended (the model's device when there is one).
    """

    def __init__(self, model: EpsModel | None, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)
        self._purifiers: dict[tuple[object, ...], ZipPurifier] = {}

    def purifier(self, setting: DefenseSetting) -> ZipPurifier:
        """The `ZipPurifier` for a setting's (transforms, S, λ, η, t*, L, R).

        Raises:
            ValueError: no ε-model was given.
        """
        if self.model is None:
            raise ValueError("the zip defense needs a diffusion model: pass model_path (e.g. models/fmnist-ddpm)")
        key = dataclasses.replace(setting, mirror=False).output_key(Defense.ZIP)  # mirroring comes after purifying
        if key not in self._purifiers:
            self._purifiers[key] = ZipPurifier(
                self.model, setting.transforms, steps=setting.steps, guidance_power=setting.guidance_power,
                eta=setting.eta, noise_start=setting.noise_start, travel_length=setting.travel_length,
                travel_repeat=setting.travel_repeat)
        return self._purifiers[key]

    def __call__(self, defense: Defense, setting: DefenseSetting, images: torch.Tensor,
                 seeds: list[int]) -> torch.Tensor:
        """Defend one batch.

        Args:
            defense: which defense.
            setting: its knobs.
            images: (N, C, H, W) in [-1, 1].
            seeds: one noise seed per image (used by ZIP only).

        Returns:
            The defended batch, float32 on CPU.
        """
        if defense is Defense.NONE:
            return images.clone()
        # Images of another size are fitted to the model's canvas and back as the gateway fits them
        # (padded when smaller, resized when larger), so blur degrades at the resolution ZIP keeps.
        size = self.model.sample_size if self.model is not None else images.shape[-1]
        fitted = fit_to_model(list(images), size, tile_small=False)
        if defense is Defense.BLUR:
            out = degrade(fitted.canvases, setting.transforms)
        else:
            out = self.purifier(setting)(fitted.canvases.to(self.device), seeded_generators(seeds, self.device))
        defended = torch.stack(fitted.restore(out.float().cpu()))
        return defended.flip(-1) if setting.mirror else defended
