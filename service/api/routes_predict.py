"""The gateway's own API: `POST /predict` (purify, then ask the vendor) and `POST /purify`."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it (not typing.TypedDict) before Python 3.12

from service.api.closed_loop import LoopAnswer, answer_by_policy, shadow_job
from service.api.deps import ERROR_RESPONSES, PLAIN_INTEGER, ContextDep, GatewayDep
from service.api.gateway import Gateway
from service.api.inputs import InputKind, input_kind, read_images
from service.api.openapi_bodies import request_body
from service.api.relay import RELAYED_RESPONSE, relay
from service.api.schemas import (
    EXAMPLE_PNG_B64,
    Include,
    PredictJsonRequest,
    PredictResponse,
    PurifyResponse,
    RelayedBody,
)
from service.api.stages import RequestContext
from service.purify.strength import Strength, StrengthChoice
from service.shadow.monitor import SHADOW_HEADER
from service.upstream import UpstreamProtocol
from service.workers import check_queue_room


class ImagesForm(TypedDict):
    """A multipart body: one part per image, all named 'image'."""

    image: Annotated[list[bytes], Field(min_length=1, description="One part per image, all named 'image'.")]


# The body is read by hand (`read_images`): its schema comes from these types, inlined (no component $ref).
_IMAGES_BODY = request_body(
    {"multipart/form-data": ImagesForm, "application/json": PredictJsonRequest, "image/png": bytes},
    {"images": [EXAMPLE_PNG_B64]},
)
PURIFY_STEPS_HEADER = "X-Purification-Steps"
RAW_SIDECAR_ON_PREDICT = "/predict"  # a raw path of /predict: image bodies there are sidecar requests
VotesQuery = Annotated[
    Annotated[int, Field(ge=1), PLAIN_INTEGER] | None,
    Query(
        description=(
            "Purify each image K times (K seeds), ask the vendor K times, answer with the majority label's response "
            "(ties: the label voted first). Default: the gateway's `votes`; at most its `max_votes`."
        ),
    ),
]
StrengthQuery = Annotated[
    Strength | None,
    Query(
        description=(
            "Purification strength: light (λ ≥ 0.5, start from the input noised to t* = 0.6: more clean accuracy, "
            "weaker on bright low-frequency patches), balanced (the gateway's knobs), strict (λ ≤ 0.25 and at least 3 "
            "votes: 3× the compute, more clean accuracy, fewer attacks through). Default: the gateway's `strength`. "
            "Measured rows: docs/defense.md, 'Strength presets'."
        ),
    ),
]


def raw_sidecar_on_predict(gateway: Gateway) -> bool:
    """The raw protocol's path is /predict: an image body on /predict is a sidecar request (relayed)."""
    return gateway.settings.upstream_raw_path == RAW_SIDECAR_ON_PREDICT


async def predict(
    request: Request,
    gateway: GatewayDep,
    ctx: ContextDep,
    votes: VotesQuery = None,
    strength: StrengthQuery = None,
) -> Any:
    """Purify, then predict with the vendor model (under a closed-loop policy, answer by policy)."""
    kind = input_kind(request.headers.get("content-type"))
    if kind is InputKind.RAW_IMAGE and raw_sidecar_on_predict(gateway):
        return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.RAW], ctx)
    gateway.require_ready()
    settings = gateway.settings
    choice = gateway.policy.choose(strength, votes)
    blobs = await read_images(request, kind, settings.max_images_per_request, settings.max_image_bytes)
    check_queue_room(len(blobs), settings.queue_limit, votes=choice.votes)  # before decoding: an early 413
    if settings.policy.asks_raw:
        return _answer(await answer_by_policy(gateway, blobs, ctx, choice), gateway, ctx, choice)
    prepared = await gateway.prepare(blobs, ctx, choice)
    result = await gateway.predict(prepared, ctx)
    purification = (
        gateway.policy.purification_block(
            gateway.engine, prepared.steps, choice, result.vote_labels, prepared.masked_fraction
        )
        if prepared.steps is not None
        else None
    )
    response = PredictResponse(
        request_id=ctx.request_id,
        predictions=result.predictions,
        purification=purification,
        latency_ms=ctx.timings.latency_ms(),
    )
    shadow = gateway.shadow
    if shadow is not None and shadow.sampled(request.headers.get(SHADOW_HEADER)):
        # Started now, it runs while the response goes out: the client never waits for it.
        shadow.submit(shadow_job(ctx.request_id, prepared, result))
    return Response(response.model_dump_json(), media_type="application/json")


