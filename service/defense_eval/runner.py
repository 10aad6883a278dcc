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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from service.backdoor.attacks import TARGET_LABEL, ZOO, Attack, apply_trigger
from service.backdoor.data import Split, load_split
from service.backdoor.metrics import majority_vote, score_defense
from service.backdoor.vendor_model import load_vendor, predict_labels, read_vendor_config
from service.defense_eval.defenses import Defense, DefenseSetting, InProcessDefender, item_seed
from service.defense_eval.gateway_client import GatewayClient
from service.defense_eval.progress import EvalProgress, planned_stages, stage_label
from service.defense_eval.report import LABELS_FILE, EvalReport, GridImages, ResultRow, labels_key, write_report
from service.defense_eval.sweep import SweepKnob, sweep_settings, varying_knobs
from service.purify.models import EpsModel, load_eps_model
from service.purify.options import DType
from service.torch_threads import torch_threads

SetKey = Attack | None
"""Which image set: None = the clean images, an attack = its triggered victims."""
_GATEWAY_TIMER = ("gateway",)  # the timing key of gateway round trips (purification + vendor)


E = TypeVar("E", bound=Enum)
ALL_ATTACKS = "all"
"""The vendor name that stands for the whole zoo (`attacks.ZOO`)."""


def _names(names: str | Sequence[str]) -> list[str]:
    """Comma-separated names (or a sequence of them), stripped and lower-cased, empty ones dropped."""
    items = names.split(",") if isinstance(names, str) else [part for name in names for part in name.split(",")]
    return [item.strip().lower() for item in items if item.strip()]


def _parse(name: str, enum: type[E]) -> E:
    try:
        return enum(name)
    except ValueError:
        raise ValueError(
            f"{name!r} is not a valid {enum.__name__}; choose from {', '.join(member.value for member in enum)}"
        ) from None


