"""The closed loop's rules: which answer an image gets, and how targets are named and cleared."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry

from service.errors import TargetsFull
from service.shadow.alarm import AlarmRule
from service.shadow.history import ShadowHistory
from service.shadow.policy import DefensePolicy, answer_purified
from service.shadow.targets import DEFAULT_MAX_TARGETS, JUDGE_EVERY_S, TargetBoard, TargetSource


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("policy", "label", "named", "expected"),
    [
        (DefensePolicy.ALWAYS, "1", set(), True),
        (DefensePolicy.ALWAYS, "1", {"7"}, True),
        (DefensePolicy.ON_ALARM, "1", set(), False),  # before an alarm: the raw answer
        (DefensePolicy.ON_ALARM, "7", {"7"}, True),
        (DefensePolicy.ON_ALARM, "1", {"7"}, False),  # not the target: the attack failed for it
        (DefensePolicy.ON_ALARM, None, set(), True),  # unreadable: cannot tell, so purified
        (DefensePolicy.UNTIL_ALARM, "1", set(), True),  # before an alarm: protected
        (DefensePolicy.UNTIL_ALARM, "7", {"7"}, True),
        (DefensePolicy.UNTIL_ALARM, "1", {"7"}, False),
        (DefensePolicy.UNTIL_ALARM, None, {"7"}, True),
    ],
)
def test_which_answer_an_image_gets(policy: DefensePolicy, label: str | None, named: set[str], expected: bool) -> None:
    assert answer_purified(policy, label, named) is expected


def test_only_the_loop_policies_ask_about_the_raw_image() -> None:
    assert [p for p in DefensePolicy if p.asks_raw] == [DefensePolicy.ON_ALARM, DefensePolicy.UNTIL_ALARM]


def test_the_setting_names_targets_and_an_operator_clears_them() -> None:
    registry = CollectorRegistry()
    board = TargetBoard(registry, ["7"], wall_clock=lambda: 42.0)
    assert board.named["7"].source is TargetSource.SETTING and board.named["7"].since == 42.0
    assert registry.get_sample_value("zipgate_named_target", {"raw_label": "7", "source": "setting"}) == 1
    assert board.name("7", TargetSource.OPERATOR).source is TargetSource.SETTING  # first naming kept
    assert board.clear("7") and not board.clear("7")
    assert board.named == {}
    assert registry.get_sample_value("zipgate_named_target", {"raw_label": "7", "source": "setting"}) is None


@pytest.mark.parametrize("label", ["", "other"])
def test_other_and_empty_cannot_be_named(label: str) -> None:
    with pytest.raises(ValueError, match="cannot be named"):
        TargetBoard(CollectorRegistry()).name(label, TargetSource.OPERATOR)


def test_the_alarm_names_a_label_once_the_share_rule_holds_and_keeps_it_named() -> None:
    clock = Clock()
    history = ShadowHistory(clock=clock)
    board = TargetBoard(CollectorRegistry(), history=history, clock=clock)
    rule = AlarmRule()
    for _ in range(int(rule.min_count) - 1):
        history.count("7", disagreed=True)
    assert board.judge() == []  # one short of the minimum count
    history.count("7", disagreed=True)
    assert board.judge() == []  # judged less than JUDGE_EVERY_S ago: not judged again yet
    clock.now += JUDGE_EVERY_S
    assert board.judge() == ["7"]
    assert board.named["7"].source is TargetSource.ALARM and "share" in (board.named["7"].rule or "")
    # The attacker pauses: the window empties, and the name holds (only an operator clears it).
    clock.now += 10 * 24 * 3600
    assert board.judge() == [] and "7" in board.named


def test_the_alarm_does_not_name_a_label_whose_share_of_disagreements_is_a_minority() -> None:
    clock = Clock()
    history = ShadowHistory(clock=clock)
    board = TargetBoard(CollectorRegistry(), history=history, clock=clock)
    for label in itertools.islice(itertools.cycle(["1", "2", "3"]), 90):  # 30 each: a third of the disagreements
        history.count(label, disagreed=True)
    assert board.judge() == [] and board.named == {}


def named_series(registry: CollectorRegistry) -> set[tuple[str, str]]:
    """The (raw_label, source) of every `zipgate_named_target` series in `registry`."""
    (family,) = [f for f in registry.collect() if f.name == "zipgate_named_target"]
    return {(sample.labels["raw_label"], sample.labels["source"]) for sample in family.samples}


def test_operators_and_alertmanager_together_name_at_most_max_targets_and_a_clear_of_theirs_frees_a_slot() -> None:
    registry = CollectorRegistry()
    board = TargetBoard(registry, ["1"], max_targets=2)
    board.name("2", TargetSource.OPERATOR)
    board.name("3", TargetSource.ALERTMANAGER, "rule")  # the setting's "1" takes no slot of theirs
    for source in (TargetSource.OPERATOR, TargetSource.ALERTMANAGER):
        with pytest.raises(TargetsFull, match=r"'4' cannot be named: the gateway holds 2 named targets") as refused:
            board.name("4", source)
    assert "DELETE /targets/{label}" in refused.value.message and "API_KEY" in refused.value.message
    assert refused.value.status_code == 409
    assert board.name("2", TargetSource.ALERTMANAGER).source is TargetSource.OPERATOR  # named already: a no-op
    assert set(board.named) == {"1", "2", "3"} and len(named_series(registry)) == 3
    assert board.clear("1")  # the setting's name held no slot of theirs: none is freed
    with pytest.raises(TargetsFull):
        board.name("4", TargetSource.OPERATOR)
    assert board.clear("2")
    assert board.name("4", TargetSource.OPERATOR).source is TargetSource.OPERATOR
    assert named_series(registry) == {("3", "alertmanager"), ("4", "operator")}


def test_peers_names_have_a_bucket_of_their_own_and_the_board_holds_at_most_four_times_max_targets() -> None:
    board = TargetBoard(CollectorRegistry(), ["1"], max_targets=1)
    board.name("2", TargetSource.OPERATOR)
    board.name("3", TargetSource.PEER, "alarm")  # operators' slot is taken; peers' is not
    with pytest.raises(TargetsFull, match=r"holds 1 named targets from peers,"):
        board.name("4", TargetSource.PEER)
    for source in (TargetSource.OPERATOR, TargetSource.ALERTMANAGER):
        with pytest.raises(TargetsFull, match=r"holds 1 named targets from operators and Alertmanager,"):
            board.name("4", source)
    board.name("4", TargetSource.ALARM)  # never refused
    assert len(board.named) == 4 * board.max_targets
    assert board.clear("3")  # a peer's name frees a peer's slot, not an operator's
    with pytest.raises(TargetsFull):
        board.name("5", TargetSource.OPERATOR)
    assert board.name("5", TargetSource.PEER).source is TargetSource.PEER


def test_the_default_cap_is_the_shadow_counters_and_a_cap_below_one_is_refused() -> None:
    assert TargetBoard(CollectorRegistry()).max_targets == DEFAULT_MAX_TARGETS == 100  # SHADOW_MAX_LABELS' default
    with pytest.raises(ValueError, match="at least 1"):
        TargetBoard(CollectorRegistry(), max_targets=0)


def test_the_setting_names_at_most_max_targets_labels() -> None:
    # The configuration check refuses a longer SUSPECTED_TARGETS first (tests/test_closed_loop_gateway.py);
    # the board's bound does not rest on it alone.
    with pytest.raises(ValueError, match=r"2 labels named by the setting, more than max_targets \(1\)"):
        TargetBoard(CollectorRegistry(), ["1", "2"], max_targets=1)
    assert set(TargetBoard(CollectorRegistry(), ["1", "1"], max_targets=1).named) == {"1"}  # counted once


def test_the_alarm_names_its_target_on_a_board_that_operators_and_alertmanager_filled() -> None:
    clock = Clock()
    history = ShadowHistory(clock=clock)
    board = TargetBoard(CollectorRegistry(), ["1"], history, max_targets=2, clock=clock)
    board.name("2", TargetSource.OPERATOR)
    board.name("3", TargetSource.ALERTMANAGER)
    with pytest.raises(TargetsFull):
        board.name("4", TargetSource.OPERATOR)
    for _ in range(int(AlarmRule().min_count)):
        history.count("7", disagreed=True)
    assert board.judge() == ["7"]
    assert board.named["7"].source is TargetSource.ALARM
    assert set(board.named) == {"1", "2", "3", "7"}  # over max_targets: the alarm is never refused
    with pytest.raises(TargetsFull):  # and its name takes no slot of the outside sources
        board.name("4", TargetSource.ALERTMANAGER)
