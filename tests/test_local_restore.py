"""Localise, then restore (docs/design.md): the keep-mask degradations, the localiser and the restorer."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from service.defense_eval.defenses import shrink_pad
from service.purify.local_restore import LocalRestoreConfig, LocalRestorer, diffpure
from service.purify.localise import (
    LocaliseConfig,
    grow_regions,
    keep_mask,
    localise,
    restore_from,
    seed_blocks,
    suspicious_blocks,
)
from service.purify.masks import KeepMask, MaskedBlur
from service.purify.options import ZipConfig
from service.purify.schedule import alpha_bar, alphas_cumprod, linear_betas
from service.purify.seeds import seeded_generators
from service.purify.transforms import project
from service.purify.zip import ZipPurifier
from tests.fp_tolerance import accumulation_depth, reordering_atol
from tests.tiny_models import tiny_unet

INF = float("inf")
SIX_BLOCKS = LocaliseConfig(seed_blocks=6, seed_threshold=0.0, grow_threshold=INF, dilate=0)
"""Masks exactly the six top-scoring blocks (no growth): a random model scores every block high."""


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(channels=1, size=16)


def _images(n: int = 3, channels: int = 1, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _block_keep(n: int = 3, size: int = 16, block: int = 2, seed: int = 2) -> torch.Tensor:
    blocks = torch.rand(n, 1, size // block, size // block, generator=torch.Generator().manual_seed(seed)) < 0.3
    return keep_mask(blocks, block)


@pytest.mark.parametrize("make", [lambda keep: KeepMask(keep), lambda keep: MaskedBlur(keep, 2)])
def test_keep_mask_degradations_are_orthogonal_projections(make) -> None:
    """A A⁺ A = A, and P = A⁺A is idempotent and symmetric (⟨P x, y⟩ = ⟨x, P y⟩)."""
    transform = make(_block_keep())
    x, y = _images(seed=3), _images(seed=4)
    torch.testing.assert_close(transform.apply(transform.pinv(transform.apply(x))), transform.apply(x))
    torch.testing.assert_close(project(transform, project(transform, x)), project(transform, x))
    torch.testing.assert_close((project(transform, x) * y).sum(), (x * project(transform, y)).sum())


def test_keep_mask_rejects_what_is_not_a_binary_mask_of_the_batch() -> None:
    with pytest.raises(ValueError, match="only 0"):
        KeepMask(torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="does not fit"):
        KeepMask(torch.ones(2, 1, 4, 4)).apply(torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match="constant on the 2×2 blocks"):
        MaskedBlur(torch.eye(4).view(1, 1, 4, 4), 2)


def test_zip_under_a_keep_mask_keeps_the_kept_pixels_and_repaints_the_rest(unet) -> None:
    """At λ = ∞ the range identity A x₀ = A x_in holds at every step: kept pixels come back (no paste-back)."""
    x, keep = _images(), _block_keep()
    out = ZipPurifier(unet, ZipConfig(steps=8, guidance_power=INF), transforms=KeepMask(keep), clip=False)(
        x, torch.Generator().manual_seed(0)
    )
    kept = keep.bool().expand_as(x)
    scale = out.abs().max().item()
    # Each step's fusion computes √ᾱ·x + (x_t − m x_t) + √(1−ᾱ)(m ε) − √(1−ᾱ) ε and the DDIM step
    # rescales it: a few roundings of values of the output's scale per step, 8 steps.
    torch.testing.assert_close(out[kept], x[kept], atol=8 * 16 * torch.finfo(torch.float32).eps * scale, rtol=0)
    assert (out[~kept] - x[~kept]).abs().mean() > 0.1, "the masked pixels must be drawn from the prior"


def test_restore_from_with_a_zero_eps_model_is_the_noised_input_rescaled() -> None:
    """ε ≡ 0: each DDIM step (η = 0) multiplies x_t by √(ᾱ′/ᾱ), so x̂ = x_t₀/√ᾱ_t₀ = x + √((1−ᾱ)/ᾱ) z."""
    alpha_bars = alphas_cumprod(linear_betas())
    x, z = _images(), _images(seed=9)
    restored = restore_from(lambda x_t, t: torch.zeros_like(x_t), x, z, alpha_bars, noise_level=0.5, steps=5)
    a = alpha_bar(alpha_bars, 500)
    torch.testing.assert_close(restored, x + math.sqrt((1 - a) / a) * z, atol=1e-5, rtol=1e-5)


def test_seeds_are_the_top_blocks_above_the_floor_and_grow_through_connected_candidates() -> None:
    scores = torch.zeros(1, 1, 6, 6)
    scores[0, 0, 1, 1] = 1.0  # a seed
    scores[0, 0, 1, 2] = scores[0, 0, 2, 3] = 0.7  # connected to it (8-connectivity), above grow
    scores[0, 0, 4, 5] = 0.7  # above grow, but not connected to any seed
    scores[0, 0, 5, 0] = 0.9  # the second-highest block: a seed only when two are allowed
    one_seed = seed_blocks(scores, count=1, threshold=0.3)
    assert one_seed.sum() == 1 and one_seed[0, 0, 1, 1]
    region = grow_regions(one_seed, scores, grow_threshold=0.6)
    assert {tuple(index.tolist()) for index in region[0, 0].nonzero()} == {(1, 1), (1, 2), (2, 3)}
    assert seed_blocks(scores, count=2, threshold=0.3)[0, 0, 5, 0]


def test_a_flat_map_masks_nothing_and_dilation_adds_a_ring_of_blocks() -> None:
    config = LocaliseConfig(seed_blocks=4, seed_threshold=0.3, grow_threshold=0.6, dilate=1)
    assert not suspicious_blocks(torch.full((2, 1, 8, 8), 0.29), config).any(), "below the floor: no seed"
    scores = torch.zeros(1, 1, 8, 8)
    scores[0, 0, 4, 4] = 1.0
    blocks = suspicious_blocks(scores, config)
    assert blocks.sum() == 9 and blocks[0, 0, 3:6, 3:6].all()
    keep = keep_mask(blocks, 2)
    assert keep.shape == (1, 1, 16, 16) and keep.sum() == 256 - 36


def test_localise_masks_what_the_prior_cannot_explain_and_keeps_the_rest() -> None:
    """A prior that knows only black images: x̂ = −1, so the map is |x + 1| smoothed, and a bright
    square on black is its only suspicious region."""
    alpha_bars = alphas_cumprod(linear_betas())

    def black_prior(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # ε that makes x₀ = (x_t − √(1−ᾱ) ε)/√ᾱ equal −1 everywhere.
        a = alpha_bars[t].view(-1, 1, 1, 1)
        return (x_t + a.sqrt()) / (1 - a).sqrt()

    x = torch.full((1, 1, 16, 16), -1.0)
    x[0, 0, 10:14, 2:6] = 1.0
    generator = torch.Generator().manual_seed(0)
    suspicion, keep = localise(
        black_prior, x, LocaliseConfig(), alpha_bars, lambda: torch.randn(x.shape, generator=generator)
    )
    torch.testing.assert_close(suspicion[0, 0, 0, 15], torch.tensor(0.0), atol=1e-4, rtol=0)
    assert (keep[0, 0, 10:14, 2:6] == 0).all(), "the square must be masked"
    assert keep[0, 0, :6, 8:].eq(1).all(), "the far corner is kept"


def test_local_restorer_keeps_every_unmasked_pixel_bit_for_bit_and_repeats_with_its_seeds(unet) -> None:
    x = _images()
    restorer = LocalRestorer(unet, LocalRestoreConfig(SIX_BLOCKS, steps=4))
    first = restorer.run(x, seeded_generators([5, 6, 7], "cpu"))
    again = restorer.run(x, seeded_generators([5, 6, 7], "cpu"))
    kept = first.keep.bool().expand_as(x)
    assert torch.equal(first.images[kept], x[kept])
    torch.testing.assert_close(first.masked_fraction(), torch.full((3,), 6 * 4 / 256))
    assert (first.images[~kept] - x[~kept]).abs().max() > 0.1
    assert torch.equal(first.images, again.images) and torch.equal(first.keep, again.keep)


def _counting(unet, calls: list[int]):
    """The tiny UNet as an eps(x, t) callable that records each forward's batch size."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return unet(x, t).sample

    return eps


