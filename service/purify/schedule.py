"""The DDPM noise schedule (linear betas, ᾱ), RePaint's time-travel visiting order, and the step math.

The scheduler owns the step math (as diffusers' DDIMScheduler does): `ddim_step` and `renoise`
are the only places that turn ᾱ into an update; `zip.py` and the sampler that scores the DDPM
(`training/ddpm_quality.py`) both call them.

Notation (docs/design.md): ᾱ_t cumulative product of (1 − β) with ᾱ(−1) = 1; t′ the
next time of the walk; ε the model's noise prediction; η DDIM's stochasticity; z ~ N(0, I).
"""

from __future__ import annotations

import itertools
import math

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02


def linear_betas(
    num_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> torch.Tensor:
    """β_1..β_T spaced linearly (DDPM, Ho et al. 2020), float64 for an exact cumulative product.

    Raises:
        ValueError: a non-positive count or betas outside (0, 1).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s<=t} (1 − β_s), indexed 0..T−1 (float64)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def alpha_bar(alphas_cumprod_table: torch.Tensor, t: int) -> float:
    """ᾱ at integer time t, with the convention ᾱ(−1) = 1 (the clean end of the chain).

    Raises:
        ValueError: t outside [−1, T−1].
    """
    if not -1 <= t < alphas_cumprod_table.shape[0]:
        raise ValueError(f"t must be in [-1, {alphas_cumprod_table.shape[0] - 1}], got {t}")
    return 1.0 if t < 0 else float(alphas_cumprod_table[t])


def jump_schedule(steps: int, travel_length: int = 1, travel_repeat: int = 1) -> list[int]:
    """RePaint's "time travel" visiting order on the grid 0..steps−1, ending at −1.

    With travel_length = travel_repeat = 1 this is steps−1, …, 0, −1. Otherwise, each time the
    walk reaches a multiple j of travel_length (j < steps − travel_length) it goes back up
    travel_length steps, travel_repeat − 1 times (Lugmayr et al. 2022, `get_schedule_jump`).

    Raises:
        ValueError: non-positive arguments.
    """
    if steps < 1 or travel_length < 1 or travel_repeat < 1:
        raise ValueError(
            f"steps, travel_length and travel_repeat must be >= 1, got {steps}, {travel_length}, {travel_repeat}"
        )
    jumps = {j: travel_repeat - 1 for j in range(0, steps - travel_length, travel_length)}
    t = steps
    visits: list[int] = []
    while t >= 1:
        t -= 1
        visits.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(travel_length):
                t += 1
                visits.append(t)
    visits.append(-1)
    check_schedule(visits, steps)
    return visits


def check_schedule(visits: list[int], steps: int) -> None:
    """RePaint's checks: starts going down, ends at −1, moves by exactly 1, stays in [−1, steps−1].

    Raises:
        ValueError: the first violated check, with the offending values.
    """
    if len(visits) < 2 or visits[0] <= visits[1]:
        raise ValueError(f"schedule must start by going down: {visits[:2]}")
    if visits[-1] != -1:
        raise ValueError(f"schedule must end at -1, ends at {visits[-1]}")
    for previous, current in itertools.pairwise(visits):
        if abs(previous - current) != 1:
            raise ValueError(f"schedule must move by 1, moves {previous} -> {current}")
    for t in visits:
        if not -1 <= t <= steps - 1:
            raise ValueError(f"schedule visits {t}, outside [-1, {steps - 1}]")


def grid_timestep(index: int, steps: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    """Model timestep for grid index i: t = T·i/S (integer), and −1 stays −1."""
    if index < 0:
        return -1
    return (num_timesteps * index) // steps


def timestep_pairs(
    steps: int, travel_length: int = 1, travel_repeat: int = 1, num_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> list[tuple[int, int]]:
    """Consecutive (t, t′) pairs of model timesteps; each pair is one step of the reverse loop.

    Raises:
        ValueError: steps larger than the number of training timesteps, or bad schedule arguments.
    """
    if steps > num_timesteps:
        raise ValueError(f"steps ({steps}) cannot exceed the model's {num_timesteps} timesteps")
    visits = [grid_timestep(i, steps, num_timesteps) for i in jump_schedule(steps, travel_length, travel_repeat)]
    return list(itertools.pairwise(visits))


def renoise(x0: torch.Tensor, a_bar: float, z: torch.Tensor) -> torch.Tensor:
    """The forward process q(x_t | x₀) run in one jump: x_t = √ᾱ_t x₀ + √(1−ᾱ_t) z.

    ZIP uses it for RePaint's time travel (re-noise the latest x₀ estimate up to t′) and for a
    noise start t* < T (the input itself noised to t*).
    """
    return math.sqrt(a_bar) * x0 + math.sqrt(1.0 - a_bar) * z


def ddim_step(
    x_t: torch.Tensor, eps: torch.Tensor, a_t: float, a_next: float, eta: float, z: torch.Tensor, clip_x0: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from t down to t′ (Song et al. 2021, eq. 12; ZIP's steps 4–5 in docs/design.md).

    Args:
        x_t: the sample at t (ZIP passes its guided estimate x̂ here).
        eps: ε_θ at t, of x_t's shape.
        a_t, a_next: ᾱ_t and ᾱ_t′ (t′ < t; ᾱ(−1) = 1 ends the walk, where σ = 0).
        eta: η; 0 = deterministic DDIM, 1 = DDPM-like ancestral noise.
        z: the step's Gaussian noise (drawn by the caller, so that the noise contract is its own).
        clip_x0: clamp x₀ to [-1, 1] before the update (diffusers' `clip_sample`). ZIP does not:
            ZIP's x₀ is unclamped (docs/design.md), and the range identity A x₀ = y must hold exactly.

    Returns:
        (x_t′, x₀): the sample at t′ and the predicted clean image.
    """
    # 4. Predicted clean image x₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t.
    x0 = (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    # 5. σ = η √((1−ᾱ′)/(1−ᾱ)) √(1 − ᾱ/ᾱ′); x_t′ = √ᾱ′ x₀ + √(1 − ᾱ′ − σ²) ε + σ z.
    sigma = eta * math.sqrt((1.0 - a_next) / (1.0 - a_t)) * math.sqrt(max(0.0, 1.0 - a_t / a_next))
    direction = math.sqrt(max(0.0, 1.0 - a_next - sigma**2))
    return math.sqrt(a_next) * x0 + direction * eps + sigma * z, x0
