"""Per-device purifiers for the worker pool: what a worker calls, and the ZIP one that loads a model copy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from service.purify.models import EpsModel, EpsModelInfo, load_eps_model
from service.purify.options import DType, ZipConfig
from service.purify.transforms import parse_transforms
from service.purify.zip import ZipPurifier


class BatchPurifier(Protocol):
    """Purifies one batch on one device; built (and only ever called) in that worker's thread."""

    def __call__(
        self,
        batch: torch.Tensor,
        steps: int,
        generators: list[torch.Generator] | None,
        variant: ZipConfig | None = None,
    ) -> torch.Tensor:
        """Purify `batch` (N, C, H, W) in [-1, 1] with `steps` steps; one generator per item.

        `variant`: ZIP's knobs to use instead of the configured ones (a strength preset), steps aside.
        """
        ...


PurifierFactory = Callable[[str], BatchPurifier]  # device name → purifier (loads the model there)


class ZipBatchPurifier:
    """ZIP on one device: one model copy and one `ZipPurifier` per (knobs, step count); they share the model.

    Args:
        model: the ε-model, already on its device.
        config: ZIP's knobs; `config.steps` is the default, adaptive steps may run fewer.

    Raises:
        ValueError: a transform spec that does not suit the model's channels.
    """

    def __init__(self, model: EpsModel, config: ZipConfig) -> None:
        parse_transforms(config.transforms, model.channels)  # fail at load, not on the first request
        self.model = model
        self.config = config
        # Keyed by the full knobs: adaptive steps only lower steps, and variants come from the fixed strength
        # presets, so this holds at most (presets × `config.steps`) entries.
        self._by_config: dict[ZipConfig, ZipPurifier] = {}

    @property
    def info(self) -> EpsModelInfo:
        """Model name, size, channels, device and dtype (shown in /readyz and responses)."""
        return self.model.info

    def purifier_for(self, steps: int, variant: ZipConfig | None = None) -> ZipPurifier:
        """The `ZipPurifier` for `steps` sampling steps of `variant` (None: the configured knobs), built on first use.

        Raises:
            ValueError: steps incompatible with the time-travel schedule, or a transform that does not suit
                the model's channels.
        """
        config = dataclasses.replace(variant or self.config, steps=steps)
        if config not in self._by_config:
            self._by_config[config] = ZipPurifier(self.model, config)
        return self._by_config[config]

    def __call__(
        self,
        batch: torch.Tensor,
        steps: int,
        generators: list[torch.Generator] | None,
        variant: ZipConfig | None = None,
    ) -> torch.Tensor:
        """Purify `batch` (N, C, H, W) in [-1, 1]; returns float32 (N, C, H, W) on the model's device."""
        return self.purifier_for(steps, variant)(batch, generators)


def zip_purifier_factory(model_path: Path | str, config: ZipConfig, dtype: DType) -> PurifierFactory:
    """A factory the pool calls once per device, in that device's worker thread.

    Args:
        model_path: a local diffusers UNet2DModel directory.
        config: ZIP's knobs (validated when it was built, before any model is loaded).
        dtype: compute dtype; AUTO is resolved per device (`DType.resolve`).

    Returns:
        device name → `ZipBatchPurifier` holding that device's model copy.
    """

    def build(device: str) -> ZipBatchPurifier:
        model = load_eps_model(model_path, device, dtype.resolve(device))
        purifier = ZipBatchPurifier(model, config)
        # Warm-up: the first forward pass picks kernels and grows the allocator (~3 s on CPU); do it
        # before the worker reports ready, so that "ready" means "fast".
        purifier(torch.zeros(1, model.channels, model.sample_size, model.sample_size, device=model.device), 1, None)
        return purifier

    return build
