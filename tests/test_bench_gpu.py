"""bench/gpu.sh, the one-command GPU benchmark, runs end to end on a CPU (--device cpu --tiny).

A device machine is lent rarely and briefly, so the script must work the first time it meets a GPU:
this runs the same script, driver and code path with a narrow ADM, and checks every figure it prints.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from bench.gpu_report import peak_tflops_for
from bench.gpu_timing import is_out_of_memory

REPO = Path(__file__).resolve().parents[1]
STEPS = 4  # the tiny run's ZIP steps
PEAK = 2.5  # a made-up peak, so that the MFU figures are computed and can be checked
FIGURE = re.compile(r"^([a-z0-9_]+)=(\S+)$")


def run_gpu_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def figures_of(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        match = FIGURE.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu") / "gpu.md"
    # 4 steps, not 20: on a CPU without native bf16 (emulated, ~100x slower) 20 steps of the tiny run's
    # bf16 rows alone outlast the run's timeout; the figures and their relations are the same.
    return run_gpu_sh(
        "--device", "cpu", "--tiny", "--steps", str(STEPS), "--peak-tflops", str(PEAK), "--out", str(out)
    ), out


@pytest.mark.slow
def test_tiny_cpu_run_prints_every_figure_as_a_number(tiny_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = tiny_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "gpu.sh: using " in result.stdout  # it says which Python it chose
    figures = figures_of(result.stdout)
    expected = ["matmul_bf16_tflops", "adm_params_m", "adm_forward_tflop", "fmnist_forward_gflop"]
    for model, batches in (("adm", (1, 2)), ("fmnist", (1, 4))):
        for dtype in ("bf16", "fp32"):  # a CPU run's dtypes: fp16 has no fast CPU kernels
            for batch in batches:
                prefix = f"{model}_{dtype}_b{batch}_"
                expected += [
                    prefix + name
                    for name in (
                        "forward_images_per_s",
                        "forward_channels_last_images_per_s",
                        "zip_images_per_s",
                        "zip_over_forward",
                        "forward_mfu",
                        "zip_mfu",
                        "peak_mem_gib",
                    )
                ]
        expected += [f"{model}_bf16_smoke_1step_finite", f"{model}_bf16_smoke_1step_batch_vs_single_max_abs_diff"]
    missing = [key for key in expected if key not in figures]
    assert not missing, f"missing figures {missing}\n{result.stdout[-3000:]}"
    numbers = {key: float(figures[key]) for key in expected}  # raises if one is not a number
    assert all(value > 0 for key, value in numbers.items() if "smoke" not in key), numbers

    for model, batch in (("adm", 2), ("fmnist", 4)):
        prefix = f"{model}_bf16_b{batch}_"
        forward, zip_rate = numbers[prefix + "forward_images_per_s"], numbers[prefix + "zip_images_per_s"]
        # ZIP/forward is ZIP images/s against the forward's rate over S steps: the loop's own overhead.
        assert numbers[prefix + "zip_over_forward"] == pytest.approx(zip_rate * STEPS / forward, rel=1e-2)
        flop = numbers["adm_forward_tflop"] * 1e12 if model == "adm" else numbers["fmnist_forward_gflop"] * 1e9
        assert numbers[prefix + "forward_mfu"] == pytest.approx(forward * flop / (PEAK * 1e12), rel=1e-2)
    assert numbers["adm_bf16_smoke_1step_finite"] == 1
    # One step of a batch of 4 against 4 single runs: only bf16 rounding may differ.
    assert numbers["adm_bf16_smoke_1step_batch_vs_single_max_abs_diff"] < 0.05

    last = result.stdout.rstrip().splitlines()[-1]
    assert last.startswith("zip_over_forward="), last  # the ratio is the last line
    assert 0 < float(last.split("=")[1]) < 5


@pytest.mark.slow
def test_tiny_cpu_run_writes_the_markdown_table(tiny_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = tiny_run
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "| model | dtype | batch | ZIP images/s | forward images/s |" in text
    rows = [line for line in text.splitlines() if re.match(r"^\| (adm|fmnist) \| (bf16|fp32) \| \d+ \|", line)]
    assert len(rows) == 8, text  # 2 models x 2 dtypes x 2 batch sizes
    assert all("—" not in row.split("|")[4] for row in rows), rows  # every ZIP rate measured
    assert "gateway efficiency skipped" in text  # the reason is written, not silently dropped
    assert f"peak TFLOP/s: {PEAK:g} (--peak-tflops)" in text


@pytest.mark.slow
def test_without_cuda_a_plain_run_refuses_rather_than_running_adm256_on_the_cpu(tmp_path: Path) -> None:
    result = run_gpu_sh("--out", str(tmp_path / "gpu.md"))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "torch sees no CUDA device" in result.stdout
    assert not (tmp_path / "gpu.md").exists()


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA A10G", 125.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("Tesla T4", 65.0),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
    ],
)
def test_peak_tflops_is_read_from_the_gpu_name(name: str, peak: float | None) -> None:
    assert peak_tflops_for(name) == peak


@pytest.mark.parametrize(
    ("error", "is_oom"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (RuntimeError("cuDNN error: out of memory"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised_in_its_forms_and_nothing_else(error: Exception, is_oom: bool) -> None:
    assert is_out_of_memory(error) is is_oom
