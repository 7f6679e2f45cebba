"""A lean HTTP/1.1 client for the relay's streaming upstream calls.

Every relayed token crosses this code once, so it is the relay's own (bench/profile_relay.py:
through httpx, httpcore and h11 a token's read cost more than the rest of its relay together:
an h11 event object, a parser state machine, two generator-based context managers and four
layers of async iterators per read). Everything else that talks to upstreams (non-streaming
calls, health probes) still uses httpx (``upstream.client_for``).

One POST with a JSON body, then the response body as it arrives, from a per-backend pool of
kept-alive connections (RFC 9112: status line and header fields, ``Transfer-Encoding:
chunked``, ``Content-Length`` or a body delimited by the connection's close). The number of
connections is bounded by the dispatcher, which admits at most the backend's concurrency.
Failures are raised as httpx's exception classes, so ``upstream.connection_error`` and
``UpstreamStream.chunks`` tell them apart exactly as for httpx: ``ConnectError`` (cause: the
OSError), ``ConnectTimeout``, ``ReadTimeout`` (no byte for ``read_timeout_s``), ``ReadError`` (a
reset), ``WriteError``, ``RemoteProtocolError`` (a malformed or cut-off response).
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from chat.relay.idle import IdleTimer
from chat.relay.transport import StreamProtocol
from chat.relay.types import BackendConfig

# RFC 9112 sets no limits; these are generous for an upstream's response head and chunk lines.
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE_BYTES = 4 * 1024
# An error response's body is read (for its message) up to this.
MAX_ERROR_BODY_BYTES = 1 << 20
# Idle connections kept per backend, and for how long (s): httpx's defaults.
MAX_IDLE = 64
KEEPALIVE_EXPIRY_S = 5.0


def _read_timed_out(waiter: asyncio.Future[Any]) -> None:
    waiter.set_exception(httpx.ReadTimeout("upstream sent nothing within the read timeout"))


class _Conn:
    """One TCP (or TLS) connection to an upstream."""

    __slots__ = ("idle", "idle_since", "protocol", "transport")

    def __init__(self, transport: asyncio.Transport, protocol: StreamProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        self.idle = IdleTimer(protocol.loop, _read_timed_out)
        self.idle_since = 0.0

    def usable(self) -> bool:
        """Open, and nothing unasked arrived while it idled (a close, stray bytes)."""
        p = self.protocol
        return not (p.eof or p.buffer or p.error is not None or self.transport.is_closing())

    async def recv(self, timeout_s: float) -> bytes:
        """The bytes that arrived, waiting up to ``timeout_s`` for some; b"" at the end."""
        p = self.protocol
        while not p.buffer:
            if p.error is not None:
                raise httpx.ReadError(f"upstream connection lost: {p.error}") from p.error
            if p.eof:
                return b""
            waiter = p.reader = p.loop.create_future()
            self.idle.waiting(waiter, timeout_s)
            await waiter
        return p.take(len(p.buffer))

    def close(self) -> None:
        self.idle.close()
        self.transport.close()


class Pool:
    """Kept-alive connections to one backend (per event loop: ``pool_for``)."""

    def __init__(self, backend: BackendConfig) -> None:
        url = urlsplit(backend.base_url)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise httpx.UnsupportedProtocol(f"cannot stream from {backend.base_url!r}")
        self.backend = backend
        self.host = url.hostname
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if self.tls else 80)
        self.host_header = host if default_port else f"{host}:{self.port}"
        # httpx's own trust store (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), as the backend's
        # non-streaming calls use: one backend, one answer to "is its certificate good".
        self.ssl_context = httpx.create_ssl_context() if self.tls else None
        self.idle: deque[_Conn] = deque()

    async def connect(self) -> _Conn:
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the likeliest to be alive
            if conn.usable() and time.monotonic() - conn.idle_since < KEEPALIVE_EXPIRY_S:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.backend.connect_timeout_s):
                transport, protocol = await loop.create_connection(
                    lambda: StreamProtocol(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection within the timeout: {exc}") from exc
        except OSError as exc:  # ssl.SSLError is one
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return _Conn(transport, protocol)

    def release(self, conn: _Conn) -> None:
        """Keep ``conn`` for the next call (its response was read to the end)."""
        if len(self.idle) >= MAX_IDLE or not conn.usable():
            conn.close()
            return
        conn.idle.close()
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[BackendConfig, Pool]] = (
    weakref.WeakKeyDictionary()
)


def pool_for(backend: BackendConfig) -> Pool:
    """The running loop's pool for ``backend``, made on first use."""
    per_loop = _pools.setdefault(asyncio.get_running_loop(), {})
    pool = per_loop.get(backend)
    if pool is None:
        pool = per_loop[backend] = Pool(backend)
    return pool


