"""Open Inference Protocol v2 (KServe, Triton) REST `infer`: images as a BYTES tensor (or pixels).

Sidecar requests may use the binary tensor data extension (`v2_binary`): the image input's
elements are then length-prefixed bytes after the JSON header, each either the image itself or its
base64 text (KServe turns binary BYTES into UTF-8 strings, so its clients send base64); each
purified image goes back in the form its original came in.

A sidecar request holds exactly one BYTES input, the images; a second one is refused (400), as it
could carry an image the gateway did not purify. Other inputs (numeric tensors), `parameters`,
`outputs` and `id` pass unchanged within `side_content`'s bounds.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, ClassVar
from urllib.parse import quote

from service.errors import BadRequest, InvalidShape
from service.upstream.codec import UpstreamProtocol, VendorBody
from service.upstream.json_codec import JsonCodec
from service.upstream.side_content import check_side_bytes, check_side_content
from service.upstream.v2_binary import (
    BINARY_DATA_SIZE,
    BinaryRequest,
    decode_bytes_elements,
    encode_bytes_elements,
    join_binary_request,
    split_binary_request,
)
from service.upstream.v2_input import TensorDatatype, V2Input, pixel_tensor
from service.upstream.wire import describe_json, dump_json, encode_base64_image

_BYTES = TensorDatatype.BYTES.value


class V2Codec(JsonCodec):
    """`POST {base_url}/v2/models/{model}/infer`; image i's prediction is row i of every output.

    Request:  `{"id", "inputs": [{"name": input_name, "shape": [N], "datatype": "BYTES",
    "data": [<base64>, ...]}]}`, or for a pixel input (`V2Input`) `"shape": [N, *shape]` with
    FP32 or UINT8 data. Response: `{"outputs": [{"name", "shape": [N, ...], "datatype", "data"},
    ...]}` becomes N objects `{output name: row i}`, e.g. `{"probabilities": [...], "label": 3}`;
    a row of a shape-[N] output is a scalar. Sidecar requests carry encoded images (BYTES).
    """

    protocol: ClassVar[UpstreamProtocol] = UpstreamProtocol.V2
    # KServe's ModelServer answers a JSON body that is not JSON with 422 (FastAPI validates the body
    # before the handler), so do we; a binary request's header that is not JSON is a 400, as there.
    malformed_json_error: ClassVar[type[BadRequest | InvalidShape]] = InvalidShape

    def __init__(self, model_name: str, image_input: V2Input | None = None) -> None:
        """Name the vendor's model and its image input.

        Args:
            model_name: the served model's name, as in /v2/models/{model_name}.
            image_input: the model's image input: its name, and encoded images or pixels (default: BYTES "image").

        Raises:
            ValueError: an empty model name.
        """
        if not model_name:
            raise ValueError("the v2 upstream needs a model name (the {model} in /v2/models/{model}/infer)")
        self._model_name = model_name
        self._image_input = image_input or V2Input()

    @property
    def predict_path(self) -> str:
        """`/v2/models/{model}/infer`, the model name percent-encoded."""
        return f"/v2/models/{quote(self._model_name, safe='')}/infer"

    def encode_request(self, images: list[bytes], request_id: str) -> dict[str, Any]:
        """One input: BYTES of shape [N] holding the base64 images, or the pixels; `id` is the request id.

        Raises:
            ValueError: an image cannot be decoded into pixels (a pixel input only).
        """
        spec = self._image_input
        if spec.datatype is TensorDatatype.BYTES:
            shape: list[int] = [len(images)]
            data: list[Any] = [encode_base64_image(image) for image in images]
        else:
            shape, data = pixel_tensor(images, spec)
        return {
            "id": request_id,
            "inputs": [{"name": spec.name, "shape": shape, "datatype": spec.datatype.value, "data": data}],
        }

    def decode_predictions(self, payload: Any, count: int) -> list[Any]:
        """Split every output tensor along its first axis: image i gets `{name: row i}`."""
        outputs = payload.get("outputs") if isinstance(payload, dict) else None
        if not isinstance(outputs, list) or not outputs:
            expected = '{"outputs": [{"name", "shape", "datatype", "data"}, ...]}'
            raise ValueError(f"expected {expected}, got {describe_json(payload)}")
        predictions: list[dict[str, Any]] = [{} for _ in range(count)]
        names: set[str] = set()
        for j, output in enumerate(outputs):
            name = output.get("name") if isinstance(output, dict) else None
            if not isinstance(name, str) or name in names:
                raise ValueError(f"outputs[{j}] needs a string name used once, got {describe_json(output)}")
            names.add(name)
            shape = tensor_shape(output.get("shape"), f"outputs[{j}].shape")
            if shape[:1] != [count]:
                raise ValueError(f"outputs[{j}].shape {shape} must start with the batch size {count}")
            for prediction, row in zip(
                predictions, tensor_rows(output.get("data"), shape, f"outputs[{j}]"), strict=True
            ):
                prediction[name] = row
        return predictions

    def read_image_fields(self, payload: dict[str, Any]) -> list[Any]:
        """The elements of the BYTES image input, row-major; other inputs and keys are kept."""
        index = self._image_index(payload)  # first: it checks that "inputs" is a list of objects
        return _input_elements(payload["inputs"][index])

    def write_image_fields(self, payload: dict[str, Any], encoded: list[str]) -> None:
        """Replace the image input's data, flat (row-major) under its original shape."""
        index = self._image_index(payload)
        payload["inputs"][index]["data"] = encoded

    def without_images(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The request with the image input's data taken out (its name, shape and parameters stay)."""
        index = self._image_index(payload)
        inputs = [
            {key: value for key, value in item.items() if key != "data"} if i == index else item
            for i, item in enumerate(payload["inputs"])
        ]
        return {**payload, "inputs": inputs}

    def extract_images(self, body: VendorBody) -> list[bytes]:
        """See `VendorCodec.extract_images`; also reads binary requests (Inference-Header-Content-Length),
        whose header and other inputs' binary data are bounded as `side_content` says."""
        if body.json_length is None:
            return super().extract_images(body)
        request, index = self._split(body)
        check_side_content(self.without_images(request.header), "the JSON header")
        for i, raw in request.raw.items():
            if i != index:
                check_side_bytes(raw, f"inputs[{i}] (binary)")
        if index not in request.raw:  # the images are in the JSON header, as base64 text
            return super().extract_images(VendorBody(body.content[: body.json_length], "application/json"))
        return [image for image, _ in self._binary_images(request, index)]

    def replace_images(
        self,
        body: VendorBody,
        images: list[bytes],
        *,
        image_content_type: str = "image/png",
    ) -> VendorBody:
        """See `VendorCodec.replace_images`: a binary request stays binary, with its header length updated."""
        if body.json_length is None:
            return super().replace_images(body, images, image_content_type=image_content_type)
        request, index = self._split(body)
        header, raw = request.header, dict(request.raw)
        if index in raw:
            originals = self._binary_images(request, index)
            if len(images) != len(originals):
                raise ValueError(f"the request holds {len(originals)} images, got {len(images)} replacements")
            raw[index] = encode_bytes_elements(
                [
                    base64.b64encode(new) if was_base64 else new
                    for new, (_, was_base64) in zip(images, originals, strict=True)
                ]
            )
            header["inputs"][index]["parameters"][BINARY_DATA_SIZE] = len(raw[index])
        else:
            count = len(self.read_image_fields(header))
            if len(images) != count:
                raise ValueError(f"the request holds {count} images, got {len(images)} replacements")
            self.write_image_fields(header, [encode_base64_image(image) for image in images])
        header_json = dump_json(header)
        return VendorBody(join_binary_request(header_json, header, raw), body.content_type, len(header_json))

    def _split(self, body: VendorBody) -> tuple[BinaryRequest, int]:
        """A binary request's header and raw inputs, and the index of the image input."""
        assert body.json_length is not None
        try:
            header = json.loads(body.content[: body.json_length])
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, or an int over 4300 digits
            raise BadRequest(
                f"the first {body.json_length} bytes (Inference-Header-Content-Length) are not a "
                f"valid JSON header: {exc}"
            ) from exc
        if not isinstance(header, dict):
            raise InvalidShape(f"the binary request's JSON header must be an object, got {type(header).__name__}")
        index = self._image_index(header)
        return split_binary_request(header, body.content[body.json_length :]), index

    def _binary_images(self, request: BinaryRequest, index: int) -> list[tuple[bytes, bool]]:
        """The image input's elements from its raw data: (image, whether it came as base64 text)."""
        where = f"inputs[{index}] (binary)"
        shape = request.header["inputs"][index].get("shape")
        try:
            shape = tensor_shape(shape, f"{where}.shape")
        except ValueError as exc:
            raise InvalidShape(str(exc)) from exc
        elements = decode_bytes_elements(request.raw[index], where)
        if len(elements) != math.prod(shape):
            raise InvalidShape(f"{where} holds {len(elements)} elements, but shape {shape} needs {math.prod(shape)}")
        if not elements:
            raise InvalidShape("the image input holds no images; send at least one image")
        return [_binary_image(element, f"{where} element {i}") for i, element in enumerate(elements)]

    def _image_index(self, payload: dict[str, Any]) -> int:
        """The index of the request's one BYTES input, which holds the images.

        Raises:
            InvalidShape: no list of input objects, or no BYTES input.
            BadRequest: several BYTES inputs: each could hold an image, and only one is purified.
        """
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(item, dict) for item in inputs):
            raise InvalidShape('expected {"inputs": [{"name", "shape", "datatype": "BYTES", "data"}, ...]}')
        candidates = [i for i, item in enumerate(inputs) if item.get("datatype") == _BYTES]
        if not candidates:
            raise InvalidShape("expected one BYTES input holding the images, found none")
        if len(candidates) > 1:
            names = ", ".join(repr(inputs[i].get("name")) for i in candidates)
            raise BadRequest(
                f"the request holds {len(candidates)} BYTES inputs ({names}); the gateway purifies one image "
                "input, and any other BYTES input could carry an unpurified image: send the images in one input"
            )
        return candidates[0]


