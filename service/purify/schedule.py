"""The DDPM noise schedule (linear betas, ᾱ) and RePaint's time-travel visiting order."""

from __future__ import annotations

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
    for previous, current in zip(visits[:-1], visits[1:]):
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
    return list(zip(visits[:-1], visits[1:]))
