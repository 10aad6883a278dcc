"""What an evaluation writes: results.json, a markdown table, an image grid per attack, a sweep plot.

Plots use matplotlib's object API on an Agg canvas (`Figure` + `savefig`), never pyplot, so no
global figure state or display backend is touched.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.backdoor.attacks import Attack
from service.backdoor.metrics import DefenseScores
from service.defense_eval.defenses import Defense, DefenseSetting
from service.defense_eval.sweep import SweepKnob, setting_label
from service.defense_eval.worst_case import Extreme, WorstCaseRow, worst_case_rows

RESULTS_FILE = "results.json"
LABELS_FILE = "labels.npz"
"""Per-image labels: "<labels_key>/clean", "<labels_key>/triggered", "<attack>/triggered/true", "clean/true"."""
TABLE_FILE = "results.md"
SWEEP_PLOT_FILE = "sweep.png"
GRID_FILE = "grid-{attack}.png"


@dataclass(frozen=True)
class ResultRow:
    """One (setting, defense, attack) cell of the evaluation.

    Attributes:
        purifications_per_image: defended copies per image (K for ZIP with votes, else 1).
        upstream_calls_per_image: vendor calls per image (one per defended copy).
        purify_s_per_image: measured seconds of defense compute per image (× K), 0 for `none`.
        forwards_per_image: counted ε-model forwards per image (× K), 0 without the model.
    """

    attack: Attack
    defense: Defense
    setting: DefenseSetting
    scores: DefenseScores
    purifications_per_image: int
    upstream_calls_per_image: int
    purify_s_per_image: float
    forwards_per_image: float = 0.0


@dataclass(frozen=True)
class GridImages:
    """The rows of one attack's picture, each (G, C, H, W) in [-1, 1]; `purified` is None without ZIP."""

    attack: Attack
    clean: torch.Tensor
    triggered: torch.Tensor
    degraded: torch.Tensor
    purified: torch.Tensor | None


