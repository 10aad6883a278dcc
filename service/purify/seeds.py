"""Per-item noise seeds: one generator per canvas, so a result never depends on its batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SEED_MASK = (1 << 64) - 1  # torch takes unsigned 64-bit seeds; larger ones are reduced modulo 2⁶⁴ first
_LOW_32 = (1 << 32) - 1
VOTE_SEED_SHIFT = 20
"""Vote v of a batch seeded s uses base s + (v << 20): room for 2²⁰ canvases per batch before votes overlap."""


def _splitmix64(value: int) -> int:
    """SplitMix64's output function (Steele et al. 2014): a bijective 64-bit mix in which every input bit
    flips about half the output bits."""
    z = (value + 0x9E3779B97F4A7C15) & SEED_MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & SEED_MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & SEED_MASK
    return z ^ (z >> 31)


def generator_seed(seed: int, device: torch.device | str) -> int:
    """The seed a generator on `device` is given for `seed`, so that the seeds the gateway accepts
    (0 … 2⁶³−1, and the derived per-canvas and per-vote seeds above them) do not trivially collide.

    Why: torch's CPU generator (mt19937) keeps only the low 32 bits of its seed, so seeds s and
    s + 2³² drew the same noise. Narrowing `?seed=` to 32 bits would not be enough (random seeds
    are drawn from 62-63 bits and votes add v·2²⁰ above the client's seed) and would refuse seeds
    that CUDA honours, so the full seed is folded into the 32 bits instead:

    - CPU: below 2³² a seed is kept (every seed the generator honoured keeps its noise); above, the
      low 32 bits are shifted by a SplitMix64 hash of the high 32 bits, modulo 2³². Seeds with the
      same high word, such as a request's s, s + 1, …, and its votes' s + v·2²⁰ + i, stay distinct
      (a shift is a bijection); seeds that differ only above bit 32 get unrelated low words. With
      2³² possible generator states, collisions between unrelated seeds remain, at the birthday
      rate of any 32-bit hash, never by structure.
    - any other device (CUDA's, MPS's Philox): the 64-bit seed as is, which it honours whole.

    Deterministic: the same seed and device always give the same generator seed.
    """
    seed &= SEED_MASK
    if torch.device(device).type != "cpu":
        return seed
    high = seed >> 32
    if high == 0:
        return seed
    mixed = _splitmix64(high)
    return (seed + (mixed ^ (mixed >> 32))) & _LOW_32


def seeded_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One generator per item on `device`, seeded from that item's seed.

    Per-item generators make an image's result independent of which batch it lands in, so a
    batch equals the same images purified one by one with the same seeds.

    Args:
        seeds: one non-negative integer per item (reduced modulo 2⁶⁴, then mapped onto what the
            device's generator honours by `generator_seed`: all 64 bits on CUDA, 32 on the CPU).
        device: where the noise is drawn (a CUDA generator must live on the CUDA device).

    Returns:
        The generators, in item order.
    """
    return [torch.Generator(device=device).manual_seed(generator_seed(seed, device)) for seed in seeds]


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
