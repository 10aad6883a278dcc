"""Majority votes in the gateway agree with the evaluation's `majority_vote`, ties included."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.api.votes import majority
from service.backdoor.metrics import majority_vote
from service.shadow.labels import LabelExtractor

LABEL = LabelExtractor.parse("label")


def _answers(votes: list[list[int | None]]) -> list[list[dict[str, int | None]]]:
    return [[{"label": label, "vote": k} for label in row] for k, row in enumerate(votes)]


def test_majority_matches_the_evaluation_on_every_small_vote_pattern() -> None:
    for k in (1, 2, 3, 4):
        patterns = list(itertools.product(range(3), repeat=k))
        votes = torch.tensor(patterns).T  # (K, N): every way K votes can fall on 3 labels
        expected = majority_vote(votes)
        outcome = majority(_answers(votes.tolist()), LABEL)
        assert [int(p["label"]) for p in outcome.predictions] == expected.tolist()


def test_the_answer_returned_is_the_first_vote_for_the_winner() -> None:
    outcome = majority(_answers([[1], [2], [2], [1]]), LABEL)  # tie 1-1… 2-2: label 1 was voted first
    assert outcome.predictions == [{"label": 1, "vote": 0}]
    outcome = majority(_answers([[1], [2], [2]]), LABEL)
    assert outcome.predictions == [{"label": 2, "vote": 1}] and outcome.labels == [[1, 2, 2]]
    assert outcome.chosen == [1]


def test_unreadable_labels_do_not_vote() -> None:
    outcome = majority(_answers([[None], [None], [3]]), LABEL)
    assert outcome.predictions == [{"label": 3, "vote": 2}] and outcome.labels == [[None, None, 3]]
    nothing = majority(_answers([[None], [None]]), LABEL)
    assert nothing.predictions == [{"label": None, "vote": 0}]


def test_vote_labels_keep_the_vendors_type_and_agree_across_types() -> None:
    # 3, 3.0 and "3" are one label for the vote (as for shadow mode); each keeps its own type in the labels.
    outcome = majority([[{"label": 3}], [{"label": 3.0}], [{"label": "3"}], [{"label": "cat"}]], LABEL)
    assert outcome.labels == [[3, 3.0, "3", "cat"]] and outcome.chosen == [0]
    assert [type(label) for label in outcome.labels[0]] == [int, float, str, str]
    argmax = majority([[{"p": [0.1, 0.9]}], [{"p": [0.8, 0.2]}]], LabelExtractor.parse("argmax:p"))
    assert argmax.labels == [[1, 0]]  # argmax labels are the index, an int


def test_vote_labels_are_bounded_but_compared_in_full() -> None:
    long_a, long_b = "a" * 10_000, "a" * 9_999 + "b"
    outcome = majority([[{"label": long_b}], [{"label": long_a}], [{"label": long_a}]], LABEL)
    assert outcome.chosen == [1]  # the two long labels differ in their last character: they are not one vote
    row = outcome.labels[0]
    assert all(isinstance(label, str) and label.startswith("h:") and len(label) == 14 for label in row)
    assert row[1] == row[2] != row[0]
    huge = majority([[{"label": 10**100}], [{"label": 7}]], LABEL).labels[0]
    assert isinstance(huge[0], str) and huge[0].startswith("h:") and huge[1] == 7


def test_majority_rejects_ragged_or_empty_votes() -> None:
    with pytest.raises(ValueError):
        majority([], LABEL)
    with pytest.raises(ValueError):
        majority([[1, 2], [1]], LABEL)
