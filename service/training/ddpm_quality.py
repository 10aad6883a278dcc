"""Sample quality of the shipped DDPM: unconditional samples scored by a clean classifier."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from service.backdoor.data import CLASS_NAMES
from service.purify.imaging import tensor_to_pil, tile
from service.purify.models import EpsModel
from service.purify.schedule import alpha_bar, alphas_cumprod, ddim_step, linear_betas, timestep_pairs
from service.purify.zip import draw_noise


def sample_ddim(
    model: EpsModel, count: int, steps: int, eta: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Unconditional samples with the scheduler's DDIM step (η = 1: ancestral), clamped to [-1, 1].

    The step is ZIP's (`schedule.ddim_step`) without guidance, with one difference: x₀ is clamped
    to [-1, 1] before each update (`clip_x0`). ZIP must not clamp (docs/design.md defines its x₀
    unclamped, and the range identity A x₀ = y needs the raw x₀). Unconditional samplers usually
    do (diffusers' DDPM and DDIM schedulers default to `clip_sample=True`), and every quality.json
    so far was measured this way, so the model card's scores stay comparable across snapshots: the
    score rates the prior under the standard sampler, not bit for bit the update ZIP applies.
    """
    table = alphas_cumprod(linear_betas())
    shape = torch.Size((count, model.channels, model.sample_size, model.sample_size))
    x_t = draw_noise(shape, generator, model.device)
    for t, t_next in timestep_pairs(steps):
        eps = model(x_t, torch.full((count,), t, dtype=torch.long, device=model.device))
        z = draw_noise(shape, generator, model.device)
        x_t, _ = ddim_step(x_t, eps, alpha_bar(table, t), alpha_bar(table, t_next), eta, z, clip_x0=True)
    return x_t.clamp(-1, 1)


@dataclass(frozen=True)
class SampleScore:
    """Classifier-based quality score of unconditional samples."""

    samples: int
    steps: int
    mean_max_softmax: float
    class_histogram: dict[str, float]
    min_class_fraction: float

    @property
    def passes_histogram_check(self) -> bool:
        """No class below 3% of the samples (mode collapse shows up here first)."""
        return self.min_class_fraction >= 0.03


def score_samples(
    model: EpsModel,
    classifier: torch.nn.Module,
    count: int = 1000,
    steps: int = 50,
    batch_size: int = 125,
    seed: int = 0,
) -> tuple[SampleScore, torch.Tensor]:
    """Draw `count` samples and score them; returns the score and the first 64 samples."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    confidences: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    kept: list[torch.Tensor] = []
    for start in tqdm(range(0, count, batch_size), desc="sample", unit="batch"):
        samples = sample_ddim(model, min(batch_size, count - start), steps, generator=generator)
        with torch.no_grad():
            probabilities = classifier(samples.cpu()).float().softmax(dim=1)
        confidences.append(probabilities.max(dim=1).values)
        labels.append(probabilities.argmax(dim=1))
        if sum(k.shape[0] for k in kept) < 64:
            kept.append(samples.cpu())
    label_tensor = torch.cat(labels)
    histogram = torch.bincount(label_tensor, minlength=len(CLASS_NAMES)).float() / label_tensor.numel()
    score = SampleScore(
        samples=count,
        steps=steps,
        mean_max_softmax=round(torch.cat(confidences).mean().item(), 4),
        class_histogram={name: round(v, 4) for name, v in zip(CLASS_NAMES, histogram.tolist(), strict=True)},
        min_class_fraction=round(histogram.min().item(), 4),
    )
    return score, torch.cat(kept)[:64]


def write_quality_report(
    model: EpsModel, classifier: torch.nn.Module, out_dir: Path, count: int = 1000, steps: int = 50, seed: int = 0
) -> SampleScore:
    """Score the model and write `samples.png` (8×8 grid) and `quality.json` into `out_dir`."""
    score, grid_samples = score_samples(model, classifier, count=count, steps=steps, seed=seed)
    tensor_to_pil(tile(grid_samples, 8, fill=-1.0)[0]).resize((512, 512), resample=0).save(out_dir / "samples.png")
    (out_dir / "quality.json").write_text(json.dumps(asdict(score), indent=2))
    return score
