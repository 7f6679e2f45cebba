"""Can the built-in simulator drive the relay benchmark? ``python bench/simulator_capacity.py``

Starts ``python -m chat.simulator --tokens-per-s 20`` in its own process, then opens 1, 100, 500
and 1,000 concurrent streams of 100 tokens with one httpx.AsyncClient and reports, per round:
delivered tokens/s against the expected ``streams x 20``, TTFT and inter-token gaps (expected
50 ms), and the CPU used by the simulator process (from /proc/<pid>/stat) and by this client.
A simulator that keeps up shows gaps near 50 ms and aggregate rate near expected; CPU % is of
one core. ``--client raw`` swaps httpx for a bare socket client: on 2 cores httpx itself
saturates first (client CPU ~100%), so only the raw client measures the simulator's capacity.
Takes under a minute either way.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 100
RATE = 20.0
TTFT_MS = 50
MARK = b'"delta":{"content":'  # content deltas; the role chunk's delta starts with "role"


@dataclass
class Stream:
    started: float
    arrivals: list[float] = field(default_factory=list)  # one entry per token
    error: str | None = None


def cpu_seconds(pid: int) -> float:
    # /proc/<pid>/stat fields 14 and 15 (utime, stime) in clock ticks; the command name
    # (field 2) may contain spaces, so split after its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def request_body(index: int) -> dict[str, object]:
    return {
        "model": "sim",
        "messages": [{"role": "user", "content": f"stream number {index}"}],
        "stream": True,
        "max_tokens": TOKENS,
        "sim": {"length": TOKENS},
    }


async def one_stream(client: httpx.AsyncClient, url: str, index: int) -> Stream:
    body = request_body(index)
    stream = Stream(started=time.perf_counter())
    try:
        async with client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            async for raw in response.aiter_raw():
                now = time.perf_counter()
                stream.arrivals.extend([now] * raw.count(MARK))
    except httpx.HTTPError as e:
        stream.error = f"{type(e).__name__}: {e}"
    return stream


async def one_stream_raw(host: str, port: int, index: int) -> Stream:
    """The same request on a bare asyncio socket: a load generator light enough that the
    simulator, not the client, sets the pace (httpx needs ~50 us of CPU per received event)."""
    payload = json.dumps(request_body(index)).encode()
    stream = Stream(started=time.perf_counter())
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        stream.error = repr(e)
        return stream
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: %b\r\ncontent-type: application/json"
            b"\r\ncontent-length: %d\r\n\r\n%b" % (host.encode(), len(payload), payload)
        )
        tail = b""
        while not tail.endswith(b"[DONE]\n\n\r\n0\r\n\r\n"):
            data = await reader.read(65536)
            if not data:
                stream.error = "connection closed before the end of the stream"
                break
            now = time.perf_counter()
            stream.arrivals.extend([now] * data.count(MARK))
            tail = (tail + data)[-64:]
    finally:
        writer.close()
    return stream


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_round(base_url: str, pid: int, concurrency: int, kind: str) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(30.0, connect=10.0)
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        sim_cpu, own_cpu, wall = cpu_seconds(pid), self_cpu_seconds(), time.perf_counter()
        url = base_url + "/v1/chat/completions"
        if kind == "httpx":
            jobs = [one_stream(client, url, i) for i in range(concurrency)]
        else:
            jobs = [one_stream_raw(host, int(port), i) for i in range(concurrency)]
        streams = await asyncio.gather(*jobs)
        wall = time.perf_counter() - wall
        sim_cpu, own_cpu = cpu_seconds(pid) - sim_cpu, self_cpu_seconds() - own_cpu

    ok = [s for s in streams if s.arrivals]
    gaps = [b - a for s in ok for a, b in itertools.pairwise(s.arrivals)]
    ttfts = [s.arrivals[0] - s.started for s in ok]
    first = min(s.arrivals[0] for s in ok)
    last = max(s.arrivals[-1] for s in ok)
    # Steady state: the window in which every stream was producing tokens.
    lo, hi = max(s.arrivals[0] for s in ok), min(s.arrivals[-1] for s in ok)
    steady = sum(1 for s in ok for t in s.arrivals if lo <= t <= hi) / (hi - lo) if hi > lo else 0
    return {
        "streams": concurrency,
        "complete": sum(len(s.arrivals) == TOKENS and s.error is None for s in streams),
        "errors": sum(s.error is not None for s in streams),
        "tokens": sum(len(s.arrivals) for s in streams),
        "expected_tps": concurrency * RATE,
        "steady_tps": steady,
        "overall_tps": sum(len(s.arrivals) for s in ok) / (last - first) if last > first else 0,
        "ttft_p50_ms": percentile(ttfts, 0.5) * 1000,
        "ttft_p99_ms": percentile(ttfts, 0.99) * 1000,
        "gap_p50_ms": percentile(gaps, 0.5) * 1000,
        "gap_p99_ms": percentile(gaps, 0.99) * 1000,
        "gap_max_ms": max(gaps, default=float("nan")) * 1000,
        "sim_cpu_pct": 100 * sim_cpu / wall,
        "client_cpu_pct": 100 * own_cpu / wall,
        "wall_s": wall,
    }


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "chat.simulator", "--port", "0"]
    command += ["--tokens-per-s", str(RATE), "--ttft-ms", str(TTFT_MS)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    match = re.search(r"http://[\d.]+:\d+", proc.stdout.readline())
    if not match:
        proc.terminate()
        raise RuntimeError("the simulator did not print its URL")
    return proc, match.group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, nargs="*", default=[1, 100, 500, 1000])
    parser.add_argument(
        "--client",
        choices=["httpx", "raw"],
        default="httpx",
        help="httpx (default) or a bare asyncio socket client that measures the simulator alone",
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 sockets a side
    proc, base_url = start_simulator()
    print(
        f"simulator pid {proc.pid} at {base_url}; {TOKENS} tokens/stream at {RATE:g} tok/s; "
        f"client {args.client}"
    )
    header = (
        f"{'streams':>7} {'done':>5} {'err':>4} {'expect t/s':>10} {'steady t/s':>10} "
        f"{'all t/s':>8} {'ttft p50':>8} {'ttft p99':>8} {'gap p50':>7} {'gap p99':>7} "
        f"{'gap max':>7} {'sim cpu':>7} {'cli cpu':>7} {'wall':>5}"
    )
    print(header)
    try:
        for concurrency in args.rounds:
            r = asyncio.run(run_round(base_url, proc.pid, concurrency, args.client))
            print(
                f"{r['streams']:>7} {r['complete']:>5} {r['errors']:>4} "
                f"{r['expected_tps']:>10.0f} {r['steady_tps']:>10.0f} {r['overall_tps']:>8.0f} "
                f"{r['ttft_p50_ms']:>6.0f}ms {r['ttft_p99_ms']:>6.0f}ms "
                f"{r['gap_p50_ms']:>5.0f}ms {r['gap_p99_ms']:>5.0f}ms {r['gap_max_ms']:>5.0f}ms "
                f"{r['sim_cpu_pct']:>6.0f}% {r['client_cpu_pct']:>6.0f}% {r['wall_s']:>4.1f}s",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    main()
