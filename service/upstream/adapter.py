"""`Upstream`: the adapter to one vendor API, a codec (`codec.py`) over a transport (`transport.py`).

An adapter does three jobs for one wire protocol (`UpstreamProtocol`):
- `predict`: send purified images in the vendor's format, return one prediction per image (the
  codec encodes and decodes, the transport sends; the joining, concurrency and checks are here);
- sidecar: `extract_images` / `replace_images` read and rewrite a client's request that is
  already in the vendor's format (the codec's), and `forward` relays it and the vendor's answer
  unchanged (the transport's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from service.upstream.codec import UpstreamProtocol, VendorBody, VendorCodec, WireRequest
from service.upstream.transport import RelayedResponse, VendorTransport
from service.upstream.vendor_response import decode_response_json, malformed_response

_T = TypeVar("_T")


@dataclass(frozen=True)
class UpstreamResult:
    """The vendor's answer to one `predict` call.

    Attributes:
        predictions: one JSON value per image, in the order of the images sent.
        status_code: the vendor's HTTP status (2xx; of several requests, the highest).
        latency_s: wall-clock seconds of the call, retries included.
    """

    predictions: list[Any]
    status_code: int
    latency_s: float


class Upstream:
    """An adapter to one vendor API: `codec` speaks its wire protocol, `transport` reaches it.

    Attributes:
        codec: the protocol's pure encoding.
        transport: the vendor's address over the shared client, with its timeouts and resends.
    """

    def __init__(self, transport: VendorTransport, codec: VendorCodec) -> None:
        """Join a transport and a codec (see `build_upstream`)."""
        self.transport = transport
        self.codec = codec

    @property
    def protocol(self) -> UpstreamProtocol:
        """The vendor API's wire protocol (the codec's)."""
        return self.codec.protocol

    @property
    def predict_path(self) -> str:
        """The vendor's inference path (under base_url) that `predict` posts to."""
        return self.codec.predict_path

    async def predict(
        self,
        images: list[bytes],
        request_id: str,
        content_type: str = "image/png",
        *,
        timeout_s: float | None = None,
    ) -> UpstreamResult:
        """Send images to the vendor and return one prediction per image.

        Where the protocol sends one request per image (raw), they run concurrently, `timeout_s`
        bounds each of them, and the first that fails fails the call and cancels the rest.

        Args:
            images: encoded images (PNG by default), at least one.
            request_id: sent as the X-Request-ID header (and in the body where the protocol has one).
            content_type: the images' media type, where the protocol carries it (raw only).
            timeout_s: bound on this call's total time, body and resends included (the request's
                remaining budget); the tighter of it and the transport's `total_timeout_s` applies.

        Returns:
            The predictions in image order, the vendor's status and the latency.

        Raises:
            ValueError: `images` is empty, or the codec cannot encode one (see `VendorCodec.encode_predict`).
            UpstreamTimeout: the vendor did not answer in time (504).
            UpstreamRejected: the vendor answered 4xx (relayed with its status, body, Retry-After).
            UpstreamResponseTooLarge: the answer exceeds `max_response_bytes` (502).
            UpstreamError: 5xx, refused or reset connection, or an unreadable 2xx body (502).
        """
        if not images:
            raise ValueError("predict needs at least one image")
        started = time.perf_counter()
        requests = self.codec.encode_predict(images, request_id, content_type)
        answers = await _all_or_none([self._send(request, request_id, timeout_s) for request in requests])
        return UpstreamResult(
            predictions=[prediction for _, predictions in answers for prediction in predictions],
            status_code=max(status for status, _ in answers),
            latency_s=time.perf_counter() - started,
        )

    async def _send(self, request: WireRequest, request_id: str, timeout_s: float | None) -> tuple[int, list[Any]]:
        """Post one encoded request; its status and its `image_count` predictions.

        Raises:
            UpstreamError: as `predict`; also an answer of the wrong shape or prediction count (502).
        """
        response = await self.transport.post(
            self.codec.predict_path, request.content, request.content_type, request_id, timeout_s
        )
        payload = decode_response_json(response)
        try:
            predictions = self.codec.decode_predictions(payload, request.image_count)
            if len(predictions) != request.image_count:
                raise ValueError(f"expected {request.image_count} predictions, got {len(predictions)}")
        except ValueError as exc:
            raise malformed_response(response, str(exc)) from exc
        return response.status_code, predictions

    def extract_images(self, body: VendorBody) -> list[bytes]:
        """Read the images out of a client's request in the vendor's format: see `VendorCodec.extract_images`."""
        return self.codec.extract_images(body)

    def replace_images(
        self, body: VendorBody, images: list[bytes], *, image_content_type: str = "image/png"
    ) -> VendorBody:
        """Rewrite a client's request with new images: see `VendorCodec.replace_images`."""
        return self.codec.replace_images(body, images, image_content_type=image_content_type)

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
        """Relay a request to the vendor and its answer back unchanged: see `VendorTransport.forward`."""
        return await self.transport.forward(
            method, path, body, headers, request_id=request_id, content_type=content_type, timeout_s=timeout_s
        )


async def _all_or_none(calls: list[Coroutine[Any, Any, _T]]) -> list[_T]:
    """The results of `calls` in order, run concurrently; the first to fail cancels the others."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.create_task(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        # gather does not cancel the siblings of a failed task; they must not outlive the call.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
