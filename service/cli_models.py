"""The model-making commands of `zipgate`: train ddpm | vendor | score-ddpm, and convert adm.

Light like `service.cli`, which mounts them: heavy imports happen inside each command.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from service.paths import resolve_model_path
from service.purify.options import DEFAULT_DTYPE, DType

train_app = typer.Typer(help="Train the shipped default models.", no_args_is_help=True)
convert_app = typer.Typer(help="Convert third-party checkpoints to diffusers directories.", no_args_is_help=True)

MODELS_DIR = Path("models")
DEFAULT_MODEL = MODELS_DIR / "fmnist-ddpm"
ZOO_NAMES = "badnets, blended, wanet, solid, randpatch, sig, logo, lf, adaptive, mirrorsolid, adaptive4, texture, split"
"""The attack zoo's names for help texts (tests check them against `attacks.ZOO`; no torch import here)."""


def overwrite_problem(out: Path, init: Path | None, overwrite: bool) -> str | None:
    """Why training into `out` must not start, or None: it would replace a model (the shipped one, by
    default) that the run does not continue from, and `overwrite` was not given.

    Relative paths are resolved as the loaders resolve them (`paths.resolve_model_path`), so
    `--init models/fmnist-ddpm` continues the shipped model from any directory.
    """
    target = resolve_model_path(out)
    if overwrite or not (target / "config.json").is_file():
        return None
    if init is not None and resolve_model_path(init).resolve() == target.resolve():
        return None  # continuing the model in `out`: its step count and weights carry on
    return (
        f"{target} already holds a model, and this run would replace it with "
        f"{'the weights of ' + str(init) if init else 'a freshly initialised one'} (exported every 10 minutes); "
        f"continue training it with --init {out}, write elsewhere with --out, or pass --overwrite to replace it"
    )


@train_app.command("ddpm")
def train_ddpm_command(
    out: Annotated[Path, typer.Option("-o", "--out", help="Where the EMA weights are exported.")] = DEFAULT_MODEL,
    init: Annotated[Path | None, typer.Option(help="Continue from these weights (e.g. the shipped model).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a model already in --out although this run does not continue from it.")
    ] = False,
    minutes: Annotated[float, typer.Option(help="Wall-clock budget.")] = 60.0,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps in this run.")] = None,
    batch_size: Annotated[int, typer.Option()] = 128,
    learning_rate: Annotated[float, typer.Option()] = 3e-4,
    checkpoint_dir: Annotated[Path, typer.Option(help="Crash-recovery state (kept out of git).")] = Path(
        ".cache/ddpm-checkpoint"
    ),
    train_limit: Annotated[int | None, typer.Option(help="Use only the first N training images.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
) -> None:
    """Train (or continue training) the Fashion-MNIST DDPM; exports EMA weights every 10 minutes.

    Refuses to replace a model in --out (the shipped one by default) unless it continues from it
    (--init the same folder) or --overwrite is given.
    """
    if (problem := overwrite_problem(out, init, overwrite)) is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    import torch

    from service.training.ddpm import DDPMTrainConfig, train_ddpm

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO)
    train_ddpm(
        DDPMTrainConfig(
            out_dir=resolve_model_path(out),
            init_dir=None if init is None else resolve_model_path(init),
            minutes=minutes,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            checkpoint_dir=checkpoint_dir,
            train_limit=train_limit,
            seed=seed,
        )
    )


@train_app.command("vendor")
def train_vendor_command(
    attack: Annotated[str, typer.Option(help=f"none or one attack of the zoo: {ZOO_NAMES}.")] = "badnets",
    seed: Annotated[int, typer.Option()] = 0,
    epochs: Annotated[int | None, typer.Option(help="Default: the shipped models' epoch count.")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Use only the first N training images.")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Default: models/vendor-<attack>.")] = None,
) -> None:
    """Train a vendor classifier, clean or backdoored (target label 0); deterministic for a seed."""
    from service.backdoor.attacks import Attack
    from service.training.vendor import DEFAULT_EPOCHS, train_vendor

    try:
        chosen = Attack(attack.strip().lower())
    except ValueError:
        raise typer.BadParameter(f"unknown attack {attack!r}; choose none or one of {ZOO_NAMES}") from None
    target = out or MODELS_DIR / f"vendor-{'clean' if chosen is Attack.NONE else chosen.value}"
    metrics = train_vendor(chosen, seed, target, epochs or DEFAULT_EPOCHS, train_limit)
    typer.echo(f"wrote {target}: {metrics}")


