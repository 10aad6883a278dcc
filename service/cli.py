"""The `zipgate` command line: purify, serve, demo, train, convert, eval."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from service.cli_models import DEFAULT_MODEL, MODELS_DIR, ZOO_NAMES, convert_app, train_app
from service.config import ENV_PREFIX, Settings  # light: pydantic, no torch (the defaults --help shows)
from service.paths import HOME_ENV
from service.purify.options import (
    DEFAULT_DTYPE,
    DType,
    Method,
    SmallImageFit,
    ZipConfig,
)  # light: enums and the knobs' defaults
from service.purify.strength import Strength, apply_strength  # light: no torch

if TYPE_CHECKING:  # for hints only: these import torch, which the commands load when they run
    from PIL.Image import Image as PILImage

    from service.defense_eval.runner import EvalOptions
    from service.purify.models import EpsModel
    from service.purify.presets import PurificationPreset

app = typer.Typer(
    help="zipgate: ZIP backdoor purification in front of a black-box image model.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(train_app, name="train")
app.add_typer(convert_app, name="convert")
# The flags spelt otherwise than `--<setting with dashes>`, for errors that name a value's source.
SETTING_FLAGS = {"config_file": "--config", "purification_enabled": "--purification/--no-purification"}
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


def _openmp_waits_passively() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the environment sets it; call before torch is imported.

    OpenMP's idle threads spin by default, and next to any other CPU load a preempted thread then
    stalls every parallel step of the model (docs/benchmarks.md, Torch threads). OpenMP reads the
    variable once, when torch loads it, so this must run before the first `import torch`.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _run_with_settings(
    config: Path | None, job: Callable[[Settings], int], overrides: Mapping[str, object] | None = None
) -> None:
    """Load settings (`overrides` > env > optional file), run `job`, exit with its code; bad settings exit 2."""
    from service.config import ConfigError, load_settings

    try:
        code = job(load_settings(config, flags=SETTING_FLAGS, **(overrides or {})))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


class PlainHelpCommand(TyperCommand):
    """A command whose --help is click's plain text, wrapped at word boundaries at any width: rich's
    table would cut a long environment variable name short in a narrow help column."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rich_markup_mode = None


def _setting_flag(name: str, help: str, *flags: str) -> Any:
    """A `serve` flag for the setting `name`: its help names the environment variable, and the
    default shown is the setting's own (the flag's None only means "not given")."""
    default = Settings.model_fields[name].default
    if isinstance(default, bool):
        shown = "--purification" if default else "--no-purification"
    else:
        shown = str(default.value if isinstance(default, enum.Enum) else default)
    return typer.Option(*flags, help=f"{help} [env {ENV_PREFIX}{name.upper()}; default: {shown}]", show_default=False)


