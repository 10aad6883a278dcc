"""The "Shadow captures" view's data: the counters per raw label, the two alarms' state, a page of captures.

Counts since start are read from the gateway's own registry (what `/metrics` serves, parsed as
the demo reads it); the alarms are the rules of `service.shadow.alarm` applied to the monitor's
per-minute history over the windows Prometheus uses (`service.shadow.history`). Prometheus pages
only after a rule has held for its `for:` duration; this shows whether the condition holds now.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import generate_latest

from service.api.gateway import Gateway
from service.shadow.alarm import AlarmRule, BaselineRule, comparisons_by_raw_label, disagreements_by_raw_label
from service.shadow.capture import CapturedRecord, captured_records, read_record
from service.shadow.history import BASELINE_S, WINDOW_S
from service.shadow.policy import DefensePolicy
from service.shadow.targets import NamedTarget

PAGE_SIZE = 10


@dataclass(frozen=True)
class LabelRow:
    """One raw label's counts: since start (the counters), and in the alarm window and its baseline."""

    label: str
    comparisons: float
    disagreements: float
    window_disagreements: float
    window_comparisons: float
    baseline_rate: float | None  # disagreements per comparison in the baseline; None without comparisons


@dataclass(frozen=True)
class AlarmState:
    """One alert rule, judged now."""

    alert: str
    rule: str  # the condition, in words
    named: list[str]  # the raw labels it names; empty: silent
    note: str = ""


@dataclass(frozen=True)
class ShadowPage:
    """Everything the view shows."""

    shadow_enabled: bool
    capture_dir: Path | None
    capture_disabled: bool
    rows: list[LabelRow]
    alarms: list[AlarmState]
    records: list[CapturedRecord]
    page: int
    pages: int
    total_records: int
    policy: DefensePolicy = DefensePolicy.ALWAYS  # the closed loop: which answer /predict returns
    named_targets: list[NamedTarget] = dataclasses.field(default_factory=list)  # oldest first


def shadow_page(gateway: Gateway, page: int) -> ShadowPage:
    """The view for `page` (1 = the newest `PAGE_SIZE` captures; past the last page: the last page)."""
    directory = gateway.settings.shadow_capture_dir
    names = [] if directory is None else captured_records(directory)
    pages = max(1, math.ceil(len(names) / PAGE_SIZE))
    page = min(max(page, 1), pages)
    shown = names[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    records = [] if directory is None else [r for name in shown if (r := read_record(directory, name)) is not None]
    records = [
        dataclasses.replace(r, raw_response=_compact(r.raw_response), purified_response=_compact(r.purified_response))
        for r in records
    ]
    rows, alarms = _counts_and_alarms(gateway)
    return ShadowPage(
        shadow_enabled=gateway.shadow is not None,
        capture_dir=directory,
        capture_disabled=gateway.metrics.registry.get_sample_value("zipgate_shadow_capture_disabled") == 1,
        rows=rows,
        alarms=alarms,
        records=records,
        page=page,
        pages=pages,
        total_records=len(names),
        policy=gateway.settings.policy,
        named_targets=sorted(gateway.targets.named.values(), key=lambda target: target.since),
    )


def _counts_and_alarms(gateway: Gateway) -> tuple[list[LabelRow], list[AlarmState]]:
    text = generate_latest(gateway.metrics.registry).decode()
    comparisons, disagreements = comparisons_by_raw_label(text), disagreements_by_raw_label(text)
    share, baseline_rule = AlarmRule(), BaselineRule()
    share_state = AlarmState(
        "ZipgateSuspectedBackdoorTarget",
        f"one raw label holds ≥ {share.min_count:g} of the disagreements in the last {WINDOW_S // 60} minutes "
        f"and more than {share.share:.0%} of them",
        [],
    )
    baseline_state = AlarmState(
        "ZipgateDisagreementAboveBaseline",
        f"one raw label's disagreement rate in the last {WINDOW_S // 60} minutes stands above its own rate in the "
        f"{BASELINE_S // 3600} hours before (z ≥ {baseline_rule.z:g}, ≥ {baseline_rule.min_count:g} disagreements, "
        f"≥ {baseline_rule.min_excess:.0%} more)",
        [],
    )
    monitor = gateway.shadow
    if monitor is None:
        rows = [
            LabelRow(label, comparisons.get(label, 0.0), disagreements.get(label, 0.0), 0.0, 0.0, None)
            for label in sorted(set(comparisons) | set(disagreements))
        ]
        return rows, [share_state, baseline_state]
    windows = monitor.history.windows()
    rows = []
    for label in sorted(set(comparisons) | set(disagreements) | set(windows.window)):
        now = windows.window.get(label)
        before = windows.baseline.get(label)
        rows.append(
            LabelRow(
                label,
                comparisons.get(label, 0.0),
                disagreements.get(label, 0.0),
                now.disagreements if now else 0.0,
                now.comparisons if now else 0.0,
                before.disagreements / before.comparisons if before and before.comparisons else None,
            )
        )
    named = share.suspected_target({label: c.disagreements for label, c in windows.window.items()})
    recorded_h = max(0.0, windows.history_s - WINDOW_S) / 3600
    return rows, [
        AlarmState(share_state.alert, share_state.rule, [] if named is None else [named]),
        AlarmState(
            baseline_state.alert,
            baseline_state.rule,
            baseline_rule.suspected_targets(windows.window, windows.baseline),
            note=""
            if recorded_h >= BASELINE_S / 3600
            else f"this gateway has {recorded_h:.1f} of the {BASELINE_S // 3600} baseline hours so far",
        ),
    ]


def _compact(stored: str) -> str:
    """A stored answer on one line (as the try view shows answers); as stored when it is not JSON."""
    try:
        return json.dumps(json.loads(stored))
    except ValueError:
        return stored
