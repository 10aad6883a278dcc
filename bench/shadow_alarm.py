"""Shadow alarm on the shipped vendors: disagreement rates, false alarms, and triggered requests to name the target.

Reads the per-image labels of an evaluation run (`zipgate eval --defense none,zip`, its labels.npz):
the vendor's label on the raw image is the `none` row's, on the purified image the `zip` row's
(exactly what the gateway's shadow comparison sees). Then it replays request streams through the
two alert rules of docker/alerts.yml:
- the share rule (`ZipgateSuspectedBackdoorTarget`): in a window of W requests, one raw label holds
  at least M disagreements and more than a share S of them; checked after every request;
- the baseline rule (`ZipgateDisagreementAboveBaseline`): one raw label's disagreement rate in the
  window stands at z >= z* above its rate in the B windows before it (likelihood-ratio z), with
  at least m disagreements and a rate 10 points above the baseline's; checked every W/30 requests
  (the rule group's one-minute interval on a 30-minute window). A clean baseline and a clean
  window precede the onset, and both windows slide, as in Prometheus.

    .venv/bin/python bench/shadow_alarm.py reports/zoo-final [--window 1000] [--min-count 20]

Prints one line per vendor and attack share, then the summary lines last:
`false_alarm_windows=` (windows of clean traffic in which the share rule fired),
`baseline_false_alarm_streams=` (clean streams of 20 windows in which the baseline rule ever fired)
and `disagreement_ratio=` (triggered ÷ clean disagreement rate, median over vendors).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.defense_eval.report import LABELS_FILE
from service.shadow.alarm import AlarmRule, BaselineRule, excess_disagreement_z


@dataclass(frozen=True)
class Pairs:
    """(raw label, purified label) per image, for clean and triggered traffic."""

    clean: np.ndarray  # (N, 2)
    triggered: np.ndarray  # (M, 2)

    def disagreement(self, triggered: bool) -> float:
        pairs = self.triggered if triggered else self.clean
        return float((pairs[:, 0] != pairs[:, 1]).mean())

    @property
    def labels(self) -> int:
        """How many labels the vendor answers (labels are 0..n-1)."""
        return int(max(self.clean.max(), self.triggered.max())) + 1


def stream(pairs: Pairs, attack_share: float, rng: np.random.Generator) -> Iterator[tuple[bool, int, int]]:
    """Endless requests drawn with replacement: (triggered?, raw label, purified label)."""
    while True:
        triggered = bool(rng.random() < attack_share)
        source = pairs.triggered if triggered else pairs.clean
        raw, purified = source[rng.integers(len(source))]
        yield triggered, int(raw), int(purified)


@dataclass(frozen=True)
class Window:
    """The rule's window, counted in requests (a steady request rate makes it the rule file's 30 minutes)."""

    requests: int
    rule: AlarmRule

    def fires(self, counts: Counter[int]) -> int | None:
        named = self.rule.suspected_target({str(label): count for label, count in counts.items() if count})
        return None if named is None else int(named)


def first_alarm(
    pairs: Pairs, rule: Window, attack_share: float, rng: np.random.Generator, max_requests: int
) -> tuple[int | None, int | None, int]:
    """Replay one stream until the rule fires: (label named, triggered requests sent, requests sent)."""
    window: deque[int | None] = deque()
    counts: Counter[int] = Counter()
    triggered_sent = 0
    for sent, (triggered, raw, purified) in enumerate(stream(pairs, attack_share, rng), start=1):
        triggered_sent += triggered
        disagreeing = raw if raw != purified else None
        window.append(disagreeing)
        if disagreeing is not None:
            counts[disagreeing] += 1
        if len(window) > rule.requests and (old := window.popleft()) is not None:
            counts[old] -= 1
        named = rule.fires(counts)
        if named is not None:
            return named, triggered_sent, sent
        if sent >= max_requests:
            return None, None, sent
    raise AssertionError("unreachable: the stream is endless")


def false_alarm_windows(pairs: Pairs, rule: Window, windows: int, rng: np.random.Generator) -> int:
    """Independent windows of clean traffic in which the rule fires at the window's end."""
    fired = 0
    for _ in range(windows):
        sample = pairs.clean[rng.integers(len(pairs.clean), size=rule.requests)]
        counts = Counter(int(raw) for raw, purified in sample if raw != purified)
        fired += rule.fires(counts) is not None
    return fired


