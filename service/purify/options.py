"""The engine's options: ZIP's knobs (`ZipConfig`), the compute dtype and the small-image fit.

Light on purpose: settings, the CLI's `--help` and the evaluation's options import these, and
none of them should load torch or diffusers to do so (the heavy work is imported where it runs).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class DType(enum.StrEnum):
    """Compute dtype of the ε-model (the sampling state always stays float32)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    AUTO = "auto"

    def resolve(self, device: torch.device | str) -> torch.dtype:
        """The torch dtype; AUTO = fp16 on CUDA, bf16 on a CPU with native bf16, else fp32."""
        from service.purify.models import torch_dtype  # local: this module must not load torch

        return torch_dtype(self, device)


DEFAULT_DTYPE = DType.AUTO
"""The ε-model's compute dtype unless one is set: the gateway, `zipgate purify`, `eval` and `score-ddpm`
alike, each resolved by `DType.resolve` for its device, so one seed gives one output everywhere."""


class CompileMode(enum.StrEnum):
    """`torch.compile` of the ε-model's UNet (docs/design.md, "Engine acceleration").

    A compiled UNet is specialised to its batch size, so the pool pads batches to power-of-two
    buckets and compiles each bucket while warming up, before the worker reports ready.
    """

    OFF = "off"
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"  # CUDA graphs on a GPU: the step's launch overhead goes
    MAX_AUTOTUNE = "max-autotune"


@dataclass(frozen=True)
class Acceleration:
    """How the ε-model runs on its device, results unchanged up to rounding.

    Attributes:
        channels_last: the UNet's weights and inputs in NHWC memory order (tensor cores prefer it).
        compile_mode: `torch.compile` mode; OFF runs eagerly.
        compile_backend: the `torch.compile` backend (inductor; tests use "eager" to check the wiring).
    """

    channels_last: bool = False
    compile_mode: CompileMode = CompileMode.OFF
    compile_backend: str = "inductor"


class Method(enum.StrEnum):
    """What the engine repaints (docs/design.md, "Localise, then restore")."""

    GLOBAL = "global"  # ZIP over the whole image: the transforms, λ, t*, L and R
    LOCAL = "local"  # localise the trigger, repaint those blocks (λ = ∞), then a DiffPure pass at polish_noise


class SmallImageFit(enum.StrEnum):
    """How an image smaller than its slot (the canvas, or a tile of it) is fitted."""

    PAD = "pad"  # centred on a black background: the model sees the pixels as they are
    RESIZE = "resize"  # scaled up to the slot: softens the image and changes its proportions