@app.command(cls=PlainHelpCommand)
def serve(
    config: Annotated[
        Path | None,
        typer.Option(help=f"YAML/JSON settings file; env variables win over it [env {ENV_PREFIX}CONFIG_FILE]."),
    ] = None,
    host: Annotated[str | None, _setting_flag("host", "Interface to bind; 0.0.0.0 for all.")] = None,
    port: Annotated[int | None, _setting_flag("port", "TCP port; 0 = any free one.")] = None,
    log_level: Annotated[str | None, _setting_flag("log_level", "debug | info | warning | error.")] = None,
    upstream_url: Annotated[
        str | None,
        _setting_flag("upstream_url", "Vendor API root URL; credentials belong in the env, not in argv."),
    ] = None,
    upstream_protocol: Annotated[str | None, _setting_flag("upstream_protocol", "raw | tfserving | v2.")] = None,
    upstream_model: Annotated[
        str | None, _setting_flag("upstream_model", "Vendor model name in tfserving/v2 paths.")
    ] = None,
    model_path: Annotated[
        Path | None,
        _setting_flag("model_path", f"diffusers UNet2DModel directory (a relative one also under ${HOME_ENV})."),
    ] = None,
    devices: Annotated[str | None, _setting_flag("devices", "auto | cpu | cuda:0,cuda:1 …")] = None,
    transforms: Annotated[str | None, _setting_flag("transforms", "Degradations, e.g. blur:4.")] = None,
    steps: Annotated[int | None, _setting_flag("steps", "Sampling steps.")] = None,
    purification: Annotated[
        bool | None,
        _setting_flag(
            "purification_enabled", "Purify, or forward images as they are.", "--purification/--no-purification"
        ),
    ] = None,
) -> None:
    """Run the gateway. Each setting comes from, highest first: its flag here, its ZIPGATE_* environment
    variable, the --config file, the default. Every other setting: env or file (README, Configuration)."""
    overrides = {
        name: value
        for name, value in {
            "host": host,
            "port": port,
            "log_level": log_level,
            "upstream_url": upstream_url,
            "upstream_protocol": upstream_protocol,
            "upstream_model": upstream_model,
            "model_path": model_path,
            "devices": devices,
            "transforms": transforms,
            "steps": steps,
            "purification_enabled": purification,
        }.items()
        if value is not None
    }
    _openmp_waits_passively()  # first: the import below loads torch
    from service.api.server import run_gateway

    _run_with_settings(config, run_gateway, overrides)


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="Leave the vendor and the gateway up afterwards.")] = False,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON settings file for the gateway.")] = None,
) -> None:
    """The main job: demo vendor (BadNets) + gateway on loopback; clean and triggered images, direct and purified."""
    _openmp_waits_passively()  # first: the import below loads torch
    from service.demo.main_job import run_demo

    _run_with_settings(config, lambda settings: run_demo(settings, keep_running))


@dataclass(frozen=True)
class PurifyArgs:
    """The arguments of `zipgate purify` as typer parsed them (the fields are the command's parameters)."""

    images: list[Path]
    out: Path
    model: Path
    preset: str
    transforms: str | None
    steps: int | None
    guidance_power: float | None
    eta: float | None
    method: Method | None
    device: str
    dtype: DType
    seed: int | None
    batch_size: int
    save_degraded: bool
    small_fit: SmallImageFit


def _zip_purifier(args: PurifyArgs) -> tuple[PurificationPreset, ZipConfig, EpsModel, Callable[..., Any]]:
    """The preset, its knobs with the flags given over them, the loaded ε-model and the purifier.

    Raises:
        typer.BadParameter: an unknown preset, a bad knob or a model that does not load.
    """
    from service.purify.local_restore import build_purifier
    from service.purify.models import ModelLoadError, load_eps_model
    from service.purify.presets import PRESETS, PresetName

    try:
        chosen = PRESETS[PresetName(args.preset)]
        knobs: dict[str, Any] = {
            "transforms": args.transforms,
            "steps": args.steps,
            "guidance_power": args.guidance_power,
            "eta": args.eta,
            "method": args.method,
        }
        config = dataclasses.replace(chosen.zip, **{name: value for name, value in knobs.items() if value is not None})
        eps_model = load_eps_model(args.model, device=args.device, dtype=args.dtype)
        purifier = build_purifier(eps_model, config)
    except (ModelLoadError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    return chosen, config, eps_model, purifier


def _write_pngs(out: Path, paths: list[Path], purified: list[PILImage], degraded: list[PILImage] | None) -> None:
    """`<stem>.png` per purified image, and `<stem>.degraded.png` where the degraded views were computed."""
    for path, clean in zip(paths, purified, strict=True):
        clean.save(out / f"{path.stem}.png")
    if degraded is not None:  # computed only for --save-degraded
        for path, blurred in zip(paths, degraded, strict=True):
            blurred.save(out / f"{path.stem}.degraded.png")


def _purify_images(args: PurifyArgs) -> None:
    """`zipgate purify`: load the model, purify the images in batches with a progress bar, write PNGs."""
    from PIL import Image
    from tqdm import tqdm

    from service.purify.pipeline import purify_pil_images

    paths = _image_paths(args.images)
    chosen, config, eps_model, purifier = _zip_purifier(args)
    loaded = []
    for path in paths:
        with Image.open(path) as image:
            loaded.append(image.copy())
    args.out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(loaded), desc="purify", unit="img") as bar:
        purified, degraded = purify_pil_images(
            purifier,
            loaded,
            eps_model.sample_size,
            eps_model.channels,
            config.transforms,
            device=args.device,
            batch_size=args.batch_size,
            seed=args.seed,
            tile_small=chosen.tile_small_images,
            small_fit=args.small_fit,
            on_batch=lambda n: bar.update(min(n, bar.total - bar.n)),
            with_degraded=args.save_degraded,
        )
        bar.update(bar.total - bar.n)
    _write_pngs(args.out, paths, purified, degraded)
    typer.echo(f"wrote {len(purified)} purified image(s) to {args.out}")


