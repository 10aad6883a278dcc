"""The closed loop evaluated as a stream: an attack share p of the traffic, the alarm's delay included.

A per-image table says what a policy does once a target is named; traffic meets the policy before
that too. `simulate_stream` replays a stream of requests drawn from an evaluation's per-image labels
(the vendor's label on each raw image and on its purified copy, `labels.npz`): `baseline_minutes`
of clean traffic, then `attack_minutes` in which each request is triggered with probability p.
Every image is a shadow comparison (the loop policies purify every image); at the end of each
minute the gateway's two alarm rules judge the per-label counts of the last `WINDOW_S` against the
`BASELINE_S` before (`service.shadow.alarm`, as `TargetBoard` and Prometheus do), and a named
label stays named. Each image is answered as `service.shadow.policy` says for the names of that
moment. Scores are over the attack minutes: ASR and PA over every triggered image (those before
the alarm included), CA over the clean ones, and the minutes until the target was named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.shadow.alarm import AlarmRule, BaselineRule
from service.shadow.history import BASELINE_S, BUCKET_S, WINDOW_S
from service.shadow.policy import DefensePolicy, answer_purified


@dataclass(frozen=True)
class LabelledSet:
    """One image set of an evaluation: the true labels, and the vendor's labels on the raw and purified images."""

    truth: np.ndarray
    raw: np.ndarray
    purified: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.truth) == len(self.raw) == len(self.purified) > 0):
            raise ValueError("a labelled set needs the same, non-zero number of true, raw and purified labels")


@dataclass(frozen=True)
class StreamSpec:
    """The traffic: `requests_per_minute` images a minute, clean for `baseline_minutes`, then triggered with
    probability `attack_share` for `attack_minutes`."""

    attack_share: float
    requests_per_minute: int = 100
    baseline_minutes: int = BASELINE_S // BUCKET_S
    attack_minutes: int = 6 * 60
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.attack_share <= 1.0:
            raise ValueError(f"attack_share must be in [0, 1], got {self.attack_share}")
        if self.requests_per_minute < 1 or self.attack_minutes < 1 or self.baseline_minutes < 0:
            raise ValueError("requests_per_minute and attack_minutes must be at least 1, baseline_minutes at least 0")


@dataclass(frozen=True)
class StreamScores:
    """A policy's scores over the attack minutes of one stream."""

    policy: DefensePolicy
    clean_accuracy: float  # the answers' accuracy on the clean images
    raw_clean_accuracy: float  # the vendor's own, on the same images
    attack_success_rate: float  # triggered images answered with the target, those before the alarm included
    poisoned_accuracy: float  # triggered images answered with their true label
    detection_minutes: int | None  # from the attack's start until the target was named; None: never
    triggered_before_alarm: int  # triggered images that came before the target was named
    triggered: int
    false_names: tuple[int, ...]  # labels named that are not the target (any time, the baseline included)
    purified_answer_share: float  # of all images in the attack minutes, answered with the purified answer

    @property
    def clean_accuracy_drop(self) -> float:
        return self.clean_accuracy - self.raw_clean_accuracy


