"""CA / ASR / PA and majority voting on hand-made predictions, edge cases included."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.backdoor.metrics import (
    accuracy,
    attack_success_rate,
    majority_vote,
    poisoned_accuracy,
    score_defense,
)

TARGET = 0


def t(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def test_accuracy_counts_matches() -> None:
    assert accuracy(t([1, 2, 3, 4]), t([1, 2, 0, 0])) == pytest.approx(0.5)


def test_asr_excludes_target_class_images() -> None:
    # Items 0 and 1 are target-class images classified as the target: no success of the attack.
    predictions = t([0, 0, 0, 5, 0, 7])
    labels = t([0, 0, 3, 5, 6, 2])
    # victims: labels 3, 5, 6, 2 → predictions 0, 5, 0, 7 → 2 of 4 hit the target.
    assert attack_success_rate(predictions, labels, TARGET) == pytest.approx(0.5)
    # PA over the same victims: only the item with label 5 is right.
    assert poisoned_accuracy(predictions, labels, TARGET) == pytest.approx(0.25)


def test_all_target_class_images_give_nan_not_a_rate() -> None:
    labels = t([0, 0, 0])
    assert math.isnan(attack_success_rate(t([0, 1, 0]), labels, TARGET))
    assert math.isnan(poisoned_accuracy(t([0, 1, 0]), labels, TARGET))
    # Clean accuracy is still defined on them.
    assert accuracy(t([0, 1, 0]), labels) == pytest.approx(2 / 3)


def test_empty_sets_give_nan() -> None:
    empty = t([])
    assert math.isnan(accuracy(empty, empty))
    assert math.isnan(attack_success_rate(empty, empty, TARGET))
    assert math.isnan(poisoned_accuracy(empty, empty, TARGET))


def test_other_target_label() -> None:
    # Target 3: an image of class 0 predicted as 3 is a success; class-3 images are excluded.
    assert attack_success_rate(t([3, 3, 1]), t([0, 3, 1]), target=3) == pytest.approx(0.5)


@pytest.mark.parametrize("predictions,labels", [(t([1, 2]), t([1])), (t([[1]]), t([[1]]))])
def test_shape_mismatch_is_an_error(predictions: torch.Tensor, labels: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="1-D and of equal length"):
        accuracy(predictions, labels)
    with pytest.raises(ValueError):
        attack_success_rate(predictions, labels, TARGET)


def test_score_defense_bundles_the_three_metrics() -> None:
    scores = score_defense(t([1, 2, 0]), t([1, 2, 3]), t([0, 4, 0]), t([5, 4, 0]), TARGET)
    assert scores.clean_accuracy == pytest.approx(2 / 3)
    assert scores.attack_success_rate == pytest.approx(0.5)
    assert scores.poisoned_accuracy == pytest.approx(0.5)
    assert (scores.clean_items, scores.poisoned_items) == (3, 2)


def test_majority_vote_picks_the_most_frequent_label() -> None:
    votes = t([[1, 0, 2], [1, 3, 2], [4, 3, 0]])  # (K=3, N=3)
    assert majority_vote(votes).tolist() == [1, 3, 2]


def test_majority_vote_tie_goes_to_the_earliest_vote_not_the_smallest_label() -> None:
    # Item 0: 5 vs 0 tied, 5 voted first → 5 (a smallest-label rule would hand it to target 0).
    # Item 1: three different labels → the first vote, 7.
    # Item 2: 0 voted first and tied with 2 → 0.
    votes = t([[5, 7, 0, 9], [0, 1, 2, 9], [5, 4, 2, 9], [0, 6, 0, 1]])
    assert majority_vote(votes).tolist() == [5, 7, 0, 9]


def test_majority_vote_single_vote_and_empty_batch() -> None:
    assert majority_vote(t([[3, 1, 4]])).tolist() == [3, 1, 4]
    assert majority_vote(torch.zeros((3, 0), dtype=torch.long)).shape == (0,)


@pytest.mark.parametrize("votes", [t([1, 2]), torch.zeros((0, 2), dtype=torch.long), t([[-1, 2]])])
def test_majority_vote_rejects_bad_input(votes: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        majority_vote(votes)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=5, max_size=5), min_size=1, max_size=6))
def test_majority_vote_matches_a_counting_reference(rows: list[list[int]]) -> None:
    votes = t(rows)
    got = majority_vote(votes).tolist()
    for item in range(votes.shape[1]):
        column = [row[item] for row in rows]
        best = max(column.count(label) for label in column)
        expected = next(label for label in column if column.count(label) == best)  # first among the tied
        assert got[item] == expected
