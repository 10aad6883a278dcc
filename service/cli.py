"""The `zipgate` command line: purify, serve, demo, train, convert, eval."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="zipgate: ZIP backdoor purification in front of a black-box image model.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
train_app = typer.Typer(help="Train the shipped default models.", no_args_is_help=True)
convert_app = typer.Typer(help="Convert third-party checkpoints to diffusers directories.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(convert_app, name="convert")

DEFAULT_MODEL = Path("models/fmnist-ddpm")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _image_paths(inputs: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.exists():
            paths.append(item)
        else:
            raise typer.BadParameter(f"{item} does not exist")
    if not paths:
        raise typer.BadParameter("no images found in the given paths")
    return paths


@app.command()
def purify(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder for purified PNGs.")] = Path("purified"),
    model: Annotated[Path, typer.Option(help="diffusers UNet2DModel directory.")] = DEFAULT_MODEL,
    transforms: Annotated[str, typer.Option(help="e.g. 'blur:4' or 'blur:4,gray' (averaged).")] = "blur:2",
    steps: Annotated[int, typer.Option(min=1)] = 20,
    guidance_power: Annotated[float, typer.Option(help="λ; 'inf' disables the mix step.")] = 0.25,
    eta: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 …")] = "cpu",
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 | auto")] = "fp32",
    seed: Annotated[Optional[int], typer.Option(help="Seed for reproducible noise.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    save_degraded: Annotated[bool, typer.Option(help="Also write A⁺A x (the degraded input).")] = False,
) -> None:
    """Purify images with ZIP and write PNGs (and optionally the degraded A⁺A x beside them)."""
    from PIL import Image
    from tqdm import tqdm

    from service.purify.models import DType, ModelLoadError, load_eps_model
    from service.purify.pipeline import purify_pil_images
    from service.purify.zip import ZipPurifier

    paths = _image_paths(images)
    try:
        eps_model = load_eps_model(model, device=device, dtype=DType(dtype))
        purifier = ZipPurifier(eps_model, transforms, steps=steps, guidance_power=guidance_power, eta=eta)
    except (ModelLoadError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    loaded = []
    for path in paths:
        with Image.open(path) as image:
            loaded.append(image.copy())
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(loaded), desc="purify", unit="img") as bar:
        purified, degraded = purify_pil_images(
            purifier, loaded, eps_model.sample_size, eps_model.channels, device=device,
            batch_size=batch_size, seed=seed, on_batch=lambda n: bar.update(min(n, bar.total - bar.n)),
        )
        bar.update(bar.total - bar.n)
    for path, clean, blurred in zip(paths, purified, degraded):
        clean.save(out / f"{path.stem}.png")
        if save_degraded:
            blurred.save(out / f"{path.stem}.degraded.png")
    typer.echo(f"wrote {len(purified)} purified image(s) to {out}")


@train_app.command("ddpm")
def train_ddpm_command(
    out: Annotated[Path, typer.Option("-o", "--out")] = DEFAULT_MODEL,
    init: Annotated[Optional[Path], typer.Option(help="Continue from these shipped weights.")] = None,
    minutes: Annotated[float, typer.Option(help="Wall-clock budget.")] = 60.0,
    max_steps: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[int, typer.Option()] = 128,
    learning_rate: Annotated[float, typer.Option()] = 3e-4,
    checkpoint_dir: Annotated[Path, typer.Option(help="Crash-recovery state (kept out of git).")] = Path(
        ".cache/ddpm-checkpoint"),
    train_limit: Annotated[Optional[int], typer.Option(help="Use only the first N training images.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
) -> None:
    """Train (or continue training) the Fashion-MNIST DDPM; exports EMA weights every 10 minutes."""
    import torch

    from service.training.ddpm import DDPMTrainConfig, train_ddpm

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO)
    train_ddpm(DDPMTrainConfig(out_dir=out, init_dir=init, minutes=minutes, max_steps=max_steps,
                               batch_size=batch_size, learning_rate=learning_rate, checkpoint_dir=checkpoint_dir,
                               train_limit=train_limit, seed=seed))


def main() -> None:
    """Entry point for `python -m service.cli`."""
    app()


if __name__ == "__main__":
    main()
