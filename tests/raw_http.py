"""Requests as bytes: raw HTTP/1.1 over a socket, for what a well-behaved client never sends (dot
segments, trickled bodies, hang-ups mid-body), and the sidecar bodies (TF-Serving, v2) of images."""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx

from tests.gateway_servers import error_details


def address(base_url: str) -> tuple[str, int]:
    """The gateway's host and port."""
    url = httpx.URL(base_url)
    assert url.host and url.port
    return url.host, url.port


def request_head(
    method: str,
    path: str,
    *,
    content_type: str = "application/json",
    content_length: int | None = None,
    extra: str = "",
) -> bytes:
    """An HTTP/1.1 request head with `path` exactly as given (no client normalises it)."""
    length = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: {content_type}\r\n{length}{extra}\r\n"
    ).encode()


def chunked_framing(body: bytes, chunk_bytes: int = 64 * 1024) -> bytes:
    """`body` in HTTP/1.1 chunked framing, terminating chunk included."""
    pieces = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    return b"".join(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces) + b"0\r\n\r\n"


def post_head(path: str, *, length: int | None, extra: str = "") -> bytes:
    """A POST head declaring `length` bytes, or a chunked body where `length` is None."""
    chunked = "Transfer-Encoding: chunked\r\n" if length is None else ""
    return request_head("POST", path, content_length=length, extra=chunked + extra)


def until_closed(sock: socket.socket, *, timeout_s: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset fails the test: the answer
    could have been lost to it). Raises TimeoutError if it is still open after `timeout_s`."""
    sock.settimeout(timeout_s)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def trickle_until_closed(sock: socket.socket, byte: bytes, *, give_up_s: float = 60.0) -> tuple[bool, bytes]:
    """Send `byte` whenever nothing came back for 0.5 s, until the server closes the connection or
    `give_up_s` passes. Whether it closed, and what came back."""
    received = b""
    sock.settimeout(0.5)
    give_up = time.monotonic() + give_up_s
    while time.monotonic() < give_up:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:  # nothing in 0.5 s: one more byte
            try:
                sock.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                return True, received
            continue
        except ConnectionResetError:  # cut off with a byte of ours unread
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def raw_post(
    base_url: str, path: str, body: bytes, *, timeout_s: float = 30.0, extra_headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """POST `body` to `path` verbatim over a fresh socket; the status, headers and body."""
    with socket.create_connection(address(base_url), timeout=timeout_s) as sock:
        sock.sendall(request_head("POST", path, content_length=len(body), extra=extra_headers) + body)
        return _read_response(sock)


def json_error(body: bytes, path: str) -> dict[str, str]:
    """The error's fields, in the shape `path` answers (the protocols' on /v1/ and /v2/)."""
    error = error_details(json.loads(body), path)
    assert error["code"] and error["message"] and error["request_id"], error
    return error


def b64(data: bytes) -> str:
    """Base64 text of `data`."""
    return base64.b64encode(data).decode()


def v2_body(*images: bytes) -> bytes:
    """A v2 inference request with one BYTES input of the images."""
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "data": [b64(image) for image in images],
                }
            ]
        }
    ).encode()


def tfserving_body(*images: bytes) -> bytes:
    """A TF-Serving request of the images, `{"instances": [{"b64": ...}]}`."""
    return json.dumps({"instances": [{"b64": b64(image)} for image in images]}).encode()
