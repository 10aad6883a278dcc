"""The defenses under evaluation and how one is applied in process.

`none` (raw images); the baselines `blur` (A⁺A x), `shrinkpad` (ShrinkPad, Li et al. 2021: shrink
by a few pixels, pad back at a random offset), `diffpure` (DiffPure, Nie et al., ICML 2022: noise
to t and denoise with the prior, no guidance) and `local` (BDMAE-style localise-and-restore alone,
`service.purify.local_restore`); `zip`, the gateway's engine for the setting's knobs: global ZIP,
or with `method=local` localise, restore and a DiffPure pass, as the gateway serves it.

A defense maps a batch (N, C, H, W) in [-1, 1] to a batch of the same shape, through the engine
pipeline the gateway serves with (`service.purify.pipeline`): the batch is fitted to the model's
canvases as one gateway request's images are (small images tiled), canvas i is purified with
seed + i as the gateway's `?seed=` does, and the canvases are cut back. `none` and `blur` are
deterministic; ZIP draws noise, so a batch's base seed comes from `item_seed`, which lets
`--votes K` purify the same images K times with K different seeds.
"""

from __future__ import annotations

import dataclasses
import math
from enum import StrEnum

import torch
import torch.nn.functional as F

from service.purify.local_restore import LocalRestoreConfig, LocalRestorer, build_purifier, diffpure
from service.purify.localise import LocaliseConfig
from service.purify.models import EpsModel
from service.purify.options import Method, ZipConfig
from service.purify.pipeline import CanvasPurifier, degraded_images, fit_to_model, purify_canvases, restore_images
from service.purify.seeds import VOTE_SEED_SHIFT
from service.purify.zip import EpsFunction

SEED_SHIFT = 32
"""Seeds are (seed << 32) + (vote << 20) + position: room for 2²⁰ images and 2¹² votes per seed."""


DIFFPURE_NOISE = 0.3
"""t/T of DiffPure (and of the pass after a local restore): low enough to keep the garment."""
SHRINK_PX = 2
"""ShrinkPad's shrink per side in pixels (Li et al. 2021 shrink CIFAR-10's 32² by a few pixels)."""


class Defense(StrEnum):
    """What stands between the triggered image and the vendor model."""

    NONE = "none"
    BLUR = "blur"
    SHRINKPAD = "shrinkpad"
    DIFFPURE = "diffpure"
    ZIP = "zip"
    LOCAL = "local"

    @property
    def stochastic(self) -> bool:
        """True when repeated runs differ (only then do votes buy anything)."""
        return self not in (Defense.NONE, Defense.BLUR)

    @property
    def needs_model(self) -> bool:
        """True when the defense runs the diffusion model."""
        return self not in (Defense.NONE, Defense.BLUR, Defense.SHRINKPAD)


