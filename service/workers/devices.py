"""Turn the `devices` setting ("auto", "cpu", "cuda:0,cuda:1") into the worker pool's device list."""

from __future__ import annotations

import re

import torch

AUTO = "auto"
_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_devices(spec: str, *, cuda_device_count: int | None = None) -> tuple[str, ...]:
    """Resolve a devices spec to torch device names, one worker each.

    Args:
        spec: "auto" (every visible CUDA device, else the CPU) or a comma list of "cpu",
            "cuda" (= "cuda:0") and "cuda:N".
        cuda_device_count: visible CUDA devices; None asks torch (tests pass a number).

    Returns:
        Device names in the given order, e.g. ("cpu",) or ("cuda:0", "cuda:1").

    Raises:
        ValueError: an empty spec, an unknown or repeated name, or a CUDA device that is not visible;
            the message says what is accepted.
    """
    count = torch.cuda.device_count() if cuda_device_count is None else cuda_device_count
    accepted = f"use '{AUTO}', 'cpu', or 'cuda:N' with N < {count} visible CUDA devices, separated by commas"
    names = [name.strip().lower() for name in spec.split(",")]
    if names == [AUTO]:
        return tuple(f"cuda:{index}" for index in range(count)) or ("cpu",)
    if not spec.strip() or any(not name for name in names):
        raise ValueError(f"devices '{spec}' has an empty entry; {accepted}")
    resolved: list[str] = []
    for name in names:
        match = _CUDA.fullmatch(name)
        if name == "cpu":
            device = "cpu"
        elif match is None:
            raise ValueError(f"unknown device '{name}' in devices '{spec}'; {accepted}")
        elif int(match.group(1) or 0) >= count:
            raise ValueError(f"device '{name}' is not visible (CUDA devices: {count}); {accepted}")
        else:
            device = f"cuda:{int(match.group(1) or 0)}"
        if device in resolved:
            raise ValueError(f"device '{device}' appears twice in devices '{spec}'; one worker per device")
        resolved.append(device)
    return tuple(resolved)
