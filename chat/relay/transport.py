"""httpcore's network layer on a plain asyncio protocol, for the relay's upstream client.

httpx reaches the network through httpcore, whose default backend under asyncio is AnyIO: every
read opens an AnyIO cancel scope for its timeout. With many streams each sending a token every
few tens of ms, that per-read bookkeeping was the largest item in the relay's profile
(bench/profile_relay.py: AnyIO's fail_after and stream read, about half of the daphne process's
CPU at 500 streams). Then ``asyncio.timeout`` around ``StreamReader.read`` still scheduled and
cancelled a timer per read (about 5 % of the CPU at 150 streams). This backend reads from an
``asyncio.Protocol`` of its own: ``data_received`` resolves the reader's future, and the read
timeout is one ``IdleTimer`` per connection, which fails the waiting read with ``ReadTimeout``.

The contract is httpcore's ``AsyncNetworkBackend``/``AsyncNetworkStream`` (httpcore
``_backends/base.py``): ``read`` returns b"" at end of stream, and failures are raised as
httpcore's ``ConnectError``/``ConnectTimeout``/``ReadError``/``ReadTimeout``/``WriteError``/
``WriteTimeout``, which httpx maps to its own exceptions.
"""

# ruff: noqa: ASYNC109  (the ``timeout`` parameters are httpcore's interface, not our choice)
from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
from httpcore._backends.base import SOCKET_OPTION, AsyncNetworkBackend, AsyncNetworkStream
from httpcore._utils import is_socket_readable

from chat.relay.idle import IdleTimer

# Bytes buffered before the socket is no longer read (TCP flow control holds the upstream back);
# reading resumes below half of it.
READ_LIMIT = 1 << 20


class StreamProtocol(asyncio.Protocol):
    """One connection's received bytes and state, for ``AsyncioStream`` and ``chat.relay.http1``:
    ``data_received`` resolves the reader's future (``reader``), reading pauses past
    ``READ_LIMIT`` buffered bytes, ``lost`` resolves when the connection is gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.reader: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_LIMIT and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake_reader()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self.writing_paused = False
        self._wake_writer()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _wake_writer(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the buffered bytes (the buffer must not be empty)."""
        if len(self.buffer) <= max_bytes:
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:max_bytes])
            del self.buffer[:max_bytes]
        if self.reading_paused and len(self.buffer) <= READ_LIMIT // 2 and self.transport:
            self.reading_paused = False
            self.transport.resume_reading()
        return data


def _read_timed_out(waiter: asyncio.Future[Any]) -> None:
    waiter.set_exception(httpcore.ReadTimeout("no data from the upstream within the timeout"))


class AsyncioStream(AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, connection: StreamProtocol) -> None:
        self._transport = transport
        self._connection = connection
        self._idle = IdleTimer(connection.loop, _read_timed_out)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        connection = self._connection
        while not connection.buffer:
            if connection.error is not None:
                error = connection.error
                raise httpcore.ReadError(str(error) or type(error).__name__)
            if connection.eof:
                return b""
            waiter = connection.reader = connection.loop.create_future()
            if timeout is not None:
                self._idle.waiting(waiter, timeout)
            await waiter
        return connection.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        connection = self._connection
        if connection.error is not None or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        if not connection.writing_paused:
            return
        # The socket's buffer is full: wait until the transport takes more (rare: requests
        # are small).
        drained = connection.drained = connection.loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await drained
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        if connection.error is not None:
            raise httpcore.WriteError(str(connection.error))

    async def aclose(self) -> None:
        self._idle.close()
        self._transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await asyncio.shield(self._connection.lost)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        loop = self._connection.loop
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._connection, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if transport is None:
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._transport = transport
        self._connection.transport = transport
        return self

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        if info == "is_readable":
            # An idle pooled connection is "readable" when the server closed it or sent
            # something unasked: httpcore then drops it instead of reusing it.
            connection = self._connection
            if connection.buffer or connection.eof:
                return True
            sock = transport.get_extra_info("socket")
            return sock is not None and is_socket_readable(sock)
        return None


class AsyncioBackend(AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    lambda: StreamProtocol(loop),
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # asyncio sets TCP_NODELAY itself; callers' options come on top.
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(transport, connection)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_unix_connection(
                    lambda: StreamProtocol(loop), path
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return AsyncioStream(transport, connection)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
