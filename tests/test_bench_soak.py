"""bench/soak.py keeps working: a few seconds of it with the tiny models, end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_soak_runs_a_few_seconds_and_reports_errors_latency_and_rss() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            "--tiny",
            "--minutes",
            "0.05",
            "--warmup-s",
            "1",
            "--window-s",
            "1.5",
            "--concurrency",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"^errors=0 of [1-9]\d* requests", out, re.MULTILINE), out
    assert re.search(r"^latency p50 \d+\.\d ms  p99 \d+\.\d ms$", out, re.MULTILINE), out
    ratio = re.search(r"^rss_ratio=(\d+\.\d+)$", out, re.MULTILINE)
    assert ratio is not None and 0.5 < float(ratio.group(1)) < 2, out
    assert out.rstrip().splitlines()[-1].startswith("rss_ratio="), out  # the ratio is the last line
