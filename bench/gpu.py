"""GPU benchmark: ZIP against UNet-forward-only throughput, peak memory and MFU, in one run.

Measures, with the same seed and warm-ups before every timing (issue 18, item 1):
  1. a bf16 matrix product (the chip's practical ceiling);
  2. ADM-256 unconditional at full width (the ZIP paper's model, random-initialised from
     `service/purify/adm_arch.py`): for each dtype (fp16, bf16) and batch size, ZIP images/s
     at S steps, UNet-forward-only images/s at the same batch (also in channels_last), the ratio
     ZIP ÷ (forward ÷ S), forward and ZIP MFU, and peak memory; one batch of 4 against 4 single runs;
  3. the shipped Fashion-MNIST model (`models/fmnist-ddpm`) the same way at a few batch sizes;
  4. cudnn.benchmark and torch.compile of the ADM UNet at one batch (compile warm-up included);
  5. the gateway's efficiency against the engine on the GPU (`bench/load.py --device cuda`).
MFU uses the FLOPs torch counts for one forward of the model measured (FlopCounterMode; for ADM-256
about 2.24 TFLOP, the 1,120 GMACs of the DiT paper's Table 6) against the GPU's datasheet peak (by
its name, or --peak-tflops). A setting that runs out of device memory is recorded and the sweep
goes on (larger batches of the same dtype are skipped); settings past --budget-s are skipped too.
Each figure is printed as one `key=value` line as soon as it exists, and the markdown report
(`--out`) is rewritten after each section, so a run cut short keeps what it measured.
Last line: `zip_over_forward=<ratio at the best ZIP setting>`.

    bash bench/gpu.sh                          # on a GPU: the full run, under 8 minutes
    bash bench/gpu.sh --device cpu --tiny      # proves the whole path on a CPU in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.gpu_report import Report, Row, peak_tflops_for, summarise  # noqa: E402
from bench.gpu_timing import (  # noqa: E402
    forward_flop,
    is_out_of_memory,
    median_seconds,
    peak_memory_gib,
    release,
    reset_peak_memory,
    synchronize,
)
from service.purify.adm_arch import AdmArchitecture, architecture_from_preset, build_diffusers_unet  # noqa: E402
from service.purify.models import EpsModel, load_eps_model  # noqa: E402
from service.purify.options import Method, ZipConfig  # noqa: E402
from service.purify.zip import ZipPurifier  # noqa: E402

# torch.compile of the full ADM UNet takes minutes: started only with this much of the budget left.
COMPILE_RESERVE_S = 150.0

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def tiny_architecture() -> AdmArchitecture:
    """ADM-256's block types at 32², two levels, 32 channels: the same code path in seconds on a CPU."""
    return architecture_from_preset(
        "imagenet-256-uncond",
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,2",
        attention_resolutions="16",
        num_head_channels=32,
    )


@dataclass(frozen=True)
class Plan:
    """What one run measures: sizes, sweeps and repetitions (full on a GPU, shrunk by --tiny)."""

    device: torch.device
    dtypes: tuple[str, ...]
    forward_batches: tuple[int, ...]
    zip_batches: tuple[int, ...]
    fmnist_batches: tuple[int, ...]
    steps: int
    transforms: str
    warmups: int
    runs: int
    zip_runs: int
    matmul_size: int
    compile_batch: int
    compile: bool
    channels_last: bool
    seed: int
    peak_tflops: float | None
    deadline: float  # time.monotonic() after which settings are skipped, so the run ends inside its budget


