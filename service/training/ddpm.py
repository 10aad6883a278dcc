"""Train the shipped Fashion-MNIST DDPM (diffusers UNet2DModel, ε-prediction, linear betas)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from tqdm import tqdm

from service.backdoor.data import PADDED_SIZE, load_split
from service.purify.schedule import alphas_cumprod, linear_betas
from service.signals import stop_signals_handled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UNetArchitecture:
    """The default model's shape: 3.9M parameters, attention at 8² (benchmarked in MODEL_CARD.md)."""

    sample_size: int = PADDED_SIZE
    channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 2
    attention_at_lowest: bool = True
    norm_num_groups: int = 8
    attention_head_dim: int = 32

    def build(self) -> UNet2DModel:
        """A fresh, randomly initialised UNet2DModel with this shape."""
        levels = len(self.block_out_channels)
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if self.attention_at_lowest:
            down[-1] = "AttnDownBlock2D"
            up[0] = "AttnUpBlock2D"
        return UNet2DModel(
            sample_size=self.sample_size,
            in_channels=self.channels,
            out_channels=self.channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=self.norm_num_groups,
            attention_head_dim=self.attention_head_dim,
        )


@dataclass(frozen=True)
class DDPMTrainConfig:
    """Everything that decides a training run; written beside the weights for the model card."""

    out_dir: Path = Path("models/fmnist-ddpm")
    init_dir: Path | None = None
    checkpoint_dir: Path = Path(".cache/ddpm-checkpoint")
    minutes: float = 60.0
    max_steps: int | None = None
    batch_size: int = 128
    learning_rate: float = 3e-4
    warmup_steps: int = 200
    ema_decay: float = 0.9995
    grad_clip: float = 1.0
    seed: int = 0
    bf16_autocast: bool = True
    export_every_minutes: float = 10.0
    horizontal_flip: bool = True
    train_limit: int | None = None
    architecture: UNetArchitecture = field(default_factory=UNetArchitecture)


