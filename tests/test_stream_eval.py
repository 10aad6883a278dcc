"""The stream evaluation of the closed loop, on label sets whose outcome follows from the rules.

The clean set: the vendor is right on every raw image, and the purified copy of one image in five
gets another label (spread over every label, so no label holds a majority of the disagreements).
The triggered set: the attack always works (raw label = the target) and purification always
undoes it (purified label = the true one). So under `on_alarm` every triggered image answered
before the alarm is a hit and none after it is: the stream ASR is the share that came before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.defense_eval.stream import (
    LabelledSet,
    StreamSpec,
    labelled_sets,
    simulate_stream,
    stream_table,
    write_stream_report,
)
from service.shadow.alarm import AlarmRule, BaselineRule
from service.shadow.policy import DefensePolicy

TARGET = 0
LABELS = 10


def _sets() -> tuple[LabelledSet, LabelledSet]:
    truth = np.arange(1000) % LABELS
    purified = truth.copy()
    changed = np.zeros(1000, dtype=bool)
    changed[np.random.default_rng(1).permutation(1000)[:200]] = True  # one in five, spread over the labels
    purified[changed] = (truth[changed] + 1 + np.arange(changed.sum()) % (LABELS - 1)) % LABELS
    victims = 1 + np.arange(900) % (LABELS - 1)  # never the target
    return (
        LabelledSet(truth, truth.copy(), purified),
        LabelledSet(victims, np.full(900, TARGET), victims.copy()),
    )


def _run(policy: DefensePolicy, share: float, **spec: int) -> object:
    clean, triggered = _sets()
    values = {"requests_per_minute": 100, "baseline_minutes": 120, "attack_minutes": 120, **spec}
    return simulate_stream(clean, triggered, TARGET, policy, StreamSpec(share, **values))


def test_always_answers_purified_so_no_attack_gets_through_and_clean_accuracy_pays_the_disagreements() -> None:
    scores = _run(DefensePolicy.ALWAYS, 0.1)
    assert scores.attack_success_rate == 0.0 and scores.poisoned_accuracy == 1.0
    assert scores.raw_clean_accuracy == 1.0
    assert scores.clean_accuracy == pytest.approx(0.8, abs=0.02)  # one clean image in five is repainted
    assert scores.purified_answer_share == 1.0


def test_on_alarm_hits_are_exactly_the_triggered_images_before_the_alarm() -> None:
    scores = _run(DefensePolicy.ON_ALARM, 0.1)
    assert scores.detection_minutes is not None and scores.detection_minutes <= 10
    assert 0 < scores.triggered_before_alarm < scores.triggered
    assert scores.attack_success_rate == scores.triggered_before_alarm / scores.triggered
    assert scores.false_names == ()
    # Clean images are answered raw, except the target-labelled tenth after the alarm: purified, 1 in 5 wrong.
    after_alarm = (120 - scores.detection_minutes) / 120
    assert scores.clean_accuracy == pytest.approx(1 - 0.1 * 0.2 * after_alarm, abs=0.01)


def test_on_alarm_on_clean_traffic_names_nothing_and_costs_nothing() -> None:
    scores = _run(DefensePolicy.ON_ALARM, 0.0)
    assert scores.false_names == () and scores.detection_minutes is None
    assert scores.clean_accuracy == scores.raw_clean_accuracy == 1.0
    assert scores.purified_answer_share == 0.0


def test_an_attacker_below_the_rules_minimum_count_is_never_named_and_always_gets_through() -> None:
    # 100 images a minute, p = 0.001: about 3 triggered images per 30-minute window, below both minimum counts.
    assert min(AlarmRule().min_count, BaselineRule().min_count) / 2 > 0.001 * 100 * 30
    scores = _run(DefensePolicy.ON_ALARM, 0.001, attack_minutes=360)
    assert scores.detection_minutes is None and scores.triggered > 0
    assert scores.attack_success_rate == 1.0


def test_until_alarm_protects_before_the_alarm_and_answers_raw_after() -> None:
    scores = _run(DefensePolicy.UNTIL_ALARM, 0.1)
    assert scores.attack_success_rate == 0.0
    assert scores.detection_minutes is not None
    # Only the minutes before the alarm paid for purified clean answers.
    assert _run(DefensePolicy.ALWAYS, 0.1).clean_accuracy < scores.clean_accuracy <= 1.0


def test_the_same_seed_gives_the_same_stream_and_the_table_names_every_policy() -> None:
    rows = [("synthetic", 0.1, _run(policy, 0.1)) for policy in DefensePolicy]
    assert _run(DefensePolicy.ON_ALARM, 0.1) == rows[1][2]
    table = stream_table(rows)
    assert all(f"| {policy} |" in table for policy in DefensePolicy)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_0_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="attack_share"):
        StreamSpec(share)


def test_the_report_reads_an_evaluations_labels_and_writes_every_attack_share_and_policy(tmp_path: Path) -> None:
    clean, triggered = _sets()
    setting = "local polish=0.2 S=10 η=1 K=1"
    labels = {"clean/true": clean.truth}
    for attack in ("sig", "wanet"):
        labels |= {
            f"{attack}/triggered/true": triggered.truth,
            f"{attack}/none/—/clean": clean.raw,
            f"{attack}/none/—/triggered": triggered.raw,
            f"{attack}/zip/{setting}/clean": clean.purified,
            f"{attack}/zip/{setting}/triggered": triggered.purified,
        }
    np.savez(tmp_path / "labels.npz", **labels)
    text = write_stream_report(tmp_path / "labels.npz", TARGET, [0.1, 0.3]).read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| sig", "| wanet"))]
    assert len(rows) == 2 * 2 * len(DefensePolicy)
    assert all(f"| {policy} |" in text for policy in DefensePolicy)


def test_the_report_names_a_missing_row() -> None:
    clean, triggered = _sets()
    labels = {"clean/true": clean.truth, "sig/triggered/true": triggered.truth, "sig/none/—/clean": clean.raw}
    with pytest.raises(ValueError, match="exactly one zip row"):
        labelled_sets(labels, "sig")


def test_the_rules_are_the_callers_a_rule_that_cannot_fire_leaves_every_attack_through() -> None:
    clean, triggered = _sets()
    silent = (AlarmRule(min_count=10**9), BaselineRule(min_excess=2.0))
    spec = StreamSpec(0.1, requests_per_minute=100, baseline_minutes=60, attack_minutes=60)
    scores = simulate_stream(clean, triggered, TARGET, DefensePolicy.ON_ALARM, spec, rules=silent)
    assert scores.detection_minutes is None and scores.attack_success_rate == 1.0
