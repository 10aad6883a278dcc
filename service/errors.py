"""The gateway's error tree; each leaf carries its HTTP status and a stable error code.

    GatewayError (500, internal)
    ├── BadRequest (400, bad_request)            undecodable/empty image, bad spec
    │   ├── PayloadTooLarge (413, payload_too_large)   bytes or pixels over a limit
    │   ├── UnsupportedMediaType (415, unsupported_media_type)
    │   └── InvalidShape (422, invalid_request)         JSON of the wrong shape
    ├── Unauthorized (401, unauthorized)         missing or wrong API key
    ├── Overloaded (429, overloaded)             queue full; carries retry_after_s
    ├── DeadlineExceeded (504, deadline_exceeded) request deadline passed before compute
    ├── NotReady (503, not_ready)                starting or draining
    ├── PurificationFailed (500, purification_failed)  the batch this item was in failed
    └── UpstreamError (502, upstream_error)      5xx, refused, reset, undecodable body
        ├── UpstreamTimeout (504, upstream_timeout)
        └── UpstreamRejected (status of upstream, upstream_rejected)  a 4xx relayed as is

`api/errors.py` turns any of these into `{"error": {"code", "message", "request_id"}}`.
This module imports nothing heavy: `upstream/` and `workers/` raise these without torch or FastAPI.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway answers with a JSON body."""

    status_code: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(GatewayError):
    """The request cannot be processed as sent (undecodable or empty image, bad parameter)."""

    status_code = 400
    code = "bad_request"


class PayloadTooLarge(BadRequest):
    """A byte, pixel or image-count limit was exceeded."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(BadRequest):
    """The content type or image format is not one we accept."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidShape(BadRequest):
    """The JSON body does not have the documented shape."""

    status_code = 422
    code = "invalid_request"


class Unauthorized(GatewayError):
    """An API key is configured and the request's key is missing or wrong."""

    status_code = 401
    code = "unauthorized"


class Overloaded(GatewayError):
    """The purification queue is full; retry after `retry_after_s` seconds."""

    status_code = 429
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s + 0.999)))})
        self.retry_after_s = retry_after_s


class DeadlineExceeded(GatewayError):
    """The request's deadline passed before its images were purified."""

    status_code = 504
    code = "deadline_exceeded"


class NotReady(GatewayError):
    """The gateway is starting (model loading) or draining for shutdown."""

    status_code = 503
    code = "not_ready"


class PurificationFailed(GatewayError):
    """The batch holding this image failed; other batches are unaffected."""

    status_code = 500
    code = "purification_failed"


class UpstreamError(GatewayError):
    """The vendor API failed: 5xx, connection refused or reset, or an undecodable body."""

    status_code = 502
    code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class UpstreamTimeout(UpstreamError):
    """The vendor API did not answer within the configured timeout."""

    status_code = 504
    code = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    """The vendor API answered 4xx; relayed with its status and body."""

    code = "upstream_rejected"

    def __init__(self, message: str, *, upstream_status: int, body: bytes = b"", content_type: str = "") -> None:
        super().__init__(message, upstream_status=upstream_status)
        self.status_code = upstream_status
        self.body = body
        self.content_type = content_type
