"""Loading ε-models from local diffusers directories, and the errors for everything else."""

from __future__ import annotations

import json

import pytest
import torch

from service.purify.models import DType, ModelLoadError, load_eps_model
from tests.tiny_models import tiny_unet


def test_round_trip_through_save_pretrained(tmp_path):
    unet = tiny_unet(channels=1, size=16)
    unet.save_pretrained(tmp_path / "m", safe_serialization=True)
    model = load_eps_model(tmp_path / "m", device="cpu", dtype=DType.FP32)
    assert (model.sample_size, model.channels, model.learned_sigma) == (16, 1, False)
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([10, 500])
    torch.testing.assert_close(model(x, t), unet(x, t).sample)
    assert model.info.dtype == "float32"


def test_learned_sigma_directory_is_detected(tmp_path):
    tiny_unet(channels=3, size=16, out_channels=6).save_pretrained(tmp_path / "m")
    model = load_eps_model(tmp_path / "m", dtype=DType.BF16)
    assert model.learned_sigma and model.dtype == torch.bfloat16
    assert model(torch.randn(1, 3, 16, 16), torch.tensor([3])).shape == (1, 3, 16, 16)


def test_auto_dtype_is_fp16_on_cuda_and_bf16_only_on_native_bf16_cpus(monkeypatch):
    import service.purify.models as models

    assert DType.AUTO.resolve(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert DType.AUTO.resolve("cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert DType.AUTO.resolve("cpu") == torch.float32
    assert DType.FP32.resolve("cuda") == torch.float32


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_eps_model(tmp_path / "nope")


def test_checkpoint_file_points_to_converter(tmp_path):
    checkpoint = tmp_path / "256x256_diffusion_uncond.pt"
    checkpoint.write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="convert adm"):
        load_eps_model(checkpoint)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_eps_model(tmp_path)


def test_wrong_model_class(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ModelLoadError, match="AutoencoderKL"):
        load_eps_model(tmp_path)


def test_corrupt_weights(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_eps_model(tmp_path / "m")


def test_not_an_eps_model(tmp_path):
    tiny_unet(channels=1, out_channels=3).save_pretrained(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="not an ε-prediction"):
        load_eps_model(tmp_path / "m")