@dataclasses.dataclass(frozen=True)
class DefenseSetting(ZipConfig):
    """One evaluated setting: ZIP's knobs (a `ZipConfig`: transforms, S, λ, η, t*, L, R) plus the
    evaluation's own, the vote count K and `mirror`.

    `noise_start` (t*/T), `travel_length` and `travel_repeat` (RePaint's L, R) are the levers
    measured beside the gateway's knobs; their defaults (1, 1, 1) are plain ZIP. `mirror` flips the
    defended image left-right before the vendor sees it, as the gateway's `vendor_mirror` does.

    Raises:
        ValueError: a bad ZIP knob (see `ZipConfig`), or votes outside [1, 2¹²).
    """

    votes: int = 1
    mirror: bool = False
    diffpure_noise: float = DIFFPURE_NOISE
    shrink_px: int = SHRINK_PX

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.votes < 1 << (SEED_SHIFT - VOTE_SEED_SHIFT):
            raise ValueError(f"votes must be in [1, {(1 << (SEED_SHIFT - VOTE_SEED_SHIFT)) - 1}], got {self.votes}")
        if not 0.0 < self.diffpure_noise < 1.0 or self.shrink_px < 1:
            raise ValueError(
                f"need diffpure_noise in (0, 1) and shrink_px >= 1, got {self.diffpure_noise}, {self.shrink_px}"
            )

    def purifications(self, defense: Defense) -> int:
        """Defended copies of each image this setting costs: K for ZIP, 1 for a deterministic defense."""
        return self.votes if defense.stochastic else 1

    def output_key(self, defense: Defense) -> tuple[object, ...]:
        """What a defense's output depends on (the vote index aside): equal keys, equal images."""
        if defense is Defense.NONE:
            return (defense,)
        if defense is Defense.BLUR:
            return (defense, self.transforms.split(",")[0].strip(), self.mirror)
        if defense is Defense.SHRINKPAD:
            return (defense, self.shrink_px, self.mirror)
        if defense is Defense.DIFFPURE:
            return (defense, self.diffpure_noise, self.steps, self.mirror)
        if defense is Defense.LOCAL:
            return (defense, self.steps, self.mask_seed_threshold, self.mask_grow_threshold, self.mirror)
        return (defense, *dataclasses.astuple(self.zip_config()), self.mirror)  # every ZIP knob, votes aside

    def describe(self) -> str:
        """A short label, e.g. "blur:2 S=20 λ=0.25 η=1 K=1"."""
        if self.method is Method.LOCAL:  # the transforms, λ, t*, L and R do not apply
            label = f"local polish={self.polish_noise:g} S={self.steps} η={self.eta:g} K={self.votes}"
            if (self.polish_steps, self.polish_eta) != (ZipConfig.polish_steps, ZipConfig.polish_eta):
                label += f" S_polish={self.polish_steps} η_polish={self.polish_eta:g}"
            if (self.mask_seed_threshold, self.mask_grow_threshold) != (
                ZipConfig.mask_seed_threshold,
                ZipConfig.mask_grow_threshold,
            ):
                label += f" mask={self.mask_seed_threshold:g}/{self.mask_grow_threshold:g}"
        else:
            power = "∞" if math.isinf(self.guidance_power) else f"{self.guidance_power:g}"
            label = f"{self.transforms} S={self.steps} λ={power} η={self.eta:g} K={self.votes}"
            if self.noise_start < 1.0:
                label += f" t*={self.noise_start:g}"
            if (self.travel_length, self.travel_repeat) != (1, 1):
                label += f" L={self.travel_length} R={self.travel_repeat}"
        if self.diffpure_noise != DIFFPURE_NOISE:
            label += f" t_dp={self.diffpure_noise:g}"
        if self.shrink_px != SHRINK_PX:
            label += f" shrink={self.shrink_px}"
        if self.mirror:
            label += " mirror"
        return label


def item_seed(seed: int, vote: int, position: int) -> int:
    """The noise seed of the image at `position` of an evaluated set, for purification `vote`.

    Consecutive positions get consecutive seeds. A batch starting at `start` is purified with
    the base seed `item_seed(seed, vote, start)`, in process and through the gateway (`?seed=`)
    alike; canvas i of the batch gets base + i (`service.purify.seeds.canvas_seeds`), so when each
    image has its own canvas (28² in the shipped 32² model) image i's seed is item_seed(…, start + i).

    Raises:
        ValueError: negative arguments or a position beyond 2²⁰.
    """
    if seed < 0 or vote < 0 or not 0 <= position < 1 << VOTE_SEED_SHIFT:
        raise ValueError(
            f"need seed, vote ≥ 0 and 0 ≤ position < {1 << VOTE_SEED_SHIFT}; got {seed}, {vote}, {position}"
        )
    return (seed << SEED_SHIFT) + (vote << VOTE_SEED_SHIFT) + position


class ForwardCounter:
    """An ε-model that counts image forwards: each call adds its batch size (the cost column)."""

    def __init__(self, model: EpsModel | EpsFunction) -> None:
        self.model = model
        # A plain eps(x, t) callable has neither: ZipPurifier then takes the channels from the input.
        self.channels = getattr(model, "channels", None)
        self.sample_size: int | None = getattr(model, "sample_size", None)
        self.forwards = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.forwards += x.shape[0]
        return self.model(x, t)