def parse_vendors(names: str | Sequence[str]) -> tuple[Attack, ...]:
    """Attacks from names such as "badnets,sig" (the CLI's `--vendor`); "all" stands for the zoo.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    attacks = [attack for name in _names(names) for attack in (ZOO if name == ALL_ATTACKS else (_parse(name, Attack),))]
    return tuple(dict.fromkeys(attacks))


def parse_defenses(names: str | Sequence[str]) -> tuple[Defense, ...]:
    """Defenses from names such as "none,blur,zip" (the CLI's `--defense`), in the order given.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    return tuple(dict.fromkeys(_parse(name, Defense) for name in _names(names)))


@dataclass(frozen=True)
class EvalOptions:
    """Everything `zipgate eval` decides (defaults: the shipped world's best point, docs/defense.md).

    Typed through: the CLI turns names into enums (`parse_vendors`, `parse_defenses`) and paths
    into `Path`s at its boundary.

    Attributes:
        vendors: attacks whose vendor model (`models_dir/vendor-<attack>`) is evaluated; the
            default is the whole zoo, `attacks.ZOO`.
        defenses: evaluated in this order.
        n: first n test images (CA on all n, ASR/PA on the triggered ones with label ≠ target).
        setting: ZIP's knobs, votes and mirror (the base of a sweep; defaults: the gateway's `ZipConfig`).
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
        ValueError: no vendor or defense, n or batch_size < 1, a bad sweep, or a sweep over
            purification knobs in gateway mode.
    """

    vendors: tuple[Attack, ...] = ZOO
    defenses: tuple[Defense, ...] = tuple(Defense)  # every baseline beside the engine, on the same images
    n: int = 1000
    setting: DefenseSetting = field(default_factory=DefenseSetting)
    seed: int = 0
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
        if not self.vendors or not self.defenses:
            raise ValueError("name at least one vendor (e.g. badnets) and one defense (e.g. zip)")
        if self.n < 1 or self.batch_size < 1 or self.grid_images < 1:
            raise ValueError(
                f"n, batch_size and grid_images must be ≥ 1, got {self.n}, {self.batch_size}, {self.grid_images}"
            )
        settings = self.settings()
        if self.gateway_url is not None and set(varying_knobs(settings)) - {SweepKnob.VOTES}:
            raise ValueError(
                "through a gateway only votes can be swept: its purification settings are its own; "
                "sweep the other knobs in process (without --gateway)"
            )

    def settings(self) -> list[DefenseSetting]:
        """The evaluated settings: the base setting, or the sweep's grid around it."""
        return [self.setting] if self.sweep is None else sweep_settings(self.setting, self.sweep)


@dataclass
class _Judge:
    """Answers "which labels does the vendor give these defended images": (K, N) votes, cached.

    Without a gateway every defense runs here; with one, ZIP (purification and vendor) is the
    gateway's and only `none`/`blur` run here.
    """

    options: EvalOptions
    sets: dict[SetKey, Split]
    defender: InProcessDefender
    vendors: Mapping[Attack, torch.nn.Module]
    gateway: GatewayClient | None
    defended: dict[tuple[object, ...], torch.Tensor] = field(default_factory=dict)
    gateway_answers: dict[tuple[SetKey, int], torch.Tensor] = field(default_factory=dict)
    seconds: dict[tuple[object, ...], float] = field(default_factory=dict)
    images: dict[tuple[object, ...], int] = field(default_factory=dict)
    forwards: dict[tuple[object, ...], int] = field(default_factory=dict)
    progress: EvalProgress | None = None

    def _in_batches(
        self, key: SetKey, what: str, timer: tuple[object, ...], step: Callable[[torch.Tensor, int], torch.Tensor]
    ) -> torch.Tensor:
        """`step(batch, first position)` over set `key` in batches, with a progress bar and timing."""
        images = self.sets[key].images
        outputs: list[torch.Tensor] = []
        started, forwards_before = time.monotonic(), self.defender.forwards
        desc = f"{what} {'clean' if key is None else key.value}"
        with tqdm(
            total=len(images),
            desc=desc if self.progress is None else self.progress.start_stage(desc),
            unit="img",
            leave=False,
            disable=not self.options.progress,
        ) as bar:
            for start in range(0, len(images), self.options.batch_size):
                batch, batch_started = images[start : start + self.options.batch_size], time.monotonic()
                outputs.append(step(batch, start))
                if self.progress is not None:
                    self.progress.timed_batch(timer, len(batch), time.monotonic() - batch_started, first=start == 0)
                bar.update(len(batch))
        self.seconds[timer] = self.seconds.get(timer, 0.0) + time.monotonic() - started
        self.images[timer] = self.images.get(timer, 0) + len(images)
        self.forwards[timer] = self.forwards.get(timer, 0) + self.defender.forwards - forwards_before
        return torch.cat(outputs)

    def defend(self, key: SetKey, defense: Defense, setting: DefenseSetting, vote: int) -> torch.Tensor:
        """The defended images of a set for one vote (computed on first use)."""
        output_key = setting.output_key(defense)
        if (key, output_key, vote) not in self.defended:
            seed = self.options.seed
            self.defended[(key, output_key, vote)] = self._in_batches(
                key,
                f"{stage_label(defense, setting)} vote {vote + 1}",
                output_key,
                lambda batch, start: self.defender(defense, setting, batch, item_seed(seed, vote, start)),
            )
        return self.defended[(key, output_key, vote)]

    def through_gateway(self, key: SetKey, votes: int) -> torch.Tensor:
        """The gateway's labels for a set: its own majority over `votes` purifications (`?votes=K`).

        The gateway gives vote k of a batch seeded s the seeds of `vote_canvas_seeds`, which are the
        evaluation's `item_seed(seed, k, start) + i`: in-process K votes and the gateway's agree.
        """
        gateway = self.gateway
        if gateway is None:
            raise ValueError("no gateway to call: set gateway_url")
        if (key, votes) not in self.gateway_answers:
            self.gateway_answers[(key, votes)] = self._in_batches(
                key,
                f"gateway votes={votes}",
                _GATEWAY_TIMER,
                lambda batch, start: gateway.predict(batch, item_seed(self.options.seed, 0, start), votes),
            )
        return self.gateway_answers[(key, votes)]

    def votes(self, attack: Attack, defense: Defense, setting: DefenseSetting, key: SetKey) -> torch.Tensor:
        """(K, N) labels of `attack`'s vendor on set `key` defended K times (K = 1 if deterministic)."""
        count = setting.purifications(defense)
        if self.gateway is not None and defense is Defense.ZIP:
            return self.through_gateway(key, count).unsqueeze(0)  # the gateway's majority: one row
        vendor = self.vendors[attack]
        device = self.options.device
        return torch.stack(
            [
                predict_labels(
                    vendor, self.defend(key, defense, setting, vote).to(device), self.options.batch_size
                ).cpu()
                for vote in range(count)
            ]
        )

    def seconds_per_image(self, defense: Defense, setting: DefenseSetting) -> float:
        """Measured defense seconds per image and purification (through a gateway: per round trip)."""
        key = _GATEWAY_TIMER if self.gateway is not None and defense is Defense.ZIP else setting.output_key(defense)
        return self.seconds.get(key, 0.0) / max(1, self.images.get(key, 0))

    def forwards_per_image(self, defense: Defense, setting: DefenseSetting) -> float:
        """Counted ε-model forwards per image and purification (through a gateway: not counted, 0)."""
        key = setting.output_key(defense)
        return self.forwards.get(key, 0) / max(1, self.images.get(key, 0))


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
    return {
        "path": str(options.model_path),
        "total_training_steps": state.get("total_steps"),
        "recent_loss": state.get("recent_loss"),
    }


def _vendor_meta(options: EvalOptions, attack: Attack) -> dict[str, Any]:
    config = read_vendor_config(options.models_dir / f"vendor-{attack.value}")
    metrics = config.get("metrics", {})
    return {
        "clean_accuracy": metrics.get("clean_accuracy"),
        "attack_success_rate": metrics.get("attack_success_rate"),
        "command": config.get("training", {}).get("command"),
    }


def _options_meta(options: EvalOptions) -> dict[str, Any]:
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "setting"}
    values.update(dataclasses.asdict(options.setting))  # the setting's knobs, flat as before
    values["vendors"] = [a.value for a in options.vendors]
    values["defenses"] = [d.value for d in options.defenses]
    values["dtype"] = options.dtype.value
    values["guidance_power"] = "inf" if math.isinf(options.setting.guidance_power) else options.setting.guidance_power
    for name in ("model_path", "models_dir", "out_dir"):
        values[name] = str(values[name])
    return values