def simulate_stream(
    clean: LabelledSet,
    triggered: LabelledSet,
    target: int,
    policy: DefensePolicy,
    spec: StreamSpec,
    rules: tuple[AlarmRule, BaselineRule] = (AlarmRule(), BaselineRule()),
) -> StreamScores:
    """Replay one stream under `policy` (see the module docstring); `rules`: the share and baseline rules
    that name targets (the gateway's, by default)."""
    rng = np.random.default_rng(spec.seed)
    labels = int(max(clean.raw.max(), clean.purified.max(), triggered.raw.max(), triggered.purified.max())) + 1
    minutes = spec.baseline_minutes + spec.attack_minutes
    disagreements = np.zeros((minutes, labels))
    comparisons = np.zeros((minutes, labels))
    named: set[int] = set()
    named_at: dict[int, int] = {}
    tally = _Tally()
    for minute in range(minutes):
        attacking = minute >= spec.baseline_minutes
        is_triggered = rng.random(spec.requests_per_minute) < (spec.attack_share if attacking else 0.0)
        # The policy's answer per raw label, for the names of this minute (the same rule the gateway applies).
        named_text = {str(label) for label in named}
        purified_for = np.array([answer_purified(policy, str(r), named_text) for r in range(labels)])
        for source, mask in ((clean, ~is_triggered), (triggered, is_triggered)):
            picks = rng.integers(0, len(source.truth), int(mask.sum()))
            raw, purified = source.raw[picks], source.purified[picks]
            np.add.at(comparisons[minute], raw, 1.0)
            np.add.at(disagreements[minute], raw[raw != purified], 1.0)
            if attacking:
                answers = np.where(purified_for[raw], purified, raw)
                tally.add(
                    source is triggered, source.truth[picks], raw, answers, purified_for[raw], target, target in named
                )
        for label in _judge(disagreements, comparisons, minute, rules) - named:
            named.add(label)
            named_at[label] = minute
    detection = named_at.get(target)
    return StreamScores(
        policy=policy,
        clean_accuracy=tally.ratio("clean_right", "clean"),
        raw_clean_accuracy=tally.ratio("raw_clean_right", "clean"),
        attack_success_rate=tally.ratio("hits", "triggered"),
        poisoned_accuracy=tally.ratio("triggered_right", "triggered"),
        detection_minutes=None if detection is None else max(0, detection + 1 - spec.baseline_minutes),
        triggered_before_alarm=int(tally.counts.get("before_alarm", 0)),
        triggered=int(tally.counts.get("triggered", 0)),
        false_names=tuple(sorted(label for label in named if label != target)),
        purified_answer_share=tally.ratio("purified_answers", "images"),
    )


class _Tally:
    """Running counts over the attack minutes."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def _add(self, key: str, value: float) -> None:
        self.counts[key] = self.counts.get(key, 0.0) + value

    def add(
        self,
        is_triggered: bool,
        truth: np.ndarray,
        raw: np.ndarray,
        answers: np.ndarray,
        purified_answer: np.ndarray,
        target: int,
        target_named: bool,
    ) -> None:
        self._add("images", len(truth))
        self._add("purified_answers", float(purified_answer.sum()))
        if is_triggered:
            self._add("triggered", len(truth))
            self._add("hits", float((answers == target).sum()))
            self._add("triggered_right", float((answers == truth).sum()))
            self._add("before_alarm", 0.0 if target_named else len(truth))
        else:
            self._add("clean", len(truth))
            self._add("clean_right", float((answers == truth).sum()))
            self._add("raw_clean_right", float((raw == truth).sum()))

    def ratio(self, numerator: str, denominator: str) -> float:
        total = self.counts.get(denominator, 0.0)
        return self.counts.get(numerator, 0.0) / total if total else float("nan")


def _judge(
    disagreements: np.ndarray, comparisons: np.ndarray, minute: int, rules: tuple[AlarmRule, BaselineRule]
) -> set[int]:
    """The labels the two rules name at the end of `minute`: the window is the last `WINDOW_S`, the baseline
    the `BASELINE_S` before it (as `ShadowHistory.windows` splits its buckets)."""
    window_from = max(0, minute + 1 - WINDOW_S // BUCKET_S)
    baseline_from = max(0, window_from - BASELINE_S // BUCKET_S)
    d, c = disagreements[window_from : minute + 1].sum(axis=0), comparisons[window_from : minute + 1].sum(axis=0)
    big_d = disagreements[baseline_from:window_from].sum(axis=0)
    big_c = comparisons[baseline_from:window_from].sum(axis=0)
    share_rule, baseline_rule = rules
    found = set(np.flatnonzero(baseline_rule.fires(d, c, big_d, big_c)).tolist())
    share = share_rule.suspected_target({str(label): float(count) for label, count in enumerate(d)})
    if share is not None:
        found.add(int(share))
    return found


def labelled_sets(
    labels: Mapping[str, np.ndarray], attack: str, defense: str = "zip", contains: str = ""
) -> tuple[LabelledSet, LabelledSet]:
    """An evaluation's clean and triggered sets for `attack` (`labels.npz`: its `none` row and the one `defense`
    row whose setting contains `contains`).

    Raises:
        ValueError: no such row, or several.
    """

    def row(kind: str, row_defense: str, part: str) -> np.ndarray:
        prefix = f"{attack}/{row_defense}/"
        keys = [k for k in labels if k.startswith(prefix) and k.endswith(f"/{kind}") and part in k]
        if len(keys) != 1:
            raise ValueError(f"need exactly one {row_defense} row containing {part!r} for {attack}/{kind}: {keys}")
        return np.asarray(labels[keys[0]])

    clean = LabelledSet(np.asarray(labels["clean/true"]), row("clean", "none", ""), row("clean", defense, contains))
    triggered = LabelledSet(
        np.asarray(labels[f"{attack}/triggered/true"]),
        row("triggered", "none", ""),
        row("triggered", defense, contains),
    )
    return clean, triggered


def attacks_in(labels: Mapping[str, np.ndarray]) -> list[str]:
    """The attacks an evaluation's `labels.npz` holds triggered sets of."""
    return sorted({key.split("/")[0] for key in labels if key.endswith("/triggered/true")})


