"""Localise, then restore: repaint only the blocks the prior finds suspicious (docs/design.md).

One call runs the stages on a batch of canvases (the polish pass last, when configured):

    map, keep = localise(ε_θ, x)                        # localise.py: suspicion map, keep-mask m
    x̃ = ZIP(x; A = diag(m), λ = ∞)                      # zip.py with a per-image `KeepMask`
    out = m ⊙ x + (1 − m) ⊙ x̃                          # kept pixels are the input's, bit for bit

Under λ = ∞ ZIP keeps A⁺A x exactly in every x₀ estimate, so the paste-back only removes float
rounding; it makes "pixels outside the mask come back unchanged" a guarantee rather than a
numerical accident. With `outside_blur = s` the kept region is guided at 1/s resolution instead
(`MaskedBlur`) and repainted too: the stricter variant for whole-image triggers, at a CA cost.

A mask cannot cover a trigger spread over the whole image (a blend, stripes, a warp). With
`polish_noise = t/T` the restored image then takes a DiffPure pass (Nie et al., ICML 2022): noised
to t and walked back by the prior with no guidance (A = 0), `polish_steps` forwards. Small t
washes out fine whole-image patterns and keeps the garment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

import torch

from service.purify.localise import LocaliseConfig, localise
from service.purify.masks import KeepMask, MaskedBlur
from service.purify.options import Method, ZipConfig
from service.purify.schedule import alphas_cumprod, linear_betas
from service.purify.transforms import LinearTransform
from service.purify.zip import Generators, ZipPurifier, as_eps_function, draw_noise


@dataclass(frozen=True)
class LocalRestoreConfig:
    """The knobs of localise-and-restore.

    Attributes:
        localise: the localiser's knobs.
        steps: S of the restoring ZIP run.
        outside_blur: None keeps the unmasked pixels; s guides them at 1/s resolution (λ below).
        guidance_power: λ of the restore; inf (the default) keeps the guided pixels exactly.
        eta: η of the restore.
        polish_noise: t/T of the DiffPure pass over the whole restored image; None skips it.
        polish_steps: its steps (ε-model forwards).
        polish_eta: η of its DDIM steps (1: fresh noise at every step; 0: the deterministic path).
    """

    localise: LocaliseConfig = LocaliseConfig()
    steps: int = 20
    outside_blur: int | None = None
    guidance_power: float = float("inf")
    eta: float = 1.0
    polish_noise: float | None = None
    polish_steps: int = ZipConfig.polish_steps
    polish_eta: float = ZipConfig.polish_eta

    def __post_init__(self) -> None:
        ZipConfig(steps=self.steps, guidance_power=self.guidance_power, eta=self.eta)  # validates the knobs
        if self.polish_noise is not None:
            self.polish_config()  # validates the pass's knobs
        if self.outside_blur is not None and (self.outside_blur < 1 or self.localise.block % self.outside_blur):
            raise ValueError(
                f"outside_blur must divide the localise block ({self.localise.block}), got {self.outside_blur}"
            )

    @classmethod
    def from_zip(cls, config: ZipConfig) -> LocalRestoreConfig:
        """The restore a `Method.LOCAL` ZipConfig asks for: its mask thresholds, S and η, its polish pass (0: none)."""
        return cls(
            localise=LocaliseConfig(
                seed_threshold=config.mask_seed_threshold, grow_threshold=config.mask_grow_threshold
            ),
            steps=config.steps,
            eta=config.eta,
            polish_noise=config.polish_noise or None,
            polish_steps=config.polish_steps,
            polish_eta=config.polish_eta,
        )

    def zip_config(self) -> ZipConfig:
        """The restoring run's ZIP knobs (its transform is the per-image mask, not a spec)."""
        return ZipConfig(steps=self.steps, guidance_power=self.guidance_power, eta=self.eta, method=Method.GLOBAL)

    def polish_config(self) -> ZipConfig:
        """The DiffPure pass as a ZIP run: started at t from the noised image, no mix (A = 0 below).

        Raises:
            ValueError: no pass is configured, or its knobs are out of range.
        """
        if self.polish_noise is None:
            raise ValueError("no polish pass: set polish_noise")
        return ZipConfig(
            steps=self.polish_steps,
            guidance_power=math.inf,
            eta=self.polish_eta,
            noise_start=self.polish_noise,
            method=Method.GLOBAL,
        )


@dataclass(frozen=True)
class LocalRestoreResult:
    """A restored batch with what the localiser found.

    Attributes:
        images: (N, C, H, W) float32 in [-1, 1].
        keep: (N, 1, H, W) float32, 1 = kept from the input, 0 = repainted.
        suspicion: (N, 1, H, W) float32, the suspicion map.
    """

    images: torch.Tensor
    keep: torch.Tensor
    suspicion: torch.Tensor

    def masked_fraction(self) -> torch.Tensor:
        """(N,) the share of each image's pixels that was repainted."""
        return 1.0 - self.keep.mean(dim=(1, 2, 3))


def diffpure(
    model: object, x: torch.Tensor, config: ZipConfig, generator: Generators = None, betas: torch.Tensor | None = None
) -> torch.Tensor:
    """DiffPure: x noised to t* = `config.noise_start`·T, then the prior's own reverse walk (S steps).

    ZIP with A = 0 keeps nothing of the input in its fusion (x̂ = x_t), so the walk is unguided.
    """
    nothing = KeepMask(torch.zeros((x.shape[0], 1, *x.shape[-2:]), device=x.device))
    return ZipPurifier(model, config, transforms=nothing, betas=betas)(x, generator)