def close_pools() -> None:
    """Close the running loop's idle connections (tests, shutdown)."""
    for pool in _pools.pop(asyncio.get_running_loop(), {}).values():
        pool.close()


class Response:
    """A response head, and its body as it arrives (``aiter_bytes``); ``aclose`` always."""

    def __init__(
        self, pool: Pool, conn: _Conn, status: int, headers: dict[str, str], rest: bytes
    ) -> None:
        self.status_code = status
        self.headers = headers
        self._pool = pool
        self._conn: _Conn | None = conn
        self._read_timeout_s = pool.backend.read_timeout_s
        self._pending = rest
        self._complete = False
        transfer = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in transfer
        length = headers.get("content-length")
        self._remaining: int | None = None
        if not self._chunked and length is not None:
            if not length.strip().isdigit():
                raise httpx.RemoteProtocolError(f"bad Content-Length {length!r}")
            self._remaining = int(length)
        self._keep_alive = self._chunked or self._remaining is not None
        if "close" in headers.get("connection", "").lower():
            self._keep_alive = False
        self._decoder = _ChunkedDecoder() if self._chunked else None
        if status in (204, 304):  # no body, whatever the fields say (RFC 9112 §6.3)
            self._decoder, self._remaining = None, 0
        if self._remaining == 0:
            self._finish()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes, as they arrive. Raises httpx's ``ReadTimeout``, ``ReadError``,
        ``RemoteProtocolError`` (the body ended before its framing said)."""
        while not self._complete:
            data = await self._next()
            if data:
                yield data

    async def aread(self, limit: int = MAX_ERROR_BODY_BYTES) -> bytes:
        """The whole body (at most ``limit`` bytes are kept)."""
        parts, size = [], 0
        async for data in self.aiter_bytes():
            if size < limit:
                parts.append(data[: limit - size])
            size += len(data)
        return b"".join(parts)

    async def _next(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise httpx.ReadError("the response is closed")
        raw, self._pending = self._pending, b""
        if not raw:
            raw = await conn.recv(self._read_timeout_s)
            if not raw:
                return self._ended()
        if self._decoder is not None:
            data = self._decoder.feed(raw)
            if self._decoder.done:
                if self._decoder.leftover:
                    self._keep_alive = False  # bytes after the message: never reuse
                self._finish()
            return data
        if self._remaining is not None:
            data = raw[: self._remaining]
            self._remaining -= len(data)
            if len(raw) > len(data):
                self._keep_alive = False
            if self._remaining == 0:
                self._finish()
            return data
        return raw  # delimited by the close

    def _ended(self) -> bytes:
        """The connection closed: the end of a close-delimited body, else a cut-off one."""
        if self._decoder is None and self._remaining is None:
            self._complete, self._keep_alive = True, False
            return b""
        raise httpx.RemoteProtocolError(
            "upstream closed the connection before the end of the response body"
        )

    def _finish(self) -> None:
        self._complete = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._keep_alive:
            self._pool.release(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        """Close before the end drops the connection: that is how an upstream learns the
        client went away (llama-server and vLLM stop generating)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _ChunkedDecoder:
    """``Transfer-Encoding: chunked`` (RFC 9112 §7.1): chunk sizes in hex with optional
    extensions, CRLF after each chunk's data, a zero-size chunk, trailer fields, CRLF."""

    __slots__ = ("_buffer", "_left", "_state", "done")

    SIZE, DATA, DATA_END, TRAILER = range(4)

    @property
    def leftover(self) -> bool:
        """Whether bytes followed the end of the message."""
        return bool(self._buffer)

    def __init__(self) -> None:
        self._buffer = b""
        self._state = self.SIZE
        self._left = 0
        self.done = False

    def feed(self, raw: bytes) -> bytes:
        """The body bytes that ``raw`` completes. Raises ``httpx.RemoteProtocolError``."""
        buffer = self._buffer + raw if self._buffer else raw
        out: list[bytes] = []
        at = 0
        end = len(buffer)
        while at < end and not self.done:
            state = self._state
            if state == self.DATA:
                take = min(self._left, end - at)
                out.append(buffer[at : at + take])
                at += take
                self._left -= take
                if self._left == 0:
                    self._state = self.DATA_END
                continue
            newline = buffer.find(b"\n", at)
            if newline < 0:
                if end - at > MAX_CHUNK_LINE_BYTES:
                    raise httpx.RemoteProtocolError("chunk line too long")
                break
            line = buffer[at:newline].rstrip(b"\r")
            at = newline + 1
            if state == self.SIZE:
                self._left = self._size(line)
                self._state = self.DATA if self._left else self.TRAILER
            elif state == self.DATA_END:
                if line:
                    raise httpx.RemoteProtocolError("chunk data longer than its size")
                self._state = self.SIZE
            elif not line:  # TRAILER: an empty line ends the message
                self.done = True
        self._buffer = buffer[at:] if at < end else b""
        return b"".join(out) if len(out) != 1 else out[0]

    @staticmethod
    def _size(line: bytes) -> int:
        digits = line.split(b";", 1)[0].strip()
        try:
            size = int(digits, 16)
        except ValueError:
            size = -1
        if size < 0 or not digits or len(digits) > 16:
            raise httpx.RemoteProtocolError(f"bad chunk size line {line[:40]!r}")
        return size