@train_app.command("score-ddpm")
def score_ddpm_command(
    model: Annotated[Path, typer.Option(help="DDPM directory to score.")] = DEFAULT_MODEL,
    classifier: Annotated[Path, typer.Option(help="Clean Fashion-MNIST classifier.")] = Path("models/vendor-clean"),
    samples: Annotated[int, typer.Option(min=10)] = 1000,
    steps: Annotated[int, typer.Option(min=1)] = 50,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option()] = 2,
    dtype: Annotated[DType, typer.Option(help="Compute dtype of the ε-model.", case_sensitive=False)] = DEFAULT_DTYPE,
) -> None:
    """Sample quality for the model card: samples.png and quality.json written into the model folder."""
    import torch

    from service.backdoor.vendor_model import load_vendor
    from service.purify.models import load_eps_model
    from service.training.ddpm_quality import write_quality_report

    torch.set_num_threads(threads)
    score = write_quality_report(
        load_eps_model(model, dtype=dtype), load_vendor(classifier).eval(), model, count=samples, steps=steps, seed=seed
    )
    typer.echo(
        f"mean max-softmax {score.mean_max_softmax:.3f}; min class fraction {score.min_class_fraction:.3f}; "
        f"histogram check {'passed' if score.passes_histogram_check else 'FAILED'}"
    )


@convert_app.command("adm")
def convert_adm_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="guided-diffusion .pt state dict, e.g. 256x256_diffusion_uncond.pt")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output diffusers directory.")],
    preset: Annotated[str | None, typer.Option(help="imagenet-256-uncond | imagenet-64")] = None,
    image_size: Annotated[int | None, typer.Option()] = None,
    num_channels: Annotated[int | None, typer.Option()] = None,
    num_res_blocks: Annotated[int | None, typer.Option()] = None,
    channel_mult: Annotated[str | None, typer.Option(help="e.g. 1,1,2,2,4,4")] = None,
    attention_resolutions: Annotated[str | None, typer.Option(help="e.g. 32,16,8")] = None,
    num_head_channels: Annotated[int | None, typer.Option()] = None,
    num_heads: Annotated[int | None, typer.Option()] = None,
    learn_sigma: Annotated[bool | None, typer.Option("--learn-sigma/--no-learn-sigma")] = None,
    scale_shift_norm: Annotated[bool | None, typer.Option("--scale-shift-norm/--no-scale-shift-norm")] = None,
    resblock_updown: Annotated[bool | None, typer.Option("--resblock-updown/--no-resblock-updown")] = None,
    new_attention_order: Annotated[bool | None, typer.Option("--new-attention-order/--no-new-attention-order")] = None,
) -> None:
    """Convert an OpenAI guided-diffusion (ADM) checkpoint into a diffusers UNet2DModel directory."""
    from service.purify.adm_arch import architecture_from_preset
    from service.purify.adm_convert import convert_adm_checkpoint

    try:
        arch = architecture_from_preset(
            preset,
            image_size=image_size,
            num_channels=num_channels,
            num_res_blocks=num_res_blocks,
            channel_mult=channel_mult,
            attention_resolutions=attention_resolutions,
            num_head_channels=num_head_channels,
            num_heads=num_heads,
            learn_sigma=learn_sigma,
            use_scale_shift_norm=scale_shift_norm,
            resblock_updown=resblock_updown,
            use_new_attention_order=new_attention_order,
        )
        written = convert_adm_checkpoint(checkpoint, out, arch)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote diffusers model to {written}")
