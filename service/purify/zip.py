"""ZipPurifier: ZIP's guided reverse process (docs/design.md, "ZIP, step by step"; Shi et al., NeurIPS 2023).

Notation (docs/design.md, "ZIP, step by step"):
    x_in            input batch (N, C, H, W) in [-1, 1]
    A_k, A_k⁺       linear degradations and pseudo-inverses (`transforms.py`)
    y_k = A_k x_in  degraded inputs, computed once
    ε = ε_θ(x_t, t) the model's noise prediction (first C channels if it learns σ)
    ᾱ_t             cumulative product of (1 − β); ᾱ(−1) = 1
    λ               guidance_power (paper: at_threshold); inf disables the mix step
    η               DDIM stochasticity (1 = DDPM-like ancestral noise)
    t*              noise start: the reverse process starts at t* = noise_start·T (1 = pure noise)

The knobs come in one validated `ZipConfig`; the DDIM step and the re-noising are the scheduler's
(`schedule.py`), so this loop holds only what is ZIP's own: steps 2 and 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch

from service.purify.imaging import check_batch
from service.purify.jitter import bind_transforms
from service.purify.options import ZipConfig
from service.purify.schedule import alpha_bar, alphas_cumprod, ddim_step, linear_betas, renoise, timestep_pairs
from service.purify.transforms import LinearTransform, parse_transforms

EpsFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def as_eps_function(model: object) -> EpsFunction:
    """Accept an `EpsModel`, any `eps(x, t)` callable, or a bare diffusers UNet2DModel."""
    from diffusers import UNet2DModel  # local: keeps `import service.purify.zip` light for plain callables

    if isinstance(model, UNet2DModel):
        unet = cast(torch.nn.Module, model)  # a ModelMixin, which the type checker cannot see through
        dtype = next(unet.parameters()).dtype

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet(x.to(dtype), t).sample.float()

        return eps
    if not callable(model):
        raise TypeError(f"model must be a UNet2DModel or a callable eps(x, t), got {type(model).__name__}")
    return model


def draw_noise(shape: torch.Size, generator: Generators, device: torch.device) -> torch.Tensor:
    """Gaussian noise of `shape` (float32): from one generator, or one generator per batch item.

    Per-item generators make a batch of N purify exactly like N single runs (the worker pool
    batches images from unrelated requests, each of which may ask for its own seed).
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32, device=device) for g in generator])


