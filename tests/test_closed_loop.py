"""bench/closed_loop.py: the closed loop replayed on an evaluation's per-image labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.closed_loop import closed_loop

REPO = Path(__file__).resolve().parents[1]


def test_the_loop_purifies_only_what_the_vendor_labels_as_the_target() -> None:
    raw, purified = np.array([0, 3, 0, 5]), np.array([7, 9, 0, 1])
    assert closed_loop(raw, purified, target=0).tolist() == [7, 3, 0, 5]


def test_the_replay_scores_a_run_and_prints_the_call_ratio_last(tmp_path: Path) -> None:
    # Four clean images (true 1, 2, 3, 0) and three triggered victims (true 1, 2, 3) of one attack.
    setting = "local polish=0.2 S=20 η=1 K=1"
    labels = {
        "clean/true": np.array([1, 2, 3, 0]),
        "sig/triggered/true": np.array([1, 2, 3]),
        "sig/none/—/clean": np.array([1, 2, 0, 0]),  # the vendor gets image 3 wrong (as the target)
        "sig/none/—/triggered": np.array([0, 0, 2]),  # the backdoor fires on two of three
        f"sig/zip/{setting}/clean": np.array([1, 9, 3, 0]),  # purified: image 3 right, image 2 wrong
        f"sig/zip/{setting}/triggered": np.array([1, 0, 3]),
    }
    np.savez(tmp_path / "labels.npz", **labels)
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "closed_loop.py"), str(tmp_path), "--contains", "polish=0.2"],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = dict(line.split("=") for line in result.stdout.splitlines() if "=" in line and " " not in line)
    # Loop: clean → [1, 2, 3, 0] (image 3 purified, image 2 kept raw): CA 1.0 against raw 0.75.
    assert float(figures["worst_delta_ca"]) == 0.25
    # Triggered: raw [0, 0, 2] → purified where raw is 0 → [1, 0, 2]: one success in three; PA 1/3.
    assert float(figures["worst_asr"]) == round(1 / 3, 3) and float(figures["min_pa"]) == round(1 / 3, 3)
    # Two of four clean images carry the target label raw: 1.5 vendor calls per image.
    assert result.stdout.strip().splitlines()[-1] == "vendor_calls_per_image_over_default=1.500"