def _test_images(n: int) -> Split:
    """The test split's first `n` images: the clean set every image set derives from.

    Raises:
        ValueError: n is larger than the test split.
    """
    split = load_split(train=False)
    if n > len(split):
        raise ValueError(f"n = {n} exceeds the {len(split)} test images")
    return split.subset(n)


def _load_vendors(options: EvalOptions, local_defenses: Sequence[Defense]) -> dict[Attack, torch.nn.Module]:
    """Each evaluated vendor model on `options.device`; none where no defense runs in process."""
    return {
        attack: load_vendor(options.models_dir / f"vendor-{attack.value}").to(options.device)
        for attack in options.vendors
        if local_defenses
    }


def _eval_progress(
    judge: _Judge, options: EvalOptions, settings: Sequence[DefenseSetting], gateway: GatewayClient | None
) -> EvalProgress:
    """The stage-by-stage progress of the whole plan (printed only with `options.progress`)."""
    sizes = {key: len(images) for key, images in judge.sets.items()}
    plan = planned_stages(
        settings, options.defenses, options.vendors, sizes, None if gateway is None else _GATEWAY_TIMER
    )
    return EvalProgress(plan, tqdm.write if options.progress else lambda line: None)


def _evaluate_row(
    judge: _Judge, attack: Attack, defense: Defense, setting: DefenseSetting, labels: dict[str, Any]
) -> ResultRow:
    """Score one (attack, defense, setting) on the majority votes; record its per-image labels in `labels`."""
    clean = majority_vote(judge.votes(attack, defense, setting, None))
    triggered = majority_vote(judge.votes(attack, defense, setting, attack))
    scores = score_defense(clean, judge.sets[None].labels, triggered, judge.sets[attack].labels, TARGET_LABEL)
    row_key = labels_key(attack, defense, setting)
    labels[f"{row_key}/clean"], labels[f"{row_key}/triggered"] = clean.numpy(), triggered.numpy()
    labels[f"{attack.value}/triggered/true"] = judge.sets[attack].labels.numpy()
    count = setting.purifications(defense)
    row = ResultRow(
        attack,
        defense,
        setting,
        scores,
        count,
        count,
        count * judge.seconds_per_image(defense, setting),
        count * judge.forwards_per_image(defense, setting),
    )
    if judge.options.progress:
        tqdm.write(
            f"{attack.value:8} {stage_label(defense, setting):38} "
            f"CA {scores.clean_accuracy:.3f} ASR {scores.attack_success_rate:.3f} "
            f"PA {scores.poisoned_accuracy:.3f}"
        )
    return row


