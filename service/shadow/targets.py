"""The backdoor targets this gateway holds as named: by a setting, its own alarm, an operator, Alertmanager or a peer.

The closed-loop policies (`service.shadow.policy`) purify the answers of images whose raw label is
a named target. A target is named five ways:

- `SETTING`: `SUSPECTED_TARGETS` at start-up (what an operator paged by the Prometheus alert rolls
  out to every replica);
- `ALARM`: the gateway's own copy of the two alarm rules (`service.shadow.alarm`) over its
  shadow history, judged as comparisons arrive (at most once per `JUDGE_EVERY_S`);
- `OPERATOR`: `PUT /targets/{label}` on one replica;
- `ALERTMANAGER`: the Prometheus alert over every replica's counters, delivered by Alertmanager's
  webhook to `POST /targets/alerts` (`service.api.routes_alerts`).
- `PEER`: another replica relayed a name it took from one of the three above (`TARGET_PEERS`,
  `service.shadow.peers`); `rule` says which. Relayed names are capped apart from the others (below).

A name holds until an operator clears it (`DELETE /targets/{label}`) or the gateway restarts:
an alarm that cleared itself when the attacker paused would hand the attacker back the raw
answers. Labels are as the shadow counters name them (bounded, capped), never "other".

The cap, `max_targets` (`SHADOW_MAX_LABELS`, the counters' cap on distinct labels: the names are
vendor labels, so the same number bounds them), applies to the names that come over HTTP, in two
buckets of `max_targets` each (`CAPPED_SOURCES`): operators and Alertmanager together, and peers. A
new label from a bucket that holds `max_targets` names raises `TargetsFull`; a label named already is
still a no-op, and `DELETE /targets/{label}` of one of the bucket's names frees a slot in it (clearing
the setting's or the alarm's frees none). Peers have their own bucket so that junk named on one
replica (by anyone, without an API key, or by a vendor steering its alarm) and relayed to every other
cannot take the slots of that replica's operators and Alertmanager, and the other way round. The
setting and the alarm are never refused, so names sent from outside cannot crowd out the alarm's
target: both are bounded before they reach the board, the setting by the configuration check (and
this constructor) at `max_targets` labels, the alarm by the counters' label cap, the same number
(its rules judge the capped labels and never name "other"). The board holds at most
4 × `max_targets` names.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from service.errors import TargetsFull
from service.shadow.alarm import AlarmRule, BaselineRule
from service.shadow.history import ShadowHistory
from service.shadow.labels import OTHER_LABEL
from service.shadow.settings import ShadowFields

logger = logging.getLogger(__name__)

JUDGE_EVERY_S = 0.25  # the rules sum the whole history (up to a day of minutes): not on every comparison
# SHADOW_MAX_LABELS' default (the gateway passes the setting): the counters' cap on distinct labels.
DEFAULT_MAX_TARGETS: int = ShadowFields.model_fields["shadow_max_labels"].default


class TargetSource(enum.StrEnum):
    """Who named a target."""

    SETTING = "setting"
    ALARM = "alarm"
    OPERATOR = "operator"
    ALERTMANAGER = "alertmanager"
    PEER = "peer"  # relayed by another replica (the request said so: it is a PUT like any other)


# The sources that reach the board over HTTP, by the bucket they are capped in (max_targets names each): operators
# and Alertmanager together, peers apart. The setting and the alarm are bounded before they reach the board.
CAPPED_SOURCES = {
    TargetSource.OPERATOR: "operators and Alertmanager",
    TargetSource.ALERTMANAGER: "operators and Alertmanager",
    TargetSource.PEER: "peers",
}
OUTSIDE_SOURCES = frozenset(CAPPED_SOURCES)


@dataclass(frozen=True)
class NamedTarget:
    """One named target: the raw label, who named it, when (Unix seconds), and the rule when an alarm or alert did
    (for a peer's name: the source that named it on that peer)."""

    label: str
    source: TargetSource
    since: float
    rule: str | None = None


class TargetBoard:
    """The named targets, and the alarm that adds to them.

    Args:
        registry: where `zipgate_named_target` is exported (1 per named label and source).
        initial: labels named by the setting (at most `max_targets` distinct ones).
        history: the shadow history the alarm rules judge, of capped labels; None: no alarm.
        max_targets: the most labels each bucket of outside sources names (`SHADOW_MAX_LABELS`: operators and
            Alertmanager together, peers apart), and the most distinct labels `initial` may hold.
        wall_clock: Unix seconds, for `since` (tests pass their own).
        clock: monotonic seconds, for the judging interval.
        on_named: called with each new name (not with one held already), outside the lock; what it raises is
            logged, never the naming's failure (the peer relay, `service.shadow.peers`).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        initial: Iterable[str] = (),
        history: ShadowHistory | None = None,
        *,
        max_targets: int = DEFAULT_MAX_TARGETS,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        on_named: Callable[[NamedTarget], object] | None = None,
    ) -> None:
        if max_targets < 1:
            raise ValueError("max_targets must be at least 1")
        initial = list(dict.fromkeys(initial))  # a label set twice counts once
        if len(initial) > max_targets:  # the configuration check refuses it first; the board's bound relies on it
            raise ValueError(f"{len(initial)} labels named by the setting, more than max_targets ({max_targets})")
        self.max_targets = max_targets
        self._gauge = Gauge(
            "zipgate_named_target",
            "1 for each raw label held as a backdoor target (the closed loop purifies its answers), by who named it.",
            ["raw_label", "source"],
            registry=registry,
        )
        self._history = history
        self._wall_clock = wall_clock
        self._clock = clock
        self._on_named = on_named
        self._lock = threading.Lock()
        self._named: dict[str, NamedTarget] = {}
        self._judged_at: float | None = None
        self._share_rule, self._baseline_rule = AlarmRule(), BaselineRule()
        for label in initial:
            self.name(label, TargetSource.SETTING)

    @property
    def named(self) -> dict[str, NamedTarget]:
        """A copy of the named targets, by label."""
        with self._lock:
            return dict(self._named)

    def name(self, label: str, source: TargetSource, rule: str | None = None) -> NamedTarget:
        """Hold `label` as a target (kept as first named if it already is).

        Raises:
            ValueError: `label` is empty or "other" (the bucket of labels past the cap names no class).
            TargetsFull: `label` is not named, `source` is an outside one, and its bucket (operators and
                Alertmanager, or peers) holds `max_targets` names. The setting and the alarm are never refused
                (see the module's docstring).
        """
        if not label or label == OTHER_LABEL:
            raise ValueError(f"{label!r} cannot be named a target: it is not one vendor label")
        with self._lock:
            existing = self._named.get(label)
            if existing is not None:
                return existing
            bucket = CAPPED_SOURCES.get(source)
            if bucket is not None and self._count(bucket) >= self.max_targets:
                raise self._full(label, bucket)
            target = NamedTarget(label, source, self._wall_clock(), rule)
            self._named[label] = target
        self._gauge.labels(label, source.value).set(1)
        logger.warning("backdoor target named: raw label %r by %s%s", label, source.value, f" ({rule})" if rule else "")
        if self._on_named is not None:
            try:
                self._on_named(target)
            except Exception:  # the name holds whatever its listener does
                logger.exception("the listener of a new backdoor target failed")
        return target

    def _count(self, bucket: str) -> int:
        """Names held from `bucket`'s sources (under the lock; at most 4 × max_targets names to look at)."""
        return sum(1 for target in self._named.values() if CAPPED_SOURCES.get(target.source) == bucket)

    def _full(self, label: str, bucket: str) -> TargetsFull:
        return TargetsFull(
            f"{label!r} cannot be named: the gateway holds {self.max_targets} named targets from {bucket}, "
            "their most (SHADOW_MAX_LABELS); clear one of theirs with DELETE /targets/{label} first (it needs "
            "API_KEY), or restart the gateway"
        )

    def clear(self, label: str) -> bool:
        """Stop holding `label` as a target; False when it was not named."""
        with self._lock:
            target = self._named.pop(label, None)
        if target is None:
            return False
        self._gauge.remove(label, target.source.value)
        logger.warning("backdoor target cleared: raw label %r (named by %s)", label, target.source.value)
        return True

    def judge(self) -> list[str]:
        """Apply the two alarm rules to the history (at most once per `JUDGE_EVERY_S`) and name what they
        name; returns the labels newly named."""
        if self._history is None:
            return []
        now = self._clock()
        with self._lock:
            if self._judged_at is not None and now - self._judged_at < JUDGE_EVERY_S:
                return []
            self._judged_at = now
        windows = self._history.windows()
        found: dict[str, str] = {}
        share = self._share_rule.suspected_target({label: c.disagreements for label, c in windows.window.items()})
        if share is not None:
            found[share] = "share of the disagreements"
        for label in self._baseline_rule.suspected_targets(windows.window, windows.baseline):
            found.setdefault(label, "disagreement rate above its baseline")
        known = self.named
        new = [label for label in found if label not in known]
        for label in new:
            self.name(label, TargetSource.ALARM, found[label])  # never refused: names from outside cannot crowd it out
        return new
