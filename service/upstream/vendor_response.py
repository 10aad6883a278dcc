"""The vendor's answer as the transport reads it, and the 502s for a 2xx answer that cannot be used.

A 2xx body the *vendor* sent us that we cannot read is the vendor's fault (`UpstreamError` 502,
carrying the vendor's status); a client's unreadable body is the client's (`wire.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from service.errors import UpstreamError
from service.upstream.wire import media_type


@dataclass(frozen=True)
class VendorResponse:
    """A vendor's answer with its whole body read (content-decoded, within the size limit).

    Attributes:
        status_code: the vendor's HTTP status.
        headers: its headers as received (Content-Encoding and Content-Length describe the wire,
            not `content`).
        content: the decoded body.
    """

    status_code: int
    headers: httpx.Headers
    content: bytes


def decode_response_json(response: VendorResponse) -> Any:
    """Parse a vendor's 2xx response body as JSON.

    Args:
        response: the vendor's answer.

    Returns:
        The decoded JSON value.

    Raises:
        UpstreamError: the body is not JSON (502, with the vendor's status).
    """
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, or an int over 4300 digits
        kind = media_type(response.headers.get("content-type")) or "no content type"
        raise UpstreamError(
            f"the vendor answered HTTP {response.status_code} with a body that is not JSON "
            f"({kind}, {len(response.content)} bytes)",
            upstream_status=response.status_code,
        ) from exc


def malformed_response(response: VendorResponse, problem: str) -> UpstreamError:
    """The error for a vendor's 2xx JSON body of the wrong shape (502).

    Args:
        response: the vendor's response.
        problem: what is wrong, e.g. "expected 3 predictions, got 2".

    Returns:
        An UpstreamError to raise, carrying the vendor's status.
    """
    return UpstreamError(
        f"the vendor answered HTTP {response.status_code} with an unexpected body: {problem}",
        upstream_status=response.status_code,
    )
