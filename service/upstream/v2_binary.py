"""The Open Inference Protocol's binary tensor data extension, as pure functions on bytes.

A binary request is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
data of every input whose `parameters.binary_data_size` is set, in input order, without gaps. A
BYTES tensor's raw data is its elements in row-major order, each a 4-byte little-endian length
followed by that many bytes (Triton's and KServe's `serialize_byte_tensor`).

Every problem here is the client's framing, so each raises `BadRequest` (400) with the offset or
size that is wrong; nothing is trusted before it is checked against the body's real length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from service.errors import BadRequest

INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA_SIZE = "binary_data_size"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class BinaryRequest:
    """A binary v2 request split into its JSON header and each input's raw data.

    Attributes:
        header: the decoded JSON header (an object; not checked beyond the binary parameters).
        raw: input index → that input's raw bytes, for the inputs with `binary_data_size`.
    """

    header: dict[str, Any]
    raw: dict[int, bytes]


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """Read `Inference-Header-Content-Length`.

    Args:
        value: the header's value, or None when absent.
        body_size: the request body's length in bytes.

    Returns:
        The JSON header's length in bytes, or None for a request without the header (plain JSON).

    Raises:
        BadRequest: the value is not a whole number of bytes within the body.
    """
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise BadRequest(f"{INFERENCE_HEADER_LENGTH} must be a whole number of bytes, got {value!r}")
    length = int(text)
    if length > body_size:
        raise BadRequest(f"{INFERENCE_HEADER_LENGTH} is {length} but the body holds only {body_size} bytes")
    return length


def binary_sizes(header: dict[str, Any]) -> dict[int, int]:
    """Each binary input's `binary_data_size`, by input index.

    Raises:
        BadRequest: a size that is not a non-negative integer, or an input with both `data` and a size.
    """
    sizes: dict[int, int] = {}
    inputs = header.get("inputs")
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or BINARY_DATA_SIZE not in parameters:
            continue
        size = parameters[BINARY_DATA_SIZE]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"inputs[{i}].parameters.{BINARY_DATA_SIZE} must be a non-negative integer, got {size!r}")
        if "data" in tensor:
            raise BadRequest(f"inputs[{i}] has both 'data' and parameters.{BINARY_DATA_SIZE}; send one of them")
        sizes[i] = size
    return sizes


def split_binary_request(header: dict[str, Any], tail: bytes) -> BinaryRequest:
    """Cut the bytes after the JSON header into the binary inputs' raw data.

    Args:
        header: the decoded JSON header.
        tail: the body after the header.

    Returns:
        The header and each binary input's raw bytes.

    Raises:
        BadRequest: see `binary_sizes`; or the sizes do not add up to the bytes after the header.
    """
    sizes = binary_sizes(header)
    if sum(sizes.values()) != len(tail):
        raise BadRequest(
            f"the inputs' {BINARY_DATA_SIZE} add up to {sum(sizes.values())} bytes, but "
            f"{len(tail)} bytes follow the {INFERENCE_HEADER_LENGTH} JSON header"
        )
    raw: dict[int, bytes] = {}
    offset = 0
    for index, size in sizes.items():  # input order: dicts keep insertion order
        raw[index] = tail[offset : offset + size]
        offset += size
    return BinaryRequest(header, raw)


def join_binary_request(header_json: bytes, header: dict[str, Any], raw: dict[int, bytes]) -> bytes:
    """The body for a JSON header and the binary inputs' raw data (their sizes must already be in `header`).

    Args:
        header_json: `header` serialized (its length is the new `Inference-Header-Content-Length`).
        header: the decoded header, for the order of the binary inputs.
        raw: input index → raw bytes, one entry per input with `binary_data_size`.

    Raises:
        ValueError: `raw` does not match the header's binary inputs (a bug in the caller).
    """
    sizes = binary_sizes(header)
    if sizes != {index: len(data) for index, data in raw.items()}:
        raise ValueError(f"binary inputs {sorted(raw)} do not match the header's sizes {sizes}")
    return header_json + b"".join(raw[index] for index in sizes)


def decode_bytes_elements(raw: bytes, where: str) -> list[bytes]:
    """Split a BYTES tensor's raw data into its elements (4-byte little-endian length, then the bytes).

    Args:
        raw: the tensor's raw data.
        where: the tensor's location, for the message.

    Returns:
        The elements in row-major order.

    Raises:
        BadRequest: a length prefix is cut off, or claims more bytes than remain.
    """
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(raw) - offset < _LENGTH.size:
            raise BadRequest(f"{where}: element {len(elements)} at byte {offset} has a cut-off 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if length > len(raw) - offset:
            raise BadRequest(
                f"{where}: element {len(elements)} claims {length} bytes but only {len(raw) - offset} remain"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def encode_bytes_elements(elements: list[bytes]) -> bytes:
    """A BYTES tensor's raw data: each element as a 4-byte little-endian length and its bytes."""
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)