def ddpm_loss(
    model: UNet2DModel, x0: torch.Tensor, alpha_bars: torch.Tensor, generator: torch.Generator, bf16_autocast: bool
) -> torch.Tensor:
    """Simple DDPM loss: ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖² with t uniform in 0..T−1."""
    n = x0.shape[0]
    t = torch.randint(0, alpha_bars.shape[0], (n,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    a = alpha_bars[t].float().view(n, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
        predicted = model(x_t, t).sample
    return F.mse_loss(predicted.float(), noise)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter."""
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param, 1.0 - decay)


def _save_checkpoint(path: Path, model, ema, optimizer, step: int, epoch: int, total_seconds: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.pt.tmp"
    torch.save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "total_seconds": total_seconds,
        },
        tmp,
    )
    tmp.replace(path / "state.pt")  # atomic: a crash mid-write keeps the previous checkpoint


def _export(
    ema: UNet2DModel,
    config: DDPMTrainConfig,
    steps_this_run: int,
    total_steps: int,
    seconds: float,
    total_seconds: float,
    losses: list[float],
) -> None:
    ema.save_pretrained(config.out_dir, safe_serialization=True)
    summary = {
        "steps_this_run": steps_this_run,
        "total_steps": total_steps,
        # Milliseconds: rounding to tenths made a fast run add 0.0 and lost up to 0.05 s a session.
        "seconds_this_run": round(seconds, 3),
        "total_seconds": round(total_seconds, 3),
        "recent_loss": round(sum(losses[-200:]) / max(1, len(losses[-200:])), 5),
        "config": {k: str(v) for k, v in asdict(config).items()},
    }
    (config.out_dir / "training_state.json").write_text(json.dumps(summary, indent=2))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def stop_signals_save() -> Iterator[None]:
    """SIGINT and SIGTERM end training as Ctrl-C does (the loop saves), then the old handlers return.

    A job started in the background (`cmd &` from a script) inherits SIGINT *ignored*, so without
    this neither Ctrl-C nor `kill -INT` could stop it with a save; SIGTERM (kill, a container
    stop) would lose everything since the last export.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with stop_signals_handled(_raise_interrupt):
        yield


@dataclass
class _TrainingRun:
    """One run's model, EMA, optimizer and counters: what the loop advances and the final save writes.

    Kept in one mutable object so that a Ctrl-C anywhere in the loop leaves the counters exactly
    where the interrupted step left them, for the save that follows.
    """

    config: DDPMTrainConfig
    model: UNet2DModel
    ema: UNet2DModel
    optimizer: torch.optim.Optimizer
    alpha_bars: torch.Tensor
    generator: torch.Generator
    step: int  # every step the weights have had, over all runs
    epoch: int
    first_step: int  # `step` when this run began
    prior_seconds: float  # training time of the earlier runs
    start: float = 0.0  # time.monotonic() when this run's loop began
    last_export: float = 0.0
    losses: list[float] = field(default_factory=list)


def _training_images(config: DDPMTrainConfig) -> torch.Tensor:
    """The Fashion-MNIST training split, cut to `config.train_limit` images where one is set."""
    data = load_split(train=True).images
    if config.train_limit:
        data = data[: config.train_limit]
    return data


def _initial_model(config: DDPMTrainConfig) -> UNet2DModel:
    """The weights in `config.init_dir` where one is given, else a fresh model of the configured shape."""
    if config.init_dir is not None:
        return UNet2DModel.from_pretrained(config.init_dir, local_files_only=True).float()
    return config.architecture.build()


def _resume_counters(
    config: DDPMTrainConfig, model: UNet2DModel, ema: UNet2DModel, optimizer: torch.optim.Optimizer
) -> tuple[int, int, float]:
    """Load the crash-recovery checkpoint if there is one, else read the shipped model's counters.

    Returns:
        (step, epoch, prior_seconds): zeros for a fresh model. A checkpoint also restores the
        model, EMA and optimizer state; continuing `init_dir` only carries its step and time totals.
    """
    state_path = config.checkpoint_dir / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        log.info("resumed from %s at step %d", state_path, state["step"])
        return state["step"], state["epoch"], state.get("total_seconds", 0.0)
    if config.init_dir is not None and (config.init_dir / "training_state.json").exists():
        shipped = json.loads((config.init_dir / "training_state.json").read_text())
        return shipped.get("total_steps", 0), 0, shipped.get("total_seconds", 0.0)
    return 0, 0, 0.0


def _start_run(config: DDPMTrainConfig, generator: torch.Generator) -> _TrainingRun:
    """Build the model, its EMA copy and the optimizer, and continue the counters where they stood."""
    alpha_bars = alphas_cumprod(linear_betas())
    model = _initial_model(config)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    step, epoch, prior_seconds = _resume_counters(config, model, ema, optimizer)
    return _TrainingRun(config, model, ema, optimizer, alpha_bars, generator, step, epoch, step, prior_seconds)


def _random_flip(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability ½ (the augmentation `horizontal_flip` turns on)."""
    flip = torch.rand(x0.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)


def _optimise_step(run: _TrainingRun, x0: torch.Tensor) -> None:
    """One optimizer step on the batch `x0`, then the EMA update; advances `run.step` and `run.losses`."""
    config = run.config
    for group in run.optimizer.param_groups:
        # Warm-up at the start of every run: the optimizer state may be new (--init).
        group["lr"] = config.learning_rate * min(1.0, (run.step - run.first_step + 1) / config.warmup_steps)
    loss = ddpm_loss(run.model, x0, run.alpha_bars, run.generator, config.bf16_autocast)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    # EMA warm-up over the total step count: early on, the random init would dominate.
    decay = min(config.ema_decay, (1 + run.step) / (10 + run.step))
    update_ema(run.ema, run.model, decay)
    run.step += 1
    run.losses.append(loss.item())


def _append_loss_log(loss_log: Path, run: _TrainingRun) -> None:
    """Append the mean loss of the last 50 steps to `loss.jsonl` (one JSON object a line)."""
    with loss_log.open("a") as handle:
        handle.write(
            json.dumps(
                {
                    "step": run.step,
                    "epoch": run.epoch,
                    "time_s": round(run.prior_seconds + time.monotonic() - run.start, 1),
                    "loss": sum(run.losses[-50:]) / 50,
                }
            )
            + "\n"
        )


def _save_and_export(run: _TrainingRun, seconds: float, total_seconds: float) -> None:
    """Write the crash-recovery checkpoint, then export the EMA weights and `training_state.json`.

    Args:
        seconds: this run's training time so far.
        total_seconds: the training time over all runs (the caller's sum, as it rounds it).
    """
    _save_checkpoint(run.config.checkpoint_dir, run.model, run.ema, run.optimizer, run.step, run.epoch, total_seconds)
    _export(run.ema, run.config, run.step - run.first_step, run.step, seconds, total_seconds, run.losses)


def _train_until_done(run: _TrainingRun, data: torch.Tensor, progress: tqdm, loss_log: Path) -> None:
    """Train epoch after epoch until the time or step budget is spent, exporting every so often.

    The epoch in which the budget runs out still counts as one (`run.epoch` advances past it).
    """
    config = run.config
    done = False
    while not done:
        order = torch.randperm(data.shape[0], generator=run.generator)
        for batch_start in range(0, data.shape[0], config.batch_size):
            x0 = data[order[batch_start : batch_start + config.batch_size]]
            if config.horizontal_flip:
                x0 = _random_flip(x0, run.generator)
            _optimise_step(run, x0)
            progress.update(1)
            progress.set_postfix(epoch=run.epoch, loss=f"{sum(run.losses[-50:]) / len(run.losses[-50:]):.4f}")
            if run.step % 50 == 0:
                _append_loss_log(loss_log, run)
            now = time.monotonic()
            if now - run.last_export > config.export_every_minutes * 60:
                _save_and_export(run, now - run.start, run.prior_seconds + now - run.start)
                run.last_export = now
            if (now - run.start) > config.minutes * 60 or (
                config.max_steps and run.step - run.first_step >= config.max_steps
            ):
                done = True
                break
        run.epoch += 1


def train_ddpm(config: DDPMTrainConfig) -> Path:
    """Train (or continue training) the DDPM and export the EMA weights to `config.out_dir`.

    Continues from, in order of preference: the crash-recovery checkpoint in `checkpoint_dir`,
    the weights in `init_dir` (model and EMA both start from them), or a fresh model.

    Returns:
        The export directory.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    data = _training_images(config)
    run = _start_run(config, generator)

    config.out_dir.mkdir(parents=True, exist_ok=True)
    loss_log = config.checkpoint_dir / "loss.jsonl"
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    run.start = run.last_export = time.monotonic()
    steps_per_epoch = math.ceil(data.shape[0] / config.batch_size)
    progress = tqdm(
        desc="ddpm",
        unit="step",
        initial=run.step,
        dynamic_ncols=True,
        total=run.first_step + config.max_steps if config.max_steps else None,
    )
    run.model.train()
    signals = contextlib.ExitStack()
    signals.enter_context(stop_signals_save())
    try:
        _train_until_done(run, data, progress, loss_log)
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: keep what was trained
        log.warning("interrupted at step %d: saving the checkpoint and the EMA weights", run.step)
    signals.close()
    progress.close()
    seconds = time.monotonic() - run.start
    _save_and_export(run, seconds, run.prior_seconds + seconds)
    log.info(
        "trained %d steps this run, %d in all (%.1f epochs of %d steps)",
        run.step - run.first_step,
        run.step,
        run.step / steps_per_epoch,
        steps_per_epoch,
    )
    return config.out_dir


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    torch.set_num_threads(2)
    train_ddpm(DDPMTrainConfig(minutes=minutes))