def stream_rows(
    labels: Mapping[str, np.ndarray],
    target: int,
    shares: Sequence[float],
    policies: Sequence[DefensePolicy] = tuple(DefensePolicy),
    contains: str = "",
    **spec: int,
) -> list[tuple[str, float, StreamScores]]:
    """Every attack of the evaluation, at every share and policy, on the same stream seeds."""
    rows = []
    for attack in attacks_in(labels):
        clean, triggered = labelled_sets(labels, attack, contains=contains)
        for share in shares:
            for policy in policies:
                scores = simulate_stream(clean, triggered, target, policy, StreamSpec(share, **spec))
                rows.append((attack, share, scores))
    return rows


def stream_table(rows: Sequence[tuple[str, float, StreamScores]]) -> str:
    """A markdown table of (attack, p, scores) rows."""
    lines = [
        "| attack | p | policy | ΔCA | stream ASR | PA | minutes to the alarm | triggered before it | false names |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for attack, share, s in rows:
        delay = "never" if s.detection_minutes is None else str(s.detection_minutes)
        lines.append(
            f"| {attack} | {share:g} | {s.policy} | {s.clean_accuracy_drop * 100:+.1f} | "
            f"{s.attack_success_rate:.1%} | {s.poisoned_accuracy:.3f} | {delay} | "
            f"{s.triggered_before_alarm} of {s.triggered} | {', '.join(map(str, s.false_names)) or '—'} |"
        )
    return "\n".join(lines)


STREAM_FILE = "stream.md"


def write_stream_report(labels_path: Path, target: int, shares: Sequence[float], contains: str = "") -> Path:
    """The stream table of an evaluation's `labels.npz` (every attack, share and policy), as stream.md beside it."""
    with np.load(labels_path) as stored:
        labels = {key: stored[key] for key in stored.files}
    rows = stream_rows(labels, target, shares, contains=contains)
    spec = StreamSpec(shares[0])
    path = labels_path.parent / STREAM_FILE
    path.write_text(
        f"# The closed loop as a stream\n\n{spec.requests_per_minute} images a minute: {spec.baseline_minutes} "
        f"minutes of clean traffic (the baseline), then {spec.attack_minutes} minutes with a share p triggered; "
        "scores over the attack minutes, the alarm's delay included (service/defense_eval/stream.py).\n\n"
        + stream_table(rows)
        + "\n"
    )
    return path