def _next_draws(generators) -> list[torch.Tensor]:
    return [torch.randn(4, generator=g) for g in generators]


def test_the_restore_runs_only_masked_images_and_leaves_every_generator_where_a_full_run_would(unet) -> None:
    x, keep = _images(), _block_keep()
    keep[1] = 1.0  # nothing to repaint in the middle image
    config = LocalRestoreConfig(SIX_BLOCKS, steps=4)
    calls: list[int] = []
    skipping = seeded_generators([5, 6, 7], "cpu")
    out = LocalRestorer(_counting(unet, calls), config).restore(x, keep, skipping)

    assert sum(calls) == 2 * config.steps, "one forward per step for each masked image, none for the other"
    assert torch.equal(out[1], x[1])
    # The masked images are the run of those two alone, with their own generators.
    alone = seeded_generators([5, 7], "cpu")
    masked = ZipPurifier(unet, config.zip_config(), transforms=KeepMask(keep[[0, 2]]))(x[[0, 2]], alone)
    assert torch.equal(out[[0, 2]], keep[[0, 2]] * x[[0, 2]] + (1 - keep[[0, 2]]) * masked)
    # Every generator, the skipped one's included, stands where the whole batch's run leaves it.
    whole = seeded_generators([5, 6, 7], "cpu")
    full = ZipPurifier(unet, config.zip_config(), transforms=KeepMask(keep))(x, whole)
    assert all(map(torch.equal, _next_draws(skipping), _next_draws(whole)))
    # And the masked images are the whole batch's, up to the order of the batched sums (fp_tolerance.py).
    atol = reordering_atol(accumulation_depth(unet, calls=config.steps), full.abs().max().item())
    torch.testing.assert_close(out, keep * x + (1 - keep) * full, atol=atol, rtol=0)