class LocalRestorer:
    """Localise the trigger, then repaint it with ZIP under the image's own keep-mask.

    Args:
        model: an `EpsModel`, a diffusers UNet2DModel or a callable eps(x, t).
        config: the knobs (None: the defaults).
        betas: the model's training schedule (default: linear 1e-4 … 0.02, T = 1000).

    Noise contract: per image, the map's draws come first (one x_t₀ noise per draw), then the
    restoring ZIP run's noise (`ZipPurifier`), all from the image's generator.
    """

    def __init__(self, model: object, config: LocalRestoreConfig | None = None, betas: torch.Tensor | None = None):
        self.model = model
        self.config = LocalRestoreConfig() if config is None else config
        self.eps = as_eps_function(model)
        self.betas = linear_betas() if betas is None else betas
        self.alpha_bars = alphas_cumprod(self.betas)

    def _guide(self, keep: torch.Tensor) -> LinearTransform:
        blur = self.config.outside_blur
        return KeepMask(keep) if blur is None else MaskedBlur(keep, blur)

    def run(self, x: torch.Tensor, generator: Generators = None) -> LocalRestoreResult:
        """Localise and restore `x` (N, C, H, W) in [-1, 1]."""
        x = x.float()
        with torch.inference_mode():
            suspicion, keep = localise(
                self.eps, x, self.config.localise, self.alpha_bars, lambda: draw_noise(x.shape, generator, x.device)
            )
        restored = self.restore(x, keep, generator)
        if self.config.polish_noise is not None:
            restored = diffpure(self.model, restored, self.config.polish_config(), generator, self.betas)
        return LocalRestoreResult(restored, keep, suspicion)

    def restore(self, x: torch.Tensor, keep: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """ZIP under each image's keep-mask `keep` (N, 1, H, W), the kept pixels pasted back.

        An image with nothing masked comes back as it is, and most clean images have nothing masked
        (docs/defense.md), so only the masked ones run the model. The others' generators draw the
        run's noise unused: every later draw is the full batch's run's, and so is the output, up to
        the float rounding a smaller batch gives the model's sums. A model
        compiled for fixed batch sizes (`EpsModel.static_batch`) always runs the whole batch.
        """
        if self.config.outside_blur is not None:  # the blur repaints every pixel: nothing to skip
            return self._zip(keep)(x, generator)
        masked: list[bool] = (keep < 1).flatten(1).any(dim=1).tolist()  # one device sync, not one per image
        whole_batch = getattr(self.model, "static_batch", False) or not _per_image(generator)
        if all(masked) or (any(masked) and whole_batch):  # a compiled shape, or one stream: no split
            restored = self._zip(keep)(x, generator)
        else:
            restored = x.clone()
            run = [i for i, has_mask in enumerate(masked) if has_mask]
            idle = [i for i, has_mask in enumerate(masked) if not has_mask]
            if run:
                restored[run] = self._zip(keep[run])(x[run], _pick(generator, run))
            self._zip(keep[idle]).skip(x[idle], _pick(generator, idle))
        return keep * x + (1.0 - keep) * restored

    def _zip(self, keep: torch.Tensor) -> ZipPurifier:
        return ZipPurifier(self.model, self.config.zip_config(), transforms=self._guide(keep), betas=self.betas)

    def __call__(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """The restored images only (a `CanvasPurifier`, as `ZipPurifier` is)."""
        return self.run(x, generator).images

    def with_mask(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """The restored images with the keep-mask as one more channel, (N, C + 1, H, W): how a worker
        hands the mask back through the pool (`split_mask_channel` takes it off again)."""
        result = self.run(x, generator)
        return torch.cat([result.images, result.keep], dim=1)


def _per_image(generator: Generators) -> TypeGuard[Sequence[torch.Generator]]:
    return generator is not None and not isinstance(generator, torch.Generator)


def _pick(generator: Generators, indices: list[int]) -> Generators:
    """The generators of the images at `indices`: per-image ones are picked, a shared one is kept."""
    if _per_image(generator):
        return [generator[i] for i in indices]
    return generator


def split_mask_channel(batch: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, keep-mask or None) of a purified batch: a localising purifier appends the mask channel.

    Raises:
        ValueError: a channel count that is neither `channels` nor `channels` + 1.
    """
    if batch.shape[1] == channels:
        return batch, None
    if batch.shape[1] == channels + 1:
        return batch[:, :channels], batch[:, channels:]
    raise ValueError(f"a purified batch has {channels} or {channels + 1} channels, got {batch.shape[1]}")


def build_purifier(model: object, config: ZipConfig, *, with_mask: bool = False) -> Callable[..., torch.Tensor]:
    """The engine for `config`: a `ZipPurifier` (GLOBAL) or a `LocalRestorer` (LOCAL).

    Args:
        model: the ε-model.
        config: the knobs; `config.method` picks the engine.
        with_mask: a LOCAL engine appends its keep-mask as a channel (`LocalRestorer.with_mask`).

    Returns:
        A callable (batch, generators) -> purified batch.
    """
    if config.method is Method.LOCAL:
        restorer = LocalRestorer(model, LocalRestoreConfig.from_zip(config))
        return restorer.with_mask if with_mask else restorer
    return ZipPurifier(model, config)
