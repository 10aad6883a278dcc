"""`zipgate eval`'s progress: stages counted as planned, an estimate of the time left, labels per defense."""

from __future__ import annotations

from service.backdoor.attacks import Attack
from service.defense_eval.defenses import Defense, DefenseSetting
from service.defense_eval.progress import EvalProgress, format_duration, planned_stages, stage_label
from service.purify.options import Method

SETTING = DefenseSetting("jblur:4", steps=20, guidance_power=0.25, votes=2, method=Method.GLOBAL)


def test_the_none_label_shows_no_purification_settings() -> None:
    assert stage_label(Defense.NONE, SETTING) == "none"
    assert stage_label(Defense.BLUR, SETTING) == "blur jblur:4"
    assert stage_label(Defense.ZIP, SETTING) == f"zip {SETTING.describe()}"


def test_planned_stages_count_each_cached_pass_once() -> None:
    attacks = [Attack.BADNETS, Attack.BLENDED]
    sizes = {None: 100, Attack.BADNETS: 90, Attack.BLENDED: 90}
    defenses = [Defense.NONE, Defense.ZIP]
    # none: the clean set and each triggered set once; zip: the same three sets, each K = 2 times
    plan = planned_stages([SETTING, SETTING], defenses, attacks, sizes, gateway_class=None)
    assert len(plan) == 3 + 3 * 2
    assert sum(images for _, images in plan) == 280 + 2 * 280
    through_gateway = planned_stages([SETTING], defenses, attacks, sizes, gateway_class="gateway")
    assert len(through_gateway) == 3 + 3  # the gateway votes itself: one pass per set


def test_the_estimate_prices_what_is_left_at_the_rates_measured() -> None:
    lines: list[str] = []
    progress = EvalProgress([("none", 100), ("zip", 100), ("zip", 100)], lines.append)
    assert progress.start_stage("none clean") == "stage 1/3 none clean"
    progress.timed_batch("none", 100, 1.0, first=True)
    progress.start_stage("zip vote 1")
    progress.timed_batch("zip", 10, 20.0, first=True)  # 2 s per image: 190 images of zip left
    progress.timed_batch("zip", 10, 20.0, first=False)
    assert lines == [
        "stage 1/3: at least 2 s left for the run (0.01 s per image here)",  # zip not measured yet
        "stage 2/3: about 6 min left for the run (2 s per image here)",
    ]


def test_format_duration() -> None:
    assert (format_duration(40), format_duration(420), format_duration(7500)) == ("40 s", "7 min", "2 h 05 min")
