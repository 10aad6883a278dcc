"""The codec half of an adapter: one wire protocol's encoding, pure (no I/O, no httpx).

A `VendorCodec` knows one `UpstreamProtocol` and nothing of the network, as KServe splits its
protocol from its data plane:
- predict: `encode_predict` turns purified images into the vendor's request bodies
  (`WireRequest`s) and `decode_predictions` reads one prediction per image out of an answer's JSON;
- sidecar: `extract_images` / `replace_images` read and rewrite a client's request that is already
  in the vendor's format (a `VendorBody`: the bytes and the headers that frame them).

The transport (`transport.py`) sends what a codec encodes; an `Upstream` (`adapter.py`) joins the two.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from service.upstream.v2_binary import INFERENCE_HEADER_LENGTH, parse_header_length


class UpstreamProtocol(enum.StrEnum):
    """The vendor API's wire protocol."""

    RAW = "raw"  # SageMaker-style: one image per POST, body = image bytes
    TFSERVING = "tfserving"  # TF-Serving / Vertex: {"instances": [{"b64": ...}]}
    V2 = "v2"  # Open Inference Protocol (KServe, Triton): BYTES input tensor


@dataclass(frozen=True)
class VendorBody:
    """A request body in the vendor's own format, with the headers that frame it (sidecar mode).

    Attributes:
        content: the body.
        content_type: its Content-Type ("" when absent).
        json_length: the v2 binary tensor extension's `Inference-Header-Content-Length`: the body
            is a JSON header of this many bytes followed by binary tensor data. None: no such split.
    """

    content: bytes
    content_type: str = ""
    json_length: int | None = None

    @classmethod
    def from_headers(cls, content: bytes, headers: Mapping[str, str]) -> VendorBody:
        """The body as a client sent it, framed by its request headers.

        Raises:
            BadRequest: an `Inference-Header-Content-Length` that is not a byte count within the body.
        """
        lower = {name.lower(): value for name, value in headers.items()}
        return cls(
            content,
            lower.get("content-type", ""),
            parse_header_length(lower.get(INFERENCE_HEADER_LENGTH.lower()), len(content)),
        )

    def reframe(self, headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` with their Content-Type and Inference-Header-Content-Length replaced by this body's."""
        framing = {"content-type", INFERENCE_HEADER_LENGTH.lower()}
        reframed = {name: value for name, value in headers.items() if name.lower() not in framing}
        if self.content_type:
            reframed["Content-Type"] = self.content_type
        if self.json_length is not None:
            reframed[INFERENCE_HEADER_LENGTH] = str(self.json_length)
        return reframed


@dataclass(frozen=True)
class WireRequest:
    """One predict request body as a codec encodes it.

    Attributes:
        content: the body.
        content_type: its Content-Type.
        image_count: how many of the images it carries (the predictions its answer must hold).
    """

    content: bytes
    content_type: str
    image_count: int


class VendorCodec(abc.ABC):
    """One wire protocol's encoding of predict requests, answers and sidecar bodies (pure: no I/O)."""

    protocol: ClassVar[UpstreamProtocol]

    @property
    @abc.abstractmethod
    def predict_path(self) -> str:
        """The vendor's inference path (under its base URL) that predict requests go to."""

    @abc.abstractmethod
    def encode_predict(self, images: list[bytes], request_id: str, content_type: str) -> list[WireRequest]:
        """The request bodies that send `images` to the vendor, in image order.

        Args:
            images: encoded images, at least one.
            request_id: carried in the body where the protocol has a place for it (v2's `id`).
            content_type: the images' media type, where the protocol carries it (raw only).

        Returns:
            One request for all images (JSON protocols) or one per image (raw); each answer's
            predictions follow one another in image order.

        Raises:
            ValueError: an image the protocol cannot carry (a v2 pixel input: one that does not decode).
        """

    @abc.abstractmethod
    def decode_predictions(self, payload: Any, count: int) -> list[Any]:
        """One prediction per image from the JSON answer to one `WireRequest`.

        Args:
            payload: the decoded response JSON.
            count: the request's `image_count`.

        Returns:
            The predictions in image order (the caller checks that there are `count`).

        Raises:
            ValueError: the payload has the wrong shape; the message says what is wrong.
        """

    @abc.abstractmethod
    def extract_images(self, body: VendorBody) -> list[bytes]:
        """Read the images out of a client's request in the vendor's own format (sidecar mode).

        Args:
            body: the client's request body and the headers that frame it.

        Returns:
            The images, in request order (at least one).

        Raises:
            UnsupportedMediaType: the content type does not fit the protocol (415).
            BadRequest: undecodable JSON or base64, bad binary framing, or an empty image (400).
            InvalidShape: JSON that is not the documented shape (422).
        """

    @abc.abstractmethod
    def replace_images(
        self,
        body: VendorBody,
        images: list[bytes],
        *,
        image_content_type: str = "image/png",
    ) -> VendorBody:
        """Rewrite a client's request with new images in place of the old ones, all else kept.

        Args:
            body: the client's request, as given to `extract_images`.
            images: the replacements, as many as `extract_images` returned.
            image_content_type: the replacements' media type (used where the body is the image).

        Returns:
            The new body with its framing (send it with `VendorBody.reframe` of the client's headers).

        Raises:
            ValueError: the number of images differs from the number in the body.
            BadRequest, InvalidShape, UnsupportedMediaType: as `extract_images`.
        """
