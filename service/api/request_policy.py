"""What a request runs, decided before any stage runs: its strength and votes, and how the answer reports them.

`Gateway` holds the resources and runs the stages (decode → purify → call the vendor → answer);
`RequestPolicy` decides what those stages run for one request (the `?strength=` preset, the votes
K) and builds the response's `purification` block that says what ran. Pure: settings in, values
out, no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from service.api.schemas import PurificationInfo
from service.api.stages import EngineInfo
from service.config import Settings
from service.errors import BadRequest
from service.purify.strength import Strength, StrengthChoice
from service.purify.zip import ZipConfig
from service.shadow.labels import VendorLabel
from service.shadow.policy import AnswerSource, DefensePolicy


@dataclass(frozen=True)
class RequestPolicy:
    """The gateway's rules for one request.

    Args:
        settings: the validated settings.
        zip_config: ZIP's configured knobs (built once).
        purifying: whether the gateway purifies at all (without, there is nothing to vote on).
    """

    settings: Settings
    zip_config: ZipConfig
    purifying: bool

    def choose(
        self, strength: Strength | None = None, votes: int | None = None, *, single: bool = False
    ) -> StrengthChoice:
        """What a request runs: its `?strength=` (else the configured default) with its `?votes=K` (else the
        configured votes). One purification per image with `single` (/purify and sidecar calls return one
        image or relay one answer) or when purification is off (nothing to vote on).

        Raises:
            BadRequest: more votes than `max_votes`, asked for or implied by the preset.
        """
        settings = self.settings
        choice = settings.strength_choice(strength, votes, base=self.zip_config)
        if single or not self.purifying:
            return dataclasses.replace(choice, votes=1)
        if choice.votes > settings.max_votes:
            implied = "" if votes is not None and votes >= choice.votes else f" (strength={choice.strength})"
            raise BadRequest(f"votes={choice.votes}{implied} exceeds this gateway's max_votes ({settings.max_votes})")
        return choice

    def purification_block(
        self,
        engine: EngineInfo,
        steps: int,
        choice: StrengthChoice,
        vote_labels: list[list[VendorLabel | None]] | None = None,
        masked_fraction: list[float] | None = None,
        *,
        answers: list[AnswerSource] | None = None,
        named_targets: list[str] | None = None,
    ) -> PurificationInfo:
        """The response's `purification` block (`answers` and `named_targets`: the closed loop's)."""
        return PurificationInfo(
            model=engine.model,
            strength=choice.strength,
            method=choice.config.method,
            masked_fraction=masked_fraction,
            transforms=choice.config.transforms,
            steps=steps,
            guidance_power=choice.config.guidance_power,
            noise_start=choice.config.noise_start,
            vendor_mirror=self.settings.vendor_mirror,
            device=engine.device,
            dtype=engine.dtype,
            votes=1 if vote_labels is None else len(vote_labels[0]),
            vote_labels=vote_labels,
            policy=self.settings.policy if answers is not None else DefensePolicy.ALWAYS,
            answers=answers,
            named_targets=named_targets,
        )
