"""Per-device purifiers for the worker pool: what a worker calls, and the ZIP one that loads a model copy."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from service.purify.local_restore import build_purifier
from service.purify.models import EpsModel, EpsModelInfo, load_eps_model
from service.purify.options import Acceleration, CompileMode, DType, ZipConfig
from service.purify.seeds import seeded_generators
from service.purify.transforms import parse_transforms


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


log = logging.getLogger(__name__)

PurifierFactory = Callable[[str], BatchPurifier]  # device name → purifier (loads the model there)


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes a compiled model is specialised to: powers of two below `max_batch_size`, and it."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    return (*(1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size), max_batch_size)


class ZipBatchPurifier:
    """ZIP on one device: one model copy and one `ZipPurifier` per (knobs, step count); they share the model.

    Args:
        model: the ε-model, already on its device.
        config: ZIP's knobs; `config.steps` is the default, adaptive steps may run fewer.
        buckets: batch sizes to pad every batch up to (a compiled model's shapes, `batch_buckets`);
            None runs each batch at its own size. Padding images get their own generators, so the
            real images' results do not depend on it.

    Raises:
        ValueError: a transform spec that does not suit the model's channels.
    """

    def __init__(self, model: EpsModel, config: ZipConfig, buckets: tuple[int, ...] | None = None) -> None:
        parse_transforms(config.transforms, model.channels)  # fail at load, not on the first request
        self.model = model
        self.config = config
        self.buckets = None if buckets is None else tuple(sorted(buckets))
        # Keyed by the full knobs: adaptive steps only lower steps, and variants come from the fixed strength
        # presets, so this holds at most (presets × `config.steps`) entries.
        self._by_config: dict[ZipConfig, Callable[..., torch.Tensor]] = {}

    @property
    def info(self) -> EpsModelInfo:
        """Model name, size, channels, device and dtype (shown in /readyz and responses)."""
        return self.model.info

    def purifier_for(self, steps: int, variant: ZipConfig | None = None) -> Callable[..., torch.Tensor]:
        """The engine for `steps` sampling steps of `variant` (None: the configured knobs), built on first use:
        a `ZipPurifier`, or for `Method.LOCAL` a `LocalRestorer` that appends its keep-mask as a channel.

        Raises:
            ValueError: steps incompatible with the time-travel schedule, or a transform that does not suit
                the model's channels.
        """
        config = dataclasses.replace(variant or self.config, steps=steps)
        if config not in self._by_config:
            self._by_config[config] = build_purifier(self.model, config, with_mask=True)
        return self._by_config[config]

    def __call__(
        self,
        batch: torch.Tensor,
        steps: int,
        generators: list[torch.Generator] | None,
        variant: ZipConfig | None = None,
    ) -> torch.Tensor:
        """Purify `batch` (N, C, H, W) in [-1, 1]; returns float32 (N, C, H, W) on the model's device, or
        (N, C + 1, H, W) with the keep-mask last when the knobs localise (`Method.LOCAL`)."""
        count = batch.shape[0]
        size = self._bucket_for(count)
        if size > count:  # pad to the bucket: a compiled model never meets a new shape while serving
            padding = torch.zeros((size - count, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
            batch = torch.cat([batch, padding])
            if generators is not None:
                generators = [*generators, *seeded_generators(range(size - count), str(batch.device))]
        return self.purifier_for(steps, variant)(batch, generators)[:count]

    def _bucket_for(self, count: int) -> int:
        if self.buckets is None:
            return count
        return next((size for size in self.buckets if size >= count), count)  # above the largest: as it is

    def warm_up(self) -> None:
        """Run one step at every bucket size (or at batch 1 without buckets): kernels picked, graphs compiled."""
        model = self.model
        for size in self.buckets or (1,):
            canvas = torch.zeros(size, model.channels, model.sample_size, model.sample_size, device=model.device)
            self(canvas, 1, None)


def zip_purifier_factory(
    model_path: Path | str,
    config: ZipConfig,
    dtype: DType,
    acceleration: Acceleration = Acceleration(),
    max_batch_size: int = 1,
) -> PurifierFactory:
    """A factory the pool calls once per device, in that device's worker thread.

    Args:
        model_path: a local diffusers UNet2DModel directory.
        config: ZIP's knobs (validated when it was built, before any model is loaded).
        dtype: compute dtype; AUTO is resolved per device (`DType.resolve`).
        acceleration: channels-last and `torch.compile`; a compiled model gets batch buckets up to
            `max_batch_size`, each compiled in the warm-up.
        max_batch_size: the pool's largest batch.

    Returns:
        device name → `ZipBatchPurifier` holding that device's model copy.
    """
    compiled = acceleration.compile_mode is not CompileMode.OFF

    def build(device: str) -> ZipBatchPurifier:
        model = load_eps_model(model_path, device, dtype.resolve(device), acceleration)
        purifier = ZipBatchPurifier(model, config, batch_buckets(max_batch_size) if compiled else None)
        # Warm-up: the first forward pass picks kernels and grows the allocator (~3 s on CPU), and a
        # compiled model compiles each bucket (seconds to minutes); all before the worker reports
        # ready, so that "ready" means "fast" and no request waits behind a compile.
        started = time.perf_counter()
        purifier.warm_up()
        seconds = time.perf_counter() - started
        fields = {"channels_last": acceleration.channels_last, "compile_mode": acceleration.compile_mode.value}
        if compiled:
            fields["compile_backend"] = acceleration.compile_backend
        described = ", ".join(f"{name} {value}" for name, value in fields.items())
        log.info(
            "warm-up on %s: %.1f s (%s)", device, seconds, described, extra={"warm_up_s": round(seconds, 3), **fields}
        )
        return purifier

    return build
