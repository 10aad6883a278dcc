"""Every seed the gateway accepts (0 … 2⁶³−1) draws its own noise: torch's CPU generator keeps only the
low 32 bits of a seed, so `generator_seed` folds the high bits in (and CUDA's takes all 64 as they are)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.api.deps import MAX_SEED
from service.defense_eval.defenses import item_seed
from service.purify.seeds import SEED_MASK, canvas_seeds, generator_seed, seeded_generators, vote_canvas_seeds
from tests.gateway_servers import TINY_SIZE, gateway_settings, png_bytes, running_gateway, tiny_ddpm_dir


def noise(seed: int) -> torch.Tensor:
    """What a purification seeded `seed` draws first, on the CPU."""
    (generator,) = seeded_generators([seed], "cpu")
    return torch.randn(64, generator=generator)


def test_the_cpu_generator_alone_wraps_at_2_to_the_32() -> None:
    # The reason for generator_seed: handed the seeds as they are, mt19937 cannot tell them apart.
    plain = [torch.randn(64, generator=torch.Generator().manual_seed(s)) for s in (7, 7 + (1 << 32))]
    assert torch.equal(*plain)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (0, 1 << 32),
        (7, 7 + (5 << 32)),
        ((1 << 32) - 1, (1 << 33) - 1),
        (MAX_SEED, MAX_SEED - (1 << 62)),
        (MAX_SEED, MAX_SEED & ((1 << 32) - 1)),
    ],
)
def test_seeds_that_differ_only_above_bit_32_draw_different_noise(a: int, b: int) -> None:
    assert a & 0xFFFFFFFF == b & 0xFFFFFFFF and a != b
    assert not torch.equal(noise(a), noise(b))


@pytest.mark.parametrize("seed", [0, 1, 12345, (1 << 32) - 1])
def test_seeds_the_cpu_generator_honoured_keep_their_noise(seed: int) -> None:
    assert generator_seed(seed, "cpu") == seed
    assert torch.equal(noise(seed), torch.randn(64, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("seed", [0, 3, 1 << 32, (1 << 40) + 17, MAX_SEED])
def test_the_same_seed_draws_the_same_noise(seed: int) -> None:
    assert torch.equal(noise(seed), noise(seed))
    assert 0 <= generator_seed(seed, "cpu") < 1 << 32


def test_seeds_are_reduced_modulo_2_to_the_64_first() -> None:
    assert torch.equal(noise(5 + (1 << 64)), noise(5))
    assert generator_seed((1 << 64) + 9, "cpu") == generator_seed(9, "cpu")


def test_other_devices_get_the_whole_64_bit_seed() -> None:
    # CUDA's (and MPS's) Philox generator honours all 64 bits: nothing to fold.
    for seed in (0, 1 << 32, MAX_SEED, MAX_SEED + (20 << 20)):
        assert generator_seed(seed, "cuda") == generator_seed(seed, torch.device("cuda", 0)) == seed & SEED_MASK


@pytest.mark.parametrize("base", [0, (1 << 32) - 5, (1 << 40) + 3, MAX_SEED - (8 << 20), (9 << 32) - 100])
def test_a_requests_derived_seeds_stay_distinct(base: int) -> None:
    seeds = vote_canvas_seeds(base, votes=8, count=64)  # the gateway's votes × canvases
    assert len(set(seeds)) == len(seeds)
    folded = [generator_seed(s, "cpu") for s in seeds]
    assert len(set(folded)) == len(folded)
    assert [generator_seed(s, "cpu") for s in canvas_seeds(base, 64)] == folded[:64]


def test_the_evaluations_seeds_draw_different_noise_per_seed() -> None:
    # defense_eval puts --seed above bit 32 (item_seed = seed << 32 | vote << 20 | position): on the CPU
    # every --seed used to draw seed 0's noise.
    firsts = [noise(item_seed(seed, 0, 0)) for seed in range(4)]
    assert all(not torch.equal(firsts[i], firsts[j]) for i in range(4) for j in range(i + 1, 4))
    folded = {
        generator_seed(item_seed(seed, vote, pos), "cpu") for seed in range(3) for vote in range(3) for pos in range(50)
    }
    assert len(folded) == 3 * 3 * 50


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_noise_is_deterministic_and_distinct_above_bit_32() -> None:
    def cuda_noise(seed: int) -> torch.Tensor:
        (generator,) = seeded_generators([seed], "cuda")
        return torch.randn(64, generator=generator, device="cuda").cpu()

    assert torch.equal(cuda_noise(1 << 32), cuda_noise(1 << 32))
    assert not torch.equal(cuda_noise(0), cuda_noise(1 << 32))


# --- through the gateway: `?seed=` -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ddpm: Path = tiny_ddpm_dir(tmp_path_factory.mktemp("models"))
    with running_gateway(gateway_settings(ddpm, "http://127.0.0.1:9")) as url:
        yield url


def purified(url: str, seed: int) -> np.ndarray:
    response = httpx.post(
        f"{url}/purify",
        params={"seed": seed},
        content=png_bytes(TINY_SIZE, TINY_SIZE, seed=11),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_gateway_seeds_2_to_the_32_apart_purify_differently(gateway: str) -> None:
    assert not np.array_equal(purified(gateway, 0), purified(gateway, 1 << 32))
    assert np.array_equal(purified(gateway, 1 << 32), purified(gateway, 1 << 32))
    assert not np.array_equal(purified(gateway, MAX_SEED), purified(gateway, MAX_SEED & 0xFFFFFFFF))
