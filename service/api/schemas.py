"""Pydantic request and response models of the gateway's HTTP API, with OpenAPI examples."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import JsonDict

from service.purify.options import Method
from service.purify.strength import Strength
from service.shadow.labels import MAX_LABEL_CHARS, VendorLabel
from service.shadow.policy import AnswerSource, DefensePolicy
from service.shadow.targets import TargetSource

# A 1×1 black PNG, small enough for the docs' "try it out".
EXAMPLE_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="


class PredictJsonRequest(BaseModel):
    """`POST /predict` or `/purify` as JSON: base64-encoded images (PNG, JPEG, WebP, BMP, GIF, TIFF)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"images": [EXAMPLE_PNG_B64]}]})

    images: list[str] = Field(
        min_length=1,
        description=(
            "Base64 of each encoded image: standard or URL-safe alphabet, padded or not, line breaks allowed, "
            "optionally as a data:image/...;base64, URL."
        ),
    )


class RelayedBody(RootModel[Any]):
    """The vendor's own answer in sidecar mode, relayed unchanged: any body, type and status."""


class PurificationInfo(BaseModel):
    """How the images were purified."""

    # guidance_power may be infinite (mix step off); JSON has no inf, so it travels as "Infinity".
    model_config = ConfigDict(ser_json_inf_nan="strings")

    model: str = Field(description="Diffusion model name (its directory name).")
    strength: Strength = Field(Strength.BALANCED, description="The strength preset the request ran (?strength=).")
    method: Method = Field(
        Method.GLOBAL,
        description="global: ZIP over the whole image; local: the suspicious blocks localised and repainted, "
        "the rest kept, then a light DiffPure pass (docs/design.md, 'Localise, then restore').",
    )
    masked_fraction: list[float] | None = Field(
        None, description="method=local: per image, the share of its pixels repainted as suspect."
    )
    transforms: str = Field(description="Degradation spec, e.g. 'blur:2'.")
    steps: int = Field(description="Sampling steps used (fewer than configured under adaptive steps).")
    guidance_power: float = Field(description="λ of the time-dependent mix.")
    noise_start: float = Field(1.0, description="t*/T the reverse process started from (1 = pure noise).")
    vendor_mirror: bool = Field(False, description="The vendor saw the purified images mirrored left-right.")
    device: str = Field(description="Device(s) of the worker pool, e.g. 'cpu' or 'cuda:0,cuda:1'.")
    dtype: str = Field(description="ε-model compute dtype, e.g. 'float32'.")
    votes: int = Field(1, description="Purifications per image (?votes=K); the answer is the majority label's.")
    policy: DefensePolicy = Field(
        DefensePolicy.ALWAYS,
        description="Which answer the client gets: always the purified image's; on_alarm / until_alarm (the "
        "closed loop): the raw image's where its raw label is not a named backdoor target (docs/design.md).",
    )
    answers: list[AnswerSource] | None = Field(
        None, description="Closed loop: per image, the image its answer came from (purified or raw)."
    )
    named_targets: list[str] | None = Field(
        None, description="Closed loop: the raw labels held as backdoor targets when this request was answered."
    )
    # VendorLabel is int | float | str: pydantic's smart unions keep the exact type (9 stays 9, "9" stays "9").
    vote_labels: list[list[VendorLabel | None]] | None = Field(
        None,
        description=(
            "With votes: per image, the label each vote's vendor answer gave, in vote order, with the vendor's "
            "type (an integer label stays an integer, as in predictions[].label; null: unreadable). A label "
            f"longer than {MAX_LABEL_CHARS} characters or with unprintable ones is 'h:' and 12 hex digits of "
            "its SHA-256 instead."
        ),
    )


class LatencyMs(BaseModel):
    """Milliseconds spent in each stage of this request (also in the Server-Timing header)."""

    decode: float
    queue: float
    purify: float
    upstream: float
    total: float


# The `purification` block of the response examples.
_EXAMPLE_PURIFICATION: JsonDict = {
    "model": "fmnist-ddpm",
    "transforms": "jblur:4",
    "steps": 20,
    "guidance_power": 0.25,
    "device": "cpu",
    "dtype": "float32",
}


