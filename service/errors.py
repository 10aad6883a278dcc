"""The gateway's error tree; each leaf carries its HTTP status and a stable error code.

    GatewayError (500, internal)
    ├── BadRequest (400, bad_request)            undecodable/empty image, bad spec
    ├── Unauthorized (401, unauthorized)         missing or wrong API key
    ├── ApiKeyRequired (403, api_key_required)   un-naming a backdoor target on a gateway without an API key
    ├── ModelNotFound (404, model_not_found)     a model this server does not expose or serve
    ├── TargetNotNamed (404, target_not_named)   clearing a backdoor target that is not named
    ├── RequestTimeout (408, request_timeout)    the body did not arrive within body_read_timeout_s
    ├── TargetsFull (409, targets_full)          an operator, Alertmanager or a peer past its cap
    ├── PayloadTooLarge (413, payload_too_large) bytes, pixels or images over a limit
    ├── UnsupportedMediaType (415, unsupported_media_type)
    ├── InvalidShape (422, invalid_request)      JSON of the wrong shape
    ├── Overloaded (429, overloaded)             queue full; carries retry_after_s
    ├── ClientDisconnected (499, client_disconnected)  the client left first: counted, never answered
    ├── DeadlineExceeded (504, deadline_exceeded) request deadline passed (queue, compute or vendor call)
    ├── NotReady (503, not_ready)                starting or draining (with Retry-After), or unable to serve
    │                                            at all (pool stopped, purification off: none)
    ├── PurificationFailed (500, purification_failed)  the batch this item was in failed
    └── UpstreamError (502, upstream_error)      5xx, refused, reset, undecodable body
        ├── UpstreamTimeout (504, upstream_timeout)
        ├── UpstreamResponseTooLarge (502, upstream_response_too_large)  over upstream_max_response_bytes
        └── UpstreamRejected (status of upstream, upstream_rejected)  a 4xx relayed as is, Retry-After kept

The 4xx classes are siblings, as their statuses are: `except BadRequest` catches a 400 and no 413,
415 or 422. A class that is a subclass is a kind of its parent for every caller.

Upstream messages name "the vendor" and the failure, never its URL (an internal host, perhaps with
credentials): they reach the client.

`api/errors.py` turns any of these into `{"error": {"code", "message", "request_id"}}`, or, on the
vendor protocols' paths, into their own shape (`error_body`); `ClientDisconnected` into a bare 499.
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


def retry_after_header(seconds: float) -> dict[str, str]:
    """The Retry-After header for a wait of `seconds`: whole seconds (RFC 9110 §10.2.3), rounded up, at least 1."""
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


class BadRequest(GatewayError):
    """The request cannot be processed as sent (undecodable or empty image, bad parameter)."""

    status_code = 400
    code = "bad_request"


class PayloadTooLarge(GatewayError):
    """A byte, pixel or image-count limit was exceeded."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    """The content type or image format is not one we accept."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidShape(GatewayError):
    """The JSON body does not have the documented shape."""

    status_code = 422
    code = "invalid_request"


class Unauthorized(GatewayError):
    """An API key is configured and the request's key is missing or wrong."""

    status_code = 401
    code = "unauthorized"


class ApiKeyRequired(GatewayError):
    """`DELETE /targets/{label}` on a gateway without an API key: un-naming lowers protection, never anonymously."""

    status_code = 403
    code = "api_key_required"


class ModelNotFound(GatewayError):
    """The model named in the path is not one this server exposes (`upstream_models`) or serves."""

    status_code = 404
    code = "model_not_found"


class TargetNotNamed(GatewayError):
    """`DELETE /targets/{label}` of a label the gateway does not hold as a backdoor target."""

    status_code = 404
    code = "target_not_named"


class TargetsFull(GatewayError):
    """A new label named from outside while its bucket holds `SHADOW_MAX_LABELS` names: operators and Alertmanager
    together (`PUT /targets/{label}`, the webhook), or peers (a relayed PUT); the setting's and the alarm's names
    do not count (never crowded out)."""

    status_code = 409
    code = "targets_full"


