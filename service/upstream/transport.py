"""The transport half of an adapter: the vendor's address, the shared client, timeouts, resends.

`VendorTransport` sends bytes a codec encoded (`post`: a predict request, its non-2xx statuses
mapped to errors) or a sidecar request as the client sent it (`forward`: the vendor's answer
relayed unchanged, whatever its status). It knows no wire protocol; reads are bounded and
retries happen in `client.py`, failures are mapped in `failures.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import httpx

from service.upstream.client import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy, send_with_retries
from service.upstream.failures import raise_for_upstream_status, redact_url
from service.upstream.vendor_response import VendorResponse
from service.upstream.wire import JSON_CONTENT_TYPE

# Headers that describe one hop, not the message (RFC 9110 §7.6.1); so does any header that a
# Connection header names.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Host and Content-Length are recomputed by httpx for the new target and body. Accept-Encoding is
# the client's own (`make_http_client`): the gateway decodes the answer to bound its size and
# relays it decoded, so the vendor may only use codings httpx can decode.
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "x-request-id", "accept-encoding"}
# httpx has already decoded any content-encoding, so length and encoding no longer describe the
# relayed body; date/server are the gateway's own; X-Request-ID is set by the gateway (same id).
_NOT_RELAYED = _HOP_BY_HOP | {"content-length", "content-encoding", "date", "server", "x-request-id"}


@dataclass(frozen=True)
class RelayedResponse:
    """A vendor response relayed unchanged in sidecar mode.

    Attributes:
        status_code: the vendor's status, whatever it is.
        body: the vendor's body (decompressed if it was content-encoded).
        content_type: the vendor's Content-Type ("" when absent).
        headers: the vendor's end-to-end headers as (name, value) pairs, repeats kept; hop-by-hop
            headers and those that no longer describe the body are dropped.
    """

    status_code: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]


class VendorTransport:
    """The way to one vendor API, over the gateway's shared AsyncClient (which it does not close)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        total_timeout_s: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """Bind the transport to a vendor.

        Args:
            client: the shared client (see `make_http_client`); the lifespan owns and closes it.
            base_url: the vendor's root, e.g. "http://vendor:8080" (a path prefix is kept);
                credentials in it (http://user:pass@vendor) are sent as Basic auth.
            retry: resends after failures to connect.
            total_timeout_s: wall-clock bound on one upstream call with its retries; None leaves
                only the client's per-operation timeouts.
            max_response_bytes: limit on a vendor answer's decoded body.

        Raises:
            ValueError: the base URL is not an absolute http(s) URL, or a limit is not positive.
        """
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream base_url must look like http://host:port, got {redact_url(base_url)!r}")
        if url.query or url.fragment:
            raise ValueError(f"upstream base_url must not carry a query or fragment, got {redact_url(base_url)!r}")
        if total_timeout_s is not None and total_timeout_s <= 0:
            raise ValueError(f"total_timeout_s must be > 0 seconds or None, got {total_timeout_s}")
        if max_response_bytes <= 0:
            raise ValueError(f"max_response_bytes must be > 0, got {max_response_bytes}")
        self._client = client
        # Credentials travel as an Authorization header, never in a URL that httpx (which logs
        # every request URL at INFO) or an error message could print.
        self._auth = httpx.BasicAuth(url.username, url.password) if url.userinfo else None
        self._base_url = str(url.copy_with(userinfo=b"")).rstrip("/") if url.userinfo else base_url.rstrip("/")
        self._retry = retry
        self._total_timeout_s = total_timeout_s
        self._max_response_bytes = max_response_bytes

    async def forward(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        request_id: str | None = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
    ) -> RelayedResponse:
        """Relay a request to the vendor and its response back unchanged, whatever its status.

        Only transport failures become errors; a vendor 4xx or 5xx is a response to relay.
        The caller must not pass its own credentials (e.g. the gateway's API key) in `headers`.

        Args:
            method: the HTTP method.
            path: the path under base_url, with its query string, e.g. "/v1/models/m:predict".
            body: the (rewritten) request body.
            headers: the client's headers; hop-by-hop, Host and Content-Length are dropped.
            request_id: sent as X-Request-ID, replacing any the client sent.
            content_type: replaces the client's Content-Type (after a codec's `replace_images`).
            timeout_s: bound on this call's total time, body and resends included (the request's
                remaining budget); the tighter of it and the transport's `total_timeout_s` applies.

        Returns:
            The vendor's status, body, content type and end-to-end headers.

        Raises:
            ValueError: `path` does not start with "/".
            UpstreamTimeout: the vendor did not answer in time (504).
            UpstreamResponseTooLarge: the answer exceeds `max_response_bytes` (502).
            UpstreamError: the connection was refused or reset, or the answer was unusable (502).
        """
        if not path.startswith("/"):
            raise ValueError(f"the forwarded path must start with '/', got {path!r}")
        dropped = _NOT_FORWARDED | ({"content-type"} if content_type is not None else set())
        sent = dict(_end_to_end(headers.items(), dropped))
        if content_type is not None:
            sent["Content-Type"] = content_type
        if request_id is not None:
            sent["X-Request-ID"] = request_id
        request = self._client.build_request(method, self._base_url + path, content=body, headers=sent)
        response = await self._send(request, timeout_s)
        return RelayedResponse(
            status_code=response.status_code,
            body=response.content,
            content_type=response.headers.get("content-type", ""),
            headers=tuple(_end_to_end(response.headers.multi_items(), _NOT_RELAYED)),
        )

    async def post(
        self, path: str, content: bytes, content_type: str, request_id: str, timeout_s: float | None
    ) -> VendorResponse:
        """POST a body to the vendor and return its 2xx response, or raise the mapped error.

        Args:
            path: the path under base_url, e.g. a codec's `predict_path`.
            content: the body.
            content_type: its Content-Type.
            request_id: sent as X-Request-ID.
            timeout_s: bound on this call's total time, as in `forward`.

        Raises:
            UpstreamTimeout, UpstreamResponseTooLarge: as `forward`.
            UpstreamRejected: the vendor answered 4xx (its status, body and Retry-After kept).
            UpstreamError: 5xx or another status that is not 2xx, or a failure as in `forward` (502).
        """
        request = self._client.build_request(
            "POST",
            self._base_url + path,
            content=content,
            headers={"Content-Type": content_type, "Accept": JSON_CONTENT_TYPE, "X-Request-ID": request_id},
        )
        response = await self._send(request, timeout_s)
        raise_for_upstream_status(response)
        return response

    async def _send(self, request: httpx.Request, timeout_s: float | None) -> VendorResponse:
        limits = [limit for limit in (self._total_timeout_s, timeout_s) if limit is not None]
        return await send_with_retries(
            self._client,
            request,
            self._retry,
            total_timeout_s=min(limits) if limits else None,
            max_response_bytes=self._max_response_bytes,
            auth=self._auth,
        )


def _end_to_end(headers: Iterable[tuple[str, str]], dropped: AbstractSet[str]) -> list[tuple[str, str]]:
    """The headers without `dropped` ones and without those a Connection header names."""
    pairs = list(headers)
    connection = ",".join(value for name, value in pairs if name.lower() == "connection")
    named = {token.strip().lower() for token in connection.split(",")}
    return [(name, value) for name, value in pairs if name.lower() not in dropped | named]
