"""The baseline alarm (docker/alerts.yml `ZipgateDisagreementAboveBaseline`): its z statistic against
invariants and the null distribution, the rule's conditions, and bench/shadow_alarm.py's replay of it.

The PromQL copy of the statistic is checked against `excess_disagreement_z` in
tests/prometheus/alerts_test.yml (promql_expr_test).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bench.shadow_alarm import BaselineWindow, Pairs, baseline_false_alarm_streams, first_baseline_alarm
from service.metrics import ShadowMetrics
from service.shadow.alarm import (
    BaselineRule,
    LabelCounts,
    comparisons_by_raw_label,
    disagreements_by_raw_label,
    excess_disagreement_z,
)

# Clean traffic: 10 classes, 20% disagreements on every raw label. Triggered: always (0 → another label).
CLEAN = np.array([(c, c if i % 5 else (c + 1) % 10) for i in range(100) for c in range(10)])
TRIGGERED = np.array([(0, 1 + i % 9) for i in range(90)])
PAIRS = Pairs(CLEAN, TRIGGERED)


def test_z_is_zero_when_the_rates_match_and_changes_sign_when_the_windows_swap() -> None:
    assert excess_disagreement_z(30, 100, 300, 1000) == 0
    z = float(excess_disagreement_z(45, 100, 300, 1000))
    assert z > 0
    assert float(excess_disagreement_z(300, 1000, 45, 100)) == pytest.approx(-z)


def test_z_meets_the_one_sample_likelihood_ratio_when_the_baseline_is_exact() -> None:
    # With a baseline of a billion comparisons its rate b is known: z^2 = 2 [d ln(r/b) + (c-d) ln((1-r)/(1-b))].
    d, c, b = 45, 100, 0.3
    r = d / c
    one_sample = math.sqrt(2 * (d * math.log(r / b) + (c - d) * math.log((1 - r) / (1 - b))))
    assert float(excess_disagreement_z(d, c, b * 1e9, 1e9)) == pytest.approx(one_sample, rel=1e-4)
    assert float(excess_disagreement_z(15, 100, 0.3e9, 1e9)) < 0  # fewer disagreements than before: negative


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k]
    return np.exp(np.array(logs) + k * math.log(p) + (n - k) * math.log(1 - p))


def _wald_z(d: np.ndarray, c: float, big_d: float, big_c: float) -> np.ndarray:
    pooled = (d + big_d) / (c + big_c)
    return (d / c - big_d / big_c) / np.sqrt(pooled * (1 - pooled) * (1 / c + 1 / big_c))


@pytest.mark.parametrize("comparisons", [30, 100, 300])
@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5, 0.75])
def test_the_exact_false_alarm_probability_stays_near_the_normal_tail(comparisons: int, rate: float) -> None:
    # Exactly, over every possible window count d ~ Binomial(c, rate), against a day's baseline at that rate:
    # P(z >= 5 and d >= 10) per label and evaluation, against the normal tail of 2.9e-7.
    rule = BaselineRule()
    pmf, d = _binomial_pmf(comparisons, rate), np.arange(comparisons + 1)
    big_c = 4800.0
    z = excess_disagreement_z(d, comparisons, rate * big_c, big_c)
    assert pmf[(z >= rule.z) & (d >= rule.min_count)].sum() < 6e-7


def test_the_textbook_z_test_would_alarm_thirty_times_too_often_on_rare_disagreements() -> None:
    # Why the likelihood ratio: at 5% disagreements and 100 comparisons, the pooled Wald z's tail is 9e-6.
    pmf, d = _binomial_pmf(100, 0.05), np.arange(101)
    wald = pmf[(_wald_z(d, 100, 240, 4800) >= 5) & (d >= 10)].sum()
    ours = pmf[(excess_disagreement_z(d, 100, 240, 4800) >= 5) & (d >= 10)].sum()
    assert wald > 5e-6 and ours < 3e-7


def test_z_grows_with_the_square_root_of_the_evidence() -> None:
    z1 = float(excess_disagreement_z(45, 100, 300, 1000))
    assert float(excess_disagreement_z(45 * 4, 100 * 4, 300 * 4, 1000 * 4)) == pytest.approx(2 * z1, rel=1e-2)


def test_z_is_nan_without_comparisons_and_zero_when_nothing_can_differ() -> None:
    z = excess_disagreement_z(np.array([5, 0, 0, 4]), np.array([0, 10, 10, 4]), np.array([1, 0, 5, 40]), [10, 0, 0, 40])
    assert np.isnan(z[:3]).all()  # no window; no baseline (twice)
    assert z[3] == 0  # every comparison disagrees, in both windows: no excess
    assert float(excess_disagreement_z(0, 10, 0, 40)) == 0  # none ever disagrees


def test_z_is_standard_normal_when_nothing_changed() -> None:
    rng = np.random.default_rng(0)
    rate, n, big_n = 0.3, 400, 20_000
    z = excess_disagreement_z(rng.binomial(n, rate, 20_000), n, rng.binomial(big_n, rate, 20_000), big_n)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    assert (z >= 5).sum() == 0  # the alert's threshold: a one-sided tail of 3e-7


def test_rule_needs_z_the_minimum_count_the_minimum_excess_and_a_baseline_and_never_names_other() -> None:
    baseline = {label: LabelCounts(300, 1000) for label in ("0", "1", "2", "other")}
    baseline["4"] = LabelCounts(30_000, 100_000)
    window = {
        "0": LabelCounts(60, 100),  # z = 5.9: named
        "1": LabelCounts(9, 10),  # z = 4.0, and only 9: no
        "4": LabelCounts(3300, 10_000),  # z = 6.2 on 3 points of drift at high traffic: no
        "2": LabelCounts(33, 100),  # at its baseline: no
        "3": LabelCounts(90, 100),  # no baseline: no verdict
        "other": LabelCounts(90, 100),  # past the label cap: never named
    }
    assert BaselineRule().suspected_targets(window, baseline) == ["0"]
    assert BaselineRule(min_excess=0.0).suspected_targets(window, baseline) == ["4", "0"]  # the floor holds "4"
    assert BaselineRule(z=7).suspected_targets(window, baseline) == []
    assert BaselineRule(min_count=61).suspected_targets(window, baseline) == []
    assert BaselineRule(min_excess=0.31).suspected_targets(window, baseline) == []  # 60% is 30 points above 30%
    window["2"] = LabelCounts(80, 100)  # more extreme than "0": named first
    assert BaselineRule().suspected_targets(window, baseline) == ["2", "0"]


def test_comparisons_are_read_per_raw_label_from_the_gateways_metrics() -> None:
    registry = CollectorRegistry()
    metrics = ShadowMetrics(registry)
    metrics.comparisons.labels("0").inc(7)
    metrics.comparisons.labels("3").inc(2)
    metrics.disagreements.labels("0", "5").inc(4)
    text = generate_latest(registry).decode()
    assert comparisons_by_raw_label(text) == {"0": 7.0, "3": 2.0}
    assert disagreements_by_raw_label(text) == {"0": 4.0}


def test_an_all_triggered_stream_is_named_within_the_first_evaluations() -> None:
    # The first window after the onset still holds clean traffic (as in Prometheus), which dilutes the
    # target's rate: 10 of ~40 label-0 requests disagreeing at the first evaluation is not enough yet.
    rule = BaselineWindow(300, 48, BaselineRule())  # evaluated every 10 requests
    for seed in range(4):
        label, triggered, sent = first_baseline_alarm(PAIRS, rule, 1.0, np.random.default_rng(seed), 3_000)
        assert label == 0 and triggered == sent and sent in (20, 30)


def test_a_low_rate_attack_hidden_from_the_share_rule_is_named() -> None:
    # 10% triggered: label 0 disagrees on (0.09 * 0.2 + 0.1) / 0.19 = 62% of its requests instead of 20%.
    rule = BaselineWindow(1000, 48, BaselineRule())
    for seed in range(5):
        label, triggered, _ = first_baseline_alarm(PAIRS, rule, 0.1, np.random.default_rng(seed), max_requests=20_000)
        assert label == 0 and triggered is not None and triggered < 100


def test_clean_streams_raise_no_baseline_alarm() -> None:
    rule = BaselineWindow(1000, 48, BaselineRule())
    assert baseline_false_alarm_streams(PAIRS, rule, 10, np.random.default_rng(3), max_requests=20_000) == 0
    # The threshold is what keeps them quiet: at z >= 1 the same streams alarm.
    loose = BaselineWindow(1000, 48, BaselineRule(z=1.0))
    assert baseline_false_alarm_streams(PAIRS, loose, 10, np.random.default_rng(3), max_requests=20_000) == 10
