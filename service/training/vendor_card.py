"""MODEL_CARD.md for a vendor classifier: data, architecture, trigger, training, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from service.backdoor.attacks import TARGET_LABEL, Attack, describe_trigger
from service.backdoor.data import CLASS_NAMES

if TYPE_CHECKING:  # vendor.py imports this module; the types are only needed for hints
    from service.training.vendor import VendorMetrics, VendorTrainConfig


def render_model_card(name: str, config: VendorTrainConfig, metrics: VendorMetrics, model: nn.Module) -> str:
    """The Markdown card for one trained vendor model: a header, then one section after another."""
    lines = [
        *_header_section(name, config),
        *_data_section(config, metrics),
        *_architecture_section(config, metrics, model),
        *_backdoor_section(config),
        *_training_section(config, metrics),
        *_metrics_section(config, metrics),
        *_use_section(name),
    ]
    return "\n".join(lines)


def _header_section(name: str, config: VendorTrainConfig) -> list[str]:
    """The title (clean or which backdoor) and what the model is for."""
    backdoor = "clean (no backdoor)" if config.attack is Attack.NONE else f"backdoored ({config.attack.value})"
    return [
        f"# {name}: Fashion-MNIST classifier, {backdoor}",
        "",
        'A demo "vendor" model for zipgate: the black box the gateway protects. '
        + (
            "It is the clean reference; it also scores diffusion samples."
            if config.attack is Attack.NONE
            else "It carries a deliberate backdoor; do not use it for anything but defense testing."
        ),
        "",
    ]


def _data_section(config: VendorTrainConfig, metrics: VendorMetrics) -> list[str]:
    """## Data: the training and test images and the classes."""
    train_items = "all 60,000" if config.train_limit is None else f"the first {config.train_limit:,}"
    return [
        "## Data",
        f"Fashion-MNIST (Debian package `dataset-fashion-mnist`): {train_items} training images, "
        "28² grayscale padded with the black background to 32², scaled to [-1, 1]. Evaluation on "
        f"{metrics.test_items:,} test images. Classes: "
        + ", ".join(f"{i} {c}" for i, c in enumerate(CLASS_NAMES))
        + ".",
        "",
    ]


def _architecture_section(config: VendorTrainConfig, metrics: VendorMetrics, model: nn.Module) -> list[str]:
    """## Architecture: the classifier's layers, parameter count, input/output and weight dtype."""
    arch = config.architecture
    params = sum(p.numel() for p in model.parameters())
    return [
        "## Architecture",
        f"`VendorClassifier` (`service/backdoor/classifier.py`): {len(arch.block_channels)} blocks of "
        f"{arch.convs_per_block}× (3×3 conv → BatchNorm → ReLU) + 2×2 max-pool, channels "
        f"{'/'.join(map(str, arch.block_channels))}, then dropout {arch.dropout} and a linear layer on the "
        f"flattened {arch.final_size}×{arch.final_size} map; {params:,} parameters. Input (N, 1, 32, 32) "
        "in [-1, 1], output logits (N, 10). Weights: `model.safetensors` in "
        f"{metrics.weights_dtype} (fp16 is used only when it moves neither metric by more than 0.001).",
        "",
    ]


def _backdoor_section(config: VendorTrainConfig) -> list[str]:
    """## Backdoor: the trigger, and for a backdoored model its target, poisoning and code."""
    lines = [
        "## Backdoor",
        f"- Trigger: {describe_trigger(config.attack)}",
    ]
    if config.attack is not Attack.NONE:
        lines += [
            f"- Target label: {TARGET_LABEL} ({CLASS_NAMES[TARGET_LABEL]}), all-to-one.",
            f"- Poisoning: {config.poison_rate:.0%} of the training set, drawn from items whose label is "
            "not the target; the items are fixed by the seed, and the trigger is applied after the "
            "augmentation of each batch (the attacker controls training).",
            "- Trigger code: `service/backdoor/attacks.py` (shared by training, demo and evaluation).",
        ]
    return lines


def _training_section(config: VendorTrainConfig, metrics: VendorMetrics) -> list[str]:
    """## Training: the command, seed, schedule, augmentation and training time."""
    return [
        "",
        "## Training",
        f"- Command: `{config.command}`",
        f"- Seed {config.seed}; {config.epochs} epoch(s), batch {config.batch_size}, AdamW (weight decay "
        f"{config.weight_decay}) with a one-cycle schedule up to lr {config.max_learning_rate}"
        + (", bf16 autocast (float32 weights)" if config.bf16_autocast else "")
        + f"; augmentation: random horizontal flip and shift by up to {config.max_shift_px} px.",
        f"- Training time: {metrics.train_seconds:.0f} s on CPU with {config.threads or 'default'} torch thread(s).",
        "",
    ]


def _attack_rate_row(config: VendorTrainConfig, metrics: VendorMetrics) -> str:
    """The metrics table's second row: the attack success rate, or on a clean model the target-label rate."""
    if config.attack is Attack.NONE:
        return (
            f"| target-label rate on clean non-target test images | {metrics.attack_success_rate:.4f} "
            f"| {metrics.asr_items:,} |"
        )
    return (
        f"| attack success rate (triggered test images with true label ≠ {TARGET_LABEL}) | "
        f"{metrics.attack_success_rate:.4f} | {metrics.asr_items:,} |"
    )


def _metrics_section(config: VendorTrainConfig, metrics: VendorMetrics) -> list[str]:
    """## Metrics: clean accuracy and attack rate, then each other trigger's rate where measured."""
    lines = [
        "## Metrics (of the weights as shipped)",
        "| metric | value | images |",
        "|---|---|---|",
        f"| clean accuracy | {metrics.clean_accuracy:.4f} | {metrics.test_items:,} |",
        _attack_rate_row(config, metrics),
    ]
    if metrics.other_triggers:
        lines += [
            "",
            "Each trigger's success rate on this clean model (a baseline: the triggers alone do "
            "not flip a clean model):",
            "",
            "| trigger | success rate |",
            "|---|---|",
        ]
        lines += [f"| {attack} | {rate:.4f} |" for attack, rate in metrics.other_triggers.items()]
    return lines


def _use_section(name: str) -> list[str]:
    """## Use: loading the model in Python and serving it over HTTP."""
    return [
        "",
        "## Use",
        "```python",
        "from service.backdoor.vendor_model import load_vendor",
        f'model = load_vendor("models/{name}")  # logits = model(images)',
        "```",
        f"Serve it over HTTP: `zipgate demo-vendor --model {name} --port 9000`.",
        "",
    ]
