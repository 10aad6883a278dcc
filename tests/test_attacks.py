"""The backdoor triggers against their definitions: where they act, their formulas, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from service.defense_eval.attacks import (
    BADNETS_MARGIN,
    BADNETS_PATCH_SIZE,
    BLENDED_ALPHA,
    TARGET_LABEL,
    WANET_CROSS_RATIO,
    Attack,
    apply_badnets,
    apply_blended,
    apply_trigger,
    apply_wanet,
    apply_wanet_noise,
    badnets_region,
    blended_pattern,
    plan_poison,
    poison_dataset,
    wanet_grid,
    wanet_identity_grid,
    wanet_noise_field,
    warp,
)

TRIGGERS = [Attack.BADNETS, Attack.BLENDED, Attack.WANET]


def fmnist_like(n: int = 8, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Random 28² content in [-1, 1] padded with -1 to 32², like the data loader's output."""
    content = torch.rand((n, channels, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return F.pad(content, (2, 2, 2, 2), value=-1.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("attack", list(Attack))
def test_triggers_keep_shape_dtype_and_range(attack: Attack, channels: int) -> None:
    images = fmnist_like(channels=channels)
    out = apply_trigger(images, attack)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert not torch.equal(out, images) or attack is Attack.NONE


def test_triggers_do_not_modify_their_input() -> None:
    images = fmnist_like()
    before = images.clone()
    for attack in Attack:
        apply_trigger(images, attack)
    assert torch.equal(images, before)


@pytest.mark.parametrize("channels", [1, 3])
def test_badnets_patch_is_a_checkerboard_in_the_content_corner_and_nowhere_else(channels: int) -> None:
    images = fmnist_like(channels=channels)
    out = apply_badnets(images)
    # 32² padded image: content rows/cols 2..29; the 3×3 patch fills its bottom-right corner 27..29
    assert badnets_region(32, 32) == (slice(27, 30), slice(27, 30))
    expected = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    assert torch.equal(out[..., 27:30, 27:30], expected.expand(8, channels, 3, 3))
    changed = (out != images).any(dim=(0, 1))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[27:30, 27:30] = False
    assert not changed[outside].any()


def test_badnets_region_follows_the_image_size_and_rejects_tiny_images() -> None:
    rows, cols = badnets_region(64, 48)
    assert (rows.stop, cols.stop) == (64 - BADNETS_MARGIN, 48 - BADNETS_MARGIN)
    assert rows.stop - rows.start == cols.stop - cols.start == BADNETS_PATCH_SIZE
    with pytest.raises(ValueError, match="at least"):
        badnets_region(4, 32)


def test_blended_is_the_convex_combination_with_the_fixed_pattern() -> None:
    images = fmnist_like(channels=3)
    pattern = blended_pattern(3, 32, 32)
    expected = (1 - BLENDED_ALPHA) * images + BLENDED_ALPHA * pattern
    torch.testing.assert_close(apply_blended(images), expected, rtol=0, atol=1e-6)
    assert pattern.min() >= -1 and pattern.max() <= 1
    assert abs(pattern.mean().item()) < 0.1 and pattern.std().item() > 0.5  # uniform noise, not a constant
    assert torch.equal(blended_pattern(3, 32, 32), pattern)  # fixed seed
    torch.testing.assert_close(apply_blended(images, alpha=0.0), images)


def test_wanet_identity_grid_reproduces_the_image_exactly() -> None:
    images = fmnist_like(channels=3)
    # exact up to float32 rounding of the linspace coordinates
    torch.testing.assert_close(warp(images, wanet_identity_grid(32, 32)), images, rtol=0, atol=1e-5)
    torch.testing.assert_close(apply_wanet(images, s=0.0), images, rtol=0, atol=1e-5)


def test_wanet_grid_is_in_range_small_and_smooth() -> None:
    identity = wanet_identity_grid(32, 32)
    grid = wanet_grid(32, 32)
    assert grid.shape == (1, 32, 32, 2)
    assert grid.min() >= -1 and grid.max() <= 1
    # displacement in pixels: normalised offset × (size − 1) / 2; WaNet's s = 0.5 is sub-pixel
    displacement_px = (grid - identity) * 31 / 2
    assert 0.05 < displacement_px.abs().mean() < 1.0
    assert displacement_px.abs().max() < 2.0
    # smooth inside (bicubic from 4×4): neighbouring offsets differ by far less than a pixel; at the
    # border the clamp to [-1, 1] zeroes outward offsets, as in the paper's code
    inner = displacement_px[:, 1:-1, 1:-1]
    assert (inner[:, 1:] - inner[:, :-1]).abs().max() < 0.1
    assert (inner[:, :, 1:] - inner[:, :, :-1]).abs().max() < 0.1


def test_wanet_offsets_scale_linearly_with_s_and_follow_the_normalised_field() -> None:
    identity = wanet_identity_grid(32, 32)
    field = wanet_noise_field(32, 32)
    inner = (slice(None), slice(2, 30), slice(2, 30))  # away from the clamp at the border
    torch.testing.assert_close((wanet_grid(32, 32, s=0.5) - identity)[inner], (0.5 * field / 32)[inner])
    torch.testing.assert_close((wanet_grid(32, 32, s=1.0) - identity)[inner],
                               2 * (wanet_grid(32, 32, s=0.5) - identity)[inner])
    # the k×k control offsets are normalised to mean |offset| = 1; with k = size the bicubic
    # upsampling (align_corners=True) is the identity, so the field shows them directly
    torch.testing.assert_close(wanet_noise_field(32, 32, k=32).abs().mean(), torch.tensor(1.0))
    assert torch.equal(wanet_noise_field(32, 32), field)  # fixed seed


def test_wanet_samples_where_the_grid_points() -> None:
    # bilinear sampling of a ramp that equals the x coordinate returns the grid's x coordinate
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32).contiguous()
    torch.testing.assert_close(apply_wanet(ramp)[0, 0], wanet_grid(32, 32)[0, ..., 0], rtol=0, atol=1e-5)


def test_wanet_noise_mode_jitters_around_the_trigger_within_one_pixel() -> None:
    images = fmnist_like()
    noisy_a = apply_wanet_noise(images, torch.Generator().manual_seed(1))
    noisy_b = apply_wanet_noise(images, torch.Generator().manual_seed(1))
    noisy_c = apply_wanet_noise(images, torch.Generator().manual_seed(2))
    assert torch.equal(noisy_a, noisy_b) and not torch.equal(noisy_a, noisy_c)
    assert not torch.allclose(noisy_a, apply_wanet(images))
    assert noisy_a.min() >= -1 and noisy_a.max() <= 1


@pytest.mark.parametrize("attack", list(Attack))
def test_triggers_are_deterministic(attack: Attack) -> None:
    images = fmnist_like()
    assert torch.equal(apply_trigger(images, attack), apply_trigger(images.clone(), attack))


def labels_for(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attack", TRIGGERS)
def test_poison_dataset_poisons_the_rate_of_non_target_items_with_the_trigger(attack: Attack) -> None:
    images, labels = fmnist_like(200), labels_for(200)
    poisoned = poison_dataset(images, labels, attack, rate=0.1, seed=3)
    mask = poisoned.plan.poisoned
    assert int(mask.sum()) == 20
    assert (labels[mask] != TARGET_LABEL).all()
    assert (poisoned.labels[mask] == TARGET_LABEL).all()
    assert torch.equal(poisoned.images[mask], apply_trigger(images[mask], attack))
    untouched = ~mask & ~poisoned.plan.cross
    assert torch.equal(poisoned.images[untouched], images[untouched])
    assert torch.equal(poisoned.labels[~mask], labels[~mask])


def test_wanet_poisoning_adds_cross_items_that_keep_their_labels() -> None:
    images, labels = fmnist_like(200), labels_for(200)
    poisoned = poison_dataset(images, labels, Attack.WANET, rate=0.1, seed=3)
    cross = poisoned.plan.cross
    assert int(cross.sum()) == round(WANET_CROSS_RATIO * 20)
    assert not (cross & poisoned.plan.poisoned).any()
    assert torch.equal(poisoned.labels[cross], labels[cross])
    assert not torch.allclose(poisoned.images[cross], images[cross])
    assert not torch.allclose(poisoned.images[cross], apply_wanet(images[cross]))  # noise, not the trigger


def test_other_attacks_have_no_cross_items_and_none_changes_nothing() -> None:
    images, labels = fmnist_like(50), labels_for(50)
    assert not poison_dataset(images, labels, Attack.BADNETS).plan.cross.any()
    clean = poison_dataset(images, labels, Attack.NONE)
    assert torch.equal(clean.images, images) and torch.equal(clean.labels, labels)
    assert not clean.plan.poisoned.any()


def test_poisoning_is_deterministic_per_seed() -> None:
    labels = labels_for(500)
    plan = lambda seed: plan_poison(labels, Attack.WANET, 0.1, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(plan(7).poisoned, plan(7).poisoned) and torch.equal(plan(7).cross, plan(7).cross)
    assert not torch.equal(plan(7).poisoned, plan(8).poisoned)


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_poison_rate_outside_unit_interval_is_rejected(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        poison_dataset(fmnist_like(10), labels_for(10), Attack.BADNETS, rate=rate)


def test_poisoning_more_items_than_exist_is_rejected() -> None:
    labels = torch.zeros(10, dtype=torch.long)  # every item already has the target label
    with pytest.raises(ValueError, match="non-target"):
        poison_dataset(fmnist_like(10), labels, Attack.BADNETS, rate=0.1)
