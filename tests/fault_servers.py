"""Loopback servers for tests: an ASGI app (or an already configured uvicorn server) under uvicorn
(`service.loopback`, re-exported here), or a raw asyncio TCP handler, each in its own thread on a
free 127.0.0.1 port, plus small fault upstreams (slow, fixed status or body, reset, refused, a
scripted byte reply, an endless body) for testing HTTP clients against real sockets.

Usage:
    with serve_asgi(StaticApp(500, b"boom")) as base_url: ...
    with serve_tcp(reset_after_head) as base_url: ...
    with refused_port() as base_url: ...
    with serve_tcp(vendor := ScriptedTcp(b"garbage\r\n\r\n")) as base_url: ... vendor.connections
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from service.loopback import bound_socket, serve_asgi, serve_uvicorn, url_of, wait_started

__all__ = [
    "EndlessBody",
    "HangingApp",
    "RecordedRequest",
    "ScriptedTcp",
    "StaticApp",
    "http_response_head",
    "read_request",
    "read_request_head",
    "refused_port",
    "request_header",
    "reset_after_head",
    "reset_connection",
    "serve_asgi",
    "serve_tcp",
    "serve_uvicorn",
]

TcpHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@contextlib.contextmanager
def serve_tcp(handler: TcpHandler, *, startup_timeout_s: float = 10.0) -> Iterator[str]:
    """Run a raw asyncio TCP handler on a free loopback port in a background thread.

    Args:
        handler: called with (reader, writer) for every connection; it speaks HTTP by hand,
            which is how a test misbehaves in ways a real server framework would not allow.
        startup_timeout_s: seconds to wait for the listener.

    Yields:
        The base URL. On exit, handlers still running are cancelled and the loop is closed.
    """
    sock = bound_socket()
    loop = asyncio.new_event_loop()
    listening = threading.Event()
    stop = asyncio.Event()

    async def closing_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            # Close every connection before the loop closes, also for handlers cancelled at exit.
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def main() -> None:
        server = await asyncio.start_server(closing_handler, sock=sock)
        listening.set()
        async with server:
            await stop.wait()
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True, name="tcp-server")
    thread.start()
    try:
        wait_started(listening.is_set, thread, startup_timeout_s, "tcp server")
        yield url_of(sock)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()
        sock.close()


@contextlib.contextmanager
def refused_port() -> Iterator[str]:
    """A loopback URL where connections are refused: the port is bound (so no one else takes it)
    but never listens, so the kernel answers every SYN with RST.

    Yields:
        The base URL.
    """
    sock = bound_socket()
    try:
        yield url_of(sock)
    finally:
        sock.close()


# --- fault upstreams -------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a server received it."""

    method: str
    path: str  # with the query string, if any
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class StaticApp:
    """ASGI app that answers every request with one fixed response, optionally after a delay,
    and records the requests it received (a slow app gives up early when the client hangs up).

    Attributes:
        status: the HTTP status to answer.
        body: the body to answer.
        content_type: its Content-Type.
        delay_s: seconds to wait before answering.
        headers: further response headers, e.g. (("retry-after", "7"),).
        requests: what arrived, in order (appended from the server thread).
    """

    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    requests: list[RecordedRequest] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to start
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        self.requests.append(
            RecordedRequest(
                method=scope["method"],
                path=scope["path"] + (f"?{query}" if query else ""),
                headers={name.decode().lower(): value.decode() for name, value in scope["headers"]},
                body=body,
            )
        )
        if self.delay_s and await _client_left_within(receive, self.delay_s):
            return
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", self.content_type.encode())]
                + [(name.encode(), value.encode()) for name, value in self.headers],
            }
        )
        await send({"type": "http.response.body", "body": self.body})


@dataclass
class HangingApp:
    """ASGI app that never answers: it records each request's path, then waits for the caller to hang up
    (a vendor whose call only the caller can end).

    Attributes:
        arrived: the paths of the requests received, in order (appended from the server thread).
        hung_up: the paths of the requests whose caller has hung up since.
    """

    arrived: list[str] = field(default_factory=list)
    hung_up: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.arrived.append(scope["path"])
        if await _client_left_within(receive, 600.0):  # far past any test: only the caller ends the wait
            self.hung_up.append(scope["path"])


async def _client_left_within(receive: Receive, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the client to disconnect; True if it did."""
    try:
        async with asyncio.timeout(timeout_s):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    """Read an HTTP/1.1 request head (up to the blank line) from a raw connection."""
    return await reader.readuntil(b"\r\n\r\n")


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def reset_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """TCP handler: read the request head, then reset the connection without answering."""
    await read_request_head(reader)
    reset_connection(writer)


def http_response_head(
    status: int,
    content_length: int | None,
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The bytes of an HTTP/1.1 response head: a fixed Content-Length, or chunked when None.

    It says `connection: close` because every hand-built server here closes after one answer:
    without it the client may reuse the connection for its next request before the FIN arrives,
    and that request then meets a reset (a race a loaded machine loses now and then).
    """
    framing = ("transfer-encoding", "chunked") if content_length is None else ("content-length", str(content_length))
    lines = [f"HTTP/1.1 {status} X", f"content-type: {content_type}", "{}: {}".format(*framing), "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read a whole HTTP/1.1 request with a Content-Length body; return its head.

    Reading the body too matters: closing a socket with unread bytes sends RST, not FIN.
    """
    head = await read_request_head(reader)
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            await reader.readexactly(int(value))
    return head


def request_header(head: bytes, name: str) -> str | None:
    """One header's value from a raw request head (None when absent)."""
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@dataclass
class ScriptedTcp:
    """TCP handler: count the connection, read the whole request, write `reply` verbatim (which may
    be nothing, a garbage status line, a 101, a hand-built response ...), then close with a FIN.

    Attributes:
        reply: the bytes to answer with.
        connections: connections accepted so far (each attempt of a client is one).
        heads: the request heads received, in order.
    """

    reply: bytes = b""
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.heads.append(await read_request(reader))
        if self.reply:
            writer.write(self.reply)
            await writer.drain()


@dataclass
class EndlessBody:
    """TCP handler: answer 200 with a chunked body of `chunk_bytes` chunks that never ends (until
    the client hangs up or `limit_bytes` went out), counting what was sent.

    Attributes:
        chunk_bytes: bytes per chunk.
        limit_bytes: stop after this many (a safety net for a client that never gives up).
        sent_bytes: body bytes written so far.
    """

    chunk_bytes: int = 64 * 1024
    limit_bytes: int = 256 * 1024 * 1024
    sent_bytes: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(http_response_head(200, None))
        chunk = b"%x\r\n%s\r\n" % (self.chunk_bytes, b"7" * self.chunk_bytes)
        try:
            while self.sent_bytes < self.limit_bytes:
                writer.write(chunk)
                await writer.drain()
                self.sent_bytes += self.chunk_bytes
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            return  # the client hung up: what it was meant to do
