"""Load ε-models (diffusers UNet2DModel directories) and place them on a device and dtype."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel

from service.paths import missing_model_hint, resolve_model_path
from service.purify.options import Acceleration, CompileMode, DType  # the light module's; importable from here


def torch_dtype(dtype: DType, device: torch.device | str) -> torch.dtype:
    """The torch dtype of `dtype` on `device` (`DType.resolve`): AUTO = fp16 on CUDA, bf16 on a CPU
    with native bf16, else fp32."""
    device = torch.device(device)
    if dtype is DType.AUTO:
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    return {DType.FP32: torch.float32, DType.BF16: torch.bfloat16, DType.FP16: torch.float16}[dtype]


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 beats fp32.

    Measured on an AMD EPYC with avx512_bf16: the shipped 32² UNet, batch 8, one thread, runs a
    forward pass in 0.15-0.17 s in bf16 against 0.25-0.27 s in fp32 (docs/benchmarks.md). Without
    native support bf16 is emulated and slower, so fp32 stays the choice there.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


class ModelLoadError(ValueError):
    """The model path is missing, not a model directory, or holds weights we cannot read."""


@dataclass(frozen=True)
class EpsModelInfo:
    """What the rest of the system needs to know about a loaded ε-model."""

    name: str
    sample_size: int
    channels: int
    learned_sigma: bool
    device: str
    dtype: str


class EpsModel:
    """ε_θ(x, t) on a device and dtype: float32 in, float32 out, C output channels (σ dropped).

    Takes ownership of `unet`: it is moved and cast in place (a copy would double the memory of a
    large model), so two EpsModels of different dtypes need two copies of the weights.
    """

    def __init__(
        self,
        unet: UNet2DModel,
        name: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        acceleration: Acceleration = Acceleration(),
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.acceleration = acceleration
        # nn.Module.to, not ModelMixin.to: the latter warns on every cast about fp32-pinned modules,
        # which UNet2DModel does not have.
        self.unet = torch.nn.Module.to(unet, device=self.device, dtype=dtype).eval().requires_grad_(False)
        self._memory_format = torch.channels_last if acceleration.channels_last else torch.contiguous_format
        if acceleration.channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self._forward = self.unet
        if acceleration.compile_mode is not CompileMode.OFF:
            # dynamic=False: one graph per batch size, the fastest on a GPU; the pool pads batches to
            # a few bucket sizes and compiles each during its warm-up (workers/purifier.py).
            inductor = acceleration.compile_backend == "inductor"  # the modes are inductor's options
            self._forward = torch.compile(
                self.unet,
                mode=acceleration.compile_mode.value if inductor else None,
                backend=acceleration.compile_backend,
                dynamic=False,
            )
        config = unet.config
        self.channels: int = int(config.in_channels)
        self.sample_size: int = _as_int_size(config.sample_size)
        self.learned_sigma = int(config.out_channels) == 2 * self.channels
        if not self.learned_sigma and int(config.out_channels) != self.channels:
            raise ModelLoadError(
                f"{name}: out_channels {config.out_channels} is neither in_channels ({self.channels}) "
                f"nor 2x in_channels (learned variance); this is not an ε-prediction model"
            )
        self.info = EpsModelInfo(
            name=name,
            sample_size=self.sample_size,
            channels=self.channels,
            learned_sigma=self.learned_sigma,
            device=str(self.device),
            dtype=str(dtype).removeprefix("torch."),
        )

    @property
    def static_batch(self) -> bool:
        """Whether the UNet is compiled for fixed batch sizes: callers must not split a batch into new ones."""
        return self.acceleration.compile_mode is not CompileMode.OFF

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε for x (N, C, H, W) at integer timesteps t (N,); learned-σ channels are dropped."""
        x = x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=self._memory_format)
        with torch.inference_mode():
            out = self._forward(x, t.to(self.device)).sample
        return out[:, : self.channels].float()


def _as_int_size(sample_size: int | list[int] | tuple[int, ...]) -> int:
    if isinstance(sample_size, int):
        return sample_size
    if len(set(sample_size)) != 1:
        raise ModelLoadError(f"only square models are supported, got sample_size {sample_size}")
    return int(sample_size[0])


def load_unet(path: Path | str) -> UNet2DModel:
    """Read a diffusers UNet2DModel directory from local disk only (no hub access, ever).

    A relative path that does not exist here is looked for under the zipgate home (`paths.py`), so the
    default `models/fmnist-ddpm` loads from any working directory.

    Raises:
        ModelLoadError: missing path, a checkpoint file instead of a directory, or no config.json.
    """
    path = resolve_model_path(path)
    if not path.exists():
        raise ModelLoadError(f"model path {missing_model_hint(path)}")
    if path.is_file():
        hint = (
            " Convert an OpenAI guided-diffusion checkpoint with `zipgate convert adm`."
            if path.suffix in {".pt", ".pth", ".ckpt"}
            else ""
        )
        raise ModelLoadError(f"model path '{path}' is a file; expected a diffusers model directory.{hint}")
    config_path = path / "config.json"
    if not config_path.exists():
        raise ModelLoadError(f"'{path}' has no config.json; it is not a diffusers model directory")
    class_name = json.loads(config_path.read_text()).get("_class_name")
    if class_name not in (None, "UNet2DModel"):
        raise ModelLoadError(f"'{path}' holds a {class_name}; only UNet2DModel ε-models are supported")
    try:
        # low_cpu_mem_usage needs `accelerate`; these models are small enough to load plainly.
        return UNet2DModel.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load the UNet in '{path}': {exc}") from exc


def load_eps_model(
    path: Path | str,
    device: torch.device | str = "cpu",
    dtype: DType | torch.dtype = DType.FP32,
    acceleration: Acceleration = Acceleration(),
) -> EpsModel:
    """Load a local diffusers UNet2DModel directory as an `EpsModel` on `device` in `dtype`.

    Raises:
        ModelLoadError: see `load_unet`.
    """
    device = torch.device(device)
    torch_dtype = dtype.resolve(device) if isinstance(dtype, DType) else dtype
    return EpsModel(load_unet(path), name=Path(path).name, device=device, dtype=torch_dtype, acceleration=acceleration)
