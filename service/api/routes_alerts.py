"""`POST /targets/alerts`: Alertmanager's webhook names the backdoor targets the Prometheus alert found.

The alert `ZipgateSuspectedBackdoorTarget` (docker/alerts.yml) judges the shadow counters of every
replica together and carries the suspected label as `raw_label`. Alertmanager delivers it here
(docker/alertmanager.yml, k8s/components/monitoring/alertmanager/) as its webhook payload, version 4
(`{"version": "4", "status", "alerts": [{"status", "labels", "annotations", "startsAt", ...}], ...}`);
a payload of another version is refused (400: its fields may mean something else), one without a
version is read as version 4.
Every alert in it whose own status is `firing` and that has a `raw_label` label names that label
(`bounded_label`) with source `alertmanager` and rule = its `alertname` (bounded); `other` (the
bucket of labels past the cap) and an empty label are skipped, not refused. A new label while
operators and Alertmanager hold their most names (`SHADOW_MAX_LABELS`; the setting's, the alarm's and
peers' names do not count, and clearing one of those frees no slot) is skipped too, listed in the
answer's `not_named` and in one WARNING per notification; the answer stays 200, so Alertmanager does
not retry it forever.

Names latch: a resolved alert names nothing and clears nothing. A name holds until
`DELETE /targets/{label}` or a restart, as for every source (`service.shadow.targets`); Alertmanager's
`repeat_interval` names it again on a restarted replica while the alert still fires.

Everything the sender controls is bounded: the body (`MAX_ALERTS_BODY_BYTES`, 413: the route
declares it as its `body_limit`, and the request middleware applies it as it applies
`MAX_REQUEST_BYTES` to every route, `service.api.middleware`), the alerts in one notification
(`MAX_ALERTS`, 413: set the receiver's `max_alerts` at or below it), and each label
(`bounded_label`). Behind the API key, like the other /targets routes.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError

from service.api.deps import ERROR_RESPONSES, GatewayDep
from service.api.middleware import BodyLimit
from service.api.openapi_bodies import request_body
from service.api.routes_targets import targets_state
from service.api.schemas import AlertsResponse, ErrorResponse
from service.errors import BadRequest, InvalidShape, PayloadTooLarge, TargetsFull
from service.shadow.labels import OTHER_LABEL, bounded_label
from service.shadow.targets import TargetBoard, TargetSource
from service.upstream.wire import parse_request_json

logger = logging.getLogger(__name__)

ALERTS_PATH = "/targets/alerts"
MAX_ALERTS_BODY_BYTES = 1024 * 1024  # a notification of MAX_ALERTS alerts is about half of it
MAX_ALERTS = 1000
WEBHOOK_VERSION = "4"  # Alertmanager's webhook payload version: the one whose fields this route reads
RAW_LABEL = "raw_label"  # the alert's label that names the suspected target (docker/alerts.yml)
ALERT_NAME = "alertname"
LOGGED_NOT_NAMED = 10  # labels a warning quotes of those not named (a notification may hold 1,000)


class AlertStatus(enum.StrEnum):
    """An alert's state as Alertmanager reports it."""

    FIRING = "firing"
    RESOLVED = "resolved"


