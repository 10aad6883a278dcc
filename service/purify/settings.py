"""The purification settings: ZIP's knobs, the model, and how and where the engine runs.

A field mixin that `service.config.Settings` composes (env `ZIPGATE_<FIELD>`, see there). Light,
like `options.py`: loading the settings must not load torch or diffusers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from service.cpus import default_torch_threads
from service.paths import resolve_model_path
from service.purify.options import (
    DEFAULT_DTYPE,
    Acceleration,
    CompileMode,
    DType,
    Method,
    SmallImageFit,
    ZipConfig,
    check_eta,
    check_guidance_power,
    check_transforms,
)
from service.purify.strength import Strength


class PurifyFields(BaseModel):
    """Whether and how images are purified (the engine): `zip_config` and `acceleration` bundle them."""

    purification_enabled: bool = Field(True, description="False: forward images without purifying them.")
    model_path: Path = Field(Path("models/fmnist-ddpm"), description="diffusers UNet2DModel directory.")
    # ZIP's knobs: defaults and validation are `ZipConfig`'s (one source; jblur:4 and λ = 0.25 are chosen
    # by the worst case over the attack zoo, docs/defense.md, "The default"). `zip_config` bundles them.
    transforms: str = Field(
        ZipConfig.transforms, description="Degradations, e.g. 'blur:4' or 'blur:4,gray' (averaged)."
    )
    steps: int = Field(ZipConfig.steps, ge=1, le=1000, description="Sampling steps S of the reverse process.")
    guidance_power: float = Field(
        ZipConfig.guidance_power, description="λ of the time-dependent mix (> 0); 'inf' disables it."
    )
    eta: float = Field(ZipConfig.eta, description="η of the DDIM step, in [0, 1] (1 = ancestral noise).")
    noise_start: float = Field(
        ZipConfig.noise_start,
        gt=0.0,
        le=1.0,
        description="t*/T: start from the input noised to t* instead of pure noise (1); more "
        "clean accuracy, weaker on low-frequency triggers (docs/defense.md).",
    )
    travel_length: int = Field(
        ZipConfig.travel_length, ge=1, description="RePaint time travel L: jump back L steps (1 = no time travel)."
    )
    travel_repeat: int = Field(
        ZipConfig.travel_repeat,
        ge=1,
        description="RePaint time travel R: every L steps, go back and redo them R - 1 more times "
        "(L = R = 2 costs 2.8x the forwards at 20 steps; docs/defense.md, 'Time travel').",
    )
    method: Method = Field(
        ZipConfig.method,
        description="global: ZIP over the whole image; local: localise the trigger, repaint those blocks and "
        "keep the rest, then a DiffPure pass at polish_noise (docs/defense.md).",
    )
    polish_noise: float = Field(
        ZipConfig.polish_noise,
        ge=0.0,
        lt=1.0,
        description="method=local: t/T of the DiffPure pass over the restored image (0 skips it).",
    )
    polish_steps: int = Field(
        ZipConfig.polish_steps,
        ge=1,
        description="method=local: steps of the DiffPure pass (ε-model forwards per image).",
    )
    polish_eta: float = Field(
        ZipConfig.polish_eta,
        ge=0.0,
        le=1.0,
        description="method=local: η of the DiffPure pass (1: fresh noise every step; 0: the deterministic DDIM "
        "path, more clean accuracy and more attacks through; docs/defense.md).",
    )
    mask_seed_threshold: float = Field(
        ZipConfig.mask_seed_threshold,
        ge=0.0,
        description="method=local: the suspicion-map score (mean |x − x̂| in [-1, 1] units) a block must pass to "
        "seed a mask region; lower masks more of every image (0.3 with grow 0.6 was the first local default: "
        "~15% of every clean image; docs/defense.md).",
    )
    mask_grow_threshold: float = Field(
        ZipConfig.mask_grow_threshold,
        ge=0.0,
        description="method=local: the suspicion-map score through which a seeded mask region grows to its "
        "8-connected neighbour blocks; lower lets a region grow further from its seed (docs/defense.md).",
    )
    strength: Strength = Field(
        Strength.BALANCED,
        description="Strength preset of requests that do not send ?strength=: light (λ ≥ 0.5, t* ≤ 0.6), "
        "balanced (the knobs above), strict (λ ≤ 0.25, at least 3 votes). docs/defense.md, 'Strength presets'.",
    )
    vendor_mirror: bool = Field(
        False,
        description="Mirror purified images left-right before the vendor sees them "
        "(/predict and sidecar; /purify returns them unmirrored). Moves a trigger stamped "
        "at a fixed place to where the backdoor does not look; only for vendors whose "
        "task is mirror-invariant (docs/defense.md).",
    )
    small_image_fit: SmallImageFit = Field(
        SmallImageFit.PAD,
        description="An image smaller than the model's "
        "canvas: 'pad' (centred on black, as the shipped model was trained on "
        "28² in 32²) or 'resize' (scaled up).",
    )
    devices: str = Field("auto", description="'auto' (every CUDA device, else CPU) or a list: 'cuda:0,cuda:1'.")
    dtype: DType = Field(DEFAULT_DTYPE, description="ε-model compute dtype: auto (fp16 on CUDA) | fp32 | bf16 | fp16.")
    channels_last: bool = Field(False, description="The UNet's weights and inputs in NHWC order (for GPUs).")
    compile_mode: CompileMode = Field(
        CompileMode.OFF,
        description="torch.compile of the UNet: off | default | reduce-overhead (CUDA graphs) | "
        "max-autotune. Batches are padded to power-of-two buckets, each compiled before ready.",
    )
    torch_threads: int = Field(
        default_factory=default_torch_threads,
        ge=1,
        description="CPU threads for torch "
        "(default: OMP_NUM_THREADS if set, else usable cores - 1, at least 1; usable = "
        "affinity, capped by a cgroup CPU quota). Torch's own one per core collapses next to "
        "other CPU load.",
    )

    # ZipConfig's own checks, per field, so that an error names the setting and its env variable.
    _check_transforms = field_validator("transforms")(check_transforms)
    _check_guidance_power = field_validator("guidance_power")(check_guidance_power)
    _check_eta = field_validator("eta")(check_eta)

    @field_validator("model_path")
    @classmethod
    def _find_shipped_model(cls, path: Path) -> Path:
        # The default names the shipped model relative to the project: found from any working directory.
        return resolve_model_path(path)

    @field_validator("torch_threads", mode="before")
    @classmethod
    def _default_torch_threads(cls, threads: Any) -> Any:
        # null in a file, or ZIPGATE_TORCH_THREADS="" / "auto": the default, never torch's one per core.
        return default_torch_threads() if threads is None or str(threads).strip().lower() in ("", "auto") else threads

    @property
    def zip_config(self) -> ZipConfig:
        """ZIP's knobs as the engine takes them."""
        return ZipConfig.from_knobs(self)

    @property
    def acceleration(self) -> Acceleration:
        """How the ε-model runs on its devices (channels-last, torch.compile)."""
        return Acceleration(channels_last=self.channels_last, compile_mode=self.compile_mode)
