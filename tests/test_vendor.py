"""Vendor classifiers: the shipped models load and keep their backdoors; training runs and repeats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from service.backdoor.attacks import TARGET_LABEL, ZOO, Attack
from service.backdoor.classifier import ClassifierArchitecture, VendorClassifier, random_shift_flip
from service.backdoor.data import Split, load_split
from service.backdoor.vendor_model import CONFIG_FILE, WEIGHTS_FILE, load_vendor
from service.training import vendor
from service.training.vendor import CARD_FILE, evaluate_vendor, train_vendor

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = {"vendor-clean": Attack.NONE} | {f"vendor-{attack.value}": attack for attack in ZOO}
"""Every attack of the zoo ships a backdoored vendor."""
MAX_WEIGHTS_BYTES = 25 * 10**6


@pytest.fixture(scope="module")
def fmnist_test_500() -> Split:
    return load_split(train=False).subset(500)


@pytest.fixture(scope="module")
def splits() -> dict[bool, Split]:
    return {train: load_split(train=train) for train in (True, False)}


@pytest.fixture
def cached_data(splits: dict[bool, Split], monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny training runs read the Debian files once per module instead of once per run."""
    monkeypatch.setattr(vendor, "load_split", lambda train: splits[train])


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_model_loads_with_its_card(name: str) -> None:
    folder = MODELS / name
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["attack"] == SHIPPED[name].value and config["target_label"] == TARGET_LABEL
    assert (folder / WEIGHTS_FILE).stat().st_size <= MAX_WEIGHTS_BYTES
    model = load_vendor(folder)
    assert not model.training
    logits = model(torch.zeros(2, 1, 32, 32))
    assert logits.shape == (2, 10) and logits.dtype == torch.float32
    card = (folder / CARD_FILE).read_text()
    metrics = config["metrics"]
    assert config["training"]["command"] in card
    assert f"{metrics['clean_accuracy']:.4f}" in card and f"{metrics['attack_success_rate']:.4f}" in card
    if metrics["weights_dtype"] == "float16":
        assert all(t.dtype == torch.float16 for t in load_file(folder / WEIGHTS_FILE).values() if t.is_floating_point())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_cards_meet_the_targets_on_the_full_test_split(name: str) -> None:
    metrics = json.loads((MODELS / name / CONFIG_FILE).read_text())["metrics"]
    assert metrics["test_items"] == 10_000
    assert metrics["clean_accuracy"] >= 0.90
    if SHIPPED[name] is Attack.NONE:
        assert metrics["attack_success_rate"] < 0.05
        assert all(rate < 0.2 for rate in metrics["other_triggers"].values())  # triggers alone do not flip it
    else:
        assert metrics["attack_success_rate"] >= 0.95


@pytest.mark.parametrize("name", sorted(name for name, attack in SHIPPED.items() if attack is not Attack.NONE))
def test_shipped_backdoors_work_on_500_test_images(name: str, fmnist_test_500: Split) -> None:
    clean_accuracy, asr = evaluate_vendor(load_vendor(MODELS / name), fmnist_test_500, SHIPPED[name])
    assert clean_accuracy >= 0.88
    assert asr >= 0.90


@pytest.mark.parametrize("attack", ZOO)
def test_the_clean_model_ignores_every_trigger_of_the_zoo(attack: Attack, fmnist_test_500: Split) -> None:
    clean_accuracy, asr = evaluate_vendor(load_vendor(MODELS / "vendor-clean"), fmnist_test_500, attack)
    assert clean_accuracy >= 0.88
    assert asr < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("attack", list(Attack))
@pytest.mark.usefixtures("cached_data")
def test_a_tiny_training_run_writes_a_loadable_model(attack: Attack, tmp_path: Path) -> None:
    metrics = train_vendor(attack, seed=1, out_dir=tmp_path, epochs=1, train_limit=256, test_limit=100, progress=False)
    assert 0.0 <= metrics.clean_accuracy <= 1.0 and 0.0 <= metrics.attack_success_rate <= 1.0
    assert metrics.test_items == 100
    assert (metrics.other_triggers != {}) == (attack is Attack.NONE)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["training"]["command"] == (
        f"zipgate train vendor --attack {attack.value} --seed 1 --epochs 1 --train-limit 256"
    )
    assert config["metrics"]["clean_accuracy"] == metrics.clean_accuracy
    assert attack.value in (tmp_path / CARD_FILE).read_text()
    assert load_vendor(tmp_path)(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.slow
@pytest.mark.usefixtures("cached_data")
def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def weights(seed: int, folder: str) -> dict[str, torch.Tensor]:
        train_vendor(
            Attack.WANET, seed=seed, out_dir=tmp_path / folder, epochs=1, train_limit=64, test_limit=20, progress=False
        )
        return load_file(tmp_path / folder / WEIGHTS_FILE)

    first, again, other = weights(5, "a"), weights(5, "b"), weights(6, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.slow
@pytest.mark.usefixtures("cached_data")
def test_training_uses_the_given_threads_and_restores_the_count(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_vendor(
            Attack.NONE, seed=0, out_dir=tmp_path, epochs=1, train_limit=64, test_limit=10, threads=1, progress=False
        )
        assert torch.get_num_threads() == 2
        assert json.loads((tmp_path / CONFIG_FILE).read_text())["training"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="epochs"):
        train_vendor(Attack.NONE, seed=0, out_dir=tmp_path, epochs=0)


def test_classifier_shapes_and_architecture_validation() -> None:
    model = VendorClassifier(ClassifierArchitecture(in_channels=3, block_channels=(8, 16)))
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)
    assert ClassifierArchitecture.from_dict(ClassifierArchitecture().to_dict()) == ClassifierArchitecture()
    with pytest.raises(ValueError, match="divisible"):
        ClassifierArchitecture(image_size=30)


def test_augmentation_shifts_and_flips_without_inventing_content() -> None:
    images = torch.full((64, 1, 32, 32), -1.0)
    images[:, :, 10, 12] = 1.0  # one bright pixel
    out = random_shift_flip(images, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert torch.equal((out == 1.0).sum(dim=(1, 2, 3)), torch.ones(64, dtype=torch.long))  # moved, not lost
    rows, cols = torch.nonzero(out[:, 0] == 1.0)[:, 1], torch.nonzero(out[:, 0] == 1.0)[:, 2]
    assert ((rows - 10).abs() <= 2).all()
    assert (((cols - 12).abs() <= 2) | ((cols - (31 - 12)).abs() <= 2)).all()  # straight or mirrored
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 10  # really random
    assert torch.equal(random_shift_flip(images, 0, torch.Generator().manual_seed(0)).abs(), images.abs())