def check_steps(steps: int) -> int:
    """S ≥ 1 (the gateway caps it further at the model's 1000 training timesteps).

    Raises:
        ValueError: S < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps


def check_guidance_power(value: float) -> float:
    """λ > 0; inf is allowed and disables the mix step.

    Raises:
        ValueError: λ ≤ 0 or NaN.
    """
    if math.isnan(value) or not value > 0:
        raise ValueError(f"guidance_power must be > 0 (a positive number, or 'inf' to disable the mix), got {value}")
    return value


def check_eta(value: float) -> float:
    """η in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like ancestral noise).

    Raises:
        ValueError: η outside [0, 1] (or NaN).
    """
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {value}")
    return value


def check_mask_threshold(name: str, value: float) -> float:
    """A localiser threshold ≥ 0, in the suspicion map's unit (mean |x − x̂| in [-1, 1] pixel units).

    Raises:
        ValueError: a negative value (or NaN); the message names the knob.
    """
    if not value >= 0.0:  # written so that NaN fails too
        raise ValueError(f"{name} must be >= 0 (a suspicion-map score), got {value}")
    return value


def check_transforms(spec: str) -> str:
    """The spec, stripped, once its syntax is valid (any channel count: "gray" alone on a 1-channel
    model is refused only when the model, and so its channel count, is known).

    Raises:
        ValueError: an empty spec, an unknown transform or a bad argument.
    """
    from service.purify.transforms import parse_transforms  # local: the transforms are torch code

    parse_transforms(spec, channels=3)
    return spec.strip()


@dataclass(frozen=True)
class ZipConfig:
    """ZIP's knobs, validated once at construction (the symbols of docs/design.md).

    The one source of the defaults: the gateway's settings, the CLI, the evaluation and
    `ZipPurifier` all start from these. The defaults are the shipped world's, chosen by the worst
    case over the attack zoo (docs/defense.md): `Method.LOCAL` with S = 10 restore steps (20 cost
    5–8 points more clean accuracy) and a DiffPure pass of 8 steps from t = 0.25·T; for `Method.GLOBAL`, jblur:4
    (blur:4 on a grid offset per image) and λ = 0.25, measured at S = 20: set steps=20 with it.

    Attributes:
        transforms: degradations, e.g. "blur:4" or "blur:4,gray" (averaged), "blur:4+gray" (composed).
        steps: S, sampling steps on the grid t = T·i/S.
        guidance_power: λ of the mix x̂ ← (1 − ᾱ_t^λ) x̂ + ᾱ_t^λ x_t; inf skips the mix.
        eta: η of the DDIM step.
        noise_start: t*/T in (0, 1]; 1 = ZIP's start from pure noise (an evaluation lever).
        travel_length, travel_repeat: RePaint time travel (L, R); 1, 1 = a plain descent.
        method: GLOBAL runs ZIP over the whole image; LOCAL localises the trigger and repaints only
            those blocks, keeping every other pixel (λ = ∞; the transforms, λ, t*, L and R unused).
        polish_noise: t/T of the DiffPure pass after a LOCAL restore (0 skips it).
        polish_steps: that pass's steps (ε-model forwards), spread evenly over [0, polish_noise·T).
        polish_eta: η of that pass's DDIM steps: 1 draws fresh noise at every step, 0 walks the
            deterministic DDIM path from the noised image (keeps more texture, lets more through).
        mask_seed_threshold: the suspicion-map score a block must pass to seed a LOCAL mask region
            (mean |x − x̂| in [-1, 1] units; lower masks more of every image, docs/design.md).
        mask_grow_threshold: the score through which a seeded region grows to neighbouring blocks.

    Raises:
        ValueError: a bad value; the message names the knob and its valid range.
    """

    transforms: str = "jblur:4"
    steps: int = 10
    guidance_power: float = 0.25
    eta: float = 1.0
    noise_start: float = 1.0
    travel_length: int = 1
    travel_repeat: int = 1
    method: Method = Method.LOCAL
    polish_noise: float = 0.25
    polish_steps: int = 8
    polish_eta: float = 1.0
    mask_seed_threshold: float = 0.8
    mask_grow_threshold: float = 0.8

    def __post_init__(self) -> None:
        check_transforms(self.transforms)
        check_steps(self.steps)
        check_guidance_power(self.guidance_power)
        check_eta(self.eta)
        check_steps(self.polish_steps)
        check_eta(self.polish_eta)
        check_mask_threshold("mask_seed_threshold", self.mask_seed_threshold)
        check_mask_threshold("mask_grow_threshold", self.mask_grow_threshold)
        if not 0.0 < self.noise_start <= 1.0:
            raise ValueError(f"noise_start must be in (0, 1] (1 = start from pure noise), got {self.noise_start}")
        if not 0.0 <= self.polish_noise < 1.0:
            raise ValueError(f"polish_noise must be in [0, 1) (0 skips the DiffPure pass), got {self.polish_noise}")
        object.__setattr__(self, "method", Method(self.method))  # a settings string becomes the enum
        if self.travel_length < 1 or self.travel_repeat < 1:
            raise ValueError(
                f"travel_length and travel_repeat must be >= 1, got {self.travel_length}, {self.travel_repeat}"
            )

    def zip_config(self) -> ZipConfig:
        """Only ZIP's knobs, as a plain `ZipConfig` (a subclass adds knobs of its own, such as votes)."""
        return ZipConfig.from_knobs(self)

    @classmethod
    def from_knobs(cls, source: object) -> ZipConfig:
        """A `ZipConfig` from any object holding ZIP's knobs as attributes of the same names (the
        gateway's settings, an evaluation setting): a knob added here reaches every such source."""
        return cls(**{field.name: getattr(source, field.name) for field in dataclasses.fields(cls)})
