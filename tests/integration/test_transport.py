"""The relay's own network layer under httpx (``chat.relay.transport``) and its idle timer
(``chat.relay.idle``), against real servers on loopback: plain HTTP, TLS with a certificate made
here, a body far larger than the read buffer, a server that stalls and one that resets."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

import httpx
import pytest

from chat.relay.idle import IdleTimer
from chat.relay.transport import READ_LIMIT
from chat.relay.upstream import asyncio_transport
from tests.support.tls import self_signed
from tests.support.wire import chunked, chunks

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def client(**kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=asyncio_transport(httpx.Limits()), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def sse_server() -> AsyncIterator[asyncio.Server]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            HEAD + chunked(b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n")
        )
        await writer.drain()
        writer.close()

    server = await serve(handler)
    yield server
    server.close()


async def test_streams_a_chunked_body(sse_server: asyncio.Server) -> None:
    async with client() as http:
        url = f"http://127.0.0.1:{port_of(sse_server)}/v1/chat/completions"
        async with http.stream("POST", url, json={}) as response:
            body = b"".join([part async for part in response.aiter_bytes()])
    assert response.status_code == 200
    assert body == b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n'


async def test_a_body_larger_than_the_read_buffer_arrives_whole() -> None:
    # Eight read buffers' worth, written at once: reading pauses and resumes several times.
    payload = bytes(range(256)) * (8 * READ_LIMIT // 256)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()
        writer.close()

    server = await serve(handler)
    try:
        async with client() as http:
            response = await http.get(f"http://127.0.0.1:{port_of(server)}/big")
    finally:
        server.close()
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(payload).digest()


async def test_a_stalled_upstream_raises_read_timeout() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(HEAD + chunks(b'data: {"n": 1}\n\n'))  # one event, then nothing
        await writer.drain()
        await release.wait()
        writer.close()

    server = await serve(handler)
    timeout = httpx.Timeout(5.0, read=0.2)
    try:
        async with client(timeout=timeout) as http:
            url = f"http://127.0.0.1:{port_of(server)}/v1/chat/completions"
            async with http.stream("POST", url, json={}) as response:
                parts = response.aiter_bytes()
                assert await anext(parts) == b'data: {"n": 1}\n\n'
                # The outer bound only turns a read that never times out into a failure.
                async with asyncio.timeout(30):
                    with pytest.raises(httpx.ReadTimeout):
                        await anext(parts)
    finally:
        release.set()
        server.close()


async def test_a_reset_connection_raises_read_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(HEAD + chunks(b'data: {"n": 1}\n\n'))
        await writer.drain()
        writer.transport.abort()  # RST, not FIN

    server = await serve(handler)
    try:
        async with client() as http:
            url = f"http://127.0.0.1:{port_of(server)}/v1/chat/completions"
            async with http.stream("POST", url, json={}) as response:
                with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                    async for _ in response.aiter_bytes():
                        pass
    finally:
        server.close()


async def test_streams_over_tls(tmp_path: Path) -> None:
    server_context, ca_file = self_signed(tmp_path)
    client_context = ssl.create_default_context(cafile=str(ca_file))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(HEAD + chunked(b'data: {"tls": true}\n\n', b"data: [DONE]\n\n"))
        await writer.drain()
        writer.close()

    server = await serve(handler, server_context)
    try:
        pool = asyncio_transport(httpx.Limits(), verify=client_context)
        async with httpx.AsyncClient(transport=pool) as http:
            url = f"https://127.0.0.1:{port_of(server)}/v1/chat/completions"
            async with http.stream("POST", url, json={}) as response:
                body = b"".join([part async for part in response.aiter_bytes()])
    finally:
        server.close()
    assert body == b'data: {"tls": true}\n\ndata: [DONE]\n\n'


# ------------------------------------------------------------------------------------------------
# IdleTimer
# ------------------------------------------------------------------------------------------------
class CountingClock:
    """The two loop methods ``IdleTimer`` uses, counting the timers it sets."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers_set = 0

    def time(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        self.timers_set += 1
        return self.loop.call_at(when, callback)


async def test_idle_timer_expires_a_wait_that_lasts_its_interval() -> None:
    loop = asyncio.get_running_loop()
    clock = CountingClock(loop)
    expired: list[asyncio.Future[str]] = []

    def expire(waiter: asyncio.Future[str]) -> None:
        expired.append(waiter)
        waiter.set_result("expired")

    timer = IdleTimer(cast(asyncio.AbstractEventLoop, clock), expire)
    try:
        # Many waits answered at once: none expires, and the timer is set once, not per wait.
        for _ in range(1000):
            waiter: asyncio.Future[str] = loop.create_future()
            timer.waiting(waiter, 10.0)
            waiter.set_result("news")
            assert await waiter == "news"
        assert clock.timers_set == 1
        # A wait nobody answers expires.
        waiter = loop.create_future()
        timer.waiting(waiter, 0.05)
        timer.close()  # the 10-s timer goes; the next wait sets one for 0.05 s
        timer.waiting(waiter, 0.05)
        assert await waiter == "expired"
        assert expired == [waiter]
    finally:
        timer.close()


class ManualClock:
    """``time`` and ``call_at`` on a clock the test moves (``advance``): timers fire when
    their time comes, never on their own."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], object], asyncio.Handle]] = []
        self.timers_set = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.Handle:
        handle = asyncio.Handle(callback, (), asyncio.get_running_loop())
        self.timers.append((when, callback, handle))
        self.timers_set += 1
        return handle

    def advance(self, to: float) -> None:
        self.now = to
        due = [t for t in self.timers if t[0] <= to]
        self.timers = [t for t in self.timers if t[0] > to]
        for _, callback, handle in due:
            if not handle.cancelled():
                callback()


async def test_idle_timer_measures_from_the_start_of_the_current_wait() -> None:
    loop = asyncio.get_running_loop()
    clock = ManualClock()
    timer = IdleTimer(cast(asyncio.AbstractEventLoop, clock), lambda w: w.set_result(clock.now))
    try:
        # Times in binary fractions, so that the sums are exact.
        first: asyncio.Future[float] = loop.create_future()
        timer.waiting(first, 0.5)  # the timer is set for 0.5
        first.set_result(-1.0)
        clock.advance(0.25)
        second: asyncio.Future[float] = loop.create_future()
        timer.waiting(second, 0.5)  # due at 0.75: the timer stays where it is
        clock.advance(0.5)  # it fires early for this wait and is set again
        assert not second.done()
        clock.advance(0.75)
        assert second.result() == 0.75  # resolved by the timer, not awaited: a miss fails
        assert clock.timers_set == 2
    finally:
        timer.close()
