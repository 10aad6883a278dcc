"""The Open Inference Protocol's health and metadata routes, so v2 clients (tritonclient, KServe's
InferenceRESTClient) can use the gateway as they would the vendor.

- `GET /v2/health/live`, `/v2/health/ready`: the gateway's own state combined with the vendor's
  (ready = the gateway is ready and the vendor says it is ready; live = the vendor says it is live,
  the gateway being live as it answers). 200 `{"live"|"ready": true}`, else 503 with false. No API
  key, like /healthz; the orchestrator's probes stay /healthz and /readyz (a vendor outage must not
  restart the gateway). Being public, they send the vendor none of the caller's headers and ask it
  at most once per path per `PROBE_CACHE_TTL_S` (`service.api.probes`).
- `GET /v2`, `/v2/models/{name}[/versions/{v}]` and `.../ready`: relayed from the vendor unchanged,
  after the path checks of the sidecar (`check_vendor_path`: plain names, `upstream_models`). Model
  readiness also needs the gateway to be ready (503 while starting or draining).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from service.api.deps import PROTOCOL_ERROR_RESPONSES, GatewayDep
from service.api.gateway import Gateway
from service.api.logging import REQUEST_ID
from service.api.probes import PROBE_TIMEOUT_S
from service.api.relay import (
    MODEL_NOT_EXPOSED_RESPONSE,
    RELAYED_RESPONSE,
    check_vendor_path,
    headers_for_question,
    relayed_response,
    vendor_path,
)
from service.api.routes_health import ProbeRoute
from service.api.security import headers_for_vendor
from service.upstream import RelayedResponse, UpstreamProtocol


class V2LiveResponse(BaseModel):
    """`GET /v2/health/live`, as the Open Inference Protocol answers it."""

    live: bool = Field(description="The vendor is live (the gateway is, as it answers).")


class V2ReadyResponse(BaseModel):
    """`GET /v2/health/ready`, as the Open Inference Protocol answers it."""

    ready: bool = Field(description="The gateway is ready (as /readyz) and so is the vendor.")


def _health_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": model, "description": "True: the gateway and the vendor both are."},
        503: {
            "model": model,
            "description": "False: the gateway or the vendor is not (or the vendor cannot be reached).",
        },
    }


RELAYED_RESPONSES: dict[int | str, dict[str, Any]] = {**RELAYED_RESPONSE, **PROTOCOL_ERROR_RESPONSES}
MODEL_RELAYED_RESPONSES: dict[int | str, dict[str, Any]] = {**RELAYED_RESPONSES, **MODEL_NOT_EXPOSED_RESPONSE}


async def ask_vendor(
    request: Request, gateway: Gateway, protocol: UpstreamProtocol = UpstreamProtocol.V2
) -> RelayedResponse:
    """GET the request's own path from the vendor, with the client's vendor headers (a route behind the
    API key: its caller's vendor credentials pass, as on the sidecar routes).

    Raises:
        UpstreamTimeout, UpstreamError: the vendor could not be reached or timed out.
    """
    headers = headers_for_question(headers_for_vendor(request.headers, gateway.settings.api_key))
    return await gateway.sidecars[protocol].forward(
        "GET",
        vendor_path(request),
        b"",
        headers,
        request_id=REQUEST_ID.get(),
        timeout_s=min(PROBE_TIMEOUT_S, gateway.settings.upstream_timeout_s),
    )


async def vendor_says_yes(gateway: Gateway, protocol: UpstreamProtocol, path: str) -> bool:
    """Whether the vendor answers its probe `path` with 200 (public probes: cached, no caller headers)."""
    return await gateway.probes.says_ok(gateway.sidecars[protocol], path, REQUEST_ID.get())


async def v2_live(gateway: GatewayDep) -> JSONResponse:
    """Live: the vendor's `/v2/health/live` answers 200 (the gateway is live, as it answers)."""
    live = await vendor_says_yes(gateway, UpstreamProtocol.V2, "/v2/health/live")
    return JSONResponse(V2LiveResponse(live=live).model_dump(), status_code=200 if live else 503)


async def v2_ready(gateway: GatewayDep) -> JSONResponse:
    """Ready: the gateway is ready (as /readyz) and the vendor's `/v2/health/ready` answers 200."""
    ready = gateway.ready and await vendor_says_yes(gateway, UpstreamProtocol.V2, "/v2/health/ready")
    return JSONResponse(V2ReadyResponse(ready=ready).model_dump(), status_code=200 if ready else 503)


async def v2_server_metadata(request: Request, gateway: GatewayDep) -> Response:
    """The vendor's server metadata, relayed."""
    return relayed_response(await ask_vendor(request, gateway))


async def v2_model_metadata(name: str, request: Request, gateway: GatewayDep) -> Response:
    """The vendor's model metadata (inputs, outputs), relayed."""
    check_vendor_path(request, gateway.settings.upstream_models)
    return relayed_response(await ask_vendor(request, gateway))


async def v2_model_version_metadata(name: str, version: str, request: Request, gateway: GatewayDep) -> Response:
    """The vendor's metadata of one model version, relayed."""
    check_vendor_path(request, gateway.settings.upstream_models)
    return relayed_response(await ask_vendor(request, gateway))


async def v2_model_ready(name: str, request: Request, gateway: GatewayDep) -> Response:
    """The vendor's model readiness, relayed once the gateway is ready (503 before)."""
    check_vendor_path(request, gateway.settings.upstream_models)
    gateway.require_ready()
    return relayed_response(await ask_vendor(request, gateway))


async def v2_model_version_ready(name: str, version: str, request: Request, gateway: GatewayDep) -> Response:
    """The vendor's readiness of one model version, relayed once the gateway is ready (503 before)."""
    check_vendor_path(request, gateway.settings.upstream_models)
    gateway.require_ready()
    return relayed_response(await ask_vendor(request, gateway))


def build_v2_router(gateway_dependencies: list[Any]) -> APIRouter:
    """The v2 health routes (no API key) and metadata routes (behind `gateway_dependencies`).

    Args:
        gateway_dependencies: route dependencies of the metadata routes (the API key check, if any).

    Returns:
        The router.
    """
    router = APIRouter(tags=["sidecar"])
    router.add_api_route(
        "/v2/health/live",
        v2_live,
        methods=["GET"],
        responses=_health_responses(V2LiveResponse),
        response_class=JSONResponse,
        route_class_override=ProbeRoute,  # HEAD too, as load balancers probe
    )
    router.add_api_route(
        "/v2/health/ready",
        v2_ready,
        methods=["GET"],
        responses=_health_responses(V2ReadyResponse),
        response_class=JSONResponse,
        route_class_override=ProbeRoute,
    )
    # The metadata routes relay the vendor's answer to the caller: behind the API key.
    metadata: dict[str, Any] = {"methods": ["GET"], "dependencies": gateway_dependencies, "response_class": Response}
    router.add_api_route("/v2", v2_server_metadata, responses=RELAYED_RESPONSES, **metadata)
    for path, endpoint in (
        ("/v2/models/{name}", v2_model_metadata),
        ("/v2/models/{name}/versions/{version}", v2_model_version_metadata),
        ("/v2/models/{name}/ready", v2_model_ready),
        ("/v2/models/{name}/versions/{version}/ready", v2_model_version_ready),
    ):
        router.add_api_route(path, endpoint, responses=MODEL_RELAYED_RESPONSES, **metadata)
    return router
