"""`run_eval`: CA / ASR / PA of each defense against each backdoored vendor, in process or through a gateway.

The test split's first n images are the clean set; each attack's set is the triggered copies of
those whose true label is not the target. A defended set is computed once and reused: clean
images purified once serve every vendor, and a sweep over votes reuses the purifications of the
smaller K (vote k always uses the seeds of vote k).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from service.defense_eval.attacks import TARGET_LABEL, ZOO, Attack, apply_trigger
from service.defense_eval.defenses import Defense, DefenseSetting, InProcessDefender, item_seed
from service.defense_eval.gateway_client import GatewayClient
from service.defense_eval.metrics import majority_vote, score_defense
from service.defense_eval.report import EvalReport, GridImages, ResultRow, write_report
from service.defense_eval.sweep import SweepKnob, sweep_settings, varying_knobs
from service.purify.models import DType, load_eps_model
from service.training.data import Split, load_split
from service.training.vendor import load_vendor, predict_labels, read_vendor_config, torch_threads
from service.workers.purifier import resolve_dtype

SetKey = Attack | None
"""Which image set: None = the clean images, an attack = its triggered victims."""
_GATEWAY_TIMER = ("gateway",)  # the timing key of gateway round trips (purification + vendor)


ALL_ATTACKS = "all"
"""The vendor name that stands for the whole zoo (`attacks.ZOO`)."""


def _expand_all(values: Sequence[Any]) -> list[Any]:
    """The vendors with every "all" replaced by the zoo, in place."""
    return [attack for value in values for attack in
            (ZOO if isinstance(value, str) and value.strip().lower() == ALL_ATTACKS else (value,))]


def _as_enums(values: Sequence[Any], enum: type) -> tuple[Any, ...]:
    try:
        return tuple(enum(value.strip().lower() if isinstance(value, str) else value) for value in values)
    except ValueError as exc:
        raise ValueError(f"{exc}; choose from {', '.join(member.value for member in enum)}") from None


@dataclass(frozen=True)
class EvalOptions:
    """Everything `zipgate eval` decides (defaults: the shipped world's best point, DESIGN.md §6).

    Enum fields also accept their names ("badnets", "zip", "bf16") and paths accept str; both
    are normalised at construction.

    Attributes:
        vendors: attacks whose vendor model (`models_dir/vendor-<attack>`) is evaluated; "all" (and
            the default) is the whole zoo, `attacks.ZOO`.
        defenses: evaluated in this order.
        n: first n test images (CA on all n, ASR/PA on the triggered ones with label ≠ target).
        steps, transforms, guidance_power, eta, votes, mirror: the setting (the base of a sweep).
        seed: base noise seed (see `defenses.item_seed`).
        batch_size: images per purification batch (and per gateway request).
        device, dtype: where and in what precision the ε-model runs (AUTO: bf16 on CPUs that have it).
        model_path: the diffusion model directory.
        models_dir: where the vendor-<attack> folders are.
        out_dir: where the report files go.
        gateway_url: evaluate ZIP end to end through this running gateway instead (its own
            purification settings apply; none/blur still run here with the local vendor models).
        gateway_timeout_s: seconds one gateway request may take.
        sweep: e.g. "steps=10,20 guidance_power=1,2 transforms=blur:2,blur:4" (see `sweep.py`).
        threads: torch intra-op threads during the run (None: unchanged).
        progress: show progress bars.
        grid_images: images per row of the grid PNGs.

    Raises:
        ValueError: an unknown vendor or defense, n or batch_size < 1, a bad setting or sweep,
            or a sweep over purification knobs in gateway mode.
    """

    vendors: tuple[Attack, ...] = ZOO
    defenses: tuple[Defense, ...] = (Defense.NONE, Defense.BLUR, Defense.ZIP)
    n: int = 1000
    steps: int = 20
    transforms: str = "blur:4"
    guidance_power: float = 0.5
    eta: float = 1.0
    seed: int = 0
    votes: int = 1
    mirror: bool = False
    batch_size: int = 64
    device: str = "cpu"
    dtype: DType = DType.AUTO
    model_path: Path = Path("models/fmnist-ddpm")
    models_dir: Path = Path("models")
    out_dir: Path = Path("reports")
    gateway_url: str | None = None
    gateway_timeout_s: float = 300.0
    sweep: str | Sequence[str] | None = None
    threads: int | None = 1
    progress: bool = True
    grid_images: int = 8

    def __post_init__(self) -> None:
        # Names and str paths are accepted too (CLI convenience) and normalised here, once; frozen,
        # so through object.__setattr__.
        object.__setattr__(self, "vendors", tuple(dict.fromkeys(_as_enums(_expand_all(self.vendors), Attack))))
        object.__setattr__(self, "defenses", tuple(dict.fromkeys(_as_enums(self.defenses, Defense))))
        object.__setattr__(self, "dtype", _as_enums([self.dtype], DType)[0])
        for name in ("model_path", "models_dir", "out_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if not self.vendors or not self.defenses:
            raise ValueError("name at least one vendor (e.g. badnets) and one defense (e.g. zip)")
        if self.n < 1 or self.batch_size < 1 or self.grid_images < 1:
            raise ValueError(f"n, batch_size and grid_images must be ≥ 1, got {self.n}, {self.batch_size}, "
                             f"{self.grid_images}")
        settings = self.settings()
        if self.gateway_url is not None and set(varying_knobs(settings)) - {SweepKnob.VOTES}:
            raise ValueError("through a gateway only votes can be swept: its purification settings are its own; "
                             "sweep the other knobs in process (without --gateway)")

    def base_setting(self) -> DefenseSetting:
        """The ZIP setting of the options (a sweep varies it)."""
        return DefenseSetting(self.transforms, self.steps, self.guidance_power, self.eta, self.votes,
                              mirror=self.mirror)

    def settings(self) -> list[DefenseSetting]:
        """The evaluated settings: the base setting, or the sweep's grid around it."""
        return [self.base_setting()] if self.sweep is None else sweep_settings(self.base_setting(), self.sweep)


@dataclass
class _Judge:
    """Answers "which labels does the vendor give these defended images": (K, N) votes, cached.

    Without a gateway every defense runs here; with one, ZIP (purification and vendor) is the
    gateway's and only `none`/`blur` run here.
    """

    options: EvalOptions
    sets: dict[SetKey, Split]
    defender: InProcessDefender
    vendors: dict[Attack, torch.nn.Module]
    gateway: GatewayClient | None
    defended: dict[tuple[object, ...], torch.Tensor] = field(default_factory=dict)
    gateway_answers: dict[tuple[SetKey, int], torch.Tensor] = field(default_factory=dict)
    seconds: dict[tuple[object, ...], float] = field(default_factory=dict)
    images: dict[tuple[object, ...], int] = field(default_factory=dict)

    def _in_batches(self, key: SetKey, what: str, timer: tuple[object, ...],
                    step: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """`step(batch, first position)` over set `key` in batches, with a progress bar and timing."""
        images = self.sets[key].images
        outputs: list[torch.Tensor] = []
        started = time.monotonic()
        with tqdm(total=len(images), desc=f"{what} {'clean' if key is None else key.value}", unit="img",
                  leave=False, disable=not self.options.progress) as bar:
            for start in range(0, len(images), self.options.batch_size):
                batch = images[start : start + self.options.batch_size]
                outputs.append(step(batch, start))
                bar.update(len(batch))
        self.seconds[timer] = self.seconds.get(timer, 0.0) + time.monotonic() - started
        self.images[timer] = self.images.get(timer, 0) + len(images)
        return torch.cat(outputs)

    def defend(self, key: SetKey, defense: Defense, setting: DefenseSetting, vote: int) -> torch.Tensor:
        """The defended images of a set for one vote (computed on first use)."""
        output_key = setting.output_key(defense)
        if (key, output_key, vote) not in self.defended:
            seed = self.options.seed
            self.defended[(key, output_key, vote)] = self._in_batches(
                key, f"{defense.value} {setting.describe()} vote {vote + 1}", output_key,
                lambda batch, start: self.defender(defense, setting, batch,
                                                   [item_seed(seed, vote, start + i) for i in range(len(batch))]))
        return self.defended[(key, output_key, vote)]

    def through_gateway(self, key: SetKey, vote: int) -> torch.Tensor:
        """The gateway's labels for a set (purified there with this vote's seeds)."""
        gateway = self.gateway
        if gateway is None:
            raise ValueError("no gateway to call: set gateway_url")
        if (key, vote) not in self.gateway_answers:
            self.gateway_answers[(key, vote)] = self._in_batches(
                key, f"gateway vote {vote + 1}", _GATEWAY_TIMER,
                lambda batch, start: gateway.predict(batch, item_seed(self.options.seed, vote, start)))
        return self.gateway_answers[(key, vote)]

    def votes(self, attack: Attack, defense: Defense, setting: DefenseSetting, key: SetKey) -> torch.Tensor:
        """(K, N) labels of `attack`'s vendor on set `key` defended K times (K = 1 if deterministic)."""
        count = setting.purifications(defense)
        if self.gateway is not None and defense is Defense.ZIP:
            return torch.stack([self.through_gateway(key, vote) for vote in range(count)])
        vendor = self.vendors[attack]
        device = self.options.device
        return torch.stack([
            predict_labels(vendor, self.defend(key, defense, setting, vote).to(device), self.options.batch_size).cpu()
            for vote in range(count)])

    def seconds_per_image(self, defense: Defense, setting: DefenseSetting) -> float:
        """Measured defense seconds per image and purification (through a gateway: per round trip)."""
        key = _GATEWAY_TIMER if self.gateway is not None and defense is Defense.ZIP else setting.output_key(defense)
        return self.seconds.get(key, 0.0) / max(1, self.images.get(key, 0))


def _image_sets(split: Split, attacks: Sequence[Attack]) -> dict[SetKey, Split]:
    victims = split.labels != TARGET_LABEL
    sets: dict[SetKey, Split] = {None: split}
    for attack in attacks:
        sets[attack] = Split(apply_trigger(split.images[victims], attack), split.labels[victims])
    return sets


def _grids(judge: _Judge, options: EvalOptions, setting: DefenseSetting) -> list[GridImages]:
    """First `grid_images` victims of each attack at each stage; purified by ZIP when it was evaluated."""
    victims = judge.sets[None].images[judge.sets[None].labels != TARGET_LABEL][: options.grid_images]
    grids = []
    for attack in options.vendors:
        triggered = judge.sets[attack].images[: options.grid_images]
        degraded, purified = judge.defend(attack, Defense.BLUR, setting, 0)[: options.grid_images], None
        if Defense.ZIP in options.defenses and judge.gateway is not None:
            purified, degraded = judge.gateway.purify(triggered, item_seed(options.seed, 0, 0))
        elif Defense.ZIP in options.defenses:
            purified = judge.defend(attack, Defense.ZIP, setting, 0)[: options.grid_images]
        grids.append(GridImages(attack, victims[: len(triggered)], triggered, degraded, purified))
    return grids


def _model_meta(options: EvalOptions) -> dict[str, Any]:
    """The diffusion model's identity and training progress (its training_state.json, if any)."""
    if Defense.ZIP not in options.defenses or options.gateway_url is not None:
        return {}
    state_path = options.model_path / "training_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    return {"path": str(options.model_path), "total_training_steps": state.get("total_steps"),
            "recent_loss": state.get("recent_loss")}


def _vendor_meta(options: EvalOptions, attack: Attack) -> dict[str, Any]:
    config = read_vendor_config(options.models_dir / f"vendor-{attack.value}")
    metrics = config.get("metrics", {})
    return {"clean_accuracy": metrics.get("clean_accuracy"), "attack_success_rate": metrics.get("attack_success_rate"),
            "command": config.get("training", {}).get("command")}


def _options_meta(options: EvalOptions) -> dict[str, Any]:
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    values["vendors"] = [a.value for a in options.vendors]
    values["defenses"] = [d.value for d in options.defenses]
    values["dtype"] = options.dtype.value
    values["guidance_power"] = "inf" if math.isinf(options.guidance_power) else options.guidance_power
    for name in ("model_path", "models_dir", "out_dir"):
        values[name] = str(values[name])
    return values


def run_eval(options: EvalOptions) -> EvalReport:
    """Measure CA, ASR and PA for every (setting, defense, vendor) and write the report to `out_dir`.

    Args:
        options: what to evaluate (see `EvalOptions`).

    Returns:
        The report, with the paths of results.json, results.md, grid-<attack>.png and sweep.png.

    Raises:
        ValueError: n larger than the test split, or a bad setting.
        FileNotFoundError: a vendor model, the diffusion model or the data is missing.
        ModelLoadError: the diffusion model cannot be loaded.
        UpstreamError, UpstreamTimeout: the gateway failed (gateway mode).
    """
    started = time.monotonic()
    settings = options.settings()
    local_defenses = [d for d in options.defenses if options.gateway_url is None or d is not Defense.ZIP]
    with torch_threads(options.threads), _gateway(options) as gateway:
        split = load_split(train=False)
        if options.n > len(split):
            raise ValueError(f"n = {options.n} exceeds the {len(split)} test images")
        split = split.subset(options.n)
        vendors = {attack: load_vendor(options.models_dir / f"vendor-{attack.value}").to(options.device)
                   for attack in options.vendors if local_defenses}
        model, model_meta = None, _model_meta(options)  # read before loading: a trainer may re-export meanwhile
        if Defense.ZIP in local_defenses:
            model = load_eps_model(options.model_path, options.device, resolve_dtype(options.dtype, options.device))
        judge = _Judge(options, _image_sets(split, options.vendors), InProcessDefender(model, options.device),
                       vendors, gateway)
        rows, seen = [], set()
        for setting in settings:
            for defense in options.defenses:
                for attack in options.vendors:
                    if (attack, setting.output_key(defense), setting.purifications(defense)) in seen:
                        continue  # none/blur do not change with λ, S, η or K: one row each, not one per setting
                    seen.add((attack, setting.output_key(defense), setting.purifications(defense)))
                    scores = score_defense(
                        majority_vote(judge.votes(attack, defense, setting, None)), judge.sets[None].labels,
                        majority_vote(judge.votes(attack, defense, setting, attack)), judge.sets[attack].labels,
                        TARGET_LABEL)
                    count = setting.purifications(defense)
                    rows.append(ResultRow(attack, defense, setting, scores, count, count,
                                          count * judge.seconds_per_image(defense, setting)))
                    if options.progress:
                        tqdm.write(f"{attack.value:8} {defense.value:5} {setting.describe():32} "
                                   f"CA {scores.clean_accuracy:.3f} ASR {scores.attack_success_rate:.3f} "
                                   f"PA {scores.poisoned_accuracy:.3f}")
        grids = _grids(judge, options, settings[0])
        meta = {"options": _options_meta(options), "diffusion_model": model_meta,
                "vendors": {a.value: _vendor_meta(options, a) for a in options.vendors if local_defenses},
                "gateway_purification": gateway.purification if gateway is not None else None,
                "model_dtype": None if model is None else model.info.dtype,
                "torch_threads": torch.get_num_threads(), "elapsed_s": round(time.monotonic() - started, 1)}
    report = EvalReport(tuple(rows), tuple(settings), varying_knobs(settings), meta)
    return write_report(report, grids, options.out_dir)


def _gateway(options: EvalOptions) -> contextlib.AbstractContextManager[GatewayClient | None]:
    """The gateway client to use, or None (in process), as a context manager that closes it."""
    if options.gateway_url is None:
        return contextlib.nullcontext()
    return GatewayClient(options.gateway_url, timeout_s=options.gateway_timeout_s)
