"""Majority votes over K purifications: which vendor answer the client gets (docs/design.md, "Votes")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.shadow.labels import LabelExtractor, VendorLabel, bounded_vendor_label, label_key


@dataclass(frozen=True)
class VoteOutcome:
    """Per image: the answer returned (the first vote for the majority label) and every vote's label."""

    predictions: list[Any]
    # labels[i][k]: vote k's label for image i, with the vendor's type, bounded for the response
    # (`bounded_vendor_label`); None: unreadable.
    labels: list[list[VendorLabel | None]]
    chosen: list[int]  # chosen[i]: the vote whose answer image i got


def majority(answers: Sequence[Sequence[Any]], label: LabelExtractor) -> VoteOutcome:
    """Choose, per image, the answer of the most frequent label over the K votes.

    Ties go to the tied label voted for first, as `service.backdoor.metrics.majority_vote` does in
    the evaluation: a rule such as "smallest label wins" would hand every tie to a target 0.
    Unreadable labels do not vote; with none readable, vote 0's answer is returned. Labels are compared
    by `label_key` (3, 3.0 and "3" are one label) on their full text.

    Args:
        answers: answers[k][i], vote k's vendor prediction for image i (K ≥ 1, same N each).

    Returns:
        The chosen predictions and the labels behind them.

    Raises:
        ValueError: no votes, or votes of different lengths.
    """
    if not answers or any(len(vote) != len(answers[0]) for vote in answers):
        raise ValueError("majority needs K ≥ 1 votes of the same number of images")
    predictions: list[Any] = []
    labels: list[list[VendorLabel | None]] = []
    chosen_votes: list[int] = []
    for i in range(len(answers[0])):
        values = [label.read(vote[i]) for vote in answers]
        votes = [None if value is None else label_key(value) for value in values]
        counts = Counter(v for v in votes if v is not None)
        winner = next((v for v in votes if v is not None and counts[v] == max(counts.values())), None)
        chosen = 0 if winner is None else votes.index(winner)
        predictions.append(answers[chosen][i])
        labels.append([bounded_vendor_label(value) for value in values])
        chosen_votes.append(chosen)
    return VoteOutcome(predictions, labels, chosen_votes)