@dataclass(frozen=True)
class BaselineWindow:
    """The baseline rule's clock, counted in requests."""

    requests: int  # the window
    baseline_windows: int  # the baseline's length, in windows (48: a day of 30-minute windows)
    rule: BaselineRule

    @property
    def evaluate_every(self) -> int:
        return max(1, self.requests // 30)


def first_baseline_alarm(
    pairs: Pairs, rule: BaselineWindow, attack_share: float, rng: np.random.Generator, max_requests: int
) -> tuple[int | None, int | None, int]:
    """Replay one stream until the rule fires: (label named, triggered sent, requests sent since the onset).

    As Prometheus sees it: a clean baseline and a clean window of traffic precede the onset; at each
    evaluation the window is the last W requests and the baseline the B·W before them, both sliding (so the
    first windows mix clean and attack traffic, and from W requests in the baseline starts taking the attack
    in). Vectorised: cumulative per-label counts give every evaluation's windows at once.
    """
    window, baseline = rule.requests, rule.requests * rule.baseline_windows
    prefix = baseline + window
    triggered = rng.random(max_requests) < attack_share
    attack = np.where(
        triggered[:, None],
        pairs.triggered[rng.integers(len(pairs.triggered), size=max_requests)],
        pairs.clean[rng.integers(len(pairs.clean), size=max_requests)],
    )
    drawn = np.concatenate([pairs.clean[rng.integers(len(pairs.clean), size=prefix)], attack])
    onehot = np.eye(pairs.labels)[drawn[:, 0]]
    zero = np.zeros((1, pairs.labels))
    compared = np.vstack([zero, np.cumsum(onehot, axis=0)])
    disagreed = np.vstack([zero, np.cumsum(onehot * (drawn[:, :1] != drawn[:, 1:]), axis=0)])
    ends = prefix + np.arange(rule.evaluate_every, max_requests + 1, rule.evaluate_every)
    starts = ends - window
    d, c = disagreed[ends] - disagreed[starts], compared[ends] - compared[starts]
    big_d, big_c = disagreed[starts] - disagreed[starts - baseline], compared[starts] - compared[starts - baseline]
    firing = rule.rule.fires(d, c, big_d, big_c)
    hits = np.flatnonzero(firing.any(axis=1))
    if not len(hits):
        return None, None, max_requests
    first = hits[0]
    z = excess_disagreement_z(d[first], c[first], big_d[first], big_c[first])
    label = int(np.nanargmax(np.where(firing[first], z, np.nan)))
    sent = int(ends[first] - prefix)
    return label, int(triggered[:sent].sum()), sent


def baseline_false_alarm_streams(
    pairs: Pairs, rule: BaselineWindow, streams: int, rng: np.random.Generator, max_requests: int
) -> int:
    """Clean streams of `max_requests`, each after its own clean baseline, in which the baseline rule ever fires.

    Every evaluation of the stream counts (not only independent windows): what an operator would see.
    """
    return sum(first_baseline_alarm(pairs, rule, 0.0, rng, max_requests)[0] is not None for _ in range(streams))


def load_pairs(report: Path, setting: str | None = None) -> dict[str, Pairs]:
    """Raw/purified label pairs per attack from a report's labels.npz (the first ZIP setting unless named)."""
    with np.load(report / LABELS_FILE) as saved:
        labels = {key: saved[key] for key in saved.files}
    result: dict[str, Pairs] = {}
    for key in labels:
        attack, defense, *rest = key.split("/")
        if defense != "zip" or not key.endswith("/clean"):
            continue
        described = "/".join(rest)[: -len("/clean")]
        if setting is not None and described != setting or attack in result:
            continue
        raw_key = next(k for k in labels if k.startswith(f"{attack}/none/") and k.endswith("/clean"))[: -len("/clean")]
        zip_key = f"{attack}/zip/{described}"
        result[attack] = Pairs(
            np.stack([labels[f"{raw_key}/clean"], labels[f"{zip_key}/clean"]], axis=1),
            np.stack([labels[f"{raw_key}/triggered"], labels[f"{zip_key}/triggered"]], axis=1),
        )
    if not result:
        raise SystemExit(
            f"{report / LABELS_FILE} has no zip rows with a none row beside them; run "
            "`zipgate eval --defense none,zip` first"
        )
    return result


def needed_to_name(runs: list[tuple[int | None, int | None, int]], target: int, max_requests: int) -> str:
    """Triggered requests until the target was named: "median, p95", or how often it was named at all."""
    named = [triggered for label, triggered, _ in runs if label == target and triggered is not None]
    if len(named) == len(runs):
        return f"{statistics.median(named):.0f}, {np.percentile(named, 95):.0f}"
    return f"named in {len(named)}/{len(runs)} runs of {max_requests} requests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("--setting", default=None, help="the zip setting's description (default: the first)")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--min-count", type=int, default=20)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--z", type=float, default=BaselineRule.z, help="the baseline rule's threshold")
    parser.add_argument("--baseline-min-count", type=int, default=int(BaselineRule.min_count))
    parser.add_argument("--min-excess", type=float, default=BaselineRule.min_excess, help="rate over the baseline's")
    parser.add_argument("--baseline-windows", type=int, default=48, help="the baseline's length, in windows")
    parser.add_argument("--shares", default="1,0.5,0.25,0.1,0.05,0.02", help="attack shares of the traffic to replay")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rule = Window(args.window, AlarmRule(args.min_count, args.share))
    baseline_rule = BaselineWindow(
        args.window, args.baseline_windows, BaselineRule(args.z, args.baseline_min_count, args.min_excess)
    )
    max_requests = 20 * rule.requests
    rng = np.random.default_rng(args.seed)
    vendors = load_pairs(args.report, args.setting)
    target = 0  # every shipped vendor's target (service.backdoor.attacks.TARGET_LABEL)
    print(f"share rule: window={rule.requests} requests, min_count={rule.rule.min_count:g}, share>{rule.rule.share}")
    print(
        f"baseline rule: z>={baseline_rule.rule.z:g}, min_count={baseline_rule.rule.min_count:g}, "
        f"min_excess={baseline_rule.rule.min_excess:g}, "
        f"baseline={baseline_rule.baseline_windows} windows, evaluated every {baseline_rule.evaluate_every} requests; "
        f"streams of {max_requests} requests"
    )
    print(
        "| vendor | clean disagreement | triggered disagreement | attack share | triggered requests to name "
        "the target (median, p95): share rule | baseline rule | alarms naming another label (share, baseline) |"
    )
    print("|---|---|---|---|---|---|---|")
    false_alarms = baseline_false_alarms = 0
    ratios = []
    for attack, pairs in vendors.items():
        false_alarms += false_alarm_windows(pairs, rule, args.runs, rng)
        baseline_false_alarms += baseline_false_alarm_streams(pairs, baseline_rule, args.runs, rng, max_requests)
        ratios.append(pairs.disagreement(True) / max(pairs.disagreement(False), 1e-9))
        for share in (float(s) for s in args.shares.split(",")):
            runs = [first_alarm(pairs, rule, share, rng, max_requests) for _ in range(args.runs)]
            baseline_runs = [
                first_baseline_alarm(pairs, baseline_rule, share, rng, max_requests) for _ in range(args.runs)
            ]
            wrong = sum(label not in (None, target) for label, _, _ in runs)
            baseline_wrong = sum(label not in (None, target) for label, _, _ in baseline_runs)
            print(
                f"| {attack} | {pairs.disagreement(False):.3f} | {pairs.disagreement(True):.3f} | {share:g} | "
                f"{needed_to_name(runs, target, max_requests)} | "
                f"{needed_to_name(baseline_runs, target, max_requests)} | {wrong}, {baseline_wrong} |"
            )
    windows = args.runs * len(vendors)
    print(f"false_alarm_windows={false_alarms}/{windows}")
    print(f"baseline_false_alarm_streams={baseline_false_alarms}/{windows}")
    print(f"disagreement_ratio={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
