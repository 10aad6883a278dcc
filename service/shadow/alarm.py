"""The backdoor alarm's two rules, as docker/alerts.yml states them.

`AlarmRule` (`ZipgateSuspectedBackdoorTarget`): one raw label holds at least `min_count` of the
disagreements in a window, and more than `share` of them all. It needs no history, but an attack
must be a sizeable share of the traffic (docs/defense.md, "Shadow alarm").

`BaselineRule` (`ZipgateDisagreementAboveBaseline`): one raw label's disagreement *rate* in the
window stands far above its own rate in a long baseline window before it. Clean disagreement rates
differ from label to label (the defense's cost is not spread evenly), so each label is held to its
own history; this catches the low-rate attacker who hides under the other labels' disagreements.

The Prometheus rules are what page in production; these copies let the demo read the alarm off a
gateway's own /metrics and let bench/shadow_alarm.py replay request streams through them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from service.shadow.labels import OTHER_LABEL

DISAGREEMENTS_METRIC = "zipgate_shadow_disagreements"  # the parser drops the counter's _total suffix
COMPARISONS_METRIC = "zipgate_shadow_comparisons"


@dataclass(frozen=True)
class AlarmRule:
    """The alert's condition (the rule file's 30-minute window is the caller's to apply)."""

    min_count: float = 20
    share: float = 0.5

    def suspected_target(self, disagreements: Mapping[str, float]) -> str | None:
        """The raw label the alarm names, or None; `disagreements` = count per raw label in the window.

        "other" (labels past the cardinality cap) counts in the total but is never named.
        """
        total = sum(disagreements.values())
        named = [(count, label) for label, count in disagreements.items() if label != OTHER_LABEL]
        if not named:
            return None
        count, label = max(named)
        return label if count >= self.min_count and count > self.share * total else None


class LabelCounts(NamedTuple):
    """One raw label's shadow counts in a window: disagreements among comparisons."""

    disagreements: float
    comparisons: float


def excess_disagreement_z(
    disagreements: np.ndarray | float,
    comparisons: np.ndarray | float,
    baseline_disagreements: np.ndarray | float,
    baseline_comparisons: np.ndarray | float,
) -> np.ndarray:
    """How far the window's disagreement rate stands above the baseline's, in standard-normal units.

    The signed root of the likelihood-ratio statistic for two binomials (the G-test):
        G = 2 [c h(d/c) + C h(D/C) - (c + C) h(p)],  h(r) = r ln r + (1 - r) ln(1 - r),  p = (d + D) / (c + C)
        z = sign(d/c - D/C) sqrt(G)
    Why not the textbook z = (d/c - D/C) / sqrt(p (1 - p) (1/c + 1/C)): at the alert's threshold its tail
    is up to 30 times heavier than the normal one for rare disagreements (p = 0.05, c = 100: 9e-6 instead
    of 3e-7, since a binomial's right tail is skewed); the signed root's stays within about 2x of the
    normal tail (at most 6e-7 for rates 5-75% and 30-300 comparisons; tests/test_baseline_alarm.py
    computes both exactly).
    The windows must not overlap (the baseline ends where the window starts), or the test is blunted.
    NaN where it is undefined (no comparisons on either side): such a label never fires.
    Elementwise over arrays, so the bench can score every window of a replay at once.
    """
    d, c = np.asarray(disagreements, dtype=float), np.asarray(comparisons, dtype=float)
    big_d, big_c = np.asarray(baseline_disagreements, dtype=float), np.asarray(baseline_comparisons, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half_g = (
            _xlogx(d) + _xlogx(c - d) - _xlogx(c)
            + _xlogx(big_d) + _xlogx(big_c - big_d) - _xlogx(big_c)
            - _xlogx(d + big_d) - _xlogx(c + big_c - d - big_d) + _xlogx(c + big_c)
        )  # fmt: skip
        z = np.sign(d / c - big_d / big_c) * np.sqrt(np.maximum(2 * half_g, 0.0))
        defined = (c > 0) & (big_c > 0)
    return np.where(defined, z, np.nan)


def _xlogx(x: np.ndarray) -> np.ndarray:
    """x ln x, with 0 ln 0 = 0 (an empty cell contributes nothing)."""
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


@dataclass(frozen=True)
class BaselineRule:
    """The alert's condition: z >= `z`, at least `min_count` disagreements in the window, and a rate at
    least `min_excess` above the baseline's.

    `z` = 5 keeps false alarms rare although up to `SHADOW_MAX_LABELS` labels are tested every
    evaluation (a one-sided normal tail of 3e-7 per label and evaluation); `min_count` keeps a quiet
    label's handful of disagreements from firing on small-number noise; `min_excess` (10 points of
    disagreement rate) keeps a busy label from paging on a small drift of its clean rate, since z
    grows with the square root of the counts.
    """

    z: float = 5.0
    min_count: float = 10
    min_excess: float = 0.1

    def fires(
        self,
        disagreements: np.ndarray | float,
        comparisons: np.ndarray | float,
        baseline_disagreements: np.ndarray | float,
        baseline_comparisons: np.ndarray | float,
    ) -> np.ndarray:
        """Elementwise over arrays of counts (window, then baseline): whether the rule fires."""
        d, c = np.asarray(disagreements, dtype=float), np.asarray(comparisons, dtype=float)
        big_d, big_c = np.asarray(baseline_disagreements, dtype=float), np.asarray(baseline_comparisons, dtype=float)
        z = excess_disagreement_z(d, c, big_d, big_c)
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = d / c - big_d / big_c
        return (z >= self.z) & (d >= self.min_count) & (excess >= self.min_excess)  # NaN compares false

    def suspected_targets(self, window: Mapping[str, LabelCounts], baseline: Mapping[str, LabelCounts]) -> list[str]:
        """Raw labels (never "other") whose window rate stands above their baseline; most extreme first."""
        scored = []
        for label, now in window.items():
            before = baseline.get(label)
            if label == OTHER_LABEL or before is None or not self.fires(*now, *before):
                continue
            scored.append((float(excess_disagreement_z(*now, *before)), label))
        return [label for _, label in sorted(scored, reverse=True)]


def disagreements_by_raw_label(metrics_text: str) -> dict[str, float]:
    """Disagreements per raw label, summed over purified labels, from a gateway's /metrics text."""
    return counter_by_raw_label(metrics_text, DISAGREEMENTS_METRIC)


def comparisons_by_raw_label(metrics_text: str) -> dict[str, float]:
    """Comparisons per raw label, from a gateway's /metrics text."""
    return counter_by_raw_label(metrics_text, COMPARISONS_METRIC)


def counter_by_raw_label(metrics_text: str, metric: str) -> dict[str, float]:
    """A counter's value per `raw_label`, summed over its other labels (`metric` without `_total`)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != metric:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                raw = sample.labels["raw_label"]
                totals[raw] = totals.get(raw, 0.0) + sample.value
    return totals