class PredictResponse(BaseModel):
    """The vendor's prediction for each purified image, with how and how fast."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f2b9c0e8d7a4b6c9e1f2a3b4c5d6e7f",
                    "predictions": [
                        {"label": 9, "class_name": "ankle boot", "probabilities": [float(k == 9) for k in range(10)]}
                    ],
                    "purification": _EXAMPLE_PURIFICATION,
                    "latency_ms": {"decode": 0.4, "queue": 1.2, "purify": 180.0, "upstream": 3.1, "total": 186.0},
                }
            ]
        }
    )

    request_id: str
    predictions: list[Any] = Field(description="The vendor's output for each image, in request order, unchanged.")
    purification: PurificationInfo | None = Field(description="null when purification is disabled.")
    latency_ms: LatencyMs


class Include(enum.StrEnum):
    """Extra outputs of `POST /purify`."""

    DEGRADED = "degraded"
    MASK = "mask"


class PurifyResponse(BaseModel):
    """Purified images as base64 PNGs (and A⁺A x when asked with `?include=degraded`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f2b9c0e8d7a4b6c9e1f2a3b4c5d6e7f",
                    "images": [EXAMPLE_PNG_B64],
                    "degraded": None,
                    "purification": _EXAMPLE_PURIFICATION,
                    "latency_ms": {"decode": 0.4, "queue": 1.2, "purify": 180.0, "upstream": 0.0, "total": 183.0},
                }
            ]
        }
    )

    request_id: str
    images: list[str] = Field(description="Base64 PNG of each purified image, at its original size.")
    degraded: list[str] | None = Field(None, description="Base64 PNG of A⁺A x (the first transform), if asked.")
    masks: list[str] | None = Field(
        None,
        description="With ?include=mask and method=local: base64 PNG of each image's suspicion mask "
        "(white = repainted as suspect).",
    )
    purification: PurificationInfo
    latency_ms: LatencyMs


class HealthResponse(BaseModel):
    """`GET /healthz`: the process is alive."""

    status: str = "ok"


class Readiness(enum.StrEnum):
    """Where the gateway is in its life."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class ReadyResponse(BaseModel):
    """`GET /readyz`: 200 only when the model is loaded and the workers run."""

    status: Readiness
    detail: str = ""
    purification_enabled: bool
    queue_depth: int = 0


class ErrorDetail(BaseModel):
    """What went wrong; `code` is stable, `message` is for humans."""

    code: str = Field(description="Stable error code, e.g. 'payload_too_large'.")
    message: str
    request_id: str | None
    upstream_status: int | None = Field(None, description="The vendor's HTTP status, for upstream errors.")


class ProtocolErrorResponse(BaseModel):
    """An error the gateway answers on the /v1/ and /v2/ protocol paths: the shape of TF-Serving,
    KServe v1 and the Open Inference Protocol, {"error": "<message>"}, with our code and request id."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "model 'other' is not exposed; this gateway serves ['fmnist']",
                    "code": "model_not_found",
                    "request_id": "3f2b9c0e8d7a4b6c9e1f2a3b4c5d6e7f",
                }
            ]
        }
    )

    error: str = Field(description="What went wrong and, where it helps, how to fix it.")
    code: str = Field(description="The stable error code (as in ErrorResponse).")
    request_id: str | None = Field(description="The request's id (X-Request-ID).")
    upstream_status: int | None = Field(None, description="The vendor's status, for upstream errors.")


class ErrorResponse(BaseModel):
    """Every error the gateway answers, whatever the status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "payload_too_large",
                        "message": "image 0: 100000×100000 pixels, the limit is 16777216",
                        "request_id": "3f2b9c0e8d7a4b6c9e1f2a3b4c5d6e7f",
                    }
                }
            ]
        }
    )

    error: ErrorDetail


class NamedTargetInfo(BaseModel):
    """One raw label held as a backdoor target."""

    label: str = Field(description="The raw label, as the shadow metrics name it (bounded, capped).")
    source: TargetSource = Field(
        description=(
            "Who named it: setting (SUSPECTED_TARGETS), alarm, operator, alertmanager (POST /targets/alerts), "
            "peer (relayed by another replica, TARGET_PEERS)."
        )
    )
    since: float = Field(description="When it was named, Unix seconds.")
    rule: str | None = Field(
        None,
        description="source=alarm: the rule that named it; source=alertmanager: the alert's alertname; "
        "source=peer: who named it on the replica that relayed it.",
    )


class TargetsResponse(BaseModel):
    """The closed loop's state: the policy, and the targets whose answers it purifies."""

    policy: DefensePolicy = Field(description="The POLICY setting.")
    targets: list[NamedTargetInfo] = Field(description="The named targets, oldest first.")


class AlertsResponse(TargetsResponse):
    """The closed loop's state after an Alertmanager notification, and the labels that notification named."""

    named: list[str] = Field(
        description="The raw labels this notification named (bounded), in its order; a label named before keeps "
        "its first source and is not listed."
    )
    not_named: list[str] = Field(
        description="The raw labels (bounded) this notification would have named but operators and Alertmanager "
        "hold their most named targets (SHADOW_MAX_LABELS; the setting's, the alarm's and peers' names do not "
        "count): DELETE /targets/{label} of one of theirs frees a slot."
    )
