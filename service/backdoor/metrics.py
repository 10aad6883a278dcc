"""CA, ASR and PA (Shi et al., NeurIPS 2023, §5) and majority voting, as pure functions on label tensors.

Notation: `predictions` and `labels` are int64 tensors of shape (N,); `target` is the attack's
target label (all-to-one attacks, `attacks.TARGET_LABEL`).

- CA  (clean accuracy): mean[pred = label] over clean images.
- ASR (attack success rate): mean[pred = target] over triggered images whose TRUE label ≠ target
  (a target-class image classified as the target is no success of the attack).
- PA  (poisoned accuracy): mean[pred = label] over the same triggered images, i.e. how often the
  defense recovers the true class, not merely "anything but the target".

An empty set has no rate: every metric returns NaN there (JSON writes it as null), rather than a
0 or 1 that would read as a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _check_pair(predictions: torch.Tensor, labels: torch.Tensor) -> None:
    if predictions.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must be 1-D and of equal length, got {tuple(predictions.shape)} "
            f"and {tuple(labels.shape)}"
        )


def _rate(hits: torch.Tensor) -> float:
    """Mean of a boolean tensor; NaN for an empty one."""
    return float(hits.float().mean()) if hits.numel() else math.nan


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of predictions equal to the labels (CA on clean images).

    Args:
        predictions: (N,) predicted labels.
        labels: (N,) true labels.

    Returns:
        The accuracy in [0, 1]; NaN when N = 0.

    Raises:
        ValueError: shapes differ or are not 1-D.
    """
    _check_pair(predictions, labels)
    return _rate(predictions == labels)


def attack_success_rate(predictions: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """ASR: fraction of triggered images with true label ≠ target that are classified as the target.

    Args:
        predictions: (N,) predicted labels of triggered images.
        labels: (N,) their TRUE labels (items whose label is the target are excluded).
        target: the attack's target label.

    Returns:
        The rate in [0, 1]; NaN when no item has a label other than the target.

    Raises:
        ValueError: shapes differ or are not 1-D.
    """
    _check_pair(predictions, labels)
    victims = labels != target
    return _rate(predictions[victims] == target)


def poisoned_accuracy(predictions: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """PA: accuracy on triggered images with true label ≠ target, against their true labels.

    Args, Raises and the excluded items are those of `attack_success_rate`.

    Returns:
        The accuracy in [0, 1]; NaN when no item has a label other than the target.
    """
    _check_pair(predictions, labels)
    victims = labels != target
    return _rate(predictions[victims] == labels[victims])


def majority_vote(votes: torch.Tensor) -> torch.Tensor:
    """The most frequent label per item over K votes; ties go to the tied label voted for first.

    Breaking ties by vote order (not by the smallest label) matters: label 0 is the attack's
    target, and a "smallest label wins" rule would hand every tie to the attacker.

    Args:
        votes: (K, N) int64 labels, row k = the vendor's answers for purification k.

    Returns:
        (N,) int64 labels; with K = 1 the single row itself.

    Raises:
        ValueError: votes is not 2-D with K ≥ 1, or holds negative labels.
    """
    if votes.ndim != 2 or votes.shape[0] < 1:
        raise ValueError(f"votes must have shape (K ≥ 1, N), got {tuple(votes.shape)}")
    if votes.numel() and int(votes.min()) < 0:
        raise ValueError("labels must be non-negative class indices")
    votes = votes.long()
    k, n = votes.shape
    if k == 1 or n == 0:
        return votes[0].clone()
    # counts[k, i] = how many of the K votes for item i equal votes[k, i].
    counts = (votes.unsqueeze(0) == votes.unsqueeze(1)).sum(dim=1)
    # argmax returns the first maximal index, i.e. the earliest vote among the tied labels.
    winner = counts.argmax(dim=0)
    return votes[winner, torch.arange(n)]


@dataclass(frozen=True)
class DefenseScores:
    """CA, ASR and PA of one defense against one attack, with the item counts behind them."""

    clean_accuracy: float
    attack_success_rate: float
    poisoned_accuracy: float
    clean_items: int
    poisoned_items: int


def score_defense(
    clean_predictions: torch.Tensor,
    clean_labels: torch.Tensor,
    triggered_predictions: torch.Tensor,
    triggered_labels: torch.Tensor,
    target: int,
) -> DefenseScores:
    """All three metrics at once.

    Args:
        clean_predictions, clean_labels: (N,) answers on defended clean images and the true labels.
        triggered_predictions, triggered_labels: (M,) answers on defended triggered images and their
            TRUE labels (target-class items, if any, are excluded from ASR and PA).
        target: the attack's target label.

    Returns:
        The scores; `poisoned_items` counts the items with label ≠ target.

    Raises:
        ValueError: mismatched shapes.
    """
    return DefenseScores(
        clean_accuracy=accuracy(clean_predictions, clean_labels),
        attack_success_rate=attack_success_rate(triggered_predictions, triggered_labels, target),
        poisoned_accuracy=poisoned_accuracy(triggered_predictions, triggered_labels, target),
        clean_items=int(clean_labels.numel()),
        poisoned_items=int((triggered_labels != target).sum()),
    )