def measure_matmul(plan: Plan, report: Report) -> None:
    """bf16 n×n×n matrix products: the throughput the chip actually reaches, a second MFU denominator."""
    n = plan.matmul_size
    generator = torch.Generator(plan.device).manual_seed(plan.seed)
    a = torch.randn(n, n, device=plan.device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(n, n, device=plan.device, dtype=torch.bfloat16, generator=generator)
    seconds = median_seconds(lambda: a @ b, plan.device, plan.warmups, plan.runs)
    report.figure("matmul_bf16_tflops", 2 * n**3 / seconds / 1e12)


def sweep(
    name: str, model: EpsModel, dtype: str, plan: Plan, report: Report, flop: float, zip_config: ZipConfig
) -> list[Row]:
    """Forward-only, ZIP and (optionally) channels_last forward over the batch sizes of one model and dtype."""
    device, size, channels = plan.device, model.sample_size, model.channels
    rows = {batch: Row(name, dtype, batch) for batch in sorted(set(plan.forward_batches) | set(plan.zip_batches))}
    purifier = ZipPurifier(model, zip_config)
    # The forward sweep has already warmed the UNet at each batch; two steps warm ZIP's own ops at a tenth of the cost.
    warm_purifier = ZipPurifier(model, dataclasses.replace(zip_config, steps=min(2, zip_config.steps)))
    failed_at: int | None = None  # the smallest batch that ran out of memory: larger ones are skipped

    def forward_run(batch: int, channels_last: bool = False) -> Callable[[], object]:
        generator = torch.Generator(device).manual_seed(plan.seed)
        x = torch.randn(batch, channels, size, size, device=device, generator=generator).to(model.dtype)
        t = torch.randint(0, 1000, (batch,), device=device, generator=generator)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def run() -> object:
            with torch.inference_mode():
                return model.unet(x, t).sample

        return run

    def attempt(row: Row, what: str, body: Callable[[], None]) -> None:
        nonlocal failed_at
        if failed_at is not None and row.batch >= failed_at:
            row.note = row.note or f"skipped: batch {failed_at} ran out of memory"
            return
        if time.monotonic() > plan.deadline:
            row.note = row.note or "skipped: past --budget-s"
            return
        try:
            body()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failed_at = row.batch
            row.note = f"out of memory in {what}"
            report.figure(f"{name}_{dtype}_b{row.batch}_oom", 1)
        finally:
            release(device)

    for batch in plan.forward_batches:
        row = rows[batch]

        def forward_body(row: Row = row) -> None:
            reset_peak_memory(device)
            seconds = median_seconds(forward_run(row.batch), device, plan.warmups, plan.runs)
            row.forward_ips = row.batch / seconds
            row.peak_mem_gib = peak_memory_gib(device)
            report.figure(f"{name}_{dtype}_b{row.batch}_forward_images_per_s", row.forward_ips)
            if plan.peak_tflops:
                row.forward_mfu = row.batch * flop / seconds / (plan.peak_tflops * 1e12)
                report.figure(f"{name}_{dtype}_b{row.batch}_forward_mfu", row.forward_mfu)

        attempt(row, "the forward", forward_body)

    for batch in plan.zip_batches:
        row = rows[batch]

        def zip_body(row: Row = row) -> None:
            generator = torch.Generator(device).manual_seed(plan.seed)
            x = torch.rand(row.batch, channels, size, size, device=device, generator=generator) * 2 - 1
            reset_peak_memory(device)
            warm_purifier(x, torch.Generator(device).manual_seed(plan.seed))
            seconds = median_seconds(
                lambda: purifier(x, torch.Generator(device).manual_seed(plan.seed)), device, 0, plan.zip_runs
            )
            row.zip_ips = row.batch / seconds
            row.peak_mem_gib = max(row.peak_mem_gib or 0.0, peak_memory_gib(device))
            report.figure(f"{name}_{dtype}_b{row.batch}_zip_images_per_s", row.zip_ips)
            report.figure(f"{name}_{dtype}_b{row.batch}_peak_mem_gib", row.peak_mem_gib)
            if row.forward_ips:
                row.zip_over_forward = row.zip_ips * plan.steps / row.forward_ips
                report.figure(f"{name}_{dtype}_b{row.batch}_zip_over_forward", row.zip_over_forward)
            if plan.peak_tflops:
                row.zip_mfu = row.zip_ips * plan.steps * flop / (plan.peak_tflops * 1e12)
                report.figure(f"{name}_{dtype}_b{row.batch}_zip_mfu", row.zip_mfu)

        attempt(row, "ZIP", zip_body)

    if plan.channels_last:
        failed_at = None
        torch.nn.Module.to(model.unet, memory_format=torch.channels_last)  # type: ignore[call-overload]
        for batch in plan.forward_batches:
            row = rows[batch]

            def cl_body(row: Row = row) -> None:
                seconds = median_seconds(forward_run(row.batch, True), device, plan.warmups, plan.runs)
                row.forward_cl_ips = row.batch / seconds
                report.figure(f"{name}_{dtype}_b{row.batch}_forward_channels_last_images_per_s", row.forward_cl_ips)

            attempt(row, "the channels_last forward", cl_body)
        torch.nn.Module.to(model.unet, memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return list(rows.values())


def smoke_check(name: str, model: EpsModel, dtype: str, plan: Plan, report: Report, zip_config: ZipConfig) -> None:
    """A batch of 4 with one generator per item against 4 single runs: the batching the worker pool relies on.

    Compared after 1 step (where only rounding can differ: the tolerance of the dtype applies) and after all
    S steps. With random weights the S-step figure is informative only: a random ε-model amplifies the
    rounding differences of batch-size-dependent kernels step after step (on a CPU in bf16, 2e-4 after one
    step became 1.0 after 20, while fp32 stayed at 7e-5).
    """
    device = plan.device
    x = torch.rand(4, model.channels, model.sample_size, model.sample_size, device=device) * 2 - 1
    for steps in sorted({1, zip_config.steps}):
        purifier = ZipPurifier(model, dataclasses.replace(zip_config, steps=steps))
        batched = purifier(x, [torch.Generator(device).manual_seed(plan.seed + i) for i in range(4)])
        singles = torch.cat(
            [purifier(x[i : i + 1], [torch.Generator(device).manual_seed(plan.seed + i)]) for i in range(4)]
        )
        report.figure(f"{name}_{dtype}_smoke_{steps}step_finite", int(bool(torch.isfinite(batched).all())))
        report.figure(
            f"{name}_{dtype}_smoke_{steps}step_batch_vs_single_max_abs_diff", float((batched - singles).abs().max())
        )


def measure_adm(plan: Plan, report: Report, arch: AdmArchitecture, label: str) -> list[Row]:
    rows: list[Row] = []
    zip_config = ZipConfig(plan.transforms, steps=plan.steps)
    for index, dtype in enumerate(plan.dtypes):
        torch.manual_seed(plan.seed)
        started = time.perf_counter()
        model: EpsModel | None = None
        try:
            # Random init directly on the device (same seed per dtype), then cast: no weights to download.
            model = EpsModel(build_diffusers_unet(arch, plan.device), label, plan.device, DTYPES[dtype])
            synchronize(plan.device)
            report.figure(f"adm_{dtype}_build_s", time.perf_counter() - started)
            if index == 0:
                report.figure("adm_params_m", sum(p.numel() for p in model.unet.parameters()) / 1e6)
                report.figure("adm_forward_tflop", forward_flop(model, plan.device) / 1e12)
            flop = float(report.figures["adm_forward_tflop"]) * 1e12
            rows += sweep("adm", model, dtype, plan, report, flop, zip_config)
            if index == 0:
                smoke_check("adm", model, dtype, plan, report, zip_config)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            report.note(f"ADM {dtype}: out of memory building the model ({exc.__class__.__name__})")
        finally:
            del model
            release(plan.device)
    return rows


def measure_fmnist(plan: Plan, report: Report, model_path: Path) -> list[Row]:
    rows: list[Row] = []
    if not (model_path / "config.json").exists():
        report.note(f"Fashion-MNIST skipped: no model at {model_path}")
        return rows
    fmnist_plan = dataclasses.replace(plan, forward_batches=plan.fmnist_batches, zip_batches=plan.fmnist_batches)
    # The shipped world's global ZIP at the benchmark's steps: the ε-model loop every method runs
    # (METHOD=local adds the localiser's 10 forwards and the polish pass's 8 around a restore like it).
    zip_config = ZipConfig(steps=plan.steps, method=Method.GLOBAL)
    for index, dtype in enumerate(plan.dtypes):
        torch.manual_seed(plan.seed)
        model = load_eps_model(model_path, plan.device, DTYPES[dtype])
        if index == 0:
            report.figure("fmnist_forward_gflop", forward_flop(model, plan.device) / 1e9)
        flop = float(report.figures["fmnist_forward_gflop"]) * 1e9
        rows += sweep("fmnist", model, dtype, fmnist_plan, report, flop, zip_config)
        if index == 0:
            smoke_check("fmnist", model, dtype, plan, report, zip_config)
        del model
        release(plan.device)
    return rows


def measure_compile(plan: Plan, report: Report, arch: AdmArchitecture, label: str) -> None:
    """cudnn.benchmark, then torch.compile of the ADM UNet, at one batch in the first dtype (warm-up timed)."""
    dtype, batch, device = plan.dtypes[0], plan.compile_batch, plan.device
    torch.manual_seed(plan.seed)
    model = EpsModel(build_diffusers_unet(arch, device), label, device, DTYPES[dtype])
    x = torch.randn(batch, model.channels, model.sample_size, model.sample_size, device=device).to(model.dtype)
    t = torch.randint(0, 1000, (batch,), device=device)

    def eager() -> object:
        with torch.inference_mode():
            return model.unet(x, t).sample

    if device.type == "cuda":
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        seconds = median_seconds(eager, device, plan.warmups, plan.runs)
        report.figure(f"adm_{dtype}_b{batch}_forward_cudnn_benchmark_images_per_s", batch / seconds)
        torch.backends.cudnn.benchmark = previous
    eager_seconds = median_seconds(eager, device, plan.warmups, plan.runs)
    compiled = torch.compile(model.unet)

    def compiled_run() -> object:
        with torch.inference_mode():
            return compiled(x, t).sample

    started = time.perf_counter()
    compiled_run()
    synchronize(device)
    report.figure(f"adm_{dtype}_b{batch}_compile_warmup_s", time.perf_counter() - started)
    seconds = median_seconds(compiled_run, device, plan.warmups, plan.runs)
    report.figure(f"adm_{dtype}_b{batch}_forward_compiled_images_per_s", batch / seconds)
    report.figure(f"adm_{dtype}_b{batch}_compiled_over_eager", eager_seconds / seconds)


def measure_gateway(plan: Plan, report: Report, python: str, timeout_s: float) -> None:
    """bench/load.py's efficiency line on this device, if load.py can run its engine there."""
    load = REPO / "bench" / "load.py"
    if plan.device.type != "cuda":
        report.note("gateway efficiency skipped: measured on a CPU by bench/load.py itself")
        return
    usage = subprocess.run([python, str(load), "--help"], capture_output=True, text=True, cwd=REPO, check=False)
    if usage.returncode != 0:
        report.note(f"gateway efficiency skipped: bench/load.py --help failed: {usage.stderr.strip()[-300:]}")
        return
    if "--device" not in usage.stdout:
        report.note(
            "gateway efficiency skipped: bench/load.py has no --device option (its engine baseline runs on the CPU)"
        )
        return
    try:
        done = subprocess.run(
            [python, str(load), "--device", "cuda", "--steps", str(plan.steps)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        report.note(f"gateway efficiency skipped: bench/load.py took over {timeout_s:.0f} s")
        return
    match = re.search(r"^efficiency=([0-9.]+)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        report.note(f"gateway efficiency failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return
    report.figure("gateway_efficiency", float(match.group(1)))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item.strip())


def build_plan(args: argparse.Namespace, device: torch.device, peak: float | None) -> Plan:
    tiny = args.tiny
    return Plan(
        device=device,
        # fp16 has no fast kernels on a CPU (10-30x slower than bf16 there): fp32 stands in for it.
        dtypes=tuple((args.dtypes or ("fp16,bf16" if device.type == "cuda" else "bf16,fp32")).split(",")),
        forward_batches=_ints(args.batch_sizes or ("1,2" if tiny else "1,2,4,8,16,32,64")),
        zip_batches=_ints(args.zip_batch_sizes or ("1,2" if tiny else "8,16,32,64")),
        fmnist_batches=_ints(args.fmnist_batch_sizes or ("1,4" if tiny else "64,256,1024")),
        steps=args.steps,
        transforms=args.transforms,
        warmups=1 if tiny else 3,
        runs=2 if tiny else 10,
        zip_runs=1 if tiny else 2,
        matmul_size=512 if tiny else 8192,
        compile_batch=args.compile_batch or (2 if tiny else 16),
        compile=args.compile if args.compile is not None else (device.type == "cuda" and not tiny),
        channels_last=not args.no_channels_last,
        seed=args.seed,
        peak_tflops=peak,
        deadline=time.monotonic() + args.budget_s,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a narrow 32² ADM and small sweeps: the path, not figures")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "gpu.md", help="the markdown report")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16/fp16 peak (default: by GPU name)")
    parser.add_argument("--dtypes", default=None, help="default fp16,bf16 on CUDA, bf16,fp32 on a CPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--transforms", default="blur:4,gray", help="ZIP's transforms for ADM (the paper's setting)")
    parser.add_argument("--batch-sizes", default=None, help="forward-only sweep (default 1,2,4,...,64)")
    parser.add_argument("--zip-batch-sizes", default=None, help="ZIP sweep (default 8,16,32,64)")
    parser.add_argument("--fmnist-batch-sizes", default=None, help="Fashion-MNIST sweep (default 64,256,1024)")
    parser.add_argument("--fmnist-model", type=Path, default=REPO / "models" / "fmnist-ddpm")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA")
    parser.add_argument("--compile-batch", type=int, default=None)
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--no-fmnist", action="store_true")
    parser.add_argument("--no-gateway", action="store_true")
    parser.add_argument("--gateway-timeout-s", type=float, default=150.0)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=390.0,
        help="settings past this many seconds are skipped (bench/gpu.sh: 8 min)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a CPU run only)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def section(report: Report, name: str) -> Iterator[None]:
    """Time a section, and write the report after it whatever happens."""
    started = time.perf_counter()
    try:
        yield
    finally:
        report.figure(f"section_{name}_s", time.perf_counter() - started)
        report.write()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        # Not a silent CPU fallback: the full ADM-256 sweep would take hours there.
        print("error: torch sees no CUDA device; for the CPU smoke run pass --device cpu --tiny")
        return 2
    if device.type == "cpu":
        # One thread: on a shared, oversubscribed CPU a second OpenMP thread spin-waits (tests/test_adm_convert.py).
        torch.set_num_threads(args.threads)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops if args.peak_tflops is not None else peak_tflops_for(gpu_name)
    plan = build_plan(args, device, peak)
    arch = tiny_architecture() if args.tiny else architecture_from_preset("imagenet-256-uncond")
    label = "adm-tiny-32" if args.tiny else "adm-256-uncond"
    report = Report(args.out)
    report.header = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{device} ({gpu_name})",
        "torch": f"{torch.__version__}, CUDA {torch.version.cuda}",
        "peak TFLOP/s": "unknown"
        if peak is None
        else f"{peak:g} ({'--peak-tflops' if args.peak_tflops else 'by name'})",
        "ADM": f"{label}, random init, {arch.image_size}², steps={plan.steps}, transforms={plan.transforms}",
        "sweeps": f"dtypes {plan.dtypes}, forward batches {plan.forward_batches}, ZIP batches {plan.zip_batches}, "
        f"{plan.warmups} warm-ups, median of {plan.runs} forwards / {plan.zip_runs} ZIP runs",
    }
    print(f"device={device}\ngpu={gpu_name}\ntorch={torch.__version__}\ncuda={torch.version.cuda}", flush=True)
    report.figure("peak_tflops", "unknown" if peak is None else peak)
    report.write()

    rows: list[Row] = []
    with section(report, "matmul"):
        measure_matmul(plan, report)
    with section(report, "adm"):
        rows += measure_adm(plan, report, arch, label)
        report.rows = list(rows)
    if not args.no_fmnist:
        with section(report, "fmnist"):
            rows += measure_fmnist(plan, report, args.fmnist_model)
            report.rows = list(rows)
    # The summary now, in case the compile below outlasts the hard limit of bench/gpu.sh; the ratio is repeated last.
    ratio = summarise(rows, report)
    if ratio is None:
        print("error: no ADM ZIP setting completed")
        return 1
    if plan.compile and plan.deadline - time.monotonic() < COMPILE_RESERVE_S:
        report.note(f"torch.compile skipped: under {COMPILE_RESERVE_S:.0f} s left of --budget-s")
    elif plan.compile:
        with section(report, "compile"):
            try:
                measure_compile(plan, report, arch, label)
            except Exception as exc:  # a compiler failure must not cost the figures already taken
                report.note(f"torch.compile failed: {exc.__class__.__name__}: {str(exc)[:300]}")
    if not args.no_gateway:
        with section(report, "gateway"):
            left = plan.deadline - time.monotonic()
            measure_gateway(plan, report, sys.executable, min(args.gateway_timeout_s, max(left, 1.0)))

    report.figure("zip_over_forward", ratio)  # the ratio, last
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
