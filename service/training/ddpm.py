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


def train_ddpm(config: DDPMTrainConfig) -> Path:
    """Train (or continue training) the DDPM and export the EMA weights to `config.out_dir`.

    Continues from, in order of preference: the crash-recovery checkpoint in `checkpoint_dir`,
    the weights in `init_dir` (model and EMA both start from them), or a fresh model.

    Returns:
        The export directory.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    data = load_split(train=True).images
    if config.train_limit:
        data = data[: config.train_limit]
    alpha_bars = alphas_cumprod(linear_betas())

    if config.init_dir is not None:
        model = UNet2DModel.from_pretrained(config.init_dir, local_files_only=True).float()
    else:
        model = config.architecture.build()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    step = epoch = 0  # `step` counts every step the weights have had, over all runs
    prior_seconds = 0.0
    state_path = config.checkpoint_dir / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, prior_seconds = state["step"], state["epoch"], state.get("total_seconds", 0.0)
        log.info("resumed from %s at step %d", state_path, step)
    elif config.init_dir is not None and (config.init_dir / "training_state.json").exists():
        shipped = json.loads((config.init_dir / "training_state.json").read_text())
        step, prior_seconds = shipped.get("total_steps", 0), shipped.get("total_seconds", 0.0)
    first_step = step

    config.out_dir.mkdir(parents=True, exist_ok=True)
    loss_log = config.checkpoint_dir / "loss.jsonl"
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    last_export = start
    losses: list[float] = []
    steps_per_epoch = math.ceil(data.shape[0] / config.batch_size)
    progress = tqdm(
        desc="ddpm",
        unit="step",
        initial=step,
        dynamic_ncols=True,
        total=first_step + config.max_steps if config.max_steps else None,
    )
    model.train()
    done = False
    signals = contextlib.ExitStack()
    signals.enter_context(stop_signals_save())
    try:
        while not done:
            order = torch.randperm(data.shape[0], generator=generator)
            for batch_start in range(0, data.shape[0], config.batch_size):
                x0 = data[order[batch_start : batch_start + config.batch_size]]
                if config.horizontal_flip:
                    flip = torch.rand(x0.shape[0], generator=generator) < 0.5
                    x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
                for group in optimizer.param_groups:
                    # Warm-up at the start of every run: the optimizer state may be new (--init).
                    group["lr"] = config.learning_rate * min(1.0, (step - first_step + 1) / config.warmup_steps)
                loss = ddpm_loss(model, x0, alpha_bars, generator, config.bf16_autocast)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                # EMA warm-up over the total step count: early on, the random init would dominate.
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                update_ema(ema, model, decay)
                step += 1
                losses.append(loss.item())
                progress.update(1)
                progress.set_postfix(epoch=epoch, loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
                if step % 50 == 0:
                    with loss_log.open("a") as handle:
                        handle.write(
                            json.dumps(
                                {
                                    "step": step,
                                    "epoch": epoch,
                                    "time_s": round(prior_seconds + time.monotonic() - start, 1),
                                    "loss": sum(losses[-50:]) / 50,
                                }
                            )
                            + "\n"
                        )
                now = time.monotonic()
                if now - last_export > config.export_every_minutes * 60:
                    _save_checkpoint(
                        config.checkpoint_dir, model, ema, optimizer, step, epoch, prior_seconds + now - start
                    )
                    _export(ema, config, step - first_step, step, now - start, prior_seconds + now - start, losses)
                    last_export = now
                if (now - start) > config.minutes * 60 or (config.max_steps and step - first_step >= config.max_steps):
                    done = True
                    break
            epoch += 1
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: keep what was trained
        log.warning("interrupted at step %d: saving the checkpoint and the EMA weights", step)
    signals.close()
    progress.close()
    seconds = time.monotonic() - start
    _save_checkpoint(config.checkpoint_dir, model, ema, optimizer, step, epoch, prior_seconds + seconds)
    _export(ema, config, step - first_step, step, seconds, prior_seconds + seconds, losses)
    log.info(
        "trained %d steps this run, %d in all (%.1f epochs of %d steps)",
        step - first_step,
        step,
        step / steps_per_epoch,
        steps_per_epoch,
    )
    return config.out_dir


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    torch.set_num_threads(2)
    train_ddpm(DDPMTrainConfig(minutes=minutes))