def test_a_shared_generator_skips_the_restore_only_when_no_image_has_a_mask(unet) -> None:
    x, keep = _images(), _block_keep()
    config = LocalRestoreConfig(SIX_BLOCKS, steps=4)
    calls: list[int] = []
    restorer = LocalRestorer(_counting(unet, calls), config)
    partly = keep.clone()
    partly[1] = 1.0
    restorer.restore(x, partly, torch.Generator().manual_seed(3))
    assert calls == [3] * config.steps, "one stream cannot be split: the whole batch runs"

    calls.clear()
    shared = torch.Generator().manual_seed(3)
    assert torch.equal(restorer.restore(x, torch.ones_like(keep), shared), x)
    assert calls == []
    reference = torch.Generator().manual_seed(3)
    ZipPurifier(unet, config.zip_config(), transforms=KeepMask(torch.ones_like(keep)))(x, reference)
    assert torch.equal(torch.randn(4, generator=shared), torch.randn(4, generator=reference))


def test_the_polish_pass_and_diffpure_change_the_whole_image(unet) -> None:
    x = _images()
    polished = LocalRestorer(unet, LocalRestoreConfig(SIX_BLOCKS, steps=4, polish_noise=0.3, polish_steps=3)).run(
        x, seeded_generators([1, 2, 3], "cpu")
    )
    kept = polished.keep.bool().expand_as(x)
    assert (polished.images[kept] - x[kept]).abs().max() > 0.05, "the pass repaints kept pixels too"
    out = diffpure(unet, x, ZipConfig(steps=3, guidance_power=INF, noise_start=0.3), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and (out - x).abs().mean() > 0.01
    with pytest.raises(ValueError, match="outside_blur"):
        LocalRestoreConfig(outside_blur=3)


def test_a_deterministic_polish_pass_is_the_ddim_walk_from_the_noised_image(unet) -> None:
    """POLISH_ETA = 0: x_t₀ = √ᾱ₀ x + √(1−ᾱ₀) z, then DDIM's eq. 12 with σ = 0 at every step. The pass
    still draws one z per step (the noise contract) but multiplies it by zero, so only the first draw
    shapes the output; η = 1 adds those draws and lands elsewhere."""
    x = _images()
    walk = LocalRestoreConfig.from_zip(ZipConfig(polish_noise=0.3, polish_eta=0.0)).polish_config()
    assert (walk.eta, walk.noise_start, walk.guidance_power) == (0.0, 0.3, INF)
    out = diffpure(unet, x, walk, torch.Generator().manual_seed(7))

    alpha_bars = alphas_cumprod(linear_betas())
    span = round(0.3 * alpha_bars.shape[0])
    visits = [span * i // walk.steps for i in range(walk.steps - 1, -1, -1)] + [-1]  # t = t₀·i/S, then ᾱ(−1) = 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    x_t = math.sqrt(alpha_bar(alpha_bars, visits[0])) * x + math.sqrt(1 - alpha_bar(alpha_bars, visits[0])) * noise
    with torch.inference_mode():
        for t, t_next in itertools.pairwise(visits):
            a_t, a_next = alpha_bar(alpha_bars, t), alpha_bar(alpha_bars, t_next)
            eps = unet(x_t, torch.full((3,), t)).sample
            x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            x_t = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    # The same operations in the same order, so equal but for fp32 rounding: under 1e-5 is ~100 ulps of
    # values in [-1, 1], more than 6 steps of a handful of ops each can add.
    torch.testing.assert_close(out, x_t.clamp(-1, 1), rtol=0, atol=1e-5)
    stochastic = diffpure(unet, x, dataclasses.replace(walk, eta=1.0), torch.Generator().manual_seed(7))
    assert (stochastic - out).abs().max() > 1e-2


def test_from_zip_carries_the_mask_thresholds_into_the_localiser() -> None:
    defaults = LocaliseConfig()  # one source of the defaults: ZipConfig's
    assert (defaults.seed_threshold, defaults.grow_threshold) == (
        ZipConfig.mask_seed_threshold,
        ZipConfig.mask_grow_threshold,
    )
    assert LocalRestoreConfig.from_zip(ZipConfig()).localise == defaults
    local = LocalRestoreConfig.from_zip(ZipConfig(mask_seed_threshold=0.3, mask_grow_threshold=0.6)).localise
    assert (local.seed_threshold, local.grow_threshold) == (0.3, 0.6)
    assert local == dataclasses.replace(LocaliseConfig(), seed_threshold=0.3, grow_threshold=0.6)  # the rest stay


def test_shrink_pad_shrinks_into_a_black_frame_at_a_seeded_offset() -> None:
    x = torch.ones(2, 1, 16, 16)
    first = shrink_pad(x, 2, seeded_generators([1, 2], "cpu"))
    again = shrink_pad(x, 2, seeded_generators([1, 2], "cpu"))
    assert torch.equal(first, again)
    for image in first:
        assert (image == 1).sum() == 12 * 12 and (image == -1).sum() == 16 * 16 - 12 * 12
