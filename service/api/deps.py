"""What every purifying route needs: the running gateway, the request's context, error docs."""

from __future__ import annotations

import math
import re
import time
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from pydantic import BeforeValidator, Field, WithJsonSchema

from service.api.gateway import Gateway
from service.api.logging import REQUEST_ID
from service.api.middleware import timings_of
from service.api.schemas import ErrorResponse, ProtocolErrorResponse
from service.api.stages import RequestContext
from service.errors import BadRequest

TIMEOUT_HEADER = "X-Request-Timeout"
MAX_SEED = 2**63 - 1

# The gateway's own errors on every route that reads a body (the sidecar's model routes add 404).
_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Undecodable or empty image, invalid JSON or base64, bad header.",
    401: "Missing or wrong API key (only when one is configured).",
    408: "The request body did not arrive within body_read_timeout_s.",
    413: "Over the byte, pixel or image-count limit.",
    415: "Unsupported Content-Type or image format.",
    422: "JSON or parameters of the wrong shape.",
    429: "Purification queue full; see Retry-After.",
    500: "The purification batch failed, or an unexpected error.",
    502: "The vendor API failed: 5xx, refused, reset, or an unreadable answer.",
    503: "Starting (model loading) or draining for shutdown.",
    504: "The request's deadline or the vendor's timeout passed.",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in _ERROR_DESCRIPTIONS.items()
}
# The same errors on the /v1/ and /v2/ protocol paths, in the protocols' shape (service.errors.error_body).
PROTOCOL_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ProtocolErrorResponse, "description": description}
    for status, description in _ERROR_DESCRIPTIONS.items()
}

# Numbers in a query or header are written one way: ASCII digits (an integer, a leading minus allowed so
# that a range check can name the range), a number also with a decimal point and an exponent. Python's
# int() and float(), and pydantic's lax int, also read "3_0" (30), " 3", "+3", "3.0" and non-ASCII
# digits: a typo would then run a different request than the client meant, so those are refused.
_PLAIN_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_PLAIN_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def is_plain_integer(text: str) -> bool:
    """Whether `text` is an integer as the gateway reads one: ASCII digits, perhaps a leading minus."""
    return _PLAIN_INTEGER.fullmatch(text) is not None


def _plain_integer(value: object) -> object:
    """Pydantic's before-validator for integer query parameters (a 422 that names the parameter)."""
    if isinstance(value, str) and not is_plain_integer(value):
        raise ValueError("must be an integer written in ASCII digits, e.g. 3 (no '+', spaces, '_' or '.')")
    return value


# For an integer query parameter: Annotated[int, Field(<bounds>), PLAIN_INTEGER] (the bounds before it,
# or the OpenAPI schema loses its minimum and maximum).
PLAIN_INTEGER = BeforeValidator(_plain_integer)

SeedQuery = Annotated[
    Annotated[int, Field(ge=0, le=MAX_SEED), PLAIN_INTEGER] | None,
    Query(
        description=(
            "Noise seed: the same seed gives the same purified image (image i uses seed + i). Default: random."
        ),
    ),
]
# Parsed by request_context (a bad value is our 400, not FastAPI's 422); documented as what it accepts.
TimeoutHeader = Annotated[
    str | None,
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0}),
    Header(
        alias=TIMEOUT_HEADER,
        description=(
            "Seconds this request may take before 504 (default request_timeout_s, capped at max_request_timeout_s)."
        ),
    ),
]


# Dependencies are `async def` on purpose: FastAPI runs plain `def` ones in a worker thread,
# two thread hops per request that cost more than everything else the proxy does.
async def get_gateway(request: Request) -> Gateway:
    """The running gateway, from the lifespan's state."""
    return request.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def request_context(request: Request, gateway: Gateway, seed: int | None, timeout_header: str | None) -> RequestContext:
    """The context the stages run under: id, deadline (from the header, capped), seed, timings.

    Raises:
        BadRequest: X-Request-Timeout is not a positive number of seconds.
    """
    settings = gateway.settings
    timeout_s = settings.request_timeout_s
    if timeout_header is not None:
        timeout_s = float(timeout_header) if _PLAIN_NUMBER.fullmatch(timeout_header) else math.nan
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise BadRequest(f"{TIMEOUT_HEADER} must be a positive number of seconds, got {timeout_header!r}")
        timeout_s = min(timeout_s, settings.max_request_timeout_s)  # "within a maximum": capped, not refused
    timings = timings_of(request.scope)
    deadline = time.monotonic() + timeout_s - timings.elapsed_s()  # counted from the request's arrival
    return RequestContext(
        request_id=REQUEST_ID.get() or "", deadline=deadline, seed=seed, timings=timings, receive=request.receive
    )


async def context_dependency(
    request: Request, gateway: GatewayDep, seed: SeedQuery = None, x_request_timeout: TimeoutHeader = None
) -> RequestContext:
    """FastAPI dependency form of `request_context` (declares `seed` and X-Request-Timeout in OpenAPI)."""
    return request_context(request, gateway, seed, x_request_timeout)


ContextDep = Annotated[RequestContext, Depends(context_dependency)]
