"""`JsonCodec`: the shared base of the codecs whose protocol is one JSON request (TF-Serving, v2).

It exists so that those protocols only say where the images sit in their JSON and how the
answer's predictions are laid out (`encode_request`, `decode_predictions`, `read_image_fields`,
`write_image_fields`, `without_images`); the base turns those into `encode_predict`,
`extract_images` and `replace_images`. The codec interface itself is in `codec.py`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from service.errors import BadRequest, InvalidShape
from service.upstream.codec import VendorBody, VendorCodec, WireRequest
from service.upstream.side_content import check_side_content
from service.upstream.v2_binary import INFERENCE_HEADER_LENGTH
from service.upstream.wire import (
    JSON_CONTENT_TYPE,
    decode_base64_image,
    dump_json,
    encode_base64_image,
    parse_request_json,
)


class JsonCodec(VendorCodec):
    """A codec whose protocol sends all images in one JSON request (TF-Serving, v2).

    Attributes:
        malformed_json_error: what a sidecar body that is not JSON gets: the status the protocol's
            servers answer, so that clients that branch on it see no difference (400 unless overridden).
    """

    malformed_json_error: ClassVar[type[BadRequest | InvalidShape]] = BadRequest

    @abc.abstractmethod
    def encode_request(self, images: list[bytes], request_id: str) -> dict[str, Any]:
        """The JSON request body for `images`.

        Raises:
            ValueError: as `VendorCodec.encode_predict`.
        """

    def encode_predict(self, images: list[bytes], request_id: str, content_type: str) -> list[WireRequest]:
        """See `VendorCodec.encode_predict`: one request for all images; `content_type` is unused
        (the images travel as base64 in JSON)."""
        return [WireRequest(dump_json(self.encode_request(images, request_id)), JSON_CONTENT_TYPE, len(images))]

    @abc.abstractmethod
    def read_image_fields(self, payload: dict[str, Any]) -> list[Any]:
        """The base64 values of the images in a client's JSON request, in order.

        Raises:
            InvalidShape: the request is not the documented shape, or holds no image.
        """

    @abc.abstractmethod
    def write_image_fields(self, payload: dict[str, Any], encoded: list[str]) -> None:
        """Put base64 images where `read_image_fields` found them (same count; mutates payload)."""

    @abc.abstractmethod
    def without_images(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A client's JSON request without its image fields: what is forwarded unpurified.

        Raises:
            InvalidShape: as `read_image_fields`.
            BadRequest: a second field that can hold images (the protocol's codec says which).
        """

    def extract_images(self, body: VendorBody) -> list[bytes]:
        """See `VendorCodec.extract_images`; also refuses content beside the images that could hold one
        (`side_content`)."""
        payload = self.parse_json_body(body)
        fields = self.read_image_fields(payload)
        check_side_content(self.without_images(payload))
        return [decode_base64_image(value, f"image {i} of the request") for i, value in enumerate(fields)]

    def replace_images(
        self,
        body: VendorBody,
        images: list[bytes],
        *,
        image_content_type: str = "image/png",
    ) -> VendorBody:
        """See `VendorCodec.replace_images`: only the image values change; all other JSON is kept."""
        payload = self.parse_json_body(body)
        count = len(self.read_image_fields(payload))
        if len(images) != count:
            raise ValueError(f"the request holds {count} images, got {len(images)} replacements")
        self.write_image_fields(payload, [encode_base64_image(image) for image in images])
        return VendorBody(dump_json(payload), JSON_CONTENT_TYPE)

    def parse_json_body(self, body: VendorBody) -> dict[str, Any]:
        """A client's JSON request as an object (see `parse_request_json`).

        Raises:
            BadRequest: the body is framed by Inference-Header-Content-Length, which only v2 reads.
        """
        if body.json_length is not None:
            raise BadRequest(
                f"{INFERENCE_HEADER_LENGTH} (the binary tensor extension) belongs to the v2 "
                f"protocol; send {self.protocol.value} requests as plain JSON"
            )
        return parse_request_json(body.content, body.content_type, malformed=self.malformed_json_error)
