"""Open Inference Protocol v2 (KServe, Triton) REST `infer` with the images as a BYTES tensor."""

from __future__ import annotations

import math
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from service.errors import InvalidShape
from service.upstream.base import JsonUpstream, UpstreamProtocol
from service.upstream.client import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy
from service.upstream.wire import describe_json, encode_image

_BYTES = "BYTES"


class V2Upstream(JsonUpstream):
    """`POST {base_url}/v2/models/{model}/infer`; image i's prediction is row i of every output.

    Request:  `{"id", "inputs": [{"name": input_name, "shape": [N], "datatype": "BYTES",
    "data": [<base64>, ...]}]}`. Response: `{"outputs": [{"name", "shape": [N, ...], "datatype",
    "data"}, ...]}` becomes N objects `{output name: row i}`, e.g. `{"probabilities": [...],
    "label": 3}`; a row of a shape-[N] output is a scalar.
    """

    protocol: ClassVar[UpstreamProtocol] = UpstreamProtocol.V2

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        model_name: str,
        input_name: str = "image",
        retry: RetryPolicy = RetryPolicy(),
        total_timeout_s: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """Bind the adapter to a vendor model.

        Args:
            client: the shared client; not closed here.
            base_url: the vendor's root URL.
            model_name: the served model's name, as in /v2/models/{model_name}.
            input_name: the name of the model's BYTES image input.
            retry: resends after failures to connect.
            total_timeout_s: wall-clock bound on one call with its retries.
            max_response_bytes: limit on a vendor answer's decoded body.

        Raises:
            ValueError: a bad base URL or timeout, or an empty model or input name.
        """
        super().__init__(
            client, base_url, retry=retry, total_timeout_s=total_timeout_s, max_response_bytes=max_response_bytes
        )
        if not model_name:
            raise ValueError("the v2 upstream needs a model name (the {model} in /v2/models/{model}/infer)")
        if not input_name:
            raise ValueError("the v2 upstream needs the name of the model's BYTES image input, e.g. 'image'")
        self._model_name = model_name
        self._input_name = input_name

    @property
    def predict_path(self) -> str:
        """`/v2/models/{model}/infer`, the model name percent-encoded."""
        return f"/v2/models/{quote(self._model_name, safe='')}/infer"

    def encode_request(self, images: list[bytes], request_id: str) -> dict[str, Any]:
        """One BYTES input of shape [N] holding the base64 images; `id` is the request id."""
        return {
            "id": request_id,
            "inputs": [
                {
                    "name": self._input_name,
                    "shape": [len(images)],
                    "datatype": _BYTES,
                    "data": [encode_image(image) for image in images],
                }
            ],
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
            for prediction, row in zip(predictions, tensor_rows(output.get("data"), shape, f"outputs[{j}]")):
                prediction[name] = row
        return predictions

    def read_image_fields(self, payload: dict[str, Any]) -> list[Any]:
        """The elements of the BYTES image input, row-major; other inputs and keys are kept."""
        return _input_elements(self._image_input(payload))

    def write_image_fields(self, payload: dict[str, Any], encoded: list[str]) -> None:
        """Replace the image input's data, flat (row-major) under its original shape."""
        self._image_input(payload)["data"] = encoded

    def _image_input(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The request's one BYTES input (the one named `input_name` when there are several)."""
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(item, dict) for item in inputs):
            raise InvalidShape('expected {"inputs": [{"name", "shape", "datatype": "BYTES", "data"}, ...]}')
        candidates = [item for item in inputs if item.get("datatype") == _BYTES]
        if len(candidates) > 1:
            candidates = [item for item in candidates if item.get("name") == self._input_name]
        if len(candidates) != 1:
            raise InvalidShape(
                f"expected exactly one BYTES input holding the base64 images (or one named "
                f"{self._input_name!r} among several), found {len(candidates)}"
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