@dataclass(frozen=True)
class EvalReport:
    """Everything one `run_eval` measured.

    Attributes:
        rows: one per (setting, defense, attack), in that nesting order.
        settings: the evaluated settings (one, or a sweep's grid).
        swept: the knobs that vary between settings (empty without a sweep).
        meta: JSON-ready context: options, diffusion model and its training steps, vendor cards,
            throughput, the gateway's purification settings, elapsed seconds.
        files: what `write_report` wrote, by kind.
    """

    rows: tuple[ResultRow, ...]
    settings: tuple[DefenseSetting, ...]
    swept: tuple[SweepKnob, ...]
    meta: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def row(self, attack: Attack, defense: Defense, setting: DefenseSetting | None = None) -> ResultRow:
        """The row of an attack and defense at `setting` (default the first); none/blur rows serve every setting.

        Raises:
            KeyError: no such row.
        """
        setting = setting or self.settings[0]
        for row in self.rows:
            # none/blur rows are written once for all the settings that share their output.
            if (
                row.attack is attack
                and row.defense is defense
                and (
                    row.setting.output_key(defense) == setting.output_key(defense)
                    and row.purifications_per_image == setting.purifications(defense)
                )
            ):
                return row
        raise KeyError(f"no row for {attack.value}/{defense.value} at {setting.describe()}")

    def worst_case(self) -> tuple[WorstCaseRow, ...]:
        """The worst case over the attacks, one row per (defense, setting) (see `worst_case.py`)."""
        return worst_case_rows(self.rows)


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined rate (empty set) is written as null."""
    return None if math.isnan(value) else round(value, 4)


def labels_key(attack: Attack, defense: Defense, setting: DefenseSetting) -> str:
    """Where a row's per-image labels sit in labels.npz (also each row's `labels_key` in results.json)."""
    return f"{attack.value}/{defense.value}/{setting.describe()}"


def _setting_json(setting: DefenseSetting) -> dict[str, Any]:
    values = dataclasses.asdict(setting)
    if math.isinf(setting.guidance_power):
        values["guidance_power"] = "inf"
    return values


def results_json(report: EvalReport) -> dict[str, Any]:
    """The report as a JSON-ready dict (NaN → null, λ = ∞ → "inf")."""
    rows = [
        {
            "attack": row.attack.value,
            "defense": row.defense.value,
            "setting": _setting_json(row.setting),
            "labels_key": labels_key(row.attack, row.defense, row.setting),
            "clean_accuracy": _number(row.scores.clean_accuracy),
            "attack_success_rate": _number(row.scores.attack_success_rate),
            "poisoned_accuracy": _number(row.scores.poisoned_accuracy),
            "clean_items": row.scores.clean_items,
            "poisoned_items": row.scores.poisoned_items,
            "purifications_per_image": row.purifications_per_image,
            "upstream_calls_per_image": row.upstream_calls_per_image,
            "purify_s_per_image": round(row.purify_s_per_image, 4),
            "forwards_per_image": round(row.forwards_per_image, 2),
        }
        for row in report.rows
    ]
    return {
        "meta": report.meta,
        "swept": [knob.value for knob in report.swept],
        "rows": rows,
        "worst_case": [_worst_case_json(worst) for worst in report.worst_case()],
    }


def _worst_case_json(worst: WorstCaseRow) -> dict[str, Any]:
    """A worst-case row: each worst value with the attack that reached it (null when undefined)."""

    def extreme(name: str, value: Extreme) -> dict[str, Any]:
        return {name: _number(value.value), f"{name}_attack": None if value.attack is None else value.attack.value}

    return {
        "defense": worst.defense.value,
        "setting": _setting_json(worst.setting),
        "attacks": [attack.value for attack in worst.attacks],
        **extreme("max_attack_success_rate", worst.max_attack_success_rate),
        **extreme("max_clean_accuracy_drop", worst.max_clean_accuracy_drop),
        **extreme("min_poisoned_accuracy", worst.min_poisoned_accuracy),
        **extreme("min_clean_accuracy", worst.min_clean_accuracy),
        "purifications_per_image": worst.purifications_per_image,
        "forwards_per_image": round(worst.forwards_per_image, 2),
        "upstream_calls_per_image": worst.upstream_calls_per_image,
    }


def _rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _setting_cell(defense: Defense, setting: DefenseSetting) -> str:
    if defense is Defense.NONE:
        return "—"
    if defense is Defense.BLUR:
        return f"A⁺A x, {setting.transforms.split(',')[0]}"
    if defense is Defense.SHRINKPAD:
        return f"shrink {setting.shrink_px} px, pad back"
    if defense is Defense.DIFFPURE:
        return f"t = {setting.diffpure_noise:g}·T, S={setting.steps}"
    if defense is Defense.LOCAL:
        return f"localise + restore, S={setting.steps}"
    return setting.describe()


def _extreme_cell(extreme: Extreme, signed: bool = False) -> str:
    """ "0.123 (sig)"; a drop is shown as the signed ΔCA, like the per-attack table."""
    if extreme.attack is None:
        return "n/a"
    value = f"{0.0 - extreme.value:+.3f}" if signed else f"{extreme.value:.3f}"  # 0.0 −: no "−0.000"
    return f"{value} ({extreme.attack.value})"


def render_worst_case(report: EvalReport) -> str:
    """The worst-case rows as a markdown table: one per (defense, setting), over the evaluated attacks."""
    lines = [
        "| defense | setting | attacks | max ASR | worst ΔCA vs none | min PA | min CA | forwards / image "
        "| vendor calls / image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for worst in report.worst_case():
        lines.append(
            f"| {worst.defense.value} | {_setting_cell(worst.defense, worst.setting)} | {len(worst.attacks)} | "
            f"{_extreme_cell(worst.max_attack_success_rate)} | {_extreme_cell(worst.max_clean_accuracy_drop, True)} | "
            f"{_extreme_cell(worst.min_poisoned_accuracy)} | {_extreme_cell(worst.min_clean_accuracy)} | "
            f"{worst.forwards_per_image:.1f} | {worst.upstream_calls_per_image} |"
        )
    return "\n".join(lines) + "\n"


def render_markdown(report: EvalReport) -> str:
    """The results as markdown: one row per (setting, defense, attack), ΔCA against `none`; then the worst case."""
    lines = [
        "| attack | defense | setting | CA | ASR | PA | ΔCA vs none | purifications / image | s / image "
        "| forwards / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        try:
            baseline = report.row(row.attack, Defense.NONE, row.setting).scores.clean_accuracy
            delta = f"{row.scores.clean_accuracy - baseline:+.3f}"
        except KeyError:
            delta = "n/a"
        lines.append(
            f"| {row.attack.value} | {row.defense.value} | {_setting_cell(row.defense, row.setting)} | "
            f"{_rate(row.scores.clean_accuracy)} | "
            f"{_rate(row.scores.attack_success_rate)} | {_rate(row.scores.poisoned_accuracy)} | {delta} | "
            f"{row.purifications_per_image} | {row.purify_s_per_image:.3f} | {row.forwards_per_image:.1f} |"
        )
    first = report.rows[0].scores if report.rows else None
    if first is not None:
        lines.append("")
        lines.append(
            f"CA on {first.clean_items} clean test images; ASR and PA on the triggered copies of the "
            f"{first.poisoned_items} whose true label is not the target."
        )
        lines += [
            "",
            "Worst case over the attacks (the attack that reached each value in brackets; ΔCA "
            "against `none` on the same vendor):",
            "",
            render_worst_case(report).rstrip("\n"),
        ]
    return "\n".join(lines) + "\n"


def _show(ax: Any, image: torch.Tensor) -> None:
    pixels = (image.detach().float().cpu().clamp(-1, 1) + 1) / 2
    if pixels.shape[0] == 1:
        ax.imshow(pixels[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(pixels.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def write_image_grid(grid: GridImages, path: Path) -> Path:
    """A PNG with one row per stage (clean, triggered, degraded A⁺A x, purified) and one column per image.

    Returns:
        `path`.
    """
    stages = [("clean", grid.clean), ("triggered", grid.triggered), ("degraded A⁺A x", grid.degraded)]
    if grid.purified is not None:
        stages.append(("purified (ZIP)", grid.purified))
    columns = grid.clean.shape[0]
    figure = Figure(figsize=(1.1 * columns + 1.2, 1.15 * len(stages) + 0.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(stages), columns, squeeze=False)
    for row, (name, images) in enumerate(stages):
        for column in range(columns):
            _show(axes[row][column], images[column])
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    figure.suptitle(f"{grid.attack.value}: triggered test images (true label ≠ target)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def write_sweep_plot(report: EvalReport, path: Path) -> Path:
    """CA and ASR of ZIP against the swept settings, one line per attack; `none`'s CA dashed.

    Returns:
        `path`.

    Raises:
        ValueError: the report has no ZIP rows.
    """
    zip_rows = [row for row in report.rows if row.defense is Defense.ZIP]
    if not zip_rows:
        raise ValueError("the sweep plot needs the zip defense in the evaluation")
    labels = [setting_label(setting, report.swept) for setting in report.settings]
    positions = list(range(len(labels)))
    figure = Figure(figsize=(max(6.0, 0.9 * len(labels) + 2), 6.5))
    FigureCanvasAgg(figure)
    ca_axis, asr_axis = figure.subplots(2, 1, sharex=True)
    attacks = list(dict.fromkeys(row.attack for row in zip_rows))
    for index, attack in enumerate(attacks):
        color = f"C{index}"
        rows = [report.row(attack, Defense.ZIP, setting) for setting in report.settings]
        ca_axis.plot(positions, [r.scores.clean_accuracy for r in rows], "o-", color=color, label=attack.value)
        asr_axis.plot(positions, [r.scores.attack_success_rate for r in rows], "o-", color=color, label=attack.value)
        baseline = [row for row in report.rows if row.attack is attack and row.defense is Defense.NONE]
        if baseline:
            ca_axis.axhline(baseline[0].scores.clean_accuracy, color=color, linestyle="--", linewidth=0.8)
    ca_axis.set_ylabel("clean accuracy (CA)")
    ca_axis.set_title("ZIP: clean accuracy (dashed: no defense) and attack success", fontsize=10)
    asr_axis.set_ylabel("attack success rate (ASR)")
    asr_axis.axhline(0.05, color="gray", linestyle=":", linewidth=0.8)
    for axis in (ca_axis, asr_axis):
        axis.set_ylim(-0.03, 1.03)  # rates: a fixed scale keeps plots of different runs comparable
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    asr_axis.set_xticks(positions)
    asr_axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    asr_axis.set_xlabel(" × ".join(knob.value for knob in report.swept) or "setting")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def write_report(report: EvalReport, grids: Sequence[GridImages], out_dir: Path) -> EvalReport:
    """Write results.json, results.md, grid-<attack>.png per attack and (for a sweep with ZIP) sweep.png.

    Returns:
        The report with `files` filled in.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"table": out_dir / TABLE_FILE}
    files["table"].write_text(render_markdown(report))
    for grid in grids:
        files[f"grid-{grid.attack.value}"] = write_image_grid(
            grid, out_dir / GRID_FILE.format(attack=grid.attack.value)
        )
    if len(report.settings) > 1 and any(row.defense is Defense.ZIP for row in report.rows):
        files["sweep_plot"] = write_sweep_plot(report, out_dir / SWEEP_PLOT_FILE)
    files["results"] = out_dir / RESULTS_FILE
    report = dataclasses.replace(report, files=files)
    payload = results_json(report) | {"files": {kind: path.name for kind, path in files.items()}}
    files["results"].write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return report
