"""The worst case over the zoo, on a hand-made report: max ASR, max CA drop against `none`, min PA."""

from __future__ import annotations

import math

import pytest

from service.backdoor.attacks import Attack
from service.backdoor.metrics import DefenseScores
from service.defense_eval.defenses import Defense, DefenseSetting
from service.defense_eval.report import EvalReport, ResultRow, render_markdown, results_json
from service.defense_eval.worst_case import worst_case_rows
from service.purify.options import Method

STRONG = DefenseSetting("blur:2", 20, 0.25, method=Method.GLOBAL)
WEAK = DefenseSetting("blur:2", 20, 1.0, method=Method.GLOBAL)


def _row(
    attack: Attack, defense: Defense, ca: float, asr: float, pa: float, setting: DefenseSetting = STRONG, votes: int = 1
) -> ResultRow:
    return ResultRow(attack, defense, setting, DefenseScores(ca, asr, pa, 300, 268), votes, votes, 0.0)


# (CA, ASR, PA) per attack and defense; the vendors' clean accuracy differs without a defense.
HAND_MADE = (
    _row(Attack.BADNETS, Defense.NONE, 0.94, 1.00, 0.00),
    _row(Attack.SIG, Defense.NONE, 0.90, 0.99, 0.01),
    _row(Attack.ADAPTIVE, Defense.NONE, 0.92, 1.00, 0.00),
    _row(Attack.BADNETS, Defense.BLUR, 0.85, 0.07, 0.79),
    _row(Attack.SIG, Defense.BLUR, 0.84, 0.90, 0.08),
    _row(Attack.ADAPTIVE, Defense.BLUR, 0.86, 1.00, 0.00),
    _row(Attack.BADNETS, Defense.ZIP, 0.80, 0.02, 0.78),  # CA drop 0.14: the largest at λ = 0.25
    _row(Attack.SIG, Defense.ZIP, 0.79, 0.03, 0.70),  # drop 0.11, the lowest CA and PA
    _row(Attack.ADAPTIVE, Defense.ZIP, 0.81, 0.40, 0.55),  # drop 0.11, the highest ASR
    _row(Attack.BADNETS, Defense.ZIP, 0.88, 0.01, 0.85, WEAK),
    _row(Attack.SIG, Defense.ZIP, 0.86, math.nan, math.nan, WEAK),  # no victims: left out
    _row(Attack.ADAPTIVE, Defense.ZIP, 0.90, 0.95, 0.05, WEAK),
)


def test_one_worst_case_row_per_defense_and_setting_in_evaluation_order() -> None:
    worst = worst_case_rows(HAND_MADE)
    assert [(w.defense, w.setting.guidance_power) for w in worst] == [
        (Defense.NONE, 0.25),
        (Defense.BLUR, 0.25),
        (Defense.ZIP, 0.25),
        (Defense.ZIP, 1.0),
    ]
    assert all(w.attacks == (Attack.BADNETS, Attack.SIG, Attack.ADAPTIVE) for w in worst)


def test_worst_values_and_the_attacks_that_reach_them() -> None:
    none, blur, strong, weak = worst_case_rows(HAND_MADE)
    assert (none.max_clean_accuracy_drop.value, none.max_attack_success_rate.value) == (0.0, 1.0)
    assert blur.max_attack_success_rate.attack is Attack.ADAPTIVE and blur.max_attack_success_rate.value == 1.0
    assert blur.max_clean_accuracy_drop.value == pytest.approx(0.09)  # badnets 0.94 − 0.85
    assert strong.max_attack_success_rate.value == 0.40 and strong.max_attack_success_rate.attack is Attack.ADAPTIVE
    # each vendor's drop is against its own `none` row: badnets 0.14 beats SIG's 0.11, though SIG's CA is lowest
    assert strong.max_clean_accuracy_drop.value == pytest.approx(0.14)
    assert strong.max_clean_accuracy_drop.attack is Attack.BADNETS
    assert strong.min_clean_accuracy.value == 0.79 and strong.min_clean_accuracy.attack is Attack.SIG
    assert strong.min_poisoned_accuracy.value == 0.55 and strong.min_poisoned_accuracy.attack is Attack.ADAPTIVE
    # NaN (no victims) is skipped, not propagated and not read as 0
    assert weak.max_attack_success_rate.value == 0.95 and weak.min_poisoned_accuracy.value == 0.05


def test_a_metric_without_defined_values_is_nan_and_a_missing_baseline_gives_no_drop() -> None:
    rows = [_row(Attack.SIG, Defense.ZIP, 0.8, math.nan, math.nan)]
    (worst,) = worst_case_rows(rows)
    assert math.isnan(worst.max_attack_success_rate.value) and worst.max_attack_success_rate.attack is None
    assert math.isnan(worst.max_clean_accuracy_drop.value)  # no `none` row for the vendor
    assert worst.min_clean_accuracy.value == 0.8


def test_votes_make_their_own_group_and_duplicates_are_rejected() -> None:
    rows = [
        _row(Attack.SIG, Defense.ZIP, 0.8, 0.1, 0.7),
        _row(
            Attack.SIG,
            Defense.ZIP,
            0.85,
            0.05,
            0.75,
            DefenseSetting("blur:2", 20, 0.25, votes=3, method=Method.GLOBAL),
            votes=3,
        ),
    ]
    assert [w.purifications_per_image for w in worst_case_rows(rows)] == [1, 3]
    with pytest.raises(ValueError, match="twice"):
        worst_case_rows([rows[0], rows[0]])


def test_results_json_and_markdown_carry_the_worst_case() -> None:
    report = EvalReport(HAND_MADE, (STRONG, WEAK), (), {})
    payload = results_json(report)
    assert len(payload["rows"]) == len(HAND_MADE)  # the per-attack rows are unchanged
    zip_strong = payload["worst_case"][2]
    assert zip_strong["defense"] == "zip" and zip_strong["setting"]["guidance_power"] == 0.25
    assert (zip_strong["max_attack_success_rate"], zip_strong["max_attack_success_rate_attack"]) == (0.4, "adaptive")
    assert (zip_strong["max_clean_accuracy_drop"], zip_strong["max_clean_accuracy_drop_attack"]) == (0.14, "badnets")
    assert (zip_strong["min_poisoned_accuracy"], zip_strong["min_poisoned_accuracy_attack"]) == (0.55, "adaptive")
    assert payload["worst_case"][0]["max_clean_accuracy_drop"] == 0.0
    table = render_markdown(report)
    assert "| zip | blur:2 S=20 λ=0.25 η=1 K=1 | 3 | 0.400 (adaptive) | -0.140 (badnets) | 0.550 (adaptive) |" in table
    assert "| none | — | 3 | 1.000 (badnets) | +0.000 (badnets) |" in table