async def purify(
    request: Request,
    gateway: GatewayDep,
    ctx: ContextDep,
    include: Annotated[
        list[Include], Query(description="degraded: also return A⁺A x; mask: the suspicion masks (method=local)")
    ] = [],  # noqa: B006 (FastAPI copies defaults)
    strength: StrengthQuery = None,
) -> Any:
    """Purify images and return them (no vendor call; a preset's votes do not apply: one image back each)."""
    kind = input_kind(request.headers.get("content-type"))
    gateway.require_ready()
    settings = gateway.settings
    choice = gateway.policy.choose(strength, single=True)
    blobs = await read_images(request, kind, settings.max_images_per_request, settings.max_image_bytes)
    decoded = await gateway.decode(blobs, ctx, fit=True)
    purified = await gateway.purify(decoded, ctx, include_degraded=Include.DEGRADED in include, choice=choice)
    masks = purified.mask_pngs if Include.MASK in include else None
    if len(purified.pngs) == 1 and purified.degraded_pngs is None and masks is None:
        return Response(purified.pngs[0], media_type="image/png", headers={PURIFY_STEPS_HEADER: str(purified.steps)})
    return PurifyResponse(
        request_id=ctx.request_id,
        images=[_b64(png) for png in purified.pngs],
        degraded=None if purified.degraded_pngs is None else [_b64(png) for png in purified.degraded_pngs],
        masks=None if masks is None else [_b64(png) for png in masks],
        purification=gateway.policy.purification_block(
            gateway.engine, purified.steps, choice, masked_fraction=purified.masked_fraction
        ),
        latency_ms=ctx.timings.latency_ms(),
    )


def _predict_responses(raw_on_predict: bool) -> dict[int | str, dict[str, Any]]:
    """A vendor 4xx is relayed with its own status ("default"); an image body relayed in sidecar mode answers
    whatever the vendor does, so there 200 has two shapes (serialized by hand in `predict`: a union
    response_model would drop "Infinity")."""
    if not raw_on_predict:
        return {
            **ERROR_RESPONSES,
            200: {"model": PredictResponse},
            "default": {"description": "A vendor 4xx, relayed with its status and body (upstream_rejected)."},
        }
    return {
        **ERROR_RESPONSES,
        "default": RELAYED_RESPONSE["default"],
        200: {
            "model": PredictResponse | RelayedBody,
            "description": "PredictResponse; for an image body, the vendor's answer relayed unchanged.",
        },
    }


_PURIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": (
            "One image (and no include): the purified PNG, with the steps used in X-Purification-Steps. "
            "Several images, or include=degraded: JSON with base64 PNGs."
        ),
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    },
}


def build_predict_router(
    gateway_dependencies: list[Any], raw_on_predict: bool, purification_enabled: bool
) -> APIRouter:
    """`POST /predict`, and `POST /purify` when purification is on.

    Args:
        gateway_dependencies: route dependencies (the API key check, when configured).
        raw_on_predict: the raw protocol's path is /predict, so an image body on /predict is a sidecar
            request (relayed); otherwise it is one image for this API (the schema says which).
        purification_enabled: mount /purify (without a model it could only ever fail).

    Returns:
        The router.
    """
    router = APIRouter(tags=["purification"], dependencies=gateway_dependencies)
    raw_description = (
        "an image body (image/*, application/octet-stream) is the vendor's raw protocol: purified "
        "and relayed as the vendor answers it (sidecar mode)"
        if raw_on_predict
        else "an image body (image/*) is one image"
    )
    router.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        response_model=None,
        responses=_predict_responses(raw_on_predict),
        openapi_extra=_IMAGES_BODY,
        description=f"Purify each image, send it to the vendor, return its predictions. Multipart 'image' "
        f"parts or JSON base64 images; {raw_description}.",
    )
    if purification_enabled:
        router.add_api_route(
            "/purify",
            purify,
            methods=["POST"],
            response_model=PurifyResponse,
            openapi_extra=_IMAGES_BODY,
            responses=_PURIFY_RESPONSES,
        )
    return router


def _answer(loop: LoopAnswer, gateway: Gateway, ctx: RequestContext, choice: StrengthChoice) -> Response:
    """The closed loop's response: each image's chosen answer, and which image it came from."""
    prepared, result = loop.prepared, loop.prediction
    purification = gateway.policy.purification_block(
        gateway.engine,
        prepared.steps or 0,
        choice,
        result.vote_labels,
        prepared.masked_fraction,
        answers=loop.answers,
        named_targets=loop.named_targets,
    )
    response = PredictResponse(
        request_id=ctx.request_id,
        predictions=result.predictions,
        purification=purification,
        latency_ms=ctx.timings.latency_ms(),
    )
    return Response(response.model_dump_json(), media_type="application/json")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
