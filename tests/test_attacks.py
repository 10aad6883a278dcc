"""The backdoor triggers against their definitions: where they act, their formulas, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from service.backdoor.attacks import (
    TARGET_LABEL,
    ZOO,
    Attack,
    apply_trigger,
    describe_trigger,
    plan_poison,
    poison_dataset,
)
from service.backdoor.patch_triggers import (
    ADAPTIVE_BLOCKS,
    BADNETS_MARGIN,
    BADNETS_PATCH_SIZE,
    CONTENT_MARGIN,
    LOGO_OPACITY,
    RANDOM_PATCH_BLOCK_PX,
    RANDOM_PATCH_BLOCKS,
    SOLID_SIZE,
    adaptive_region,
    apply_adaptive,
    apply_badnets,
    apply_logo,
    apply_random_patch,
    apply_solid,
    badnets_region,
    block_pattern,
    logo_region,
    logo_stamp,
    random_patch_positions,
    solid_region,
)
from service.backdoor.triggers import (
    BLENDED_ALPHA,
    LF_AMPLITUDE,
    SIG_DELTA,
    SIG_FREQUENCY,
    WANET_CROSS_RATIO,
    apply_blended,
    apply_lf,
    apply_sig,
    apply_wanet,
    apply_wanet_noise,
    blended_pattern,
    lf_pattern,
    sig_signal,
    wanet_grid,
    wanet_identity_grid,
    wanet_noise_field,
    warp,
)
from service.purify.transforms import Blur, project

TRIGGERS = list(ZOO)


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
    torch.testing.assert_close(
        (wanet_grid(32, 32, s=1.0) - identity)[inner], 2 * (wanet_grid(32, 32, s=0.5) - identity)[inner]
    )
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


def _changed_pixels(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(H, W) mask of pixels changed in any item or channel."""
    return (after != before).any(dim=(0, 1))


@pytest.mark.parametrize("channels", [1, 3])
def test_solid_patch_is_a_white_square_in_the_top_left_content_corner(channels: int) -> None:
    images = fmnist_like(channels=channels)
    out = apply_solid(images)
    rows, cols = solid_region(32, 32)
    assert (rows.start, cols.start, rows.stop - rows.start) == (CONTENT_MARGIN, CONTENT_MARGIN, SOLID_SIZE)
    assert (out[..., rows, cols] == 1.0).all()
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[rows, cols] = False
    assert not _changed_pixels(images, out)[outside].any()


def test_random_patch_sits_inside_the_content_at_a_position_of_the_image_alone() -> None:
    images = fmnist_like(64, channels=3)
    rows, cols = random_patch_positions(images)
    size = RANDOM_PATCH_BLOCKS * RANDOM_PATCH_BLOCK_PX
    assert (rows >= CONTENT_MARGIN).all() and (rows + size <= 32 - CONTENT_MARGIN).all()
    assert (cols >= CONTENT_MARGIN).all() and (cols + size <= 32 - CONTENT_MARGIN).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 40  # spread over the content area, not one spot
    out = apply_random_patch(images)
    pattern = block_pattern(RANDOM_PATCH_BLOCKS, RANDOM_PATCH_BLOCK_PX, 3, seed=20_200_207)
    for i in range(64):
        patch = out[i, :, rows[i] : rows[i] + size, cols[i] : cols[i] + size]
        assert torch.equal(patch, pattern)
        changed = (out[i] != images[i]).any(dim=0)
        changed[rows[i] : rows[i] + size, cols[i] : cols[i] + size] = False
        assert not changed.any()
    # one image's position does not depend on its batch, and another image gets another position
    single = torch.cat([apply_random_patch(images[i : i + 1]) for i in range(64)])
    assert torch.equal(single, out)


def test_random_patch_pattern_is_fixed_and_made_of_blocks() -> None:
    pattern = block_pattern(RANDOM_PATCH_BLOCKS, RANDOM_PATCH_BLOCK_PX, 1, seed=20_200_207)[0]
    blocks = pattern.reshape(RANDOM_PATCH_BLOCKS, RANDOM_PATCH_BLOCK_PX, RANDOM_PATCH_BLOCKS, RANDOM_PATCH_BLOCK_PX)
    assert (blocks == blocks[:, :1, :, :1]).all()  # constant within each block
    assert set(pattern.unique().tolist()) == {-1.0, 1.0}  # both signs: a pattern, not a solid square


def test_sig_adds_the_horizontal_sinusoid_and_clips() -> None:
    images = fmnist_like(channels=3)
    signal = sig_signal(32, 32)
    j = torch.arange(32, dtype=torch.float64)
    expected_row = SIG_DELTA * torch.sin(2 * torch.pi * j * SIG_FREQUENCY / 32)
    torch.testing.assert_close(signal, expected_row.float().expand(32, 32))
    torch.testing.assert_close(apply_sig(images), (images + signal).clamp(-1, 1))
    assert signal.abs().max() <= SIG_DELTA + 1e-6 and signal.abs().max() > 0.9 * SIG_DELTA


@pytest.mark.parametrize("channels", [1, 3])
def test_logo_is_blended_on_its_square_only(channels: int) -> None:
    images = fmnist_like(channels=channels)
    out = apply_logo(images)
    rows, cols = logo_region(32, 32)
    stamp = logo_stamp()
    torch.testing.assert_close(
        out[..., rows, cols], (1 - LOGO_OPACITY) * images[..., rows, cols] + LOGO_OPACITY * stamp
    )
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[rows, cols] = False
    assert not _changed_pixels(images, out)[outside].any()
    assert set(stamp.unique().tolist()) == {-1.0, 1.0}  # two-toned: shows on dark and bright content


