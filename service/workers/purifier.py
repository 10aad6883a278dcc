"""Per-device purifiers for the worker pool: what a worker calls, and the ZIP one that loads a model copy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from service.purify.models import DType, EpsModel, EpsModelInfo, load_eps_model
from service.purify.transforms import parse_transforms
from service.purify.zip import ZipPurifier

SEED_MASK = (1 << 64) - 1  # torch seeds are unsigned 64-bit


class BatchPurifier(Protocol):
    """Purifies one batch on one device; built (and only ever called) in that worker's thread."""

    def __call__(self, batch: torch.Tensor, steps: int, generators: list[torch.Generator] | None) -> torch.Tensor:
        """Purify `batch` (N, C, H, W) in [-1, 1] with `steps` steps; one generator per item."""
        ...


PurifierFactory = Callable[[str], BatchPurifier]  # device name → purifier (loads the model there)


def seeded_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One generator per item on `device`, seeded from that item's seed.

    Per-item generators make an image's result independent of which batch it lands in, so a
    batch equals the same images purified one by one with the same seeds.

    Args:
        seeds: one integer per item (any size; reduced to torch's unsigned 64-bit range).
        device: where the noise is drawn (a CUDA generator must live on the CUDA device).

    Returns:
        The generators, in item order.
    """
    return [torch.Generator(device=device).manual_seed(seed & SEED_MASK) for seed in seeds]


def resolve_dtype(dtype: DType, device: torch.device | str) -> torch.dtype:
    """The compute dtype on `device` (see `DType.resolve`: AUTO = fp16 on CUDA, bf16 on a native-bf16 CPU)."""
    return dtype.resolve(torch.device(device))


class ZipBatchPurifier:
    """ZIP on one device: one model copy and one `ZipPurifier` per step count (they share the model).

    Args:
        model: the ε-model, already on its device.
        transforms: transform spec, e.g. "blur:4" or "blur:2,blur:4".
        guidance_power: λ of the time-dependent mix.
        eta: η of the DDIM step.
        travel_length, travel_repeat: RePaint time travel (L, R).

    Raises:
        ValueError: a bad transform spec for the model's channels, or a bad λ / η.
    """

    def __init__(self, model: EpsModel, transforms: str, guidance_power: float, eta: float,
                 travel_length: int = 1, travel_repeat: int = 1) -> None:
        parse_transforms(transforms, model.channels)  # fail at load, not on the first request
        self.model = model
        self.transforms = transforms
        self.guidance_power = guidance_power
        self.eta = eta
        self.travel_length = travel_length
        self.travel_repeat = travel_repeat
        # Adaptive steps only ever lower steps, so this holds at most `default_steps` entries.
        self._by_steps: dict[int, ZipPurifier] = {}

    @property
    def info(self) -> EpsModelInfo:
        """Model name, size, channels, device and dtype (shown in /readyz and responses)."""
        return self.model.info

    def purifier_for(self, steps: int) -> ZipPurifier:
        """The `ZipPurifier` for `steps` sampling steps, built on first use.

        Raises:
            ValueError: steps incompatible with the time-travel schedule.
        """
        if steps not in self._by_steps:
            self._by_steps[steps] = ZipPurifier(
                self.model, self.transforms, steps=steps, guidance_power=self.guidance_power, eta=self.eta,
                travel_length=self.travel_length, travel_repeat=self.travel_repeat,
            )
        return self._by_steps[steps]

    def __call__(self, batch: torch.Tensor, steps: int, generators: list[torch.Generator] | None) -> torch.Tensor:
        """Purify `batch` (N, C, H, W) in [-1, 1]; returns float32 (N, C, H, W) on the model's device."""
        return self.purifier_for(steps)(batch, generators)


def zip_purifier_factory(model_path: Path | str, transforms: str, guidance_power: float, eta: float,
                         dtype: DType, travel_length: int = 1, travel_repeat: int = 1) -> PurifierFactory:
    """A factory the pool calls once per device, in that device's worker thread.

    Args:
        model_path: a local diffusers UNet2DModel directory.
        transforms: transform spec ("blur:4", "blur:2,blur:4", "blur:4+gray").
        guidance_power: λ; float("inf") disables the mix.
        eta: η of the DDIM step.
        dtype: compute dtype; AUTO is resolved per device (`resolve_dtype`).
        travel_length, travel_repeat: RePaint time travel (L, R).

    Returns:
        device name → `ZipBatchPurifier` holding that device's model copy.

    Raises:
        ValueError: λ or η out of range (checked now, before any model is loaded).
    """
    if not guidance_power > 0:
        raise ValueError(f"guidance_power must be > 0 (inf disables the mix), got {guidance_power}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")

    def build(device: str) -> ZipBatchPurifier:
        model = load_eps_model(model_path, device, resolve_dtype(dtype, device))
        purifier = ZipBatchPurifier(model, transforms, guidance_power, eta, travel_length, travel_repeat)
        # Warm-up: the first forward pass picks kernels and grows the allocator (~3 s on CPU); do it
        # before the worker reports ready, so that "ready" means "fast".
        purifier(torch.zeros(1, model.channels, model.sample_size, model.sample_size, device=model.device), 1, None)
        return purifier

    return build
