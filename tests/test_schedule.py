"""The noise schedule, RePaint's time-travel visiting order, and the step math (DDIM step, re-noising)."""

from __future__ import annotations

import math

import pytest
import torch

from service.purify.schedule import (
    alpha_bar,
    alphas_cumprod,
    check_schedule,
    ddim_step,
    jump_schedule,
    linear_betas,
    renoise,
    timestep_pairs,
)


def test_linear_betas_and_alpha_bar():
    betas = linear_betas()
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    table = alphas_cumprod(betas)
    assert table[0].item() == pytest.approx(1 - 1e-4)
    assert table[2].item() == pytest.approx((1 - betas[0]) * (1 - betas[1]) * (1 - betas[2]))
    assert bool((table[1:] < table[:-1]).all())
    assert alpha_bar(table, -1) == 1.0
    assert alpha_bar(table, 999) == pytest.approx(table[-1].item())
    with pytest.raises(ValueError):
        alpha_bar(table, 1000)


def test_plain_schedule_counts_down():
    assert jump_schedule(20) == list(range(19, -1, -1)) + [-1]


def test_time_travel_schedule_by_hand():
    # steps=6, L=2, R=2: jumps at t=0 and t=2 (j < 6-2), each taken once (R-1 = 1).
    assert jump_schedule(6, travel_length=2, travel_repeat=2) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]


def test_time_travel_respects_repaint_checks():
    for steps, length, repeat in [(20, 1, 1), (20, 5, 3), (10, 2, 4), (7, 3, 2)]:
        visits = jump_schedule(steps, length, repeat)
        check_schedule(visits, steps)  # raises on any violation
        assert visits.count(-1) == 1


def test_check_schedule_catches_violations():
    with pytest.raises(ValueError, match="end at -1"):
        check_schedule([3, 2, 1, 0], 4)
    with pytest.raises(ValueError, match="move by 1"):
        check_schedule([3, 1, 0, -1], 4)
    with pytest.raises(ValueError, match="going down"):
        check_schedule([2, 3, 2, 1, 0, -1], 4)


def test_timestep_pairs_use_the_T_over_S_grid():
    pairs = timestep_pairs(20)
    assert pairs[0] == (950, 900)
    assert pairs[-2] == (50, 0)
    assert pairs[-1] == (0, -1)
    assert len(pairs) == 20


def test_bad_arguments():
    with pytest.raises(ValueError):
        jump_schedule(0)
    with pytest.raises(ValueError):
        timestep_pairs(2000)
    with pytest.raises(ValueError):
        linear_betas(beta_start=0.5, beta_end=0.1)


def _tensors(seed: int, n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 1, 4, 4, generator=generator) * 2 for _ in range(n)]


def test_ddim_step_follows_eq_12_by_hand():
    """x_t′ = √ᾱ′ x₀ + √(1 − ᾱ′ − σ²) ε + σ z with x₀ = (x_t − √(1−ᾱ) ε)/√ᾱ and σ from η."""
    x_t, eps, z = _tensors(0)
    a_t, a_next, eta = 0.3, 0.6, 0.7
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1 - a_next) / (1 - a_t) * (1 - a_t / a_next))
    expected = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next - sigma**2) * eps + sigma * z
    x_next, x0_out = ddim_step(x_t, eps, a_t, a_next, eta, z)
    torch.testing.assert_close(x0_out, x0)
    torch.testing.assert_close(x_next, expected)


def test_ddim_step_ends_at_x0_and_is_deterministic_at_eta_zero():
    x_t, eps, z = _tensors(1)
    last, x0 = ddim_step(x_t, eps, 0.9, alpha_bar(alphas_cumprod(linear_betas()), -1), 1.0, z)
    torch.testing.assert_close(last, x0)  # ᾱ(−1) = 1: σ = 0 and no direction term
    a, _ = ddim_step(x_t, eps, 0.3, 0.6, 0.0, z)
    b, _ = ddim_step(x_t, eps, 0.3, 0.6, 0.0, -z)
    assert torch.equal(a, b)  # η = 0: the noise is not used


def test_clip_x0_clamps_the_clean_estimate_only_when_asked():
    x_t, eps, z = _tensors(2)
    x_t = x_t * 10  # x₀ far outside [-1, 1]
    _, raw = ddim_step(x_t, eps, 0.3, 0.6, 1.0, z)
    _, clipped = ddim_step(x_t, eps, 0.3, 0.6, 1.0, z, clip_x0=True)
    assert raw.abs().max() > 1 and clipped.abs().max() <= 1
    torch.testing.assert_close(clipped, raw.clamp(-1, 1))


def test_renoise_is_the_forward_process():
    x0, z, _ = _tensors(3)
    torch.testing.assert_close(renoise(x0, 0.25, z), 0.5 * x0 + math.sqrt(0.75) * z)
    assert torch.equal(renoise(x0, 1.0, z), x0)
