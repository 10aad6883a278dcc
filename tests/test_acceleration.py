"""Engine acceleration: channels-last and torch.compile of the UNet, with batches padded to the
compiled bucket sizes and every bucket compiled in the warm-up (before the worker is ready).

The compile tests use torch.compile's "eager" backend: TorchDynamo captures the graph per batch
size exactly as with inductor, without generating kernels, so they check the wiring in seconds;
what compiling buys is measured by bench/gpu.sh on a GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from service.config import Settings
from service.purify.models import EpsModel, load_eps_model
from service.purify.options import Acceleration, CompileMode, DType, Method, ZipConfig
from service.purify.seeds import seeded_generators
from service.workers.purifier import ZipBatchPurifier, batch_buckets, zip_purifier_factory
from tests.fp_tolerance import accumulation_depth, reordering_atol
from tests.tiny_models import tiny_unet

EAGER_COMPILE = Acceleration(compile_mode=CompileMode.DEFAULT, compile_backend="eager")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("accel") / "tiny"
    tiny_unet(channels=1, size=16).save_pretrained(path)
    return path


class RecordingEps(EpsModel):
    """An EpsModel that records the batch size of every forward."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return super().__call__(x, t)


@pytest.mark.parametrize(("largest", "buckets"), [(1, (1,)), (16, (1, 2, 4, 8, 16)), (12, (1, 2, 4, 8, 12))])
def test_buckets_are_powers_of_two_up_to_the_largest_batch(largest: int, buckets: tuple[int, ...]) -> None:
    assert batch_buckets(largest) == buckets


def test_buckets_need_a_positive_batch() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        batch_buckets(0)


def test_channels_last_gives_the_same_eps(tiny_dir: Path) -> None:
    plain = load_eps_model(tiny_dir)
    nhwc = load_eps_model(tiny_dir, acceleration=Acceleration(channels_last=True))
    x, t = torch.rand(3, 1, 16, 16) * 2 - 1, torch.tensor([10, 500, 999])
    assert nhwc.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    want = plain(x, t)
    # NHWC kernels add the same terms in another order (fp_tolerance.py).
    atol = reordering_atol(accumulation_depth(plain.unet), want.abs().max().item())
    torch.testing.assert_close(nhwc(x, t), want, atol=atol, rtol=0)


def test_a_padded_compiled_batch_equals_the_plain_run_with_the_same_seeds(tiny_dir: Path) -> None:
    from service.purify.models import load_unet

    config = ZipConfig("blur:2", steps=3, method=Method.GLOBAL)
    plain = ZipBatchPurifier(load_eps_model(tiny_dir), config)
    compiled_model = RecordingEps(load_unet(tiny_dir), "tiny", acceleration=EAGER_COMPILE)
    compiled = ZipBatchPurifier(compiled_model, config, buckets=(1, 2, 4))
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    want = plain(x, 3, seeded_generators([5, 6, 7], "cpu"))
    got = compiled(x, 3, seeded_generators([5, 6, 7], "cpu"))
    assert got.shape == want.shape == x.shape
    # The padding image changes nothing beyond the order of the batched sums, over 3 model calls.
    atol = reordering_atol(accumulation_depth(compiled_model.unet, calls=3), want.abs().max().item())
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert set(compiled_model.batch_sizes) == {4}  # 3 images ran as the bucket of 4
    assert compiled(x[:1], 3, None).shape == (1, 1, 16, 16)


def test_a_compiled_model_restores_the_whole_batch_even_where_masks_are_empty(tiny_dir: Path) -> None:
    from service.purify.local_restore import LocalRestoreConfig, LocalRestorer
    from service.purify.models import load_unet

    compiled_model = RecordingEps(load_unet(tiny_dir), "tiny", acceleration=EAGER_COMPILE)
    assert compiled_model.static_batch and not load_eps_model(tiny_dir).static_batch
    keep = torch.ones(4, 1, 16, 16)
    keep[0, :, :4, :4] = 0.0  # one masked image among four
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    restorer = LocalRestorer(compiled_model, LocalRestoreConfig(steps=2))
    restorer.restore(x, keep, seeded_generators([1, 2, 3, 4], "cpu"))
    assert compiled_model.batch_sizes == [4, 4], "a batch of one would be a shape the warm-up never compiled"


def test_the_factory_compiles_every_bucket_before_it_returns(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    factory = zip_purifier_factory(
        tiny_dir, ZipConfig("blur:2", steps=2, method=Method.GLOBAL), DType.FP32, EAGER_COMPILE, max_batch_size=4
    )
    with caplog.at_level(logging.INFO, logger="service.workers.purifier"):
        purifier = factory("cpu")
    assert isinstance(purifier, ZipBatchPurifier) and purifier.buckets == (1, 2, 4)
    assert purifier.model._forward is not purifier.model.unet  # the compiled module runs
    (warm_up,) = [record for record in caplog.records if "warm-up on cpu" in record.getMessage()]
    # Fields, not a dataclass's repr: the message names them, the JSON log line carries them.
    assert "Acceleration(" not in warm_up.getMessage() and "compile_mode default" in warm_up.getMessage()
    assert (warm_up.compile_mode, warm_up.channels_last) == ("default", False)  # type: ignore[attr-defined]
    assert purifier(torch.zeros(3, 1, 16, 16), 2, None).shape == (3, 1, 16, 16)


def test_without_compile_batches_run_at_their_own_size(tiny_dir: Path) -> None:
    factory = zip_purifier_factory(
        tiny_dir, ZipConfig("blur:2", steps=2, method=Method.GLOBAL), DType.FP32, max_batch_size=8
    )
    purifier = factory("cpu")
    assert isinstance(purifier, ZipBatchPurifier) and purifier.buckets is None
    assert purifier.model._forward is purifier.model.unet


def test_settings_carry_the_acceleration() -> None:
    settings = Settings(compile_mode="reduce-overhead", channels_last=True)
    assert settings.acceleration == Acceleration(channels_last=True, compile_mode=CompileMode.REDUCE_OVERHEAD)
    with pytest.raises(ValueError, match="compile_mode"):
        Settings(compile_mode="fastest")
