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


def _row(labels: np.lib.npyio.NpzFile, attack: str, defense: str, contains: str, kind: str) -> np.ndarray:
    keys = [
        k for k in labels.files if k.startswith(f"{attack}/{defense}/") and k.endswith(f"/{kind}") and contains in k
    ]
    if len(keys) != 1:
        raise SystemExit(f"need exactly one {defense} row containing {contains!r} for {attack}/{kind}, found {keys}")
    return np.asarray(labels[keys[0]])


def replay(labels: np.lib.npyio.NpzFile, defense: str, contains: str, target: int = TARGET_LABEL) -> list[LoopScores]:
    """The loop's scores for every attack of the run."""
    truth = np.asarray(labels["clean/true"])
    attacks = sorted({key.split("/")[0] for key in labels.files if key.endswith("/triggered/true")})
    scores = []
    for attack in attacks:
        victims = np.asarray(labels[f"{attack}/triggered/true"])
        raw_clean, raw_triggered = (_row(labels, attack, "none", "", kind) for kind in ("clean", "triggered"))
        clean = closed_loop(raw_clean, _row(labels, attack, defense, contains, "clean"), target)
        triggered = closed_loop(raw_triggered, _row(labels, attack, defense, contains, "triggered"), target)
        scores.append(
            LoopScores(
                attack,
                float((clean == truth).mean() - (raw_clean == truth).mean()),
                float((triggered == target).mean()),
                float((triggered == victims).mean()),
                float((raw_clean == target).mean()),
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
        scores = replay(labels, args.defense, args.contains)
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
