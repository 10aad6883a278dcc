"""The "Try an image" view's work: the gateway's own stages on uploaded images, and what they show.

The images go through what `POST /predict` runs (decode, purify with the request's strength and
votes, ask the vendor), plus what a person wants beside it: the degraded view A⁺A x, the suspicion
mask where the purifier has one, and the vendor's answer on the raw image (a second vendor call,
counted in the upstream metrics like any other, but not in the latency breakdown, which is the
purified path's as /predict reports it).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from service.api.decode import encode_png
from service.api.gateway import Gateway
from service.api.schemas import LatencyMs, PurificationInfo
from service.api.stages import PNG, PreparedImages, RequestContext
from service.purify.strength import StrengthChoice
from service.shadow.labels import VendorLabel, bounded_label

MAX_ANSWER_CHARS = 2_000  # a vendor answer is untrusted: shown cut to this


@dataclass(frozen=True)
class TriedImage:
    """One uploaded image as the page shows it: images as data URIs, answers as JSON text."""

    name: str
    raw: str
    degraded: str | None
    purified: str
    mask: str | None  # the suspicion mask, where the purifier localises
    raw_answer: str
    purified_answer: str
    raw_label: str | None  # bounded (`bounded_label`), as everywhere a vendor's label is shown
    purified_label: str | None
    vote_labels: list[VendorLabel | None] | None


@dataclass(frozen=True)
class TryResult:
    """What one "try" request shows: each image, how it was purified, and how long each stage took."""

    request_id: str
    images: list[TriedImage]
    purification: PurificationInfo
    latency_ms: LatencyMs


async def try_images(
    gateway: Gateway, ctx: RequestContext, blobs: list[bytes], names: list[str], choice: StrengthChoice
) -> TryResult:
    """Purify `blobs` as /predict would, ask the vendor about the purified and the raw images.

    Raises:
        GatewayError: whatever /predict would answer (bad image, limits, not ready, vendor failure, …).
    """
    settings = gateway.settings
    decoded = await gateway.decode(blobs, ctx, fit=True)
    purified = await gateway.purify(decoded, ctx, include_degraded=True, mirror=settings.vendor_mirror, choice=choice)
    result = await gateway.predict(PreparedImages(purified.votes, PNG, purified.steps, decoded=decoded), ctx)
    raw_answers = await gateway.ask_raw(decoded, ctx)
    label = gateway.vote_label
    images = []
    for i, name in enumerate(names):
        chosen = result.chosen_votes[i]
        images.append(
            TriedImage(
                name=name,
                raw=_data_uri(encode_png(decoded.images[i])),
                degraded=None if purified.degraded_pngs is None else _data_uri(purified.degraded_pngs[i]),
                purified=_data_uri(purified.votes[chosen][i]),
                mask=None if purified.mask_pngs is None else _data_uri(purified.mask_pngs[i]),
                raw_answer=_shown(raw_answers[i]),
                purified_answer=_shown(result.predictions[i]),
                raw_label=_bounded(label(raw_answers[i])),
                purified_label=_bounded(label(result.predictions[i])),
                vote_labels=None if result.vote_labels is None else result.vote_labels[i],
            )
        )
    return TryResult(
        request_id=ctx.request_id,
        images=images,
        purification=gateway.policy.purification_block(
            gateway.engine, purified.steps, choice, result.vote_labels, purified.masked_fraction
        ),
        latency_ms=ctx.timings.latency_ms(),
    )


def _bounded(label: str | None) -> str | None:
    return None if label is None else bounded_label(label)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _shown(answer: Any) -> str:
    text = json.dumps(answer, default=str)
    return text if len(text) <= MAX_ANSWER_CHARS else text[:MAX_ANSWER_CHARS] + " …"