class WebhookAlert(BaseModel):
    """One alert of a notification: the fields read (annotations, startsAt, fingerprint, ... are ignored)."""

    status: AlertStatus = Field(description="This alert's own state; only a firing alert names a target.")
    labels: dict[str, str] = Field(description="Its labels: `raw_label` is the suspected target, `alertname` the rule.")


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload (version 4): the fields read; the others (groupKey, receiver, ...) are ignored."""

    version: str = Field(
        WEBHOOK_VERSION, description=f"The payload's version; Alertmanager sends {WEBHOOK_VERSION}, the only one read."
    )
    alerts: list[WebhookAlert] = Field(
        description=f"The notification's alerts, at most {MAX_ALERTS} (413 beyond).",
        json_schema_extra={"maxItems": MAX_ALERTS},
    )


_EXAMPLE = {
    "version": "4",
    "status": "firing",
    "receiver": "zipgate-targets",
    "groupKey": '{}/{alertname="ZipgateSuspectedBackdoorTarget"}:{raw_label="7"}',
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "ZipgateSuspectedBackdoorTarget", "raw_label": "7", "severity": "critical"},
            "annotations": {"summary": "suspected backdoor target: label 7"},
            "startsAt": "2026-12-07T02:00:00Z",
        }
    ],
}


def parse_webhook(body: bytes, content_type: str | None) -> AlertmanagerWebhook:
    """An Alertmanager notification out of a request body.

    Raises:
        UnsupportedMediaType: a Content-Type that is not JSON (415).
        BadRequest: the body is not JSON, or a payload version other than `WEBHOOK_VERSION` (400).
        InvalidShape: JSON that is not a webhook payload (422).
        PayloadTooLarge: more than `MAX_ALERTS` alerts (413).
    """
    payload = parse_request_json(body, content_type)
    check_webhook_version(payload)
    try:
        webhook = AlertmanagerWebhook.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:3])
        raise InvalidShape(f"expected Alertmanager's webhook payload (version 4): {problems}") from exc
    if len(webhook.alerts) > MAX_ALERTS:
        raise PayloadTooLarge(
            f"{len(webhook.alerts)} alerts in one notification; the limit is {MAX_ALERTS}: "
            f"set the receiver's max_alerts to {MAX_ALERTS} or fewer"
        )
    return webhook


def check_webhook_version(payload: Any) -> None:
    """Refuse a payload whose `version` is a string other than `WEBHOOK_VERSION`; checked before its shape, since
    another version's shape is not ours to judge. (A version that is not a string is a shape error, 422.)

    Raises:
        BadRequest: the version received, and the one read.
    """
    version = payload.get("version", WEBHOOK_VERSION) if isinstance(payload, dict) else WEBHOOK_VERSION
    if isinstance(version, str) and version != WEBHOOK_VERSION:
        raise BadRequest(
            f"Alertmanager webhook payload version {version[:40]!r} is not supported; "
            f"this gateway reads version {WEBHOOK_VERSION!r}"
        )


def name_alerted_targets(board: TargetBoard, alerts: list[WebhookAlert]) -> tuple[list[str], list[str]]:
    """Name the `raw_label` of every firing alert on `board` (source alertmanager, rule its alertname).

    Returns:
        The labels newly named, and those not named because the board was full, each in the alerts'
        order (one named before keeps its first source, and is in neither).
    """
    before = board.named
    named: list[str] = []
    not_named: list[str] = []
    for alert in alerts:
        raw_label = alert.labels.get(RAW_LABEL)
        if alert.status is not AlertStatus.FIRING or raw_label is None:
            continue  # resolved: names latch until DELETE /targets/{label}
        label = bounded_label(raw_label)
        if label in ("", OTHER_LABEL) or label in before or label in named or label in not_named:
            continue  # "other" is the bucket of labels past the cap (no one class); a named label keeps its source
        alert_name = alert.labels.get(ALERT_NAME)
        rule = bounded_label(alert_name) if alert_name else None
        try:
            board.name(label, TargetSource.ALERTMANAGER, rule)
        except TargetsFull:
            not_named.append(label)
            continue
        named.append(label)
        logger.info("Alertmanager named a backdoor target", extra={"raw_label": label, "alertname": rule})
    if not_named:
        logger.warning(
            "%d labels of Alertmanager's notification not named: operators and Alertmanager hold their most "
            "named targets (%d); DELETE /targets/{label} of one of theirs frees a slot",
            len(not_named),
            board.max_targets,
            extra={"not_named": not_named[:LOGGED_NOT_NAMED]},  # the answer lists them all
        )
    return named, not_named


async def post_alerts(request: Request, gateway: GatewayDep) -> AlertsResponse:
    """Name the raw label of every firing alert in an Alertmanager notification as a backdoor target.

    Resolved alerts clear nothing: a name holds until `DELETE /targets/{label}` (or a restart).
    """
    body = await request.body()  # within MAX_ALERTS_BODY_BYTES: the middleware applies the route's body_limit
    webhook = parse_webhook(body, request.headers.get("content-type"))
    named, not_named = name_alerted_targets(gateway.targets, webhook.alerts)
    state = targets_state(gateway)
    return AlertsResponse(policy=state.policy, targets=state.targets, named=named, not_named=not_named)


_ALERTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": f"The body is not JSON, or the payload's version is not {WEBHOOK_VERSION}.",
    },
    401: ERROR_RESPONSES[401],
    408: ERROR_RESPONSES[408],  # the middleware's body-read deadline, as on every route that reads a body
    413: {"model": ErrorResponse, "description": f"Over {MAX_ALERTS_BODY_BYTES} bytes or {MAX_ALERTS} alerts."},
    415: {"model": ErrorResponse, "description": "A Content-Type that is not JSON."},
    422: {"model": ErrorResponse, "description": "JSON that is not Alertmanager's webhook payload."},
}


class _AlertsRoute(APIRoute):
    """The webhook's route: it declares its body limit, tighter than MAX_REQUEST_BYTES, for the middleware to apply."""

    body_limit = BodyLimit(
        MAX_ALERTS_BODY_BYTES, f"the limit of {ALERTS_PATH}", f"set the receiver's max_alerts to {MAX_ALERTS} or fewer"
    )


def build_alerts_router(gateway_dependencies: list[Any]) -> APIRouter:
    """`POST /targets/alerts`, behind `gateway_dependencies` (the API key check, when configured).

    Include it before the targets router: /targets/alerts is also a /targets/{label} (PUT and DELETE of a
    label "alerts" still reach theirs), and a 405 on it should list POST, as its schema does.
    """
    router = APIRouter(tags=["closed loop"], dependencies=gateway_dependencies)
    router.add_api_route(
        ALERTS_PATH,
        post_alerts,
        methods=["POST"],
        response_model=AlertsResponse,
        responses=_ALERTS_RESPONSES,
        openapi_extra=request_body({"application/json": AlertmanagerWebhook}, example=_EXAMPLE),
        route_class_override=_AlertsRoute,
    )
    return router
