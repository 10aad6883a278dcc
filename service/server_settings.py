"""The serving process's settings: the HTTP server, the request limits and security, and the worker pool.

Field mixins that `service.config.Settings` composes (env `ZIPGATE_<FIELD>`, see there). The HTTP
side is configured in `api/` and the pool in `workers/`, but their fields live here: `config.py`
may import neither package, `api/` because nothing below the API imports it (docs/design.md, import
rules) and `workers/` because it imports torch, which loading the settings must not
(`zipgate serve --help`; tests/test_config.py). A leaf: pydantic only.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator

# max_request_pixels unless set, or max_image_pixels when that is larger.
DEFAULT_MAX_REQUEST_PIXELS = 4096 * 4096


class LogLevel(enum.StrEnum):
    """Log levels accepted by `log_level` (lower-case, as uvicorn spells them)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ServerFields(BaseModel):
    """Where the gateway listens, how it logs, how many connections it holds open."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 in a container.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 = any free port).")
    log_level: LogLevel = Field(LogLevel.INFO, description="Minimum level of the JSON logs.")
    # Below the common 1024 open-files limit, with room for the vendor pool and the model files.
    # At least 2: uvicorn counts the request's own connection, so with 1 every request would get 503.
    max_connections: int = Field(
        512,
        ge=2,
        description="Open connections at most (uvicorn's limit_concurrency): "
        "a request arriving with this many open, its own included, gets uvicorn's "
        "plain-text 503 (/healthz too).",
    )


class RequestLimitFields(BaseModel):
    """What one request may send (bytes, pixels, images, upload time) and who may send it (the API key)."""

    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Request body size limit.")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1, description="Encoded size limit of one image.")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="Width × height limit, checked before decoding.")
    # One request at 4096² peaks under 1.5 GiB (README, Configuration; tests/test_image_limits.py). The
    # default follows a raised max_image_pixels, so a deployment that raised only that still starts.
    max_request_pixels: int = Field(
        default_factory=lambda data: max(data.get("max_image_pixels", 0), DEFAULT_MAX_REQUEST_PIXELS),
        ge=1,
        description="Width × height summed over a request's images, checked "
        "before decoding (default: max(max_image_pixels, 4096²)).",
    )
    body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Total upload time: from a request's arrival to "
        "the end of its body, however fast it flows meanwhile; a slower body gets "
        "408. The default lets a max_request_bytes body (16 MiB) arrive at 0.56 MB/s "
        "(4.5 Mbit/s) or faster.",
    )
    max_images_per_request: int = Field(64, ge=1, description="Images in one request at most.")
    api_key: SecretStr | None = Field(None, description="If set: required as 'Authorization: Bearer' or X-API-Key.")
    public_docs: bool | None = Field(
        None, description="Serve /docs, /redoc, /openapi.json without the API key (default: only when no key is set)."
    )

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, key: SecretStr | None) -> SecretStr | None:
        # ZIPGATE_API_KEY="" in a compose file means "no key", not "the empty key".
        return key if key is not None and key.get_secret_value() else None

    @field_validator("public_docs")
    @classmethod
    def _docs_public_without_key(cls, public: bool | None, info: ValidationInfo) -> bool:
        # Unset: the API pages are as open as the API (they list every route and parameter).
        return public if public is not None else info.data.get("api_key") is None


class PoolFields(BaseModel):
    """The worker pool's batching, admission, deadlines and drain (`workers.PoolConfig` takes them)."""

    max_batch_size: int = Field(16, ge=1, description="Images per purification batch at most.")
    max_wait_ms: float = Field(10.0, ge=0, description="How long a batch waits to fill before it runs.")
    queue_limit: int = Field(256, ge=1, description="Images queued at most; beyond it requests get 429.")
    request_timeout_s: float = Field(60.0, gt=0, description="Default deadline of a request.")
    max_request_timeout_s: float = Field(300.0, gt=0, description="Upper bound of an X-Request-Timeout header.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On shutdown, time given to queued and running work.")
    adaptive_steps_min: int | None = Field(None, ge=1, description="Opt-in: fewer steps (down to this) under load.")
    adaptive_target_wait_ms: float = Field(1000.0, gt=0, description="Queue wait above which adaptive steps start.")
