"""Per-item noise seeds: one generator per canvas, so a result never depends on its batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SEED_MASK = (1 << 64) - 1  # torch seeds are unsigned 64-bit
VOTE_SEED_SHIFT = 20
"""Vote v of a batch seeded s uses base s + (v << 20): room for 2²⁰ canvases per batch before votes overlap."""


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


def canvas_seeds(seed: int, count: int) -> list[int]:
    """The seeds of `count` canvases fitted from one request or batch: canvas i gets seed + i.

    The one rule of the gateway's `?seed=s`, the CLI's `--seed` and the evaluation, so that the
    three purify the same canvases with the same noise.
    """
    return [seed + i for i in range(count)]


def vote_canvas_seeds(seed: int, votes: int, count: int) -> list[int]:
    """Seeds of `count` canvases purified `votes` times, vote-major: vote v, canvas i gets s + (v << 20) + i.

    Vote 0 is `canvas_seeds(seed, count)`, so one vote is exactly an unvoted purification; the
    gateway's `?votes=K&seed=s` and the evaluation's K votes purify with the same noise.
    """
    if not 0 <= count < 1 << VOTE_SEED_SHIFT:
        raise ValueError(f"at most {(1 << VOTE_SEED_SHIFT) - 1} canvases per batch, got {count}")
    return [seed + (vote << VOTE_SEED_SHIFT) + i for vote in range(votes) for i in range(count)]
