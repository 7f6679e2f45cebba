"""The upstream's HTTP/1.1 framing: chat.relay.http1's hand-written parser against httptools
(llhttp, the parser uvicorn uses): python bench/http1_parser.py [--chunks N] [--rounds N].

Issue 32, item 5: keep the hand-written parser only if the figure says so. Each response is
what a chat backend streams: a llama.cpp-style response head (status line and header fields),
then an SSE chat stream of ``--chunks`` events (the content events of
tests/fixtures/sse/llamacpp-chat-usage-timings.sse, cycled; its usage event and ``[DONE]`` at
the end), each event one HTTP chunk (``Transfer-Encoding: chunked``, as llama.cpp's server,
vLLM and Ollama send them), then the zero-size last chunk. The bytes reach the parser in the
reads an upstream's socket delivers:

- ``paced``: one HTTP chunk per read (a model sending a token every few tens of ms: the
  common case), the head in a read of its own;
- ``segments``: reads cut at random points, 100-1,460 bytes (a TCP segment's payload at most),
  so chunk-size lines and data are split across reads;
- ``backlog``: 16 KiB reads (a reader that fell behind a fast upstream: many chunks per read).

Two levels, each CPU time (``time.thread_time``) per HTTP chunk, best of ``--rounds``:

- ``framing``: the parser alone, as the relay feeds it: http1's ``_read_head`` and
  ``_ChunkedDecoder.feed`` against ``httptools.HttpResponseParser.feed_data`` with the
  callbacks a client needs (status, header fields lower-cased, body pieces, message end);
- ``client``: the same bytes read through http1's own code path (``_read_head`` then
  ``Response._next`` until the response completes, on a connection whose ``recv`` hands out
  the reads) against the same path with httptools in place of the parsing (the loop, the
  head's dict, the body pieces joined per read). No event loop: ``recv`` never waits, so each
  coroutine runs to its end in one ``send``.

Both parsers must return the same status, header fields and body bytes; the script checks that
before it times anything. The relay's whole CPU per relayed chunk, for scale, was 126 µs at 200
streams on 2 cores (docs/architecture.md, "Where we lean on other projects' internals").
httptools is not a dependency: ``pip install httptools`` to run this.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httptools  # noqa: E402

from chat.relay import http1  # noqa: E402

FIXTURE = ROOT / "tests/fixtures/sse/llamacpp-chat-usage-timings.sse"
# llama.cpp server's head for a streamed chat completion (cpp-httplib), as recorded.
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Server: llama.cpp\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Access-Control-Allow-Origin: \r\n"
    b"\r\n"
)
SEGMENT_MIN, SEGMENT_MAX = 100, 1460
BACKLOG_READ = 16 * 1024


def sse_events(count: int) -> list[bytes]:
    """``count`` SSE events: the fixture's first, its content events cycled, its last two."""
    events = [e + b"\n\n" for e in FIXTURE.read_bytes().strip().split(b"\n\n")]
    first, content, tail = events[0], events[1:-2], events[-2:]
    body = [content[i % len(content)] for i in range(max(0, count - 3))]
    return [first, *body, *tail]


def chunked_body(events: list[bytes]) -> list[bytes]:
    """Each event as one HTTP chunk, then the last chunk (RFC 9112 §7.1)."""
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]


def reads_for(pattern: str, chunks: list[bytes], seed: int = 32) -> list[bytes]:
    """The response (head and framed body) as the reads of ``pattern``."""
    if pattern == "paced":
        return [HEAD, *chunks]
    blob = HEAD + b"".join(chunks)
    if pattern == "backlog":
        return [blob[i : i + BACKLOG_READ] for i in range(0, len(blob), BACKLOG_READ)]
    rng = random.Random(seed)
    reads, at = [], 0
    while at < len(blob):
        size = rng.randint(SEGMENT_MIN, SEGMENT_MAX)
        reads.append(blob[at : at + size])
        at += size
    return reads


# ------------------------------------------------------------------------------------------------
# The parsers, fed
# ------------------------------------------------------------------------------------------------
class FakeConn:
    """What http1's ``_read_head`` and ``Response`` use of a connection: ``recv`` hands out the
    reads in order (b"" after the last), ``close``."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = iter(reads)

    async def recv(self, timeout_s: float) -> bytes:
        return next(self.reads, b"")

    def close(self) -> None:
        pass


class FakeBackend:
    read_timeout_s = 30.0


class FakePool:
    """What ``http1.Response`` uses of its pool."""

    backend = FakeBackend()

    def release(self, conn: Any) -> None:
        pass


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """A coroutine that never waits, run to its end without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine waited")


