"""Which answer a client gets for one image: the vendor's answer on the purified image, or on the raw one.

`DefensePolicy.ALWAYS` answers every image with the purified answer: the defense's cost in clean
accuracy is paid on every image. The two closed-loop policies ask the vendor about the raw image
too (every image is still purified, so every image is a shadow comparison and the alarm watches
every label), and answer with the raw answer where the attack has already failed for that image:
the vendor's raw label is not a target the alarm has named (docs/design.md, "The closed loop").

- `ON_ALARM`: raw answers until a target is named; then the purified answer for images whose raw
  label is a named target. Clean traffic keeps the vendor's own accuracy; triggered images get
  through until the alarm names their target (the detection delay).
- `UNTIL_ALARM`: purified answers until a target is named (protected from the first request, at
  the defense's clean-accuracy cost); then as `ON_ALARM`.

A raw answer without a readable label is answered with the purified one: the policy cannot tell
whether the attack failed for it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection


class DefensePolicy(enum.StrEnum):
    """Which answer the client gets (the `POLICY` setting)."""

    ALWAYS = "always"
    ON_ALARM = "on_alarm"
    UNTIL_ALARM = "until_alarm"

    @property
    def asks_raw(self) -> bool:
        """Whether the vendor is asked about the raw image inline (the closed-loop policies)."""
        return self is not DefensePolicy.ALWAYS


class AnswerSource(enum.StrEnum):
    """Which image the client's answer for one image came from."""

    PURIFIED = "purified"
    RAW = "raw"


def answer_purified(policy: DefensePolicy, raw_label: str | None, named: Collection[str]) -> bool:
    """Whether an image whose vendor label on the raw image is `raw_label` gets the purified answer.

    Args:
        policy: the gateway's policy.
        raw_label: the raw answer's label as the shadow counters name it (bounded, capped); None: unreadable.
        named: the targets named now (same naming).
    """
    if policy is DefensePolicy.ALWAYS or raw_label is None:
        return True
    if raw_label in named:
        return True
    return policy is DefensePolicy.UNTIL_ALARM and not named
