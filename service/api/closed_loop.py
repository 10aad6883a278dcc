"""The closed loop's request stage: purify every image, ask the vendor about both images, answer by policy.

Under `POLICY=on_alarm` or `until_alarm` (`service.shadow.policy`), `POST /predict` decodes the
images, asks the vendor about the raw ones while the pool purifies them, asks it about the purified
ones, counts every image as a shadow comparison (the gateway's own alarm judges them and may name
a target), and then answers each image with the purified or the raw answer as the policy says for
its raw label (docs/design.md, "The closed loop").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from service.api.gateway import Gateway
from service.api.stages import PNG, Prediction, PreparedImages, RequestContext, originals_for_vendor
from service.purify.strength import StrengthChoice
from service.shadow.monitor import ShadowJob
from service.shadow.policy import AnswerSource, answer_purified


@dataclass(frozen=True)
class LoopAnswer:
    """What the loop answers: the purified images (for the response's purification block), the answers per
    image, which image each came from, and the targets named when it was decided."""

    prepared: PreparedImages
    prediction: Prediction
    answers: list[AnswerSource]
    named_targets: list[str]


def shadow_job(request_id: str, prepared: PreparedImages, result: Prediction) -> ShadowJob:
    """The comparison's inputs: the client's images as sent, and the purified images behind the answers."""
    originals, content_type = originals_for_vendor(prepared.decoded)
    purified = [prepared.votes[k][i] for i, k in enumerate(result.chosen_votes)]
    return ShadowJob(request_id, originals, content_type, purified, result.predictions, prepared.mask_pngs)


async def answer_by_policy(
    gateway: Gateway, blobs: list[bytes], ctx: RequestContext, choice: StrengthChoice
) -> LoopAnswer:
    """Purify and ask the vendor about both images; each image's answer as the policy says.

    Raises:
        the errors of `Gateway.decode`, `Gateway.purify`, `Gateway.predict` and `Gateway.ask_raw`.
    """
    decoded = await gateway.decode(blobs, ctx, fit=True)
    # The raw call runs while the pool purifies: the loop costs one vendor call of latency at most.
    raw_call = asyncio.ensure_future(gateway.ask_raw(decoded, ctx))
    try:
        purified = await gateway.purify(decoded, ctx, mirror=gateway.settings.vendor_mirror, choice=choice)
        raw_predictions = await raw_call
    finally:
        raw_call.cancel()  # a no-op when it is done
        # Awaited, never dropped; its error, if purification failed too, loses to the one on its way out.
        await asyncio.gather(raw_call, return_exceptions=True)
    prepared = PreparedImages(
        purified.votes, PNG, purified.steps, decoded, purified.masked_fraction, purified.mask_pngs
    )
    result = await gateway.predict(prepared, ctx)
    monitor = gateway.shadow
    if monitor is None:  # build_shadow_monitor builds one for every loop policy
        raise RuntimeError(f"policy={gateway.settings.policy} needs the shadow monitor")
    raw_labels = monitor.compare_known(shadow_job(ctx.request_id, prepared, result), raw_predictions)
    named = gateway.targets.named  # after the comparisons: a target the alarm named just now counts already
    policy = gateway.settings.policy
    answers = [
        AnswerSource.PURIFIED if answer_purified(policy, label, named) else AnswerSource.RAW for label in raw_labels
    ]
    for answer in answers:
        gateway.metrics.answers.labels(answer.value).inc()
    predictions: list[Any] = [
        purified_answer if source is AnswerSource.PURIFIED else raw_answer
        for source, purified_answer, raw_answer in zip(answers, result.predictions, raw_predictions, strict=True)
    ]
    prediction = Prediction(predictions, result.vote_labels, result.chosen_votes)
    return LoopAnswer(prepared, prediction, answers, sorted(named))