async def h1_client(reads: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """http1's own path: ``_read_head``, then ``Response._next`` until the response completes."""
    conn = FakeConn(reads)
    status, headers, rest = await http1._read_head(conn, 30.0)  # type: ignore[arg-type]
    response = http1.Response(FakePool(), conn, status, headers, rest)  # type: ignore[arg-type]
    body = []
    while not response._complete:
        data = await response._next()
        if data:
            body.append(data)
    return status, headers, b"".join(body)


def h1_framing(reads: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """http1's parsing alone: the head (``_read_head``), then ``_ChunkedDecoder.feed`` per read."""
    conn = FakeConn(reads)
    status, headers, rest = run(http1._read_head(conn, 30.0))  # type: ignore[arg-type]
    decoder = http1._ChunkedDecoder()
    body = [decoder.feed(rest)] if rest else []
    for raw in conn.reads:
        body.append(decoder.feed(raw))
    assert decoder.done
    return status, headers, b"".join(body)


class LlhttpResponse:
    """httptools' response parser with the callbacks a client needs: status, header fields
    (names lower-cased, repeats joined with ", ", as http1 does), body pieces, message end."""

    __slots__ = ("body", "complete", "head_done", "headers", "name", "parser", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True

    def feed(self, data: bytes) -> bytes:
        """The body bytes ``data`` completes. Raises ``httptools.HttpParserError``."""
        self.parser.feed_data(data)
        body = self.body
        if not body:
            return b""
        self.body = []
        return body[0] if len(body) == 1 else b"".join(body)


async def llhttp_client(reads: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """The same path as ``h1_client`` with httptools doing the parsing."""
    conn = FakeConn(reads)
    parsed = LlhttpResponse()
    body = []
    while not parsed.head_done:  # the head (a 1xx would need a parser per response: none here)
        data = await conn.recv(30.0)
        if not data:
            raise ValueError("closed before the head")
        first = parsed.feed(data)
        if first:
            body.append(first)
    while not parsed.complete:
        raw = await conn.recv(30.0)
        if not raw:
            raise ValueError("cut off")
        data = parsed.feed(raw)
        if data:
            body.append(data)
    return parsed.status, parsed.headers, b"".join(body)


def llhttp_framing(reads: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """httptools alone: ``feed_data`` per read."""
    parsed = LlhttpResponse()
    body = []
    for raw in reads:
        body.append(parsed.feed(raw))
    assert parsed.complete
    return parsed.status, parsed.headers, b"".join(body)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def cpu_per_response_s(
    parse: Callable[[list[bytes]], Any], reads: list[bytes], rounds: int
) -> float:
    """The least CPU time (s) one response took, over ``rounds`` rounds of enough responses to
    take about 0.2 s each."""
    repeat = 1
    while True:  # calibrate
        start = time.thread_time()
        for _ in range(repeat):
            parse(reads)
        if time.thread_time() - start > 0.05:
            break
        repeat *= 2
    repeat *= 4
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(repeat):
            parse(reads)
        best = min(best, (time.thread_time() - start) / repeat)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=500, help="SSE events per response")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds; the best is kept")
    args = parser.parse_args()

    events = sse_events(args.chunks)
    chunks = chunked_body(events)
    expected = b"".join(events)
    levels: dict[str, tuple[Callable[[list[bytes]], Any], Callable[[list[bytes]], Any]]] = {
        "framing": (h1_framing, llhttp_framing),
        "client": (lambda r: run(h1_client(r)), lambda r: run(llhttp_client(r))),
    }
    print(
        f"{len(events)} SSE events per response ({len(expected):,} body bytes), one HTTP chunk "
        f"each; httptools {httptools.__version__} (llhttp); Python {sys.version.split()[0]}"
    )
    print(f"CPU per HTTP chunk (µs), best of {args.rounds}; head included, amortised\n")
    columns = ("reads/resp", "http1", "httptools", "http1/llhttp")
    print(f"{'reads':<10} {'level':<8} " + " ".join(f"{c:>10}" for c in columns))
    for pattern in ("paced", "segments", "backlog"):
        reads = reads_for(pattern, chunks)
        for level, (ours, theirs) in levels.items():
            a, b = ours(reads), theirs(reads)
            assert a == b, f"{pattern}/{level}: the parsers disagree"
            assert a[2] == expected, f"{pattern}/{level}: the body is not what was sent"
            assert a[0] == 200
            assert a[1]["transfer-encoding"] == "chunked"
            h1_us = cpu_per_response_s(ours, reads, args.rounds) / len(chunks) * 1e6
            ll_us = cpu_per_response_s(theirs, reads, args.rounds) / len(chunks) * 1e6
            print(
                f"{pattern:<10} {level:<8} {len(reads):>10} {h1_us:>10.2f} {ll_us:>10.2f} "
                f"{h1_us / ll_us:>9.2f}x"
            )
    head_only = [HEAD]
    h1_head = cpu_per_response_s(lambda r: run(http1._read_head(FakeConn(r), 30.0)), head_only, 7)
    ll_head = cpu_per_response_s(lambda r: LlhttpResponse().feed(r[0]), head_only, 7)
    print(f"\nthe head alone (µs per response): http1 {h1_head * 1e6:.2f}", end="")
    print(f", httptools {ll_head * 1e6:.2f}")


if __name__ == "__main__":
    main()