def shrink_pad(canvases: torch.Tensor, shrink_px: int, generators: list[torch.Generator] | None) -> torch.Tensor:
    """ShrinkPad (Li et al., 2021): shrink each canvas by 2·`shrink_px` per side, pad back at a random offset.

    The offset (dy, dx) ∈ [0, 2·shrink_px]² is drawn from each canvas's generator; the padding is
    the black background (-1).
    """
    side = canvases.shape[-1]
    inner = side - 2 * shrink_px
    small = F.interpolate(canvases.float(), size=(inner, inner), mode="bilinear", align_corners=False, antialias=True)
    out = torch.full_like(canvases, -1.0, dtype=torch.float32)
    for i, generator in enumerate(generators if generators is not None else [None] * len(canvases)):
        dy, dx = torch.randint(0, 2 * shrink_px + 1, (2,), generator=generator).tolist()
        out[i, :, dy : dy + inner, dx : dx + inner] = small[i]
    return out


class InProcessDefender:
    """Applies any defense in this process; ZIP purifiers are built once per setting and kept.

    Args:
        model: the ε-model for ZIP (None when no ZIP defense is evaluated).
        device: where the images are defended (the model's device when there is one).
    """

    def __init__(self, model: EpsModel | None, device: torch.device | str = "cpu") -> None:
        self.model = None if model is None else ForwardCounter(model)
        self.device = torch.device(device)
        self._purifiers: dict[ZipConfig, CanvasPurifier] = {}
        self._local: dict[LocalRestoreConfig, LocalRestorer] = {}

    @property
    def forwards(self) -> int:
        """Image forwards of the ε-model so far (all defenses together)."""
        return 0 if self.model is None else self.model.forwards

    def _canvas_purifier(self, defense: Defense, setting: DefenseSetting) -> CanvasPurifier:
        """What purifies a batch of canvases for a defense that runs the ε-model (or ShrinkPad)."""
        if defense is Defense.SHRINKPAD:
            return lambda canvases, generators: shrink_pad(canvases, setting.shrink_px, generators)
        if self.model is None:
            raise ValueError(f"the {defense.value} defense needs a diffusion model: pass model_path")
        if defense is Defense.LOCAL:
            thresholds = LocaliseConfig(
                seed_threshold=setting.mask_seed_threshold, grow_threshold=setting.mask_grow_threshold
            )
            local = LocalRestoreConfig(localise=thresholds, steps=setting.steps)
            if local not in self._local:
                self._local[local] = LocalRestorer(self.model, local)
            return self._local[local]
        if defense is Defense.DIFFPURE:
            model = self.model
            walk = ZipConfig(steps=setting.steps, guidance_power=math.inf, noise_start=setting.diffpure_noise)
            return lambda canvases, generators: diffpure(model, canvases, walk, generators)
        return self.purifier(setting)

    def purifier(self, setting: ZipConfig) -> CanvasPurifier:
        """The engine for a setting's ZIP knobs, as the gateway builds it (`build_purifier`): a
        `ZipPurifier` (transforms, S, λ, η, t*, L, R) or, for `Method.LOCAL`, a `LocalRestorer`.

        Raises:
            ValueError: no ε-model was given.
        """
        if self.model is None:
            raise ValueError("the zip defense needs a diffusion model: pass model_path (e.g. models/fmnist-ddpm)")
        key = setting.zip_config()  # votes and mirror do not change the purifier
        if key not in self._purifiers:
            self._purifiers[key] = build_purifier(self.model, key)
        return self._purifiers[key]

    def __call__(self, defense: Defense, setting: DefenseSetting, images: torch.Tensor, seed: int) -> torch.Tensor:
        """Defend one batch, as the gateway defends one request's images.

        Args:
            defense: which defense.
            setting: its knobs.
            images: (N, C, H, W) in [-1, 1].
            seed: the batch's base seed (stochastic defenses): canvas i uses seed + i, as with `?seed=`.

        Returns:
            The defended batch, float32 on CPU.
        """
        if defense is Defense.NONE:
            return images.clone()
        # The pipeline's fit, the gateway's: padded when smaller, resized when larger, small ones tiled;
        # so blur degrades at the resolution ZIP keeps.
        size = (self.model.sample_size if self.model is not None else None) or images.shape[-1]
        fitted = fit_to_model(list(images), size)
        if defense is Defense.BLUR:
            defended = degraded_images(fitted, setting.transforms)
        else:
            purifier = self._canvas_purifier(defense, setting)
            defended = restore_images(fitted, purify_canvases(purifier, fitted.canvases, seed, self.device))
        batch = torch.stack(defended).float()
        return batch.flip(-1) if setting.mirror else batch
