"""The settings of votes, shadow mode and the closed loop: where a label lives, how often raw and
purified answers are compared, what is captured, and which answer `/predict` returns.

A field mixin that `service.config.Settings` composes (env `ZIPGATE_<FIELD>`, see there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from service.shadow.labels import OTHER_LABEL, LabelExtractor, bounded_label
from service.shadow.peer_urls import parse_peer
from service.shadow.policy import DefensePolicy


class ShadowFields(BaseModel):
    """Votes and shadow mode (docs/design.md, "Votes" and "Shadow mode") and the closed loop ("The closed loop")."""

    # --- votes and shadow mode ---
    votes: int = Field(
        1,
        ge=1,
        description="Purify each image K times (K seeds, one batch), call the vendor K "
        "times, answer with the majority label's response; ?votes=K overrides, up to max_votes.",
    )
    max_votes: int = Field(5, ge=1, description="Upper bound of votes and of a request's ?votes=K.")
    vote_label: str = Field(
        "label",
        description="Where a prediction's label lives, for votes and shadow "
        "mode: a dotted path ('label', 'outputs.0.class') or 'argmax:<path>' over scores.",
    )
    shadow_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of /predict requests whose raw images the "
        "vendor also sees, after the client has its answer, to compare labels (0 = off).",
    )
    shadow_allow_header: bool = Field(
        False, description="Let a request ask for the comparison with 'X-Zipgate-Shadow: 1', whatever shadow_rate says."
    )
    shadow_max_inflight: int = Field(4, ge=1, description="Shadow vendor calls at once; more are dropped.")
    shadow_max_labels: int = Field(
        100,
        ge=1,
        description="Distinct labels in the disagreement metric; later ones are counted as 'other'. Each is "
        "bounded first: over 64 characters or unprintable, it is 'h:' + 12 hex digits of its SHA-256.",
    )
    shadow_capture_dir: Path | None = Field(
        None,
        description="Opt-in: write each disagreement's raw and purified "
        "images and vendor answers here (stores user images; see README).",
    )
    shadow_capture_max_files: int = Field(
        5000,
        ge=5,
        description="Files the capture folder holds at most (5 per record); the oldest records go first "
        "(records deleted by hand are dropped from the count).",
    )
    shadow_capture_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Bytes the capture folder holds at most; the oldest records go first."
    )

    # --- the closed loop ---
    policy: DefensePolicy = Field(
        DefensePolicy.ALWAYS,
        description="Which answer /predict returns: always (the purified image's), on_alarm (the raw image's unless "
        "its raw label is a named backdoor target), until_alarm (purified until a target is named, then as "
        "on_alarm). The loop policies purify every image and ask the vendor about the raw one too (2 calls).",
    )
    suspected_targets: Annotated[tuple[str, ...], NoDecode] = Field(  # the env form is 'a,b', not JSON
        (),
        description="Raw labels held as backdoor targets from the start (comma list), e.g. the label the "
        "Prometheus alert named; the gateway's own alarm and PUT /targets/{label} add more.",
    )
    target_peers: Annotated[tuple[str, ...], NoDecode] = Field(  # the env form is 'a,b', not JSON
        (),
        description="The other replicas to relay named targets to (comma list of base URLs, "
        "'http://host:port'; 'dns+http://name:port' is every A/AAAA record of name, resolved at each relay, "
        "this pod's own addresses skipped: a headless Service). Empty: no relay.",
    )
    target_peer_timeout_s: float = Field(
        2.0, gt=0, description="Bound on one relay call to a peer, connecting and its answer together."
    )
    target_peer_max_inflight: int = Field(
        8,
        ge=1,
        description="Relay calls at once over every peer; more wait their turn. Each peer gets its changes one at a "
        "time, in order.",
    )

    @field_validator("vote_label")
    @classmethod
    def _check_vote_label(cls, value: str) -> str:
        LabelExtractor.parse(value)  # raises LabelSpecError (a ValueError) naming the bad segment
        return value

    @field_validator("suspected_targets", "target_peers", mode="before")
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        # The env form is "a,b" (pydantic-settings would expect JSON); a file may give a list.
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("target_peers")
    @classmethod
    def _check_peers(cls, peers: tuple[str, ...]) -> tuple[str, ...]:
        for peer in peers:
            parse_peer(peer)  # raises ValueError naming what is wrong with it
        return peers

    @field_validator("suspected_targets")
    @classmethod
    def _check_targets(cls, labels: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if OTHER_LABEL in labels:
            raise ValueError(f"'{OTHER_LABEL}' is the bucket of labels past shadow_max_labels, not one vendor label")
        bounded = tuple(bounded_label(label) for label in labels)  # as the shadow counters name labels
        max_labels = info.data.get("shadow_max_labels")  # absent when it is invalid itself (reported apart)
        if max_labels is not None and len(set(bounded)) > max_labels:
            raise ValueError(
                f"{len(set(bounded))} labels, more than shadow_max_labels ({max_labels}), the most named targets "
                "the gateway holds; name fewer or raise shadow_max_labels"
            )
        return bounded
