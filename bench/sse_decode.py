"""Micro-benchmark of chat.relay.sse.SSEDecoder: python bench/sse_decode.py.

Decodes the concatenation of every tests/fixtures/sse/*.sse file ROUNDS times, fed in
network-sized chunks, and prints throughput (MB/s) and cost per event (µs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chat.relay.sse import SSEDecoder  # noqa: E402

ROUNDS = 200
CHUNK = 1024  # bytes per feed(), about what an upstream's chunked body delivers per read


def main() -> None:
    # Each fixture ends with "\n" at least; add one so an unterminated last event still ends.
    blob = b"".join(
        p.read_bytes() + b"\n" for p in sorted((ROOT / "tests/fixtures/sse").glob("*.sse"))
    )
    chunks = [blob[i : i + CHUNK] for i in range(0, len(blob), CHUNK)]
    events = 0
    start = time.perf_counter()
    for _ in range(ROUNDS):
        decoder = SSEDecoder()
        for chunk in chunks:
            events += len(decoder.feed(chunk))
        events += len(decoder.flush())
    elapsed = time.perf_counter() - start
    total = len(blob) * ROUNDS
    print(f"{len(blob)} bytes x {ROUNDS} rounds in {CHUNK}-byte chunks: {elapsed:.3f} s")
    per_event = elapsed / events * 1e6
    print(f"{total / elapsed / 1e6:.1f} MB/s, {per_event:.2f} µs/event ({events // ROUNDS}/round)")


if __name__ == "__main__":
    main()
