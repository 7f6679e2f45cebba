"""The relay's own HTTP/1.1 client for streaming calls (``chat.relay.http1``): its chunked decoder
on every recorded stream split at every byte, then real servers on loopback for the framings,
connection reuse and failures a streaming upstream can produce."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from chat.relay import http1
from chat.relay.types import BackendConfig
from tests.support.tls import self_signed
from tests.support.wire import chunked

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sse"
RECORDED = sorted(FIXTURES.glob("*.sse"))


# ------------------------------------------------------------------------------------------------
# The chunked decoder
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", RECORDED, ids=lambda p: p.name)
def test_chunked_decoder_on_recorded_streams_split_at_every_byte(fixture: Path) -> None:
    body = fixture.read_bytes()
    # Chunks of varied sizes (one per line, as servers flush), with an extension on one.
    lines = body.splitlines(keepends=True) or [body]
    wire = b"".join(
        b"%x%s\r\n%s\r\n" % (len(line), b";ext=1" if i == 1 else b"", line)
        for i, line in enumerate(lines)
    )
    wire += b"0\r\nX-Trailer: yes\r\n\r\n"
    for split in range(len(wire) + 1):
        decoder = http1._ChunkedDecoder()
        out = decoder.feed(wire[:split]) + decoder.feed(wire[split:])
        assert out == body, split
        assert decoder.done
        assert not decoder.leftover


def test_chunked_decoder_byte_by_byte() -> None:
    wire = chunked(b"data: one\n\n", b"data: two\n\n")
    decoder = http1._ChunkedDecoder()
    out = b"".join(decoder.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert out == b"data: one\n\ndata: two\n\n"
    assert decoder.done


@pytest.mark.parametrize(
    "wire",
    [b"zz\r\ndata\r\n", b"-5\r\n", b"3\r\nabcdef\r\n", b"1" * 5000],
    ids=["not-hex", "negative", "longer-than-its-size", "endless-size-line"],
)
def test_chunked_decoder_refuses_malformed_framing(wire: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http1._ChunkedDecoder().feed(wire)


# ------------------------------------------------------------------------------------------------
# Against servers
# ------------------------------------------------------------------------------------------------
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """An asyncio server on loopback running ``handler`` per connection, counting them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Upstream:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        http1.close_pools()

    @property
    def backend(self) -> BackendConfig:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return BackendConfig(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="sk-upstream",
            read_timeout_s=5,
            connect_timeout_s=2,
        )

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


async def body_of(response: http1.Response) -> bytes:
    try:
        return b"".join([part async for part in response.aiter_bytes()])
    finally:
        await response.aclose()


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"


async def test_sends_the_request_and_reuses_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive: answer requests until the client closes
            await upstream.read_request(reader)
            writer.write(HEAD + b"transfer-encoding: chunked\r\n\r\n" + chunked(b"data: 1\n\n"))
            await writer.drain()

    async with Upstream(handler) as upstream:
        for _ in range(3):
            response = await http1.post_stream(upstream.backend, "chat/completions", {"a": "é"})
            assert response.status_code == 200
            assert await body_of(response) == b"data: 1\n\n"
    assert upstream.connections == 1
    request = upstream.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer sk-upstream\r\n" in request
    assert b"\r\nAccept: text/event-stream\r\n" in request
    assert request.endswith('{"a":"é"}'.encode())


async def test_a_response_closed_before_its_end_closes_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            writer.write(HEAD + b"transfer-encoding: chunked\r\n\r\n" + chunks_forever())
            await writer.drain()

    def chunks_forever() -> bytes:
        return b"%x\r\n%s\r\n" % (10, b"data: x\n\n\n")

    async with Upstream(handler) as upstream:
        for _ in range(2):
            response = await http1.post_stream(upstream.backend, "chat/completions", {})
            parts = response.aiter_bytes()
            assert await anext(parts) == b"data: x\n\n\n"
            await response.aclose()  # the client left mid-answer: the upstream must see it
    assert upstream.connections == 2


