"""Wire helpers for bodies in a vendor format: media types, JSON and base64 (pure: no I/O, no httpx).

A body a *client* sent us (sidecar mode) that we cannot read is the client's fault, and the
errors here say so (`BadRequest` 400, `InvalidShape` 422, `UnsupportedMediaType` 415). A 2xx body
the *vendor* sent us that we cannot read is the vendor's fault (`UpstreamError` 502): that side is
`vendor_response.py`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from service.errors import BadRequest, InvalidShape, UnsupportedMediaType

JSON_CONTENT_TYPE = "application/json"


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a Content-Type value ("" when absent).

    Args:
        content_type: a header value such as "Application/JSON; charset=utf-8".

    Returns:
        The media type without parameters, e.g. "application/json".
    """
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (application/json or any `+json` type)."""
    kind = media_type(content_type)
    return kind == JSON_CONTENT_TYPE or kind.endswith("+json")


def parse_request_json(
    body: bytes, content_type: str | None, *, malformed: type[BadRequest | InvalidShape] = BadRequest
) -> dict[str, Any]:
    """Parse a client's JSON request body that must be a JSON object.

    Args:
        body: the request body.
        content_type: its Content-Type; absent is accepted, a non-JSON type is not.
        malformed: the error for a body that is not JSON: the status the protocol answers (400, or
            KServe's v2 422).

    Returns:
        The decoded object.

    Raises:
        UnsupportedMediaType: the content type is set and is not JSON.
        BadRequest: the body is not valid UTF-8 JSON (`malformed`).
        InvalidShape: the JSON is not an object.
    """
    if content_type and not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"expected a JSON body (Content-Type: application/json), got {media_type(content_type)!r}"
        )
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, or an int over 4300 digits
        raise malformed(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidShape(f"the request body must be a JSON object, got {type(payload).__name__}")
    return payload


def describe_json(value: Any) -> str:
    """A short description of a JSON value for error messages: an object's keys, else its type."""
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)}"
    return f"a JSON {type(value).__name__}"


def dump_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON bytes (no spaces: image payloads are large enough already)."""
    return json.dumps(payload, separators=(",", ":")).encode()


def encode_base64_image(image: bytes) -> str:
    """Standard base64 text of image bytes, as TF-Serving `b64` and v2 BYTES carry them."""
    return base64.b64encode(image).decode("ascii")


def decode_base64_image(text: Any, where: str) -> bytes:
    """Decode one base64 image from a client's request.

    Args:
        text: the JSON value that should be a base64 string.
        where: its location in the body, for the message (e.g. "instances[2].b64").

    Returns:
        The image bytes.

    Raises:
        InvalidShape: the value is not a string.
        BadRequest: the string is not valid base64 or decodes to nothing.
    """
    if not isinstance(text, str):
        raise InvalidShape(f"{where} must be a base64 string, got {type(text).__name__}")
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{where} is not valid base64: {exc}") from exc
    if not image:
        raise BadRequest(f"{where} is an empty image")
    return image
