"""What the slot dispatcher adds per request: ``python bench/dispatch_overhead.py [--requests 500]``

The simulator runs as its own process on loopback. In this process, the same streaming chat
request is sent alternately (a) straight through ``UpstreamStream`` (open, read every chunk: the
relay's floor) and (b) through ``dispatch.submit`` and a ``Generation`` subscription (admission,
single-flight check, stop enforcement off, chunk buffer, subscriber wake-ups). Both share one
pooled httpx client, so the difference is the dispatcher's own cost. Reports, in ms, p50/p90/p99
of the added time to first chunk and the added time per chunk, for single-flight ``off`` and for
a slot with a stop string (the holdback on every chunk). Prints a table and writes
``bench/results/dispatch_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chat.relay import dispatch  # noqa: E402
from chat.relay.generation import KEEPALIVE, Phase  # noqa: E402
from chat.relay.types import BackendConfig, SlotConfig  # noqa: E402
from chat.relay.upstream import UpstreamStream, aclose_clients  # noqa: E402
from tests.support.llama_server import free_port  # noqa: E402

TOKENS = 64


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99)}


async def direct(backend: BackendConfig, body: dict[str, Any]) -> tuple[float, float]:
    """(ms to first chunk, ms for the whole stream) reading the upstream directly."""
    start = time.perf_counter()
    first = 0.0
    stream = await UpstreamStream.open(backend, "chat/completions", body)
    try:
        async with aclosing(stream.chunks()) as chunks:
            async for _ in chunks:
                if not first:
                    first = time.perf_counter()
    finally:
        await stream.aclose()
    return (first - start) * 1000, (time.perf_counter() - start) * 1000


async def dispatched(slot: SlotConfig, request: dict[str, Any]) -> tuple[float, float]:
    """The same, through the dispatcher and a generation subscription."""
    start = time.perf_counter()
    first = 0.0
    generation, _ = await dispatch.submit(slot, "chat/completions", request)
    try:
        async with aclosing(generation.subscribe()) as events:
            async for item in events:
                if item is KEEPALIVE or isinstance(item, Phase):
                    continue
                if not first:
                    first = time.perf_counter()
    finally:
        generation.detach()
    return (first - start) * 1000, (time.perf_counter() - start) * 1000


async def run(base_url: str, requests: int) -> dict[str, Any]:
    backend = BackendConfig(base_url=base_url + "/v1")
    request = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": TOKENS}
    slots = {
        "dispatcher": SlotConfig(
            name="bench", upstream_model="sim", backend=backend, id=1, single_flight="off"
        ),
        "dispatcher + stop holdback": SlotConfig(
            name="bench-stop",
            upstream_model="sim",
            backend=backend,
            id=2,
            single_flight="off",
            stop=("\n\nUser:",),  # never occurs in the answer: pure holdback cost
        ),
    }
    results: dict[str, Any] = {}
    for label, slot in slots.items():
        body = dispatch.request_body(slot, request, chat=True, stream=True)
        for _ in range(20):  # warm the pool, the simulator and the code paths
            await direct(backend, body)
            await dispatched(slot, request)
        first_added, per_chunk_added = [], []
        for _ in range(requests):
            d_first, d_total = await direct(backend, body)
            s_first, s_total = await dispatched(slot, request)
            first_added.append(s_first - d_first)
            per_chunk_added.append((s_total - s_first - (d_total - d_first)) / TOKENS)
        results[label] = {
            "added_first_chunk_ms": percentiles(first_added),
            "added_per_chunk_ms": percentiles(per_chunk_added),
            "mean_added_first_chunk_ms": statistics.fmean(first_added),
        }
    await aclose_clients()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    port = free_port()
    # As fast as it can (no TTFT, no pacing): any time measured is the relay's, not the model's.
    simulator = subprocess.Popen(
        [
            *(sys.executable, "-m", "chat.simulator", "--port", str(port)),
            *("--ttft-ms", "0", "--tokens-per-s", "0", "--length", str(TOKENS)),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(base_url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        results = asyncio.run(run(base_url, args.requests))
    finally:
        simulator.terminate()
        simulator.wait()
    print(f"Dispatcher overhead, {args.requests} requests of {TOKENS} chunks each (ms)")
    print(f"{'path':<30} {'first chunk p50/p90/p99':>26} {'per chunk p50/p90/p99':>26}")
    for label, row in results.items():
        first, chunk = row["added_first_chunk_ms"], row["added_per_chunk_ms"]
        print(
            f"{label:<30} {first['p50']:>8.3f} {first['p90']:>8.3f} {first['p99']:>8.3f} "
            f"{chunk['p50']:>8.4f} {chunk['p90']:>8.4f} {chunk['p99']:>8.4f}"
        )
    out = ROOT / "bench" / "results" / "dispatch_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"requests": args.requests, "tokens": TOKENS, **results}, indent=2))


if __name__ == "__main__":
    main()