@dataclass(frozen=True)
class EvalArgs:
    """The arguments of `zipgate eval` as typer parsed them (the fields are the command's parameters)."""

    vendor: str
    defense: str
    n: int
    steps: int
    transforms: str
    guidance_power: float
    eta: float
    method: Method
    polish_noise: float
    polish_steps: int
    polish_eta: float
    mask_seed_threshold: float
    mask_grow_threshold: float
    votes: int
    strength: Strength
    mirror: bool
    seed: int
    batch_size: int
    device: str
    dtype: DType
    model: Path
    models_dir: Path
    out: Path
    gateway: str | None
    sweep: str | None
    threads: int | None
    stream_shares: str


def _eval_options(args: EvalArgs) -> EvalOptions:
    """The evaluation the flags ask for: the --strength preset applied to the knobs, K votes, mirroring.

    Raises:
        ValueError: --strength other than balanced through a gateway, or a bad name or knob.
    """
    from service.defense_eval.defenses import DefenseSetting
    from service.defense_eval.runner import EvalOptions, parse_defenses, parse_vendors

    if args.gateway is not None and args.strength is not Strength.BALANCED:
        raise ValueError(
            "--strength applies to the in-process evaluation; through a gateway the evaluation asks for "
            "strength=balanced (the gateway's configured knobs) with --votes"
        )
    knobs = ZipConfig(
        args.transforms,
        args.steps,
        args.guidance_power,
        args.eta,
        method=args.method,
        polish_noise=args.polish_noise,
        polish_steps=args.polish_steps,
        polish_eta=args.polish_eta,
        mask_seed_threshold=args.mask_seed_threshold,
        mask_grow_threshold=args.mask_grow_threshold,
    )
    choice = apply_strength(args.strength, knobs, args.votes)
    return EvalOptions(
        vendors=parse_vendors(args.vendor),
        defenses=parse_defenses(args.defense),
        n=args.n,
        setting=DefenseSetting(**dataclasses.asdict(choice.config), votes=choice.votes, mirror=args.mirror),
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        model_path=args.model,
        models_dir=args.models_dir,
        out_dir=args.out,
        gateway_url=args.gateway,
        sweep=args.sweep,
        threads=args.threads,
    )


def _evaluate(args: EvalArgs) -> None:
    """`zipgate eval`: run the evaluation, print its table, then the stream report where it applies.

    Raises:
        typer.Exit: code 2 on a bad option or a missing file (the message goes to stderr).
    """
    from service.backdoor.attacks import TARGET_LABEL
    from service.defense_eval.defenses import Defense
    from service.defense_eval.report import LABELS_FILE
    from service.defense_eval.runner import run_eval
    from service.defense_eval.stream import write_stream_report

    try:
        options = _eval_options(args)
        shares = [float(share) for share in args.stream_shares.split(",") if share.strip()]
        report = run_eval(options)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report.files["table"].read_text())
    written = [str(path) for path in report.files.values()]
    if shares and args.sweep is None and {Defense.NONE, Defense.ZIP} <= set(options.defenses):
        stream = write_stream_report(args.out / LABELS_FILE, TARGET_LABEL, shares)
        typer.echo(stream.read_text())
        written.append(str(stream))
    typer.echo("wrote " + ", ".join(written))


