"""bench/gpu.py's measuring tools: synchronised timing, peak memory, out-of-memory, FLOP counts."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable

import torch

from service.purify.models import EpsModel


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OOM, and the other forms it takes (a cuBLAS/cuDNN workspace that cannot be allocated)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], object], device: torch.device, warmups: int, runs: int) -> float:
    """Median wall time of `runs` calls after `warmups` untimed ones, the device synchronised around each."""
    for _ in range(warmups):
        run()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated device memory since the last reset on CUDA; on a CPU, the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def release(device: torch.device) -> None:
    """Drop what a finished or failed setting held, so the next one starts from a clean allocator."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # a benchmark between settings, not the serving path: returning memory is the point


def forward_flop(model: EpsModel, device: torch.device) -> float:
    """FLOPs of one forward of one image, counted by torch (convolutions, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, model.channels, model.sample_size, model.sample_size, device=device, dtype=model.dtype)
    t = torch.full((1,), 500, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.unet(x, t)
    return float(counter.get_total_flops())
