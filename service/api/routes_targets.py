"""The closed loop's operator routes: which backdoor targets the gateway holds, and naming or clearing one.

- `GET /targets`: the policy and the named targets (who named each, when, by which rule).
- `PUT /targets/{label}`: hold a raw label as a target (an operator acting on the Prometheus alert,
  on this replica, and with `TARGET_PEERS` on the others; `SUSPECTED_TARGETS` names one on every replica
  at start-up); 409 (`targets_full`) when it is new and operators and Alertmanager have named
  `SHADOW_MAX_LABELS` labels already, or peers have, for a relayed one (each has a bucket of its own; the
  setting's and the alarm's names do not count: `service.shadow.targets`).
- `DELETE /targets/{label}`: stop holding it (404 when it is not named); 403 (`api_key_required`) when
  the gateway has no API key.
- `POST /targets/alerts` (`service.api.routes_alerts`): Alertmanager's webhook names what the Prometheus
  alert found over every replica.

With `TARGET_PEERS`, a new name and an operator's DELETE are relayed to the other replicas as the same calls
(`service.shadow.peers`); a call marked relayed (`X-Zipgate-Relayed-By`) is counted, named with source `peer`,
and not relayed again.

Behind the API key, like every route that changes what clients get (docs/design.md, "The closed loop").
Without one, anyone may name a target (the cap on outside names bounds them, and naming only adds
protection), but no one may un-name one: that lowers protection, so it is refused rather than anonymous.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from service.api.deps import ERROR_RESPONSES, GatewayDep
from service.api.gateway import Gateway
from service.api.logging import REQUEST_ID
from service.api.schemas import ErrorResponse, NamedTargetInfo, TargetsResponse
from service.errors import ApiKeyRequired, BadRequest, TargetNotNamed
from service.shadow.labels import bounded_label
from service.shadow.peers import RelayedBy, RelayMethod, relayed_by
from service.shadow.targets import TargetSource


def targets_state(gateway: Gateway) -> TargetsResponse:
    """The policy and the named targets, oldest first."""
    named = sorted(gateway.targets.named.values(), key=lambda target: target.since)
    return TargetsResponse(
        policy=gateway.settings.policy,
        targets=[NamedTargetInfo(label=t.label, source=t.source, since=t.since, rule=t.rule) for t in named],
    )


async def get_targets(gateway: GatewayDep) -> TargetsResponse:
    """The closed loop's state."""
    return targets_state(gateway)


def _relayed(request: Request, gateway: Gateway, method: RelayMethod) -> RelayedBy | None:
    """The call's relay headers, counted when present (None: an operator's own call)."""
    relayed = relayed_by(request.headers)
    if relayed is not None:
        gateway.relay_metrics.received.labels(method.value).inc()
    return relayed


def _from_self(gateway: Gateway, relayed: RelayedBy | None) -> bool:
    """A relayed call this process sent itself (its own address was not skipped): it changes nothing."""
    return relayed is not None and gateway.peers is not None and relayed.instance == gateway.peers.instance


async def put_target(label: str, request: Request, gateway: GatewayDep) -> TargetsResponse:
    """Hold `label` (the vendor's raw label, as it answers it) as a backdoor target.

    A label named already is a no-op; a new one while its bucket holds `SHADOW_MAX_LABELS` names (operators and
    Alertmanager together; peers, for a relayed call) is 409 (`targets_full`). A new name is relayed to
    `TARGET_PEERS` unless this call was.
    """
    relayed = _relayed(request, gateway, RelayMethod.PUT)
    if _from_self(gateway, relayed):
        return targets_state(gateway)
    source, rule = (TargetSource.OPERATOR, None) if relayed is None else (TargetSource.PEER, relayed.source)
    try:
        gateway.targets.name(bounded_label(label), source, None if rule is None else rule.value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return targets_state(gateway)


async def delete_target(label: str, request: Request, gateway: GatewayDep) -> TargetsResponse:
    """Stop holding `label` as a backdoor target (only behind an API key: 403 `api_key_required` without one).

    Relayed to `TARGET_PEERS` (unless this call was), also when this replica did not hold it (404): others may.
    """
    if gateway.settings.api_key is None:  # checked first: an anonymous caller learns nothing, not even 404
        raise ApiKeyRequired(
            "un-naming a target lowers protection, so it needs the API key: set API_KEY to un-name targets "
            "(or restart the gateway to clear every name but SUSPECTED_TARGETS)"
        )
    relayed = _relayed(request, gateway, RelayMethod.DELETE)
    if _from_self(gateway, relayed):
        return targets_state(gateway)
    bounded = bounded_label(label)
    cleared = gateway.targets.clear(bounded)
    if relayed is None and gateway.peers is not None:
        gateway.peers.cleared(bounded, REQUEST_ID.get())
    if not cleared:
        raise TargetNotNamed(f"{bounded!r} is not a named target")
    return targets_state(gateway)


class _OneTargetRoute(APIRoute):
    """PUT and DELETE of /targets/{label} are two routes (two operations, two operation ids); a 405 on
    either lists both methods in Allow, as the path's schema does (Starlette would list the first's only)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in _ONE_TARGET_METHODS:
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(_ONE_TARGET_METHODS))})
        await super().handle(scope, receive, send)


_ONE_TARGET_METHODS = frozenset({"PUT", "DELETE"})


_CHANGE_RESPONSES: dict[int | str, dict[str, Any]] = {401: ERROR_RESPONSES[401]}
_PUT_RESPONSES: dict[int | str, dict[str, Any]] = _CHANGE_RESPONSES | {
    400: {"model": ErrorResponse, "description": "The label is 'other' (the bucket of labels past the cap)."},
    409: {
        "model": ErrorResponse,
        "description": (
            "The label is not named and operators and Alertmanager have named SHADOW_MAX_LABELS labels (peers, "
            "for a relayed call: a bucket of their own): DELETE one of theirs first (targets_full)."
        ),
    },
}
_DELETE_RESPONSES: dict[int | str, dict[str, Any]] = _CHANGE_RESPONSES | {
    403: {
        "model": ErrorResponse,
        "description": "The gateway has no API key: un-naming needs one (api_key_required); nothing changed.",
    },
    404: {"model": ErrorResponse, "description": "The label is not a named target (target_not_named)."},
}


def build_targets_router(gateway_dependencies: list[Any]) -> APIRouter:
    """The three routes, behind `gateway_dependencies` (the API key check, when configured)."""
    router = APIRouter(tags=["closed loop"], dependencies=gateway_dependencies)
    router.add_api_route(
        "/targets", get_targets, methods=["GET"], response_model=TargetsResponse, responses={401: ERROR_RESPONSES[401]}
    )
    for method, handler, responses in (
        ("PUT", put_target, _PUT_RESPONSES),
        ("DELETE", delete_target, _DELETE_RESPONSES),
    ):
        router.add_api_route(
            "/targets/{label:path}",
            handler,
            methods=[method],
            response_model=TargetsResponse,
            responses=responses,
            route_class_override=_OneTargetRoute,
        )
    return router
