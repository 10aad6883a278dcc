"""The noise schedule and RePaint's time-travel visiting order."""

from __future__ import annotations

import pytest
import torch

from service.purify.schedule import (
    alpha_bar, alphas_cumprod, check_schedule, jump_schedule, linear_betas, timestep_pairs,
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
