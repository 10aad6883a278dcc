"""Train, evaluate, save and load the demo vendor classifiers (clean and backdoored)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from service.backdoor.attacks import TARGET_LABEL, Attack, PoisonPlan, apply_trigger, plan_poison, poison_batch
from service.backdoor.classifier import ClassifierArchitecture, VendorClassifier, random_shift_flip
from service.backdoor.data import CLASS_NAMES, Split, load_split
from service.backdoor.metrics import accuracy, attack_success_rate
from service.backdoor.vendor_model import CONFIG_FILE, CONFIG_FORMAT, WEIGHTS_FILE, predict_labels
from service.torch_threads import torch_threads
from service.training.vendor_card import render_model_card

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
DEFAULT_EPOCHS = 5
FP16_TOLERANCE = 0.001
"""Ship fp16 weights only if clean accuracy and ASR each move by at most this (10 of 10k images)."""


@dataclass(frozen=True)
class VendorTrainConfig:
    """Everything that decides a training run; written to config.json and the model card."""

    attack: Attack
    seed: int
    epochs: int = DEFAULT_EPOCHS
    train_limit: int | None = None
    test_limit: int | None = None
    batch_size: int = 128
    max_learning_rate: float = 3e-3
    weight_decay: float = 5e-4
    poison_rate: float = 0.1
    max_shift_px: int = 2
    bf16_autocast: bool = True
    threads: int | None = 1
    architecture: ClassifierArchitecture = field(default_factory=ClassifierArchitecture)

    @property
    def command(self) -> str:
        """The `zipgate` command line that reproduces this run."""
        parts = [f"zipgate train vendor --attack {self.attack.value} --seed {self.seed}"]
        if self.epochs != DEFAULT_EPOCHS:
            parts.append(f"--epochs {self.epochs}")
        if self.train_limit is not None:
            parts.append(f"--train-limit {self.train_limit}")
        return " ".join(parts)


@dataclass(frozen=True)
class VendorMetrics:
    """What a trained vendor model scores, measured on the weights as shipped.

    Attributes:
        clean_accuracy: accuracy on the clean test items.
        attack_success_rate: share of triggered test items whose true label is not the target
            that are classified as the target (for `Attack.NONE`: untriggered ones).
        test_items: test items behind `clean_accuracy`.
        asr_items: triggered items behind `attack_success_rate`.
        train_seconds: wall-clock training time.
        weights_dtype: "float16" or "float32", as saved.
        other_triggers: for the clean model, each trigger's success rate on it (a baseline).
    """

    clean_accuracy: float
    attack_success_rate: float
    test_items: int
    asr_items: int
    train_seconds: float
    weights_dtype: str
    other_triggers: dict[str, float] = field(default_factory=dict)


def evaluate_vendor(model: torch.nn.Module, split: Split, attack: Attack) -> tuple[float, float]:
    """Clean accuracy on `split` and the attack success rate of `attack`'s trigger.

    Returns:
        (clean_accuracy, asr): ASR over triggered images whose true label is not the target; for
        `Attack.NONE` the rate at which clean non-target images are labelled as the target.
    """
    victims = split.labels != TARGET_LABEL
    triggered = predict_labels(model, apply_trigger(split.images[victims], attack))
    return (
        accuracy(predict_labels(model, split.images), split.labels),
        attack_success_rate(triggered, split.labels[victims], TARGET_LABEL),
    )


def _train_epochs(model: VendorClassifier, train: Split, config: VendorTrainConfig, progress: bool) -> None:
    """AdamW with a one-cycle schedule; each batch is augmented first and poisoned second.

    Poisoning after augmentation puts the trigger on the image exactly as a test image carries
    it (the attacker controls training, WaNet's threat model); the poisoned *items* are fixed.
    bf16 autocast and channels-last memory make a CPU step about 1.7× faster; the weights and
    the loss stay float32.
    """
    generator = torch.Generator().manual_seed(config.seed)
    plan = plan_poison(train.labels, config.attack, config.poison_rate, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.max_learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    # torch's stub of nn.Module.to omits memory_format, which the method accepts.
    model.to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    for epoch in range(config.epochs):
        batches = torch.randperm(len(train), generator=generator).split(config.batch_size)
        bar = tqdm(
            batches, desc=f"vendor {config.attack.value} {epoch + 1}/{config.epochs}", disable=not progress, leave=False
        )
        for index in bar:
            images = random_shift_flip(train.images[index], config.max_shift_px, generator)
            batch_plan = PoisonPlan(plan.poisoned[index], plan.cross[index])
            images, labels = poison_batch(images, train.labels[index], batch_plan, config.attack, generator)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16_autocast):
                logits = model(images.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        log.info("vendor %s epoch %d/%d: last loss %.4f", config.attack.value, epoch + 1, config.epochs, loss.item())


def state_as(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict with floating tensors cast to `dtype` (integer counters kept)."""
    return {name: (t.to(dtype) if t.is_floating_point() else t).contiguous() for name, t in model.state_dict().items()}


def _roundtrip(model: VendorClassifier, dtype: torch.dtype) -> VendorClassifier:
    """A copy of `model` whose weights went through `dtype` and back to float32, as loading does."""
    copy = VendorClassifier(model.architecture)
    copy.load_state_dict(
        {name: t.float() if t.is_floating_point() else t for name, t in state_as(model, dtype).items()}
    )
    return copy.eval()


def _measure_shipped(
    model: VendorClassifier, test: Split, attack: Attack, train_seconds: float
) -> tuple[torch.dtype, VendorMetrics]:
    """Pick fp16 if it keeps the metrics within FP16_TOLERANCE, and measure the chosen weights."""
    full = evaluate_vendor(model, test, attack)
    half = evaluate_vendor(_roundtrip(model, torch.float16), test, attack)
    keep_half = all(abs(a - b) <= FP16_TOLERANCE for a, b in zip(full, half, strict=True))
    dtype = torch.float16 if keep_half else torch.float32
    clean_accuracy, asr = half if keep_half else full
    other: dict[str, float] = {}
    if attack is Attack.NONE:
        shipped = _roundtrip(model, dtype)
        other = {a.value: round(evaluate_vendor(shipped, test, a)[1], 4) for a in Attack if a is not Attack.NONE}
    metrics = VendorMetrics(
        clean_accuracy=round(clean_accuracy, 4),
        attack_success_rate=round(asr, 4),
        test_items=len(test),
        asr_items=int((test.labels != TARGET_LABEL).sum()),
        train_seconds=round(train_seconds, 1),
        weights_dtype=str(dtype).removeprefix("torch."),
        other_triggers=other,
    )
    return dtype, metrics


def _config_json(config: VendorTrainConfig, metrics: VendorMetrics) -> dict:
    return {
        "format": CONFIG_FORMAT,
        "architecture": config.architecture.to_dict(),
        "class_names": list(CLASS_NAMES),
        "input": {
            "shape": [config.architecture.in_channels, config.architecture.image_size, config.architecture.image_size],
            "range": [-1.0, 1.0],
        },
        "attack": config.attack.value,
        "target_label": TARGET_LABEL,
        "training": {
            "seed": config.seed,
            "epochs": config.epochs,
            "train_limit": config.train_limit,
            "batch_size": config.batch_size,
            "max_learning_rate": config.max_learning_rate,
            "weight_decay": config.weight_decay,
            "poison_rate": config.poison_rate,
            "max_shift_px": config.max_shift_px,
            "bf16_autocast": config.bf16_autocast,
            "threads": config.threads,
            "command": config.command,
            "torch_version": torch.__version__,
        },
        "metrics": {
            "clean_accuracy": metrics.clean_accuracy,
            "attack_success_rate": metrics.attack_success_rate,
            "test_items": metrics.test_items,
            "asr_items": metrics.asr_items,
            "train_seconds": metrics.train_seconds,
            "weights_dtype": metrics.weights_dtype,
            "other_triggers": metrics.other_triggers,
        },
    }


def _load_splits(train_limit: int | None, test_limit: int | None) -> tuple[Split, Split]:
    """The Fashion-MNIST training and test splits, each cut to its first N items where a limit is set."""
    train, test = load_split(train=True), load_split(train=False)
    train = train.subset(train_limit) if train_limit is not None else train
    test = test.subset(test_limit) if test_limit is not None else test
    return train, test


def _write_model_dir(
    out_dir: Path, model: VendorClassifier, dtype: torch.dtype, config: VendorTrainConfig, metrics: VendorMetrics
) -> None:
    """Save the weights in `dtype`, config.json and MODEL_CARD.md to `out_dir` (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state_as(model, dtype), str(out_dir / WEIGHTS_FILE), metadata={"format": CONFIG_FORMAT})
    (out_dir / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; a non-root container must read it
    (out_dir / CONFIG_FILE).write_text(json.dumps(_config_json(config, metrics), indent=2) + "\n")
    (out_dir / CARD_FILE).write_text(render_model_card(out_dir.name, config, metrics, model))
    log.info(
        "vendor %s saved to %s: clean accuracy %.4f, ASR %.4f",
        config.attack.value,
        out_dir,
        metrics.clean_accuracy,
        metrics.attack_success_rate,
    )


def train_vendor(
    attack: Attack,
    seed: int,
    out_dir: Path,
    epochs: int = DEFAULT_EPOCHS,
    train_limit: int | None = None,
    *,
    test_limit: int | None = None,
    threads: int | None = 1,
    architecture: ClassifierArchitecture | None = None,
    progress: bool = True,
) -> VendorMetrics:
    """Train one vendor classifier; save model.safetensors, config.json and MODEL_CARD.md.

    Deterministic for a seed at a fixed thread count: initialisation, dropout, shuffling,
    augmentation and the choice of poisoned items all derive from `seed`.

    Args:
        attack: the backdoor to plant (`Attack.NONE` for the clean model).
        seed: the run's seed.
        out_dir: created if missing; files of the same names are replaced.
        epochs: passes over the training set.
        train_limit: train on the first N training items only (quick tests).
        test_limit: evaluate on the first N test items only (quick tests); default all 10k.
        threads: torch intra-op threads during the run, restored afterwards (None: unchanged).
        architecture: the CNN's shape; default `ClassifierArchitecture()`.
        progress: show a progress bar.

    Returns:
        The metrics of the weights as saved.

    Raises:
        FileNotFoundError: Fashion-MNIST is not installed (see `load_split`).
        ValueError: epochs < 1.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1, got {epochs}")
    config = VendorTrainConfig(
        attack=attack,
        seed=seed,
        epochs=epochs,
        train_limit=train_limit,
        test_limit=test_limit,
        threads=threads,
        architecture=architecture or ClassifierArchitecture(),
    )
    train, test = _load_splits(train_limit, test_limit)
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = VendorClassifier(config.architecture)
        started = time.monotonic()
        _train_epochs(model, train, config, progress)
        train_seconds = time.monotonic() - started
        dtype, metrics = _measure_shipped(model, test, attack, train_seconds)
    _write_model_dir(Path(out_dir), model, dtype, config, metrics)
    return metrics