def _evaluate_rows(judge: _Judge, settings: Sequence[DefenseSetting]) -> tuple[list[ResultRow], dict[str, Any]]:
    """Every result row, setting by setting, defense by defense, vendor by vendor.

    Returns:
        (rows, labels): labels maps "clean/true", "<row key>/clean|triggered" and
        "<attack>/triggered/true" to per-image labels (the arrays of labels.npz).
    """
    rows, seen = [], set()
    labels: dict[str, Any] = {"clean/true": judge.sets[None].labels.numpy()}
    for setting in settings:
        for defense in judge.options.defenses:
            for attack in judge.options.vendors:
                if (attack, setting.output_key(defense), setting.purifications(defense)) in seen:
                    continue  # none/blur do not change with λ, S, η or K: one row each, not one per setting
                seen.add((attack, setting.output_key(defense), setting.purifications(defense)))
                rows.append(_evaluate_row(judge, attack, defense, setting, labels))
    return rows, labels


def _run_meta(
    options: EvalOptions,
    model_meta: dict[str, Any],
    local_defenses: Sequence[Defense],
    gateway: GatewayClient | None,
    model: EpsModel | None,
    started: float,
) -> dict[str, Any]:
    """The report's metadata: options, diffusion model, vendors, gateway, dtype, threads, elapsed time."""
    return {
        "options": _options_meta(options),
        "diffusion_model": model_meta,
        "vendors": {a.value: _vendor_meta(options, a) for a in options.vendors if local_defenses},
        "gateway_purification": gateway.purification if gateway is not None else None,
        "model_dtype": None if model is None else model.info.dtype,
        "torch_threads": torch.get_num_threads(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


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
        split = _test_images(options.n)
        vendors = _load_vendors(options, local_defenses)
        model, model_meta = None, _model_meta(options)  # read before loading: a trainer may re-export meanwhile
        if any(defense.needs_model for defense in local_defenses):
            model = load_eps_model(options.model_path, options.device, options.dtype.resolve(options.device))
        judge = _Judge(
            options, _image_sets(split, options.vendors), InProcessDefender(model, options.device), vendors, gateway
        )
        judge.progress = _eval_progress(judge, options, settings, gateway)
        rows, labels = _evaluate_rows(judge, settings)
        grids = _grids(judge, options, settings[0])
        meta = _run_meta(options, model_meta, local_defenses, gateway, model, started)
    report = EvalReport(tuple(rows), tuple(settings), varying_knobs(settings), meta)
    written = write_report(report, grids, options.out_dir)
    # Per-image labels behind every row (the vendor's answer per image, majority over votes): what
    # analyses beyond the rates need, e.g. bench/shadow_alarm.py's raw-vs-purified disagreements.
    np.savez_compressed(options.out_dir / LABELS_FILE, **labels)
    return written


def _gateway(options: EvalOptions) -> contextlib.AbstractContextManager[GatewayClient | None]:
    """The gateway client to use, or None (in process), as a context manager that closes it."""
    if options.gateway_url is None:
        return contextlib.nullcontext()
    return GatewayClient(options.gateway_url, timeout_s=options.gateway_timeout_s)
