"""Every error leaves the gateway as `{"error": {"code", "message", "request_id"}}`, never a trace
(on the /v1/ and /v2/ protocol paths as the protocols' `{"error": "<message>"}` with the code and
request id beside it: `service.errors.error_body`).

GatewayError (service/errors.py)   → its own status, code and headers
UpstreamRejected (vendor 4xx)      → the vendor's status; its body quoted in the message
RequestValidationError (FastAPI)   → 422 invalid_request
HTTPException (routing 404/405 …)  → its status, code from `HTTP_CODES`; a path no route matches is a
                                     404 naming it, and the route it missed by a trailing slash, if any
ClientDisconnected (a GatewayError) → 499, counted and logged only (nobody is listening)
anything else                      → 500 internal (api/middleware.py; the trace goes to the log)
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.api.logging import REQUEST_ID
from service.errors import (
    ClientDisconnected,
    GatewayError,
    InvalidShape,
    UpstreamError,
    UpstreamRejected,
    error_body,
)

logger = logging.getLogger(__name__)

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
_QUOTED_BODY_CHARS = 500  # enough to show a vendor's error message, not enough to relay a payload
CLIENT_CLOSED_REQUEST = ClientDisconnected.status_code  # nginx's "the client left first": only counted
# The request's path, for the error shape; a ContextVar like the request id (the middleware sets both).
REQUEST_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("zipgate_request_path", default="")


@contextmanager
def request_path_context(path: str) -> Iterator[None]:
    """Errors answered inside the block take the shape of `path`'s protocol."""
    token = REQUEST_PATH.set(path)
    try:
        yield
    finally:
        REQUEST_PATH.reset(token)


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, upstream_status: int | None = None
) -> JSONResponse:
    """The JSON error response, stamped with the current request id.

    Args:
        status: the HTTP status.
        code: the stable error code.
        message: what went wrong and, where it helps, how to fix it.
        headers: extra headers (e.g. Retry-After).
        upstream_status: the vendor's status, for upstream errors.

    Returns:
        The response.
    """
    body = error_body(REQUEST_PATH.get(), code, message, REQUEST_ID.get(), upstream_status)
    return JSONResponse(body, status_code=status, headers=headers)


def gateway_error_response(exc: GatewayError) -> JSONResponse:
    """The response for one of our own errors."""
    message = exc.message
    upstream_status = getattr(exc, "upstream_status", None) if isinstance(exc, UpstreamError) else None
    if isinstance(exc, UpstreamRejected) and exc.body:
        message = f"{message}: {exc.body[:_QUOTED_BODY_CHARS].decode('utf-8', 'replace')}"
    return error_response(exc.status_code, exc.code, message, headers=exc.headers, upstream_status=upstream_status)


def internal_error_response() -> JSONResponse:
    """The 500 for an unexpected exception; the details go to the log, not to the client."""
    return error_response(500, GatewayError.code, "internal error; the request id is in the server log")


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "the request does not match the documented shape"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into the JSON error shape."""

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.warning("%s: %s", exc.code, exc.message)
        return gateway_error_response(exc)

    @app.exception_handler(ClientDisconnected)
    async def on_client_disconnected(request: Request, exc: ClientDisconnected) -> Response:
        logger.info("client disconnected; its queued images were withdrawn")
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, InvalidShape.code, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code) or _phrase_code(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404 and "endpoint" not in request.scope:  # the router's: no route matched
            message = missing_route_message(request)
        return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


MAX_PATH_IN_MESSAGE = 200
"""A 404 echoes at most this many characters of the path it could not route."""


def missing_route_message(request: Request) -> str:
    """The 404 message of a request no route matched: its method and path, and the route's own path where
    only a trailing slash is in the way (`/predict/` for `/predict`, or the other way round).

    The gateway does not redirect to that path (`redirect_slashes` is off): a 307 has no body to read, and a
    client that does not follow it, or follows it without the body, sees nothing useful.
    """
    path = request.url.path
    shown = path if len(path) <= MAX_PATH_IN_MESSAGE else f"{path[:MAX_PATH_IN_MESSAGE]}…"  # a client's text, bounded
    message = f"no route {request.method} {shown}"
    if path == "/" or len(path) > MAX_PATH_IN_MESSAGE:  # no route has a path that long
        return message
    other = path.rstrip("/") if path.endswith("/") else f"{path}/"
    other_scope = {**request.scope, "path": other}
    if any(route.matches(other_scope)[0] is Match.FULL for route in request.app.router.routes):
        message += f"; did you mean {other}?"
    return message


def _phrase_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"
