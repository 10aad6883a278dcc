"""Replay the closed loop on an evaluation's per-image labels (docs/defense.md, "The closed loop").

Once the shadow alarm names the backdoor's target T, the gateway could answer the vendor's raw
label for every image it does not label T (for those the attack already failed) and purify only
the T-labelled ones. This replays that policy on `labels.npz` of a `zipgate eval` run that holds a
`none` row and the purifying row, per attack, and prints the worst case over the attacks:

    python bench/closed_loop.py reports/v3-n100-polish --defense zip --contains "polish=0.2"

The last line is the vendor calls per image against the per-image default's one call (the
closed loop asks the vendor about the raw image first, then about the purified ones).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.backdoor.attacks import TARGET_LABEL  # noqa: E402
from service.defense_eval.report import LABELS_FILE  # noqa: E402
from service.defense_eval.stream import attacks_in, labelled_sets  # noqa: E402


def closed_loop(raw: np.ndarray, purified: np.ndarray, target: int) -> np.ndarray:
    """The loop's answer per image: the purified label where the raw one is the target, else the raw one."""
    return np.where(raw == target, purified, raw)


@dataclass(frozen=True)
class LoopScores:
    """One attack's scores under the loop, against the undefended vendor."""

    attack: str
    clean_accuracy_drop: float
    attack_success_rate: float
    poisoned_accuracy: float
    purified_share: float  # of the clean images: how many the loop sends through purification


def replay(labels: np.lib.npyio.NpzFile, defense: str, contains: str, target: int = TARGET_LABEL) -> list[LoopScores]:
    """The loop's scores for every attack of the run."""
    scores = []
    stored = {key: labels[key] for key in labels.files}
    for attack in attacks_in(stored):
        clean_set, triggered_set = labelled_sets(stored, attack, defense, contains)
        clean = closed_loop(clean_set.raw, clean_set.purified, target)
        triggered = closed_loop(triggered_set.raw, triggered_set.purified, target)
        scores.append(
            LoopScores(
                attack,
                float((clean == clean_set.truth).mean() - (clean_set.raw == clean_set.truth).mean()),
                float((triggered == target).mean()),
                float((triggered == triggered_set.truth).mean()),
                float((clean_set.raw == target).mean()),
            )
        )
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a zipgate eval output folder (its labels.npz)")
    parser.add_argument("--defense", default="zip", help="the purifying row's defense (default: zip)")
    parser.add_argument("--contains", default="", help="a part of the row's setting label, to pick one")
    args = parser.parse_args()
    with np.load(args.report / LABELS_FILE) as labels:
        try:
            scores = replay(labels, args.defense, args.contains)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    for s in scores:
        print(
            f"{s.attack:12} ΔCA {s.clean_accuracy_drop:+.3f}  ASR {s.attack_success_rate:.3f}  "
            f"PA {s.poisoned_accuracy:.3f}  clean purified {s.purified_share:.2f}"
        )
    print(f"worst_delta_ca={min(s.clean_accuracy_drop for s in scores):.3f}")
    print(f"worst_asr={max(s.attack_success_rate for s in scores):.3f}")
    print(f"min_pa={min(s.poisoned_accuracy for s in scores):.3f}")
    calls = 1.0 + float(np.mean([s.purified_share for s in scores]))
    print(f"vendor_calls_per_image_over_default={calls:.3f}")


if __name__ == "__main__":
    main()
