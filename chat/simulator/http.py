"""HTTP/1.1 for the simulator, on asyncio streams: reading requests, framing responses, and
noticing a client that leaves while an answer is being written.

No web framework: the point is byte-level control of the stream, of dropped connections and of
disconnect detection. Errors use OpenAI's envelope ``{"error": {"message", "type", "param",
"code"}}``.

Protocol sources:
- RFC 9112 (HTTP/1.1): §7.1 chunked transfer coding, §9.3 persistent connections, §6.3
  close-delimited bodies.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
_JSON_HEADERS = [("content-type", "application/json")]


class RequestError(Exception):
    """A request refused before any answer: ``status`` (400 unless said) and ``envelope``, the
    OpenAI error object to send as its JSON body."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, *, status: int = 400
    ) -> None:
        super().__init__(message)
        self.status = status
        self.envelope = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        }


def dumps(obj: Any) -> bytes:
    """JSON as the simulator writes it on the wire: compact, UTF-8, non-ASCII unescaped."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Request:
    """One parsed request: ``path`` without its query, header names lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class Conn:
    """One client connection: a read buffer, and a watcher that notices the client leaving.

    While a generation is in flight nobody else reads the socket, so ``watch()`` parks a read on
    it: b"" (FIN) or an error (RST) means the client left, and the generating task is cancelled
    at whatever it is awaiting (pacing sleep, TTFT wait, drain) within one loop iteration.
    Bytes that arrive instead (a pipelined request) are kept for the next request.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = bytearray()
        self.chunked = True  # RFC 9112 §7.1: chunked only to HTTP/1.1 clients
        self.lost_at: float | None = None  # time.monotonic() when the client was seen leaving
        self._watcher: asyncio.Task[bytes] | None = None
        self._victim: asyncio.Task[Any] | None = None

    async def read_until(self, sep: bytes, limit: int) -> bytes:
        start = 0
        while (i := self.buf.find(sep, start)) < 0:
            if len(self.buf) > limit:
                raise RequestError("Request head too large.", status=431)
            start = max(0, len(self.buf) - len(sep) + 1)
            await self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def _fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.buf += data

    def send(self, data: bytes) -> None:
        """Write one chunk (RFC 9112 §7.1: hex size CRLF data CRLF), or raw bytes for HTTP/1.0."""
        if self.writer.transport.is_closing():
            raise ConnectionResetError("client went away")
        if not data:
            return  # an empty chunk would be the last-chunk and end the body early
        self.writer.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def end(self) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")  # last-chunk, empty trailer section

    def watch(self) -> None:
        self._victim = asyncio.current_task()
        self._arm()

    async def unwatch(self) -> None:
        task, self._watcher, self._victim = self._watcher, None, None
        if task is None:
            return
        # A cancelled StreamReader.read() loses no data, but it must have finished before the
        # next read (one reader at a time); wait() also lets an outer cancellation through.
        task.cancel()
        await asyncio.wait([task])
        self._take(task)  # bytes it got before the cancel, in order, ahead of any later read

    def _arm(self) -> None:
        self._watcher = asyncio.ensure_future(self.reader.read(65536))
        self._watcher.add_done_callback(self._on_read)

    def _on_read(self, task: asyncio.Task[bytes]) -> None:
        if task is not self._watcher:
            return  # unwatch() already handled it
        self._watcher = None
        self._take(task)
        if self._victim is not None and self.lost_at is None:
            self._arm()

    def _take(self, task: asyncio.Task[bytes]) -> None:
        if task.cancelled():
            return
        if task.exception() is None and (data := task.result()):
            self.buf += data
            return
        self.lost_at = time.monotonic()
        if self._victim is not None:
            self._victim.cancel()


def hang_up(conn: Conn, *, reset: bool) -> None:
    """Close a connection without answering: with a RST (SO_LINGER 0, as a crashing or
    overloaded server's kernel does) or a FIN."""
    sock = conn.writer.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.writer.close()


def response_head(
    status: int,
    headers: list[tuple[str, str]],
    *,
    keep_alive: bool,
    length: int | None,
    chunked: bool,
) -> bytes:
    """A response's status line and headers, up to the blank line; framed by ``length``
    (Content-Length), else chunked coding when ``chunked``, else by closing the connection."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "server: slipstream-simulator"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is not None:
        lines.append(f"content-length: {length}")
    elif chunked:
        lines.append("transfer-encoding: chunked")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_request(conn: Conn) -> Request:
    """Read one request, body included; ``RequestError`` (400, 413, 431) for one we refuse,
    ``asyncio.IncompleteReadError`` when the client leaves. Sets ``conn.chunked`` from its
    HTTP version."""
    head = (await conn.read_until(b"\r\n\r\n", _MAX_HEAD)).lstrip(b"\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise RequestError("Malformed HTTP request line.")
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise RequestError("Malformed HTTP header line.")
        headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":  # curl, for bodies > 1 KiB
        conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(conn)
    else:
        size = headers.get("content-length", "0")
        if not size.isdigit():
            raise RequestError("Bad Content-Length.")
        if int(size) > _MAX_BODY:
            raise RequestError("Request body too large.", status=413)
        body = await conn.read_exactly(int(size))
    conn.chunked = version == "HTTP/1.1"
    keep_alive = conn.chunked and "close" not in headers.get("connection", "").lower()
    return Request(method, target.split("?", 1)[0], headers, body, keep_alive)


async def _read_chunked(conn: Conn) -> bytes:
    body = bytearray()
    while True:
        size_line = await conn.read_until(b"\r\n", 1024)
        try:
            size = int(size_line.split(b";", 1)[0], 16)  # chunk extensions are ignored
        except ValueError:
            raise RequestError("Bad chunk size.") from None
        if size == 0:
            while await conn.read_until(b"\r\n", _MAX_HEAD):
                pass  # trailer fields, up to the empty line
            return bytes(body)
        body += await conn.read_exactly(size + 2)
        del body[-2:]
        if len(body) > _MAX_BODY:
            raise RequestError("Request body too large.", status=413)


async def send_json(
    conn: Conn,
    status: int,
    obj: Any,
    keep_alive: bool = True,
    *,
    body: bytes | None = None,
) -> None:
    """Answer ``obj`` as JSON with a Content-Length (or ``body``, bytes already encoded)."""
    data = dumps(obj) if body is None else body
    head = response_head(
        status, _JSON_HEADERS, keep_alive=keep_alive, length=len(data), chunked=conn.chunked
    )
    conn.writer.write(head + data)
    await conn.writer.drain()