@app.command()
def purify(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder for purified PNGs.")] = Path("purified"),
    model: Annotated[Path, typer.Option(help="diffusers UNet2DModel directory.")] = DEFAULT_MODEL,
    preset: Annotated[str, typer.Option(help="fmnist | paper: defaults for the knobs below.")] = "fmnist",
    transforms: Annotated[str | None, typer.Option(help="e.g. 'blur:4' or 'blur:4,gray' (averaged).")] = None,
    steps: Annotated[int | None, typer.Option(help="S, sampling steps.")] = None,
    guidance_power: Annotated[float | None, typer.Option(help="λ; 'inf' disables the mix step.")] = None,
    eta: Annotated[float | None, typer.Option(help="η of the DDIM step, in [0, 1].")] = None,
    method: Annotated[
        Method | None,
        typer.Option(
            help="global ZIP, or local: localise, restore and polish (the preset's by default).", case_sensitive=False
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 …")] = "cpu",
    dtype: Annotated[
        DType, typer.Option(help="Compute dtype of the ε-model, as the gateway's ZIPGATE_DTYPE.", case_sensitive=False)
    ] = DEFAULT_DTYPE,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible noise (canvas i uses seed + i).")] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    save_degraded: Annotated[bool, typer.Option(help="Also write A⁺A x (the degraded input).")] = False,
    small_fit: Annotated[
        SmallImageFit, typer.Option(help="Images smaller than the model's canvas.")
    ] = SmallImageFit.PAD,
) -> None:
    """Purify images with ZIP and write PNGs (and optionally the degraded A⁺A x beside them)."""
    _purify_images(PurifyArgs(**locals()))  # the first statement: locals() holds exactly the parameters


@app.command("eval")
def eval_command(
    vendor: Annotated[str, typer.Option(help=f"Comma list of attacks, or all (the zoo: {ZOO_NAMES}).")] = "all",
    defense: Annotated[
        str,
        typer.Option(
            help="Comma list: none, blur, shrinkpad, diffpure, zip (the gateway's engine), local (the mask alone)."
        ),
    ] = "none,blur,shrinkpad,diffpure,zip,local",
    n: Annotated[int, typer.Option(min=1, help="First n test images.")] = 1000,
    steps: Annotated[int, typer.Option(help="S, sampling steps.")] = ZipConfig.steps,
    transforms: Annotated[str, typer.Option()] = ZipConfig.transforms,
    guidance_power: Annotated[float, typer.Option(help="λ; 'inf' disables the mix step.")] = ZipConfig.guidance_power,
    eta: Annotated[float, typer.Option(help="η of the DDIM step, in [0, 1].")] = ZipConfig.eta,
    method: Annotated[
        Method, typer.Option(help="zip's engine: local (localise, restore, polish) or global.", case_sensitive=False)
    ] = ZipConfig.method,
    polish_noise: Annotated[
        float, typer.Option(help="method=local: t/T of the DiffPure pass (0 skips it).")
    ] = ZipConfig.polish_noise,
    polish_steps: Annotated[
        int, typer.Option(min=1, help="method=local: steps of the DiffPure pass.")
    ] = ZipConfig.polish_steps,
    polish_eta: Annotated[
        float, typer.Option(help="method=local: η of the DiffPure pass, in [0, 1] (0: deterministic).")
    ] = ZipConfig.polish_eta,
    mask_seed_threshold: Annotated[
        float, typer.Option(help="method=local: the suspicion-map score a block must pass to seed a mask (>= 0).")
    ] = ZipConfig.mask_seed_threshold,
    mask_grow_threshold: Annotated[
        float, typer.Option(help="method=local: the suspicion-map score through which a mask region grows (>= 0).")
    ] = ZipConfig.mask_grow_threshold,
    votes: Annotated[int, typer.Option(min=1, help="Purify K times, majority of the vendor's answers.")] = 1,
    strength: Annotated[
        Strength,
        typer.Option(help="The gateway's ?strength= preset, applied to the knobs above.", case_sensitive=False),
    ] = Strength.BALANCED,
    mirror: Annotated[
        bool, typer.Option(help="Mirror defended images left-right for the vendor (the gateway's VENDOR_MIRROR).")
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    device: Annotated[str, typer.Option()] = "cpu",
    dtype: Annotated[
        DType, typer.Option(help="Compute dtype of the ε-model, as the gateway's ZIPGATE_DTYPE.", case_sensitive=False)
    ] = DEFAULT_DTYPE,
    model: Annotated[Path, typer.Option(help="Diffusion model directory.")] = DEFAULT_MODEL,
    models_dir: Annotated[Path, typer.Option(help="Where the vendor-<attack> folders are.")] = MODELS_DIR,
    out: Annotated[Path, typer.Option("-o", "--out")] = Path("reports"),
    gateway: Annotated[str | None, typer.Option(help="Evaluate ZIP end to end through this gateway URL.")] = None,
    sweep: Annotated[
        str | None, typer.Option(help="e.g. 'steps=10,20 guidance_power=0.25,1 transforms=blur:2,blur:4'")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    stream_shares: Annotated[
        str, typer.Option(help="With none and zip (no sweep): the closed loop as a stream at shares p ('' skips).")
    ] = "0.01,0.1",
) -> None:
    """CA / ASR / PA of defenses on the shipped vendor models; writes results.json, results.md and grids."""
    _evaluate(EvalArgs(**locals()))  # the first statement: locals() holds exactly the parameters


@app.command("demo-vendor")
def demo_vendor_command(
    model: Annotated[str, typer.Option(help="Folder name under models/ (or a path).")] = "vendor-badnets",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9000,
    model_name: Annotated[str, typer.Option(help="Name in the TF-Serving and v2 paths.")] = "fmnist",
) -> None:
    """Serve a (backdoored) vendor classifier over HTTP: raw, TF-Serving and v2 protocols."""
    from service.backdoor.vendor_model import CONFIG_FILE
    from service.demo.vendor_app import run_demo_vendor
    from service.paths import models_dir

    shipped_dir = models_dir()
    model_dir = Path(model) if Path(model).is_dir() else shipped_dir / model
    if not model_dir.is_dir():
        shipped = sorted(path.name for path in shipped_dir.glob("vendor-*") if (path / CONFIG_FILE).is_file())
        raise typer.BadParameter(
            f"no vendor model at {model_dir}; the vendors in {shipped_dir}: {', '.join(shipped) or 'none'}"
        )
    run_demo_vendor(model_dir, host=host, port=port, model_name=model_name)


@app.command()
def sample(
    attack: Annotated[
        str, typer.Option(help=f"none (a clean image) or the attack whose trigger to apply: {ZOO_NAMES}.")
    ] = "none",
    index: Annotated[int, typer.Option(min=0, help="Which Fashion-MNIST test image (0-9999).")] = 0,
    out: Annotated[Path, typer.Option("-o", "--out", help="The PNG to write.")] = Path("sample.png"),
    padded: Annotated[
        bool, typer.Option(help="32x32 with the black border the evaluation triggers, instead of the 28x28 image.")
    ] = False,
) -> None:
    """Write one Fashion-MNIST test image as a PNG, clean or triggered, to send to the demo vendor or the gateway."""
    from service.demo.sample_images import write_sample

    try:
        lines = write_sample(attack, index, out, padded=padded)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo("\n".join(lines))


def main() -> None:
    """Entry point for `python -m service.cli`."""
    app()


if __name__ == "__main__":
    main()
