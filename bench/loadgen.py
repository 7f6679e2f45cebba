"""A lean load generator for SSE streams: ``python bench/loadgen.py SPEC.json OUT.json``.

Opens ``streams`` HTTP/1.1 POSTs (``connection: close``), one fresh connection each, started
evenly over ``ramp_s`` seconds from ``start_at``, and records, per stream, the time every
content token arrived. It is a bare ``asyncio.Protocol``: no HTTP library, no task per stream
once connected, no parsing beyond the status line. Each read is scanned for content deltas
(``"delta":{"content":"`` not followed by ``"``: the role chunk's empty content does not count),
``data: [DONE]`` and ``data: {"error"``; a marker split across two reads is still found once.
Tokens that arrive in one read share its timestamp. The same client drives every target
(simulator, Slipstream ``/v1`` and ``/chat/stream/``, LiteLLM), so its cost is the same for all.

SPEC (JSON): ``host``, ``port``, ``path``, ``headers`` (object), ``body`` (text; ``%INDEX%`` is
replaced by the stream's number, so that no two requests are identical), ``streams`` (total),
``shard``/``shards`` (this process takes streams shard, shard+shards, …), ``start_at``
(``time.monotonic()`` s), ``ramp_s``, ``timeout_s``.

OUT (JSON): ``pid`` and ``streams``: per stream ``sent`` (request written), ``status`` (HTTP
status, or null), ``arrivals`` (content token times), ``end`` (connection closed), ``done`` (saw
``[DONE]``), ``error`` (null, or what went wrong). Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

CONTENT = b'"delta":{"content":"'
EMPTY = b'"delta":{"content":""'
DONE = b"data: [DONE]"
ERROR = b'data: {"error"'
KEEP = len(EMPTY) - 1  # bytes kept from the previous read: a split marker is found once


class Stream(asyncio.Protocol):
    def __init__(self, request: bytes, record: dict[str, Any], closed: asyncio.Future[None]):
        self.request = request
        self.record = record
        self.closed = closed
        self.head = b""
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)
        self.record["sent"] = time.monotonic()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        record = self.record
        if record["status"] is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = self.head.split(b"\r\n", 1)[0].split()
            record["status"] = int(status_line[1]) if len(status_line) > 1 else 0
            data = self.head[end + 4 :]
            self.head = b""
            if record["status"] != 200:
                record["error"] = f"HTTP {record['status']}: {data[:200]!r}"
        buf = self.tail + data
        # Count only markers that end in the new bytes (the kept tail is too short to hold a
        # whole EMPTY, but may hold a whole CONTENT: search it from its last len(CONTENT)-1).
        content = (self.tail[-(len(CONTENT) - 1) :] + data).count(CONTENT)
        tokens = content - buf.count(EMPTY)
        arrivals = record["arrivals"]
        if tokens > 0:
            arrivals.extend([now] * tokens)
        elif tokens < 0 and arrivals:
            del arrivals[tokens:]  # an empty delta whose first part was counted last read
        if DONE in buf:
            record["done"] = True
        if ERROR in buf and record["error"] is None:
            start = buf.find(ERROR)
            record["error"] = buf[start : start + 200].decode("utf-8", "replace")
        self.tail = buf[-KEEP:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.record["end"] = time.monotonic()
        if exc is not None and self.record["error"] is None:
            self.record["error"] = f"connection lost: {exc!r}"
        if not self.closed.done():
            self.closed.set_result(None)


async def one(spec: dict[str, Any], index: int, record: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    start = spec["start_at"] + spec["ramp_s"] * index / max(1, spec["streams"])
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    body = spec["body"].replace("%INDEX%", str(index)).encode()
    head = [
        f"POST {spec['path']} HTTP/1.1",
        f"host: {spec['host']}:{spec['port']}",
        "content-type: application/json",
        "accept: text/event-stream",
        "connection: close",
        *(f"{name}: {value}" for name, value in spec["headers"].items()),
        f"content-length: {len(body)}",
    ]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    closed: asyncio.Future[None] = loop.create_future()
    record["sent"] = time.monotonic()
    try:
        transport, _ = await loop.create_connection(
            lambda: Stream(request, record, closed), spec["host"], spec["port"]
        )
    except OSError as exc:
        record["error"] = f"connect: {exc!r}"
        record["end"] = time.monotonic()
        return
    try:
        await asyncio.wait_for(closed, spec["timeout_s"])
    except TimeoutError:
        record["error"] = record["error"] or "timeout"
        transport.abort()
    if not record["done"] and record["error"] is None:
        record["error"] = "closed before data: [DONE]"


async def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    indices = range(spec.get("shard", 0), spec["streams"], spec.get("shards", 1))
    records = [
        {"index": i, "sent": None, "status": None, "arrivals": [], "end": None, "done": False}
        | {"error": None}
        for i in indices
    ]
    await asyncio.gather(*(one(spec, r["index"], r) for r in records))
    return records


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    spec = json.loads(Path(sys.argv[1]).read_text())
    records = asyncio.run(run(spec))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(sys.argv[2]).write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "streams": records,
            }
        )
    )


if __name__ == "__main__":
    main()