def tensor_shape(shape: Any, where: str) -> list[int]:
    """Check a v2 tensor shape: a list of non-negative integers.

    Args:
        shape: the JSON value of a tensor's "shape".
        where: its location, for the message.

    Returns:
        The shape.

    Raises:
        ValueError: it is not a list of non-negative integers.
    """
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise ValueError(f"{where} must be a list of non-negative integers, got {shape!r}")
    return shape


def tensor_elements(data: Any, shape: list[int], where: str) -> list[Any]:
    """A v2 tensor's elements in row-major order, checked against its shape.

    Args:
        data: the JSON value of the tensor's "data" (flat or nested lists).
        shape: the tensor's shape.
        where: the tensor's location, for the message.

    Returns:
        The flat list of elements.

    Raises:
        ValueError: `data` is not a list, or its element count is not the product of `shape`.
    """
    if not isinstance(data, list):
        raise ValueError(f"{where}.data must be a list, got {describe_json(data)}")
    flat = _flatten(data)
    if len(flat) != math.prod(shape):
        needed = math.prod(shape)
        raise ValueError(f"{where}.data holds {len(flat)} elements, but shape {shape} needs {needed}")
    return flat


def tensor_rows(data: Any, shape: list[int], where: str) -> list[Any]:
    """Split a v2 tensor into its shape[0] rows, each nested as shape[1:] (a scalar for 1-D).

    Raises:
        ValueError: as `tensor_elements`, or `shape` has no dimension.
    """
    if not shape:
        raise ValueError(f"{where}.shape must have a batch dimension, got []")
    if 0 in shape[1:]:
        # Empty rows carry no prediction, and nesting them could cost time unbounded by the body.
        raise ValueError(f"{where}.shape {shape} has an empty dimension after the batch dimension")
    return _nest(tensor_elements(data, shape, where), shape)


def _flatten(data: list[Any]) -> list[Any]:
    # Iterative: a client controls the nesting depth, which must not hit the recursion limit.
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return list(flat)
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _binary_image(element: bytes, where: str) -> tuple[bytes, bool]:
    """One binary BYTES element as an image: its base64 text decoded, or the bytes themselves.

    Encoded images never pass as base64: every format's signature holds bytes outside its alphabet.

    Returns:
        The image and whether the element was base64 text.

    Raises:
        BadRequest: the element is empty.
    """
    if not element:
        raise BadRequest(f"{where} is an empty image")
    try:
        return base64.b64decode(element, validate=True), True
    except (binascii.Error, ValueError):
        return element, False


def _input_elements(image_input: dict[str, Any]) -> list[Any]:
    """The image input's elements (row-major), checked against its shape; at least one."""
    try:
        shape = tensor_shape(image_input.get("shape"), "the image input's shape")
        elements = tensor_elements(image_input.get("data"), shape, "the image input")
    except ValueError as exc:
        raise InvalidShape(str(exc)) from exc
    if not elements:
        raise InvalidShape("the image input holds no images; send at least one base64 image")
    return elements
