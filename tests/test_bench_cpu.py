"""bench/engine.py, bench/compile.py and bench/proxy_overhead.py keep working (tiny runs), and the harness's
/proc readers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.harness import cpu_seconds, thread_times

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_seconds_and_thread_times_count_this_process_and_this_thread() -> None:
    me = threading.get_native_id()
    process_before, thread_before = cpu_seconds(os.getpid()), thread_times(os.getpid())[me]
    _spin(0.3)
    process_spent = cpu_seconds(os.getpid()) - process_before
    thread_after = thread_times(os.getpid())[me]
    on_cpu, waiting = thread_after[0] - thread_before[0], thread_after[1] - thread_before[1]
    assert process_spent >= 0.25  # clock ticks: at least the busy loop, to the tick
    assert on_cpu >= 0.29 and waiting >= 0.0


@pytest.mark.slow
def test_engine_bench_prints_the_forward_ratio_then_the_speedup_last() -> None:
    out = _run(
        "bench/engine.py", "--steps", "2", "--naive-images", "1", "--batch-sizes", "2",
        "--dtypes", "fp32", "--repeats", "1", "--threads", "1",
    )  # fmt: skip
    assert "transforms=jblur:4" in out, out  # the shipped default
    lines = out.rstrip().splitlines()
    ratio = re.fullmatch(r"zip_over_forward=(\d+\.\d+)", lines[-2])
    assert ratio is not None and 0.0 < float(ratio.group(1)) < 5.0, out
    assert re.fullmatch(r"speedup=\d+\.\d+", lines[-1]), out
    assert re.search(r"^\(c\) UNet forward only, fp32, batch 2: \d+\.\d+ image-forwards/s", out, re.MULTILINE), out


def test_compile_bench_times_the_warm_up_and_compares_outputs_then_prints_the_ratio_last() -> None:
    # torch.compile's eager backend: the worker's compile wiring without minutes of inductor.
    out = _run(
        "bench/compile.py", "--backend", "eager", "--batch-sizes", "2,3", "--steps", "2", "--repeats", "1",
        "--threads", "1", "--dtype", "fp32",
    )  # fmt: skip
    for batch in (2, 3):
        assert re.search(rf"^warmup_s_b{batch}=\d+\.\d$", out, re.MULTILINE), out
        # The eager backend runs the same kernels: the outputs agree exactly.
        assert f"max_abs_diff_b{batch}=0.0000 (mean 0.0000; eager fp32 against eager fp32: max 0.0000" in out, out
    ratio = re.fullmatch(r"compiled_over_eager=(\d+\.\d+)", out.rstrip().splitlines()[-1])
    assert ratio is not None and float(ratio.group(1)) > 0.0, out


@pytest.mark.slow
def test_proxy_bench_prints_the_gateways_cpu_per_request_then_the_ratio_last() -> None:
    out = _run("bench/proxy_overhead.py", "--requests", "60", "--rounds", "1", "--warmup", "10", "--concurrency", "2")
    lines = out.rstrip().splitlines()
    cpu = re.fullmatch(r"cpu_ms_per_request=(\d+\.\d+)", lines[-2])
    # /proc counts 10 ms ticks: over 60 requests a real figure is at most a few ms, and never negative.
    assert cpu is not None and 0.0 <= float(cpu.group(1)) < 50.0, out
    assert re.fullmatch(r"ratio=\d+\.\d+", lines[-1]), out
    assert re.search(r"^gateway .* errors 0 ", out, re.MULTILINE), out
