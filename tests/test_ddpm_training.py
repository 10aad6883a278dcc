"""The DDPM trainer (a few steps on a few images) and the sample-quality score."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from service.backdoor.classifier import VendorClassifier
from service.backdoor.data import load_split
from service.purify.models import load_eps_model
from service.purify.schedule import alphas_cumprod, linear_betas
from service.training.ddpm import (
    DDPMTrainConfig,
    UNetArchitecture,
    ddpm_loss,
    stop_signals_save,
    train_ddpm,
    update_ema,
)
from service.training.ddpm_quality import sample_ddim, score_samples
from tests.tiny_models import tiny_unet

TINY = UNetArchitecture(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=8)


def test_default_architecture_is_the_documented_one():
    unet = UNetArchitecture().build()
    assert unet.config.sample_size == 32 and unet.config.in_channels == unet.config.out_channels == 1
    assert 3.5e6 < sum(p.numel() for p in unet.parameters()) < 4.5e6


def test_loss_is_noise_prediction_error():
    """A model that outputs the true noise would score 0: check the loss against a hand computation."""
    unet = tiny_unet(channels=1, size=16)
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    table = alphas_cumprod(linear_betas())
    loss = ddpm_loss(unet, x0, table, torch.Generator().manual_seed(0), bf16_autocast=False)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = table[t].float().view(4, 1, 1, 1)
    expected = ((unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample - noise) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_ema_update_moves_toward_the_model():
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    update_ema(ema, model, decay=0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight.detach())


@pytest.mark.slow
def test_tiny_training_run_exports_loadable_weights_and_resumes(tmp_path):
    config = DDPMTrainConfig(
        out_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "ckpt",
        max_steps=2,
        batch_size=8,
        train_limit=32,
        architecture=TINY,
        bf16_autocast=False,
    )
    train_ddpm(config)
    model = load_eps_model(tmp_path / "out")
    assert model.sample_size == 32 and model.channels == 1
    state = json.loads((tmp_path / "out" / "training_state.json").read_text())
    assert state["total_steps"] == 2
    # A second run resumes from the crash-recovery checkpoint, not from step 0; max_steps counts this run.
    train_ddpm(DDPMTrainConfig(**{**config.__dict__, "max_steps": 3}))
    resumed = json.loads((tmp_path / "out" / "training_state.json").read_text())
    assert (resumed["steps_this_run"], resumed["total_steps"]) == (3, 5)
    # Time adds up over runs: bookkeeping only, never how long a step took (a fast step may add 0.0).
    assert resumed["seconds_this_run"] >= 0
    assert resumed["total_seconds"] == pytest.approx(state["total_seconds"] + resumed["seconds_this_run"], abs=2e-3)
    # --init continues from shipped weights (no checkpoint), counting steps and time across sessions.
    train_ddpm(
        DDPMTrainConfig(
            **{
                **config.__dict__,
                "init_dir": tmp_path / "out",
                "out_dir": tmp_path / "next",
                "checkpoint_dir": tmp_path / "fresh",
                "max_steps": 1,
            }
        )
    )
    continued = json.loads((tmp_path / "next" / "training_state.json").read_text())
    assert continued["total_steps"] == 6 and continued["seconds_this_run"] >= 0
    assert continued["total_seconds"] == pytest.approx(
        resumed["total_seconds"] + continued["seconds_this_run"], abs=2e-3
    )


def test_sampler_and_score_shapes():
    from service.purify.models import EpsModel

    model = EpsModel(tiny_unet(channels=1, size=32), "tiny")
    samples = sample_ddim(model, 3, steps=2, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 32, 32) and samples.abs().max() <= 1
    score, grid = score_samples(model, VendorClassifier().eval(), count=20, steps=2, batch_size=10)
    assert abs(sum(score.class_histogram.values()) - 1) < 1e-3
    assert 0.1 <= score.mean_max_softmax <= 1 and grid.shape == (20, 1, 32, 32)


SHIPPED_DDPM = Path(__file__).resolve().parents[1] / "models" / "fmnist-ddpm"


def test_shipped_ddpm_is_trained_documented_and_scored():
    """The shipped weights load as the default architecture, denoise real test images, and the
    card reports what training_state.json and quality.json record."""
    model = load_eps_model(SHIPPED_DDPM)
    assert (model.sample_size, model.channels) == (32, 1)
    assert (SHIPPED_DDPM / "diffusion_pytorch_model.safetensors").stat().st_size <= 25 * 10**6
    state = json.loads((SHIPPED_DDPM / "training_state.json").read_text())
    quality = json.loads((SHIPPED_DDPM / "quality.json").read_text())
    card = (SHIPPED_DDPM / "MODEL_CARD.md").read_text()
    assert f"{state['total_steps']:,}" in card and f"{quality['mean_max_softmax']:.3f}" in card
    assert quality["min_class_fraction"] >= 0.03 and (SHIPPED_DDPM / "samples.png").is_file()
    # Trained, not random: at t = 300 the ε prediction is far better than guessing zero (MSE 1).
    x0 = load_split(train=False).subset(16).images
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator)
    a = alphas_cumprod(linear_betas())[300].float()
    t = torch.full((16,), 300, dtype=torch.long)
    with torch.inference_mode():
        mse = ((model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).float() - noise) ** 2).mean().item()
    assert mse < 0.1  # 0.026 for the 2,463-step weights; 1.09 for a random init


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signals_interrupt_training_even_when_sigint_was_ignored(sig):
    """A background job inherits SIGINT ignored: inside the loop both signals must still interrupt (and save)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), stop_signals_save():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the signal interrupts this; reaching the end means it did not
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # handlers come back
    finally:
        signal.signal(signal.SIGINT, previous)


def test_train_ddpm_refuses_to_replace_the_shipped_model_it_does_not_continue(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app

    # A stand-in for the shipped model under ZIPGATE_HOME: should the guard fail, the real one stays intact.
    shipped = tmp_path / "home" / "models" / "fmnist-ddpm"
    tiny_unet(channels=1, size=16).save_pretrained(shipped)
    before = {path.name: path.stat().st_mtime_ns for path in shipped.iterdir()}
    monkeypatch.setenv("ZIPGATE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # the default --out names the shipped model from any directory
    result = CliRunner().invoke(app, ["train", "ddpm", "--max-steps", "1", "--train-limit", "8", "--batch-size", "4"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "already holds a model" in message and "--overwrite" in message and "--init models/fmnist-ddpm" in message
    assert {path.name: path.stat().st_mtime_ns for path in shipped.iterdir()} == before


def test_overwrite_problem_allows_continuing_the_same_model_or_an_explicit_overwrite(tmp_path, monkeypatch):
    from service.cli_models import DEFAULT_MODEL, overwrite_problem

    monkeypatch.chdir(tmp_path)
    shipped = Path(__file__).resolve().parents[1] / DEFAULT_MODEL
    assert overwrite_problem(DEFAULT_MODEL, None, overwrite=False) is not None
    assert overwrite_problem(DEFAULT_MODEL, tmp_path / "other", overwrite=False) is not None
    assert overwrite_problem(DEFAULT_MODEL, DEFAULT_MODEL, overwrite=False) is None  # README's continue command
    assert overwrite_problem(shipped, DEFAULT_MODEL, overwrite=False) is None  # the same folder, spelt otherwise
    assert overwrite_problem(DEFAULT_MODEL, None, overwrite=True) is None
    assert overwrite_problem(tmp_path / "new-model", None, overwrite=False) is None  # nothing there to lose
