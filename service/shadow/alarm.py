"""The backdoor alarm's rule, as docker/alerts.yml's `ZipgateSuspectedBackdoorTarget` states it.

One raw label holds at least `min_count` of the disagreements in a window, and more than `share`
of them all. The Prometheus rule is what pages in production; this copy lets the demo read the
alarm off a gateway's own /metrics and lets bench/shadow_alarm.py replay request streams through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from service.shadow.labels import OTHER_LABEL

DISAGREEMENTS_METRIC = "zipgate_shadow_disagreements"  # the parser drops the counter's _total suffix


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


def disagreements_by_raw_label(metrics_text: str) -> dict[str, float]:
    """Disagreements per raw label, summed over purified labels, from a gateway's /metrics text."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != DISAGREEMENTS_METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                raw = sample.labels["raw_label"]
                totals[raw] = totals.get(raw, 0.0) + sample.value
    return totals
