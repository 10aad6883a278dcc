"""Adapters to the vendor's model API, one per wire protocol, built by `build_upstream`.

Each adapter (`Upstream`) is a codec of its protocol (`RawCodec`, `TFServingCodec`, `V2Codec`: pure
encoding) over a `VendorTransport` (the shared client, timeouts, resends, failure mapping).
"""

from __future__ import annotations

from typing import assert_never

import httpx

from service.upstream.adapter import Upstream, UpstreamResult
from service.upstream.client import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy, make_http_client
from service.upstream.codec import UpstreamProtocol, VendorBody, VendorCodec, WireRequest
from service.upstream.failures import redact_url
from service.upstream.raw import RawCodec
from service.upstream.tfserving import TFServingCodec
from service.upstream.transport import RelayedResponse, VendorTransport
from service.upstream.v2 import V2Codec
from service.upstream.v2_input import PixelLayout, TensorDatatype, V2Input

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "PixelLayout",
    "RawCodec",
    "RelayedResponse",
    "RetryPolicy",
    "TFServingCodec",
    "TensorDatatype",
    "Upstream",
    "UpstreamProtocol",
    "UpstreamResult",
    "V2Codec",
    "V2Input",
    "VendorBody",
    "VendorCodec",
    "VendorTransport",
    "WireRequest",
    "build_upstream",
    "make_http_client",
    "redact_url",
]


def _parse_protocol(protocol: UpstreamProtocol | str) -> UpstreamProtocol:
    """The `UpstreamProtocol` a setting names.

    Raises:
        ValueError: no protocol has that value; the message lists the ones that do.
    """
    try:
        return UpstreamProtocol(protocol)
    except ValueError:
        choices = ", ".join(member.value for member in UpstreamProtocol)
        raise ValueError(f"unknown upstream protocol {protocol!r}; choose one of {choices}") from None


def build_upstream(
    protocol: UpstreamProtocol | str,
    client: httpx.AsyncClient,
    base_url: str,
    model_name: str | None = None,
    raw_path: str = "/predict",
    *,
    image_input: V2Input | None = None,
    retry: RetryPolicy = RetryPolicy(),
    total_timeout_s: float | None = None,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> Upstream:
    """Create the adapter for a protocol: its codec over a transport to `base_url`.

    Args:
        protocol: the vendor's wire protocol (an `UpstreamProtocol` or its value, e.g. "v2").
        client: the shared client from `make_http_client`; the caller closes it.
        base_url: the vendor's root URL, e.g. "http://vendor:8080".
        model_name: the served model's name; required for tfserving and v2, unused for raw.
        raw_path: the inference path of the raw protocol.
        image_input: the v2 model's image input (name; encoded images or pixels).
        retry: resends after failures to connect.
        total_timeout_s: wall-clock bound on one upstream call with its retries (None: only the
            client's per-operation timeouts).
        max_response_bytes: limit on a vendor answer's decoded body (`upstream_max_response_bytes`).

    Returns:
        The adapter.

    Raises:
        ValueError: an unknown protocol, or a setting the adapter rejects (the message says which).
    """
    protocol = _parse_protocol(protocol)
    transport = VendorTransport(
        client, base_url, retry=retry, total_timeout_s=total_timeout_s, max_response_bytes=max_response_bytes
    )
    return Upstream(transport, _codec(protocol, model_name or "", raw_path, image_input))


def _codec(protocol: UpstreamProtocol, model_name: str, raw_path: str, image_input: V2Input | None) -> VendorCodec:
    """The codec of `protocol` (see `build_upstream` for the arguments)."""
    if protocol is UpstreamProtocol.RAW:
        return RawCodec(raw_path)
    if protocol is UpstreamProtocol.TFSERVING:
        return TFServingCodec(model_name)
    if protocol is UpstreamProtocol.V2:
        return V2Codec(model_name, image_input)
    assert_never(protocol)