async def post_stream(backend: BackendConfig, path: str, body: dict[str, Any]) -> Response:
    """POST ``body`` as JSON to ``backend.url(path)`` asking for ``text/event-stream``, and
    return once the response head arrived. Raises httpx's exceptions (see the module)."""
    pool = pool_for(backend)
    url = urlsplit(backend.url(path))
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    content = payload.encode()
    head = [
        f"POST {target} HTTP/1.1",
        f"Host: {pool.host_header}",
        "Accept: text/event-stream",
        "Content-Type: application/json",
        f"Content-Length: {len(content)}",
        "User-Agent: slipstream",
    ]
    if backend.api_key:
        head.append(f"Authorization: Bearer {backend.api_key}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + content
    conn = await pool.connect()
    try:
        if conn.transport.is_closing():
            raise httpx.WriteError("the connection closed before the request was sent")
        conn.transport.write(request)
        status, headers, rest = await _read_head(conn, backend.read_timeout_s)
        return Response(pool, conn, status, headers, rest)
    except BaseException:
        conn.close()
        raise


async def _read_head(conn: _Conn, timeout_s: float) -> tuple[int, dict[str, str], bytes]:
    """The final response's status and header fields (names lower-cased; repeated fields
    joined with ", "), and the bytes after the head. 1xx interim responses are skipped."""
    buffer = b""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("response head too large")
            data = await conn.recv(timeout_s)
            if not data:
                raise httpx.RemoteProtocolError("upstream closed the connection without a response")
            buffer += data
            continue
        lines = buffer[:end].decode("latin-1").split("\r\n")
        buffer = buffer[end + 4 :]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            continue
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"bad header line {line[:80]!r}")
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if parts[0] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
            headers["connection"] = "close"
        return status, headers, buffer
