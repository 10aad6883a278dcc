"""bench/shadow_alarm.py's replay of the alert rule, on label pairs whose answers are known."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from bench.shadow_alarm import Pairs, Window, false_alarm_windows, first_alarm
from service.defense_eval.report import LABELS_FILE
from service.shadow.alarm import AlarmRule

# Clean traffic: 10 classes, 20% disagreements spread over every raw label. Triggered: always (0 → other).
CLEAN = np.array([(c, c if i % 5 else (c + 1) % 10) for i in range(100) for c in range(10)])
TRIGGERED = np.array([(0, 1 + i % 9) for i in range(90)])
PAIRS = Pairs(CLEAN, TRIGGERED)


def test_rule_needs_the_minimum_count_and_the_share() -> None:
    rule = Window(100, AlarmRule(min_count=5, share=0.5))
    assert rule.fires(Counter({3: 5, 4: 4})) == 3
    assert rule.fires(Counter({3: 4})) is None  # below the minimum count
    assert rule.fires(Counter({3: 5, 4: 5})) is None  # not more than half
    assert AlarmRule(5).suspected_target({"other": 50, "3": 6}) is None  # "other" counts, never named
    assert AlarmRule(5).suspected_target({"other": 1, "3": 6}) == "3"


def test_an_all_triggered_stream_is_named_after_exactly_min_count_requests() -> None:
    rule = Window(1000, AlarmRule(min_count=20))
    label, triggered, sent = first_alarm(PAIRS, rule, 1.0, np.random.default_rng(0), max_requests=10_000)
    assert (label, triggered, sent) == (0, 20, 20)


def test_clean_traffic_raises_no_alarm_and_a_small_attack_share_may_stay_hidden() -> None:
    rule = Window(500, AlarmRule(min_count=20))
    assert false_alarm_windows(PAIRS, rule, 50, np.random.default_rng(1)) == 0
    # 2% triggered against 20% clean disagreements spread over 10 labels: never "most of them".
    label, _, sent = first_alarm(PAIRS, rule, 0.02, np.random.default_rng(2), max_requests=5_000)
    assert label is None and sent == 5_000


def test_the_bench_reads_an_evaluation_report(tmp_path: Path) -> None:
    setting = "blur:4 S=20 λ=0.5 η=1 K=1"
    np.savez_compressed(
        tmp_path / LABELS_FILE,
        **{
            f"badnets/none/{setting}/clean": CLEAN[:, 0],
            f"badnets/zip/{setting}/clean": CLEAN[:, 1],
            f"badnets/none/{setting}/triggered": TRIGGERED[:, 0],
            f"badnets/zip/{setting}/triggered": TRIGGERED[:, 1],
            "clean/true": CLEAN[:, 0],
            "badnets/triggered/true": TRIGGERED[:, 1],
        },
    )
    out = subprocess.run(
        [sys.executable, "bench/shadow_alarm.py", str(tmp_path), "--runs", "5", "--window", "200"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    lines = out.strip().splitlines()
    assert lines[-3] == "false_alarm_windows=0/5"
    assert lines[-2] == "baseline_false_alarm_streams=0/5"
    assert lines[-1] == "disagreement_ratio=5.00"  # 1.0 ÷ 0.2
    # All triggered: the share rule names the target at its 20th disagreement; the baseline rule within its
    # first evaluations (every 200 / 30 = 6 requests), the same for every replay up to the clean traffic
    # still in the window.
    row = re.search(r"^\| badnets \| 0\.200 \| 1\.000 \| 1 \| 20, 20 \| (\d+), (\d+) \| 0, 0 \|$", out, re.MULTILINE)
    assert row is not None, out
    assert {int(row.group(1)), int(row.group(2))} <= {12, 18, 24}, out