class ZipPurifier:
    """Purify a batch with ZIP: start from noise, keep the degraded input's range, repaint the rest.

    Args:
        model: an `EpsModel`, a diffusers UNet2DModel, or any callable eps(x, t) -> Tensor,
            where t is an int64 tensor of shape (N,). 2C output channels = learned σ (first C kept).
        config: the knobs (transforms, S, λ, η, t*, L, R), validated once (`ZipConfig`; None = the
            defaults). Below t* = 1, the S steps cover [0, t*) only and the walk starts from the
            noised input √ᾱ x_in + √(1−ᾱ) z at the first grid time (an SDEdit/DiffPure-style start,
            kept under ZIP's range guidance): more of the input survives, the trigger included
            (docs/defense.md measures the trade).
        transforms: transform objects to use instead of `config.transforms` (user transforms are
            passed as objects, not registered).
        clip: clamp the output to [-1, 1].
        betas: the model's training schedule (default: linear 1e-4 … 0.02, T = 1000).

    Raises:
        ValueError: steps the schedule cannot hold, or a spec that does not suit the model's channels.
    """

    def __init__(
        self,
        model: object,
        config: ZipConfig | None = None,
        *,
        transforms: LinearTransform | Sequence[LinearTransform] | None = None,
        clip: bool = True,
        betas: torch.Tensor | None = None,
    ) -> None:
        self.config = config = ZipConfig() if config is None else config
        self.eps = as_eps_function(model)
        self.channels: int | None = getattr(model, "channels", None) or getattr(
            getattr(model, "config", None), "in_channels", None
        )
        self.transforms_spec: str | LinearTransform | Sequence[LinearTransform] = (
            config.transforms if transforms is None else transforms
        )
        self._transforms_by_channels: dict[int, tuple[LinearTransform, ...]] = {}
        self.clip = clip
        self.alpha_bars = alphas_cumprod(linear_betas() if betas is None else betas)
        # The grid t = span·i/S spans [0, t*): all S steps are spent below the noise start.
        span = max(1, round(config.noise_start * self.alpha_bars.shape[0]))
        if config.noise_start < 1.0 and config.steps > span:
            raise ValueError(
                f"steps ({config.steps}) exceed the {span} timesteps below noise_start={config.noise_start}"
            )
        self.pairs = timestep_pairs(config.steps, config.travel_length, config.travel_repeat, num_timesteps=span)
        if transforms is None and self.channels is not None:
            self.transforms_for(self.channels)  # fail fast on a spec that does not suit the model

    @property
    def steps(self) -> int:
        """S, the sampling steps."""
        return self.config.steps

    @property
    def noise_start(self) -> float:
        """t*/T (1 = pure noise)."""
        return self.config.noise_start

    def transforms_for(self, channels: int) -> tuple[LinearTransform, ...]:
        """The transforms for inputs with `channels` channels (spec strings are parsed once per count)."""
        if channels not in self._transforms_by_channels:
            spec = self.transforms_spec
            if isinstance(spec, str):
                built = parse_transforms(spec, channels)
            elif isinstance(spec, LinearTransform):
                built = (spec,)
            else:
                built = tuple(spec)
            if not built:
                raise ValueError("ZipPurifier needs at least one transform")
            self._transforms_by_channels[channels] = built
        return self._transforms_by_channels[channels]

    def _check_input(self, x: torch.Tensor) -> None:
        check_batch(x, self.channels)

    def skip(self, x: torch.Tensor, generator: Generators = None) -> None:
        """Draw exactly the noise `__call__(x, generator)` would, and run no model.

        A caller that leaves some images out of a run (nothing to repaint) keeps their generators
        where the run would have left them, so what comes after draws the same noise either way.
        """
        self._check_input(x)
        bind_transforms(self.transforms_for(x.shape[1]), x.shape[0], generator, x.device)
        for _ in range(1 + len(self.pairs)):  # x_T, then one z per step
            draw_noise(x.shape, generator, x.device)

    def __call__(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Purify `x` (N, C, H, W) in [-1, 1]; returns a float32 batch of the same shape.

        Noise contract: x_T is drawn first, then one z per step in step order (every step, the
        last included), each of x's shape, float32, on x's device, from `generator` (or from one
        generator per item). A `jblur` transform draws its grid offsets before x_T.
        """
        self._check_input(x)
        transforms = bind_transforms(self.transforms_for(x.shape[1]), x.shape[0], generator, x.device)
        power = self.config.guidance_power
        n = x.shape[0]
        with torch.inference_mode():
            x_in = x.float()
            # y_k = A_k x_in, kept only as A_k⁺ y_k: the range component every step reuses.
            range_components = [A.pinv(A.apply(x_in)) for A in transforms]
            x_t = draw_noise(x.shape, generator, x.device)
            if self.config.noise_start < 1.0:
                # 0. Noise start: x_t* = √ᾱ_t* x_in + √(1−ᾱ_t*) z, the forward process run to t*.
                x_t = renoise(x_in, alpha_bar(self.alpha_bars, self.pairs[0][0]), x_t)
            x0 = x_t  # replaced by the first step, which always goes down
            for t, t_next in self.pairs:
                a_t = alpha_bar(self.alpha_bars, t)
                a_next = alpha_bar(self.alpha_bars, t_next)
                z = draw_noise(x.shape, generator, x.device)
                if t_next > t:
                    # RePaint time travel: re-noise the latest clean estimate up to t′.
                    x_t = renoise(x0, a_next, z)
                    continue
                # 1. ε = ε_θ(x_t, t); a learned-variance model returns 2C channels: keep the first C.
                eps = self.eps(x_t, torch.full((n,), t, dtype=torch.long, device=x.device)).float()
                if eps.shape[1] == 2 * x.shape[1]:
                    eps = eps[:, : x.shape[1]]
                # 2. Range–null fusion, averaged over transforms:
                #    x̂_k = √ᾱ_t A_k⁺y_k + (x_t − A_k⁺A_k x_t) + √(1−ᾱ_t) A_k⁺A_k ε
                x_hat = torch.zeros_like(x_t)
                for A, range_k in zip(transforms, range_components, strict=True):
                    x_hat += (
                        math.sqrt(a_t) * range_k
                        + x_t
                        - A.pinv(A.apply(x_t))
                        + math.sqrt(1.0 - a_t) * A.pinv(A.apply(eps))
                    )
                x_hat /= len(transforms)
                # 3. Time-dependent mix: early steps follow the input, late steps let the model repaint.
                if math.isfinite(power):
                    weight = a_t**power
                    x_hat = (1.0 - weight) * x_hat + weight * x_t
                # 4–5. x₀ from x̂, then the DDIM step to t′ (the scheduler's `ddim_step`).
                x_t, x0 = ddim_step(x_hat, eps, a_t, a_next, self.config.eta, z)
            return x_t.clamp(-1.0, 1.0) if self.clip else x_t