class RequestTimeout(GatewayError):
    """The request body did not arrive within `body_read_timeout_s`; the connection is closed."""

    status_code = 408
    code = "request_timeout"

    def __init__(self, message: str) -> None:
        # The client may still be sending: without Connection: close the server would keep
        # reading (and the connection open) after the answer.
        super().__init__(message, headers={"Connection": "close"})


class Overloaded(GatewayError):
    """The purification queue is full; retry after `retry_after_s` seconds."""

    status_code = 429
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, headers=retry_after_header(retry_after_s))
        self.retry_after_s = retry_after_s


class ClientDisconnected(GatewayError):
    """The client hung up before its answer was ready; its queued work was withdrawn."""

    status_code = 499  # nginx's "client closed request": never seen by the client, only counted
    code = "client_disconnected"


class DeadlineExceeded(GatewayError):
    """The request's deadline passed: queued, purifying, or waiting for the vendor."""

    status_code = 504
    code = "deadline_exceeded"


# Retry-After of a 503 by cause. Loading a model takes seconds; a draining gateway's retry goes to
# another replica behind the load balancer, so a short wait is right.
LOADING_RETRY_AFTER_S = 5.0
DRAINING_RETRY_AFTER_S = 1.0


class NotReady(GatewayError):
    """The gateway is starting (model loading) or draining for shutdown, or cannot serve at all (its
    worker pool stopped, purification is off); `retry_after_s` is None where waiting will not help."""

    status_code = 503
    code = "not_ready"

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        super().__init__(message, headers=None if retry_after_s is None else retry_after_header(retry_after_s))
        self.retry_after_s = retry_after_s


class PurificationFailed(GatewayError):
    """The batch holding this image failed; other batches are unaffected."""

    status_code = 500
    code = "purification_failed"


class UpstreamError(GatewayError):
    """The vendor API failed: 5xx, connection refused or reset, or an undecodable body."""

    status_code = 502
    code = "upstream_error"

    def __init__(
        self, message: str, *, upstream_status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, headers=headers)
        self.upstream_status = upstream_status


class UpstreamTimeout(UpstreamError):
    """The vendor API did not answer within the configured timeout."""

    status_code = 504
    code = "upstream_timeout"


class UpstreamResponseTooLarge(UpstreamError):
    """The vendor's answer, decoded, exceeds `upstream_max_response_bytes`; it was not read whole."""

    code = "upstream_response_too_large"


class UpstreamRejected(UpstreamError):
    """The vendor API answered 4xx; relayed with its status and body, and its Retry-After if any."""

    code = "upstream_rejected"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        body: bytes = b"",
        content_type: str = "",
        retry_after: str | None = None,
    ) -> None:
        # A vendor 429/503's Retry-After is the client's best hint of when to come back.
        headers = {"Retry-After": retry_after} if retry_after else None
        super().__init__(message, upstream_status=upstream_status, headers=headers)
        self.status_code = upstream_status
        self.body = body
        self.content_type = content_type


# TF-Serving, KServe v1 and the Open Inference Protocol (v2) answer errors as {"error": "<message>"};
# their clients (tritonclient, KServe's) read that string. On their paths the gateway speaks the same.
PROTOCOL_ERROR_PREFIXES = ("/v1/", "/v2/")


def error_body(
    path: str, code: str, message: str, request_id: str | None, upstream_status: int | None = None
) -> dict[str, object]:
    """The JSON body of an error answered on `path`.

    The house shape is {"error": {"code", "message", "request_id"}}. Under /v1/ and /v2/ (and /v2
    itself) it is the protocols' {"error": "<message>"}, with the code and request id as fields of
    their own beside it, so a v2 client shows the message and nothing of ours is lost.
    """
    details: dict[str, object] = {"code": code, "message": message, "request_id": request_id}
    if upstream_status is not None:
        details["upstream_status"] = upstream_status
    if path == "/v2" or path.startswith(PROTOCOL_ERROR_PREFIXES):
        return {"error": message, **{key: value for key, value in details.items() if key != "message"}}
    return {"error": details}