async def test_content_length_and_close_delimited_bodies() -> None:
    bodies = iter(
        [
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ndata: 1\n\n",
            b"HTTP/1.0 200 OK\r\n\r\ndata: 2\n\ndata: 3\n\n",  # delimited by the close
        ]
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            answer = next(bodies)
            writer.write(answer)
            await writer.drain()
            if answer.startswith(b"HTTP/1.0"):
                return  # closes

    async with Upstream(handler) as upstream:
        first = await http1.post_stream(upstream.backend, "chat/completions", {})
        assert await body_of(first) == b"data: 1\n\n"
        second = await http1.post_stream(upstream.backend, "chat/completions", {})
        assert await body_of(second) == b"data: 2\n\ndata: 3\n\n"
    assert upstream.connections == 1


async def test_interim_responses_are_skipped_and_trailers_read() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(
            HEAD
            + b"transfer-encoding: chunked\r\n\r\n"
            + chunked(b"data: ok\n\n", trailer=b"a: b\r\n")
        )
        await writer.drain()
        await reader.read()

    async with Upstream(handler) as upstream:
        response = await http1.post_stream(upstream.backend, "chat/completions", {})
        assert response.status_code == 200
        assert await body_of(response) == b"data: ok\n\n"


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(HEAD + b"content-length: 3\r\n\r\nabc")
        await writer.drain()
        # and close, without saying so in the response

    async with Upstream(handler) as upstream:
        first = await http1.post_stream(upstream.backend, "chat/completions", {})
        assert await body_of(first) == b"abc"
        pool = http1.pool_for(upstream.backend)
        idle = pool.idle[-1]
        await asyncio.wait_for(asyncio.shield(idle.protocol.lost), 10)  # the server's close
        second = await http1.post_stream(upstream.backend, "chat/completions", {})
        assert await body_of(second) == b"abc"
    assert upstream.connections == 2


async def test_a_body_cut_off_mid_chunk_raises() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(HEAD + b"transfer-encoding: chunked\r\n\r\n20\r\ndata: only half")
        await writer.drain()

    async with Upstream(handler) as upstream:
        response = await http1.post_stream(upstream.backend, "chat/completions", {})
        with pytest.raises(httpx.RemoteProtocolError):
            await body_of(response)


async def test_a_bad_status_line_raises() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"SPDY/3 200 OK\r\n\r\n")
        await writer.drain()

    async with Upstream(handler) as upstream:
        with pytest.raises(httpx.RemoteProtocolError):
            await http1.post_stream(upstream.backend, "chat/completions", {})


async def test_nothing_listening_is_a_connect_error() -> None:
    async with Upstream(lambda reader, writer: asyncio.sleep(0)) as upstream:
        backend = upstream.backend
    with pytest.raises(httpx.ConnectError) as caught:
        await http1.post_stream(backend, "chat/completions", {})
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


@pytest.fixture
async def stalled() -> AsyncIterator[Upstream]:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        await release.wait()

    async with Upstream(handler) as upstream:
        yield upstream
        release.set()


async def test_no_response_head_within_the_read_timeout_raises(stalled: Upstream) -> None:
    backend = BackendConfig(base_url=stalled.backend.base_url, read_timeout_s=0.2)
    async with asyncio.timeout(30):  # only turns a read that never times out into a failure
        with pytest.raises(httpx.ReadTimeout):
            await http1.post_stream(backend, "chat/completions", {})


async def test_streams_over_tls_trusting_what_httpx_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_context, ca_file = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # as httpx reads it

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(request.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
        writer.write(HEAD + b"transfer-encoding: chunked\r\n\r\n" + chunked(b"data: tls\n\n"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context)
    try:
        port = server.sockets[0].getsockname()[1]
        backend = BackendConfig(base_url=f"https://127.0.0.1:{port}/v1", connect_timeout_s=5)
        response = await http1.post_stream(backend, "chat/completions", {})
        assert await body_of(response) == b"data: tls\n\n"
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = BackendConfig(base_url=f"https://127.0.0.1:{port}/v2", connect_timeout_s=5)
        with pytest.raises(httpx.ConnectError):  # certifi's roots do not know this certificate
            await http1.post_stream(untrusted, "chat/completions", {})
    finally:
        server.close()
        http1.close_pools()
