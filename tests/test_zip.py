"""ZipPurifier against the invariants of docs/design.md ("ZIP, step by step"), with random (untrained) models."""

from __future__ import annotations

import math

import pytest
import torch

from service.purify.models import EpsModel
from service.purify.options import ZipConfig
from service.purify.schedule import alpha_bar, alphas_cumprod, linear_betas, timestep_pairs
from service.purify.transforms import Blur, Grayscale, parse_transforms
from service.purify.zip import ZipPurifier
from tests.fp_tolerance import accumulation_depth, reordering_atol
from tests.tiny_models import tiny_unet

INF = float("inf")


@pytest.fixture(scope="module")
def gray_unet():
    return tiny_unet(channels=1, size=16)


@pytest.fixture(scope="module")
def rgb_unet():
    return tiny_unet(channels=3, size=16)


def _batch(channels: int, n: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(("spec", "channels"), [("blur:4", 1), ("blur:2", 3), ("gray", 3), ("blur:4+gray", 3)])
def test_range_of_output_equals_range_of_input(spec, channels, gray_unet, rgb_unet):
    """With one transform and no mix, A x₀ = y at every step, hence A(output) = A(input)."""
    model = gray_unet if channels == 1 else rgb_unet
    x = _batch(channels)
    purifier = ZipPurifier(model, ZipConfig(spec, steps=8, guidance_power=INF), clip=False)
    out = purifier(x, torch.Generator().manual_seed(0))
    (A,) = parse_transforms(spec, channels)
    scale = out.abs().max().item()
    assert scale > 2.0, "a random model should drive x out of [-1, 1]; otherwise this test proves nothing"
    torch.testing.assert_close(A.apply(out), A.apply(x), atol=1e-5 * scale, rtol=0)
    # The null space is the model's: the output is not just the degraded input.
    assert (out - A.pinv(A.apply(x))).abs().max() > 0.1


def test_identity_breaks_with_finite_guidance(gray_unet):
    """The mix step blends in x_t, so the range identity must NOT hold for finite λ (the test can fail)."""
    x = _batch(1)
    purifier = ZipPurifier(gray_unet, ZipConfig("blur:4", steps=8, guidance_power=1.0), clip=False)
    out = purifier(x, torch.Generator().manual_seed(0))
    A = Blur(4)
    assert (A.apply(out) - A.apply(x)).abs().max() > 1e-3


def test_one_step_matches_the_equations_by_hand():
    """A constant-ε model, one step from t to −1: the output is x₀ of step 4, computed here by hand."""
    eps_value = 0.3
    model = lambda x, t: torch.full_like(x, eps_value)  # noqa: E731
    x = _batch(1, n=1, size=8)
    purifier = ZipPurifier(model, ZipConfig("blur:2", steps=1, guidance_power=2.0), clip=False)
    generator = torch.Generator().manual_seed(5)
    out = purifier(x, generator)
    ((t, t_next),) = timestep_pairs(1)
    assert (t, t_next) == (0, -1)
    a = alpha_bar(alphas_cumprod(linear_betas()), t)
    x_T = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    A = Blur(2)
    eps = torch.full_like(x, eps_value)
    x_hat = math.sqrt(a) * A.pinv(A.apply(x)) + x_T - A.pinv(A.apply(x_T)) + math.sqrt(1 - a) * A.pinv(A.apply(eps))
    w = a**2.0
    x_hat = (1 - w) * x_hat + w * x_T
    expected = (x_hat - math.sqrt(1 - a) * eps) / math.sqrt(a)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_two_transforms_are_averaged_not_composed():
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = _batch(3, n=1, size=8)
    averaged = ZipPurifier(model, ZipConfig("blur:2,gray", steps=1, guidance_power=INF), clip=False)(
        x, torch.Generator().manual_seed(0)
    )
    composed = ZipPurifier(model, ZipConfig("blur:2+gray", steps=1, guidance_power=INF), clip=False)(
        x, torch.Generator().manual_seed(0)
    )
    # ε = 0, one step to −1 with ᾱ_0 ≈ 1: x₀ ≈ mean_k (A_k⁺y_k + x_T − A_k⁺A_k x_T)
    x_T = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    a = alpha_bar(alphas_cumprod(linear_betas()), 0)
    parts = [math.sqrt(a) * A.pinv(A.apply(x)) + x_T - A.pinv(A.apply(x_T)) for A in (Blur(2), Grayscale(3))]
    torch.testing.assert_close(averaged, (parts[0] + parts[1]) / 2 / math.sqrt(a), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(averaged, composed, atol=1e-3)


def test_same_seed_same_output_and_different_seed_differs(gray_unet):
    x = _batch(1)
    purifier = ZipPurifier(gray_unet, ZipConfig("blur:4", steps=5))
    a = purifier(x, torch.Generator().manual_seed(3))
    b = purifier(x, torch.Generator().manual_seed(3))
    c = purifier(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_noise_contract_draw_order(gray_unet):
    """x_T first, then one z per step: a model that sees x_T can check it is the generator's first draw."""
    seen: list[torch.Tensor] = []

    def spy(x, t):
        seen.append(x.clone())
        return torch.zeros_like(x)

    x = _batch(1)
    ZipPurifier(spy, ZipConfig("blur:4", steps=4))(x, torch.Generator().manual_seed(9))
    reference = torch.Generator().manual_seed(9)
    assert torch.equal(seen[0], torch.randn(x.shape, generator=reference))
    assert len(seen) == 4


def test_batch_equals_single_runs_with_per_item_generators(gray_unet):
    x = _batch(1, n=3)
    purifier = ZipPurifier(gray_unet, ZipConfig("blur:4", steps=5))
    batch = purifier(x, [torch.Generator().manual_seed(100 + i) for i in range(3)])
    singles = torch.cat([purifier(x[i : i + 1], torch.Generator().manual_seed(100 + i)) for i in range(3)])
    # Batched convolutions add their terms in another order: 5 model calls' worth of fp32 reordering at most.
    atol = reordering_atol(accumulation_depth(gray_unet, calls=5), singles.abs().max().item())
    torch.testing.assert_close(batch, singles, atol=atol, rtol=0)


def test_bf16_model_stays_close_to_fp32(gray_unet):
    """bf16 rounds ε to ~3 significant digits; with η = 0 the unclipped output stays within 5% of its scale."""
    x = _batch(1, n=2)
    fp32 = EpsModel(tiny_unet(channels=1, size=16), "fp32", dtype=torch.float32)
    bf16 = EpsModel(tiny_unet(channels=1, size=16), "bf16", dtype=torch.bfloat16)
    config = ZipConfig("blur:2", steps=6, eta=0.0)
    a = ZipPurifier(fp32, config, clip=False)(x, torch.Generator().manual_seed(0))
    b = ZipPurifier(bf16, config, clip=False)(x, torch.Generator().manual_seed(0))
    scale = a.abs().max().item()
    assert 0 < (a - b).abs().max().item() < 0.05 * scale
    assert (a - b).abs().mean().item() < 0.01 * scale


def test_learned_variance_model_uses_first_c_channels():
    unet = tiny_unet(channels=1, size=16, out_channels=2)
    x = _batch(1)
    out = ZipPurifier(unet, ZipConfig("blur:4", steps=4, guidance_power=INF), clip=False)(
        x, torch.Generator().manual_seed(0)
    )
    assert out.shape == x.shape
    torch.testing.assert_close(Blur(4).apply(out), Blur(4).apply(x), atol=1e-4 * out.abs().max().item(), rtol=0)
    wrapped = EpsModel(unet, "learned-sigma")
    assert wrapped.learned_sigma
    assert wrapped(x, torch.zeros(2, dtype=torch.long)).shape == x.shape


def test_time_travel_runs_and_keeps_range_identity(gray_unet):
    x = _batch(1)
    config = ZipConfig("blur:4", steps=6, travel_length=2, travel_repeat=2, guidance_power=INF)
    purifier = ZipPurifier(gray_unet, config, clip=False)
    out = purifier(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(Blur(4).apply(out), Blur(4).apply(x), atol=1e-5 * out.abs().max().item(), rtol=0)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(1, 16, 16), "batch"),
        (torch.zeros(0, 1, 16, 16), "empty"),
        (torch.zeros(1, 3, 16, 16), "channels"),
        (torch.full((1, 1, 16, 16), float("nan")), "NaN"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.uint8), "float"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, message, gray_unet):
    with pytest.raises(ValueError, match=message):
        ZipPurifier(gray_unet, ZipConfig("blur:4", steps=2))(x)


def test_bad_construction_arguments(gray_unet):
    with pytest.raises(ValueError, match="guidance_power"):
        ZipPurifier(gray_unet, ZipConfig("blur:4", guidance_power=0))
    with pytest.raises(ValueError, match="eta"):
        ZipPurifier(gray_unet, ZipConfig("blur:4", eta=2))
    with pytest.raises(ValueError, match="unknown transform"):
        ZipPurifier(gray_unet, ZipConfig("sharpen:2"))
    with pytest.raises(ValueError, match="divisible"):
        ZipPurifier(gray_unet, ZipConfig("blur:3", steps=2))(_batch(1))


def test_noise_start_begins_from_the_noised_input():
    """t* < T: the first ε call sees √ᾱ x + √(1−ᾱ) z at the first grid time, z the generator's first draw."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(x, t):
        seen.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    x = _batch(1)
    ZipPurifier(spy, ZipConfig("blur:4", steps=4, noise_start=0.4))(x, torch.Generator().manual_seed(9))
    (t0, _), *_ = timestep_pairs(4, num_timesteps=400)
    assert t0 == 300 and int(seen[0][1][0]) == 300, "the 4 steps must cover [0, 400) only"
    assert max(int(t[0]) for _, t in seen) < 400
    a = alpha_bar(alphas_cumprod(linear_betas()), t0)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(seen[0][0], math.sqrt(a) * x + math.sqrt(1 - a) * z)


def test_noise_start_one_is_the_pure_noise_start(gray_unet):
    x = _batch(1)
    default = ZipPurifier(gray_unet, ZipConfig("blur:4", steps=5))(x, torch.Generator().manual_seed(2))
    explicit = ZipPurifier(gray_unet, ZipConfig("blur:4", steps=5, noise_start=1.0))(
        x, torch.Generator().manual_seed(2)
    )
    assert torch.equal(default, explicit)


def test_noise_start_keeps_more_of_the_input_than_pure_noise(gray_unet):
    """Monotone sanity: a low t* with a zero-ε model returns nearly the input; t* = 1 does not."""
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = _batch(1)
    low = ZipPurifier(model, ZipConfig("blur:4", steps=5, guidance_power=INF, noise_start=0.05))(
        x, torch.Generator().manual_seed(0)
    )
    full = ZipPurifier(model, ZipConfig("blur:4", steps=5, guidance_power=INF))(x, torch.Generator().manual_seed(0))
    assert (low - x).abs().mean() < (full - x).abs().mean()


@pytest.mark.parametrize("noise_start", [0.0, -0.1, 1.5, float("nan")])
def test_bad_noise_start_is_refused(noise_start, gray_unet):
    with pytest.raises(ValueError, match="noise_start"):
        ZipPurifier(gray_unet, ZipConfig("blur:4", steps=5, noise_start=noise_start))


def test_the_purifier_defaults_to_the_products_knobs(gray_unet):
    """One source of truth: without a config, ZipPurifier runs ZipConfig's defaults (λ = 0.25, as the gateway)."""
    purifier = ZipPurifier(gray_unet)
    assert purifier.config == ZipConfig() and purifier.config.guidance_power == 0.25
    steps = ZipConfig.steps  # the product's S (10 since METHOD=local is the default)
    assert (purifier.steps, purifier.noise_start, len(purifier.pairs)) == (steps, 1.0, steps)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"guidance_power": float("nan")}, "guidance_power"),
        ({"eta": -0.1}, "eta"),
        ({"travel_length": 0}, "travel_length"),
        ({"transforms": " "}, "empty"),
        ({"noise_start": 0.0}, "noise_start"),
    ],
)
def test_zip_config_is_validated_once_at_construction(knobs, message):
    with pytest.raises(ValueError, match=message):
        ZipConfig(**knobs)
    assert ZipConfig(guidance_power=INF).guidance_power == INF  # inf switches the mix off; it is allowed
