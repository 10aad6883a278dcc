"""The worst case over the attack zoo: per (defense, setting), the maximum ASR and CA drop and the minimum PA.

A defense is as good as its worst attack (the worst case is the headline). This module
aggregates evaluated rows, a pure function of them:

- max ASR: the largest attack success rate of any attack;
- max CA drop: the largest `CA(none) − CA(defense)` over the vendors, each against the `none` row
  of the *same* vendor (vendors differ in clean accuracy), NaN when that row was not evaluated;
- min PA: the smallest poisoned accuracy.

Undefined rates (NaN: no victim images) are left out; a metric with no defined value is NaN.
Each worst value names the attack that reached it (the first such, in evaluation order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.backdoor.attacks import Attack
from service.defense_eval.defenses import Defense, DefenseSetting

if TYPE_CHECKING:  # report.py imports this module; ResultRow is only needed for hints
    from service.defense_eval.report import ResultRow


@dataclass(frozen=True)
class Extreme:
    """A worst value and the attack that reached it (None when no attack has a defined value)."""

    value: float
    attack: Attack | None


@dataclass(frozen=True)
class WorstCaseRow:
    """The worst case of one defense at one setting over the attacks evaluated with it.

    Attributes:
        defense, setting: as in the rows aggregated (`setting` of the first; none/blur rows
            stand for every setting that shares their output).
        attacks: the attacks aggregated, in evaluation order.
        max_attack_success_rate, max_clean_accuracy_drop, min_poisoned_accuracy: see the module.
        min_clean_accuracy: the lowest CA of any vendor (not a drop: vendors differ without defense).
        purifications_per_image: as in the rows aggregated.
        forwards_per_image: the most ε-model forwards per image among them.
        upstream_calls_per_image: vendor calls per image, as in the rows.
    """

    defense: Defense
    setting: DefenseSetting
    attacks: tuple[Attack, ...]
    max_attack_success_rate: Extreme
    max_clean_accuracy_drop: Extreme
    min_poisoned_accuracy: Extreme
    min_clean_accuracy: Extreme
    purifications_per_image: int
    forwards_per_image: float = 0.0
    upstream_calls_per_image: int = 1


def _extreme(rows: Sequence[ResultRow], value: Callable[[ResultRow], float], pick: Callable[..., float]) -> Extreme:
    """`pick` (max or min) of the defined values, with the first attack that reached it."""
    defined = [(value(row), row.attack) for row in rows if not math.isnan(value(row))]
    if not defined:
        return Extreme(math.nan, None)
    worst = pick(v for v, _ in defined)
    return Extreme(worst, next(attack for v, attack in defined if v == worst))


def worst_case_rows(rows: Sequence[ResultRow]) -> tuple[WorstCaseRow, ...]:
    """One worst-case row per (defense, setting), in the order the rows first show each.

    Rows are grouped by what the defense's output depends on (`DefenseSetting.output_key`) and
    the number of purifications, as the evaluation writes them: `none` once, `blur` once per blur
    scale, ZIP once per setting.

    Args:
        rows: evaluated rows (each attack at most once per group).

    Returns:
        The worst-case rows.

    Raises:
        ValueError: an attack appears twice in one group.
    """
    groups: dict[tuple[object, ...], list[ResultRow]] = {}
    for row in rows:
        key = (row.defense, row.setting.output_key(row.defense), row.purifications_per_image)
        group = groups.setdefault(key, [])
        if any(other.attack is row.attack for other in group):
            raise ValueError(f"{row.attack.value} appears twice for {row.defense.value} at {row.setting.describe()}")
        group.append(row)
    undefended = {row.attack: row.scores.clean_accuracy for row in rows if row.defense is Defense.NONE}

    def drop(row: ResultRow) -> float:
        return undefended.get(row.attack, math.nan) - row.scores.clean_accuracy

    return tuple(
        WorstCaseRow(
            defense=group[0].defense,
            setting=group[0].setting,
            attacks=tuple(row.attack for row in group),
            max_attack_success_rate=_extreme(group, lambda row: row.scores.attack_success_rate, max),
            max_clean_accuracy_drop=_extreme(group, drop, max),
            min_poisoned_accuracy=_extreme(group, lambda row: row.scores.poisoned_accuracy, min),
            min_clean_accuracy=_extreme(group, lambda row: row.scores.clean_accuracy, min),
            purifications_per_image=group[0].purifications_per_image,
            forwards_per_image=max(row.forwards_per_image for row in group),
            upstream_calls_per_image=group[0].upstream_calls_per_image,
        )
        for group in groups.values()
    )
