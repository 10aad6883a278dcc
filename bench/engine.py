"""Engine throughput: ZipPurifier vs a naive loop in the style of the paper's code, and vs the UNet alone.

Baseline (a): batch 1, fp32, the state copied to CPU after every step and every state kept
(as in DDNM/ZIP's reference loops). Candidate (b): ZipPurifier at its best batch size and dtype.
Both run the same model (random-init, the shipped default's architecture), steps, transforms and λ
in one run: `--transforms` and `--guidance-power` default to the shipped ZIP (`ZipConfig`, jblur:4);
runs recorded before 2026-12 used `--transforms blur:2 --guidance-power 0.25`. OpenMP waits
passively, as under `zipgate serve`, unless OMP_WAIT_POLICY is set.
Then, at (b)'s setting, (c): the ε-model's forward alone, `steps` calls on the same batch through the
same `EpsModel` (dtype cast in, float32 out), timed in rounds alternating with (b) so that both
see the same background load. `zip_over_forward` = (b) ÷ ((c) ÷ steps): 1.0 means the loop costs
nothing beyond its forwards (issue 18 asks ≥ 0.9).
Last lines: `zip_over_forward=<ratio>`, then `speedup=<b images/s ÷ a images/s>`.

    .venv/bin/python bench/engine.py [--steps 20] [--device cpu] [--threads 2] [--transforms jblur:4]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

# As `zipgate serve` does, before torch loads OpenMP: the engine runs here as the gateway runs it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from service.purify.jitter import bind_transforms  # noqa: E402
from service.purify.models import EpsModel  # noqa: E402
from service.purify.options import ZipConfig  # noqa: E402
from service.purify.schedule import alpha_bar, alphas_cumprod, linear_betas, timestep_pairs  # noqa: E402
from service.purify.transforms import parse_transforms  # noqa: E402
from service.purify.zip import ZipPurifier  # noqa: E402
from service.training.ddpm import UNetArchitecture  # noqa: E402


def naive_reference(unet, x: torch.Tensor, steps: int, device: str, config: ZipConfig) -> torch.Tensor:
    """The paper-style loop: one image at a time, fp32, every state moved to CPU and kept.

    Runs `config`'s first transform (a jblur's grid drawn per image) and its λ, so that it does the
    same arithmetic per step as ZipPurifier with a single transform.
    """
    table = alphas_cumprod(linear_betas())
    (spec_transform,) = parse_transforms(config.transforms, x.shape[1])[:1]
    outputs = []
    for i in range(x.shape[0]):
        x_in = x[i : i + 1].to(device)
        (A,) = bind_transforms([spec_transform], 1, torch.Generator().manual_seed(i), torch.device(device))
        y = A.apply(x_in)
        xs = [torch.randn_like(x_in).cpu()]
        x0_preds = []
        for t, t_next in timestep_pairs(steps):
            a_t, a_next = alpha_bar(table, t), alpha_bar(table, t_next)
            x_t = xs[-1].to(device)
            with torch.no_grad():
                eps = unet(x_t, torch.tensor([t], device=device)).sample
            x_hat = math.sqrt(a_t) * A.pinv(y) + x_t - A.pinv(A.apply(x_t)) + math.sqrt(1 - a_t) * A.pinv(A.apply(eps))
            w = a_t**config.guidance_power
            x_hat = (1 - w) * x_hat + w * x_t
            x0 = (x_hat - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            sigma = math.sqrt((1 - a_next) / (1 - a_t)) * math.sqrt(max(0.0, 1 - a_t / a_next))
            x_next = (
                math.sqrt(a_next) * x0 + math.sqrt(max(0.0, 1 - a_next - sigma**2)) * eps + sigma * torch.randn_like(x0)
            )
            x0_preds.append(x0.cpu())
            xs.append(x_next.cpu())
        outputs.append(xs[-1].clamp(-1, 1))
    return torch.cat(outputs)


def images_per_second(run, count: int, repeats: int) -> float:
    """Best of `repeats` timed runs (the fastest run is the least disturbed by other load)."""
    run()  # warm-up: allocator, oneDNN kernel selection
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def alternating_rates(runs: dict[str, tuple[Callable[[], object], int]], repeats: int) -> dict[str, float]:
    """Best-of-`repeats` rates of several runs, timed in alternating rounds after one warm-up each."""
    best = dict.fromkeys(runs, math.inf)
    for run, _ in runs.values():
        run()
    for _ in range(repeats):
        for name, (run, _count) in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: count / best[name] for name, (_run, count) in runs.items()}


def forward_only(model: EpsModel, batch: torch.Tensor, purifier: ZipPurifier) -> Callable[[], None]:
    """`steps` ε-model calls on `batch` at the purifier's own timesteps: the UNet's share of one ZIP run."""
    times = [torch.full((batch.shape[0],), t, dtype=torch.long, device=batch.device) for t, _ in purifier.pairs]

    def run() -> None:
        with torch.inference_mode():
            for t in times:
                model(batch, t)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--naive-images", type=int, default=4)
    parser.add_argument("--batch-sizes", default="8,32,64")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--transforms", default=ZipConfig.transforms, help="ZIP's transforms (default: the shipped jblur:4)"
    )
    parser.add_argument("--guidance-power", type=float, default=ZipConfig.guidance_power, help="λ (default: shipped)")
    args = parser.parse_args()
    config = ZipConfig(args.transforms, steps=args.steps, guidance_power=args.guidance_power)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNetArchitecture().build().eval().to(args.device)
    params = sum(p.numel() for p in unet.parameters())
    print(
        f"model: random-init default architecture, {params / 1e6:.2f}M params, 32x32x1; steps={args.steps}; "
        f"device={args.device}; threads={args.threads}; transforms={config.transforms}; λ={config.guidance_power}; "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )

    x = torch.rand(max(int(b) for b in args.batch_sizes.split(",")), 1, 32, 32) * 2 - 1
    baseline = images_per_second(
        lambda: naive_reference(unet, x[: args.naive_images], args.steps, args.device, config),
        args.naive_images,
        args.repeats,
    )
    print(f"(a) naive reference loop, batch 1, fp32: {baseline:.2f} images/s")

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    best = (0.0, "", 0)
    models = {}
    for name in args.dtypes.split(","):
        models[name] = model = EpsModel(UNetArchitecture().build(), "bench", device=args.device, dtype=dtypes[name])
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            purifier = ZipPurifier(model, config)
            batch = x[:batch_size].to(args.device)
            rate = images_per_second(
                lambda purifier=purifier, batch=batch: purifier(batch, torch.Generator(args.device).manual_seed(0)),
                batch_size,
                args.repeats,
            )
            print(f"    ZipPurifier {name} batch {batch_size}: {rate:.2f} images/s")
            best = max(best, (rate, name, batch_size))
    rate, name, batch_size = best
    print(f"(b) ZipPurifier best: {name}, batch {batch_size}: {rate:.2f} images/s")

    purifier = ZipPurifier(models[name], config)
    batch = x[:batch_size].to(args.device)
    rates = alternating_rates(
        {
            "zip": (lambda: purifier(batch, torch.Generator(args.device).manual_seed(0)), batch_size),
            "forward": (forward_only(models[name], batch, purifier), batch_size * args.steps),
        },
        args.repeats,
    )
    print(
        f"(c) UNet forward only, {name}, batch {batch_size}: {rates['forward']:.2f} image-forwards/s "
        f"= {rates['forward'] / args.steps:.2f} images/s at {args.steps} steps; "
        f"ZipPurifier in the same rounds: {rates['zip']:.2f} images/s"
    )
    print(f"zip_over_forward={rates['zip'] / (rates['forward'] / args.steps):.3f}")
    print(f"speedup={rate / baseline:.2f}")


if __name__ == "__main__":
    main()