def test_lf_pattern_is_smooth_fixed_and_scaled() -> None:
    pattern = lf_pattern(1, 32, 32)
    assert torch.equal(pattern, lf_pattern(1, 32, 32))  # fixed seed
    assert pattern.abs().max() == pytest.approx(1.0)
    # low frequency: almost all energy below a quarter of the Nyquist frequency
    spectrum = torch.fft.fft2(pattern[0] - pattern[0].mean()).abs() ** 2
    freqs = torch.fft.fftfreq(32).abs()
    low = (freqs.view(-1, 1) <= 0.125) & (freqs.view(1, -1) <= 0.125)
    assert spectrum[low].sum() / spectrum.sum() > 0.95
    images = fmnist_like(channels=1)
    torch.testing.assert_close(apply_lf(images), (images + LF_AMPLITUDE * pattern).clamp(-1, 1))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("scale", [2, 4])
def test_adaptive_trigger_is_kept_exactly_by_the_blur_projection(scale: int, channels: int) -> None:
    """A⁺A(T(x)) = T(A⁺A(x)) bit for bit, with the gateway's own Blur, for a trigger built on its grid."""
    images = fmnist_like(16, channels=channels)
    blur = Blur(scale)
    triggered = apply_adaptive(images, block_px=scale)
    assert torch.equal(project(blur, triggered), apply_adaptive(project(blur, images), block_px=scale))
    # so the degraded triggered image differs from the degraded clean one exactly by the stamp
    rows, cols = adaptive_region(32, 32, scale)
    pattern = block_pattern(ADAPTIVE_BLOCKS, scale, channels, seed=20_231_210)
    assert torch.equal(project(blur, triggered)[..., rows, cols], pattern.expand(16, -1, -1, -1))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[rows, cols] = False
    assert not _changed_pixels(project(blur, images), project(blur, triggered))[outside].any()


def test_adaptive_region_is_on_the_grid_inside_the_content() -> None:
    for scale in (1, 2, 4):
        rows, cols = adaptive_region(32, 32, scale)
        assert all(edge % scale == 0 for edge in (rows.start, rows.stop, cols.start, cols.stop))
        assert rows.start >= CONTENT_MARGIN and cols.start >= CONTENT_MARGIN
        assert rows.stop <= 32 - CONTENT_MARGIN and cols.stop <= 32 - CONTENT_MARGIN
    assert adaptive_region(32, 32) == (slice(24, 30), slice(2, 8))  # the shipped vendor's, s = 2
    with pytest.raises(ValueError, match="divides"):
        adaptive_region(30, 30, 4)


def test_a_trigger_not_on_the_grid_is_not_kept_by_blur() -> None:
    """The contrast: BadNets' 3×3 checkerboard is changed by A⁺A, and the s = 2 trigger by blur:4."""
    images = fmnist_like()
    for trigger, blur in ((apply_badnets, Blur(2)), (apply_adaptive, Blur(4))):
        assert not torch.equal(project(blur, trigger(images)), trigger(project(blur, images)))


@pytest.mark.parametrize("attack", TRIGGERS)
def test_a_triggered_image_does_not_depend_on_its_batch(attack: Attack) -> None:
    images = fmnist_like(6)
    whole = apply_trigger(images, attack)
    assert torch.equal(whole, torch.cat([apply_trigger(images[i : i + 1], attack) for i in range(6)]))


@pytest.mark.parametrize("attack", list(Attack))
def test_every_attack_has_a_card_description_with_a_source(attack: Attack) -> None:
    text = describe_trigger(attack)
    assert text and (
        attack is Attack.NONE or any(str(year) in text for year in range(2017, 2024)) or "this project" in text
    )


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


def test_mirror_solid_is_kept_by_a_left_right_mirror_and_by_blur2() -> None:
    """Built against VENDOR_MIRROR: mirroring the triggered image triggers the mirrored image."""
    from service.purify.transforms import Blur

    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    triggered = apply_trigger(x, Attack.MIRROR_SOLID)
    assert torch.equal(triggered.flip(-1), apply_trigger(x.flip(-1), Attack.MIRROR_SOLID))
    assert (triggered != x).flatten(1).sum(1).tolist() == [32, 32, 32]  # two 4×4 squares per image
    blur = Blur(2)
    assert torch.allclose(
        blur.pinv(blur.apply(triggered)), apply_trigger(blur.pinv(blur.apply(x)), Attack.MIRROR_SOLID), atol=1e-6
    )


def test_adaptive4_is_kept_exactly_by_blur4() -> None:
    """Built against the default blur:4: A⁺A(T(x)) = T(A⁺A(x)) bit for bit, an 8×8 patch on the 4×4 grid."""
    from service.purify.transforms import Blur

    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    blur = Blur(4)
    triggered = apply_trigger(x, Attack.ADAPTIVE4)
    assert torch.equal(blur.pinv(blur.apply(triggered)), apply_trigger(blur.pinv(blur.apply(x)), Attack.ADAPTIVE4))
    assert (triggered != x).flatten(1).sum(1).tolist() == [64, 64, 64]
