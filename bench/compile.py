"""torch.compile of the ε-model: the warm-up it costs and what it buys over eager, in the same run.

What `COMPILE_MODE` / `CHANNELS_LAST` do in a worker (issue 18), measured where the gateway runs
them: the same weights in an eager `EpsModel` and in a compiled one (`Acceleration`, the worker's
own code path), ZIP purifications at each batch size. The compiled model's first purification at
a batch size is its compile: what the worker's warm-up pays per bucket before `/readyz` turns
ready (`warmup_s_b<B>`). Then eager and compiled are timed in alternating rounds, so both see the
same background load; `max_abs_diff_b<B>` is the largest pixel difference between the two outputs
for the same seed, beside the eager model's own difference from an fp32 run (how far rounding
alone moves a purification: the sampler carries a step's rounding into the next steps).
Last line: `compiled_over_eager=<compiled images/s ÷ eager images/s>` at the largest batch.

    .venv/bin/python bench/compile.py [--mode default] [--batch-sizes 8,32] [--dtype bf16] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
import time
from pathlib import Path

# As `zipgate serve` does, before torch loads OpenMP: the engine runs here as the gateway runs it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.engine import alternating_rates  # noqa: E402
from service.purify.models import EpsModel  # noqa: E402
from service.purify.options import Acceleration, CompileMode, ZipConfig  # noqa: E402
from service.purify.zip import ZipPurifier  # noqa: E402
from service.training.ddpm import UNetArchitecture  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default=CompileMode.DEFAULT.value, choices=[m.value for m in CompileMode][1:])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (tests use eager)")
    parser.add_argument("--channels-last", action="store_true", help="both models in NHWC")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNetArchitecture().build().eval()  # random init, the shipped default's architecture
    config = ZipConfig(steps=args.steps)
    dtype = DTYPES[args.dtype]
    # EpsModel casts the module it is given in place: each model gets its own copy of the weights.
    eager = EpsModel(copy.deepcopy(unet), "eager", args.device, dtype, Acceleration(channels_last=args.channels_last))
    compiled = EpsModel(
        copy.deepcopy(unet),
        "compiled",
        args.device,
        dtype,
        Acceleration(args.channels_last, CompileMode(args.mode), compile_backend=args.backend),
    )
    reference_model = EpsModel(copy.deepcopy(unet), "reference", args.device, torch.float32)
    print(
        f"model: random-init default architecture, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params; "
        f"{args.dtype}; steps={args.steps}; device={args.device}; threads={args.threads}; mode={args.mode}; "
        f"backend={args.backend}; channels_last={args.channels_last}; torch {torch.__version__}"
    )
    ratio = 0.0
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        batch = torch.rand(batch_size, 1, 32, 32, device=args.device) * 2 - 1
        purifiers = {name: ZipPurifier(model, config) for name, model in (("eager", eager), ("compiled", compiled))}

        def purify(name: str, purifiers: dict[str, ZipPurifier] = purifiers, batch: torch.Tensor = batch) -> Tensor:
            return purifiers[name](batch, torch.Generator(args.device).manual_seed(0))

        started = time.perf_counter()
        compiled_out = purify("compiled")
        print(f"warmup_s_b{batch_size}={time.perf_counter() - started:.1f}")
        eager_out = purify("eager")
        difference = (compiled_out - eager_out).abs()
        # For scale: the same eager run in fp32. Rounding differences grow over the sampler's steps.
        reference = (
            ZipPurifier(reference_model, config)(batch, torch.Generator(args.device).manual_seed(0)) - eager_out
        ).abs()
        print(
            f"max_abs_diff_b{batch_size}={difference.max().item():.4f} (mean {difference.mean().item():.4f}; "
            f"eager {args.dtype} against eager fp32: max {reference.max().item():.4f}, "
            f"mean {reference.mean().item():.4f})"
        )
        rates = alternating_rates(
            {name: (functools.partial(purify, name), batch_size) for name in ("eager", "compiled")}, args.repeats
        )
        ratio = rates["compiled"] / rates["eager"]
        print(
            f"batch {batch_size}: eager {rates['eager']:.2f} images/s, compiled {rates['compiled']:.2f} images/s"
            f" (compiled_over_eager_b{batch_size}={ratio:.3f})"
        )
    print(f"compiled_over_eager={ratio:.3f}")


if __name__ == "__main__":
    main()
