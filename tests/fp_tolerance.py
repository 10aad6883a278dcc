"""How far two floating-point runs of one computation may differ when only the order of their sums differs.

Batch shapes, memory layouts (channels-last), thread counts and kernel choices change the order in which a
convolution or a matrix product adds its terms, and with it the last bits of an fp32 result. A test that
compares such runs needs a tolerance that follows from the computation, not one tuned on one machine:

    A sum of n terms, added in any order, is within (n − 1)·u·Σ|terms| of the exact sum, u = eps/2 the unit
    roundoff (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., §4.2). Two orders are then
    within 2(n − 1)·u·Σ|terms| < n·eps·Σ|terms| of each other.

A network chains such sums. Its layers are normalised (GroupNorm) and initialised to keep activations at the
scale of their input, so the layers' rounding errors add rather than multiply: n becomes the accumulation
depth, the fan-in summed over every layer an output passes through (times the model calls for a sampler), and
Σ|terms| the scale of the result. This is a worst-case bound: rounding errors of random sign grow like √n and
stay one to two orders of magnitude below it, while the mistakes these tests exist to catch (a generator
given to the wrong image, a padding image leaking into the batch, a misplaced channel) change a result by
its own magnitude, far above it.
"""

from __future__ import annotations

import torch
from torch import nn


def accumulation_depth(model: nn.Module, calls: int = 1) -> int:
    """Terms summed along one output's path: the fan-in of every convolution and linear layer, times `calls`.

    Args:
        model: the network (every Conv/Linear counts once: a path through a UNet meets nearly all of them,
            skip connections included).
        calls: how many times the computation runs the network in sequence (a sampler's steps).

    Returns:
        The accumulation depth n of the bound in this module's docstring.
    """
    layers = (nn.Conv1d, nn.Conv2d, nn.Linear)
    fan_in = sum(module.weight[0].numel() for module in model.modules() if isinstance(module, layers))
    return fan_in * calls


def reordering_atol(depth: int, magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """Largest |a − b| of two runs that differ only in the order of their sums: depth · eps(dtype) · magnitude.

    Args:
        depth: the accumulation depth (`accumulation_depth`, or the number of terms of a plain sum).
        magnitude: the scale of the result (its largest absolute value, or Σ|terms| of a plain sum).
        dtype: the dtype both runs compute in.
    """
    return depth * torch.finfo(dtype).eps * magnitude
