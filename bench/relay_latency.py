"""Relay overhead at one stream: ``python bench/relay_latency.py [--requests 200] [--no-litellm]``

Runs the simulator, Slipstream (one daphne process, on a throwaway SQLite database) and
LiteLLM's proxy (``bench/.venv-litellm``, one worker, no master key, no database; leave it out
with ``--no-litellm``) as separate processes on loopback. The simulator answers every request
with 50 tokens at 200 tokens/s (5 ms apart: fine-grained enough to see per-chunk overhead) after
a 20 ms TTFT. The same streaming chat request is sent, one at a time, in turn straight to the
simulator, through Slipstream's ``/v1/chat/completions``, through the browser's
``/chat/stream/`` (a logged-in session; each request starts and stores a conversation) and
through LiteLLM's, ``--requests`` times each (after 5 warm-up rounds). Reports TTFT (request
sent -> first content chunk) and ITL (gap between consecutive content chunks) p50/p90/p99 in ms
for each path, and each relay's *added* TTFT and ITL: its percentile minus the direct path's
(``added``: Slipstream's /v1, ``added_chat``: the chat's, ``added_litellm``: LiteLLM). The
client (httpx, one pooled connection per server) costs the same on every path. Prints a table
and writes ``bench/results/relay_latency.json``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import harness
import httpx
from harness import Service

TOKENS = 50
TOKENS_PER_S = 200
TTFT_MS = 20


def measure(
    client: httpx.Client, url: str, body: dict[str, object], headers: dict[str, str]
) -> tuple[float, list[float]]:
    """(TTFT ms, inter-token gaps ms) of one streamed answer."""
    sent = time.perf_counter()
    arrivals: list[float] = []
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.perf_counter())
    assert len(arrivals) == TOKENS, len(arrivals)
    return (arrivals[0] - sent) * 1000, [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]


def percentiles(values: list[float]) -> dict[str, float]:
    out = harness.percentiles(values)
    return {k: v for k, v in out.items() if v is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--no-litellm", action="store_true", help="Slipstream and direct only")
    args = parser.parse_args()
    tmp = harness.workdir("latency")
    services: list[Service] = []
    try:
        sim = harness.start_simulator(
            tmp, ttft_ms=TTFT_MS, tokens_per_s=TOKENS_PER_S, length=TOKENS
        )
        services.append(sim)
        slip = harness.start_slipstream(tmp, sim.url)
        services.append(slip.service)
        messages = [{"role": "user", "content": "benchmark"}]

        def completion(model: str) -> dict[str, object]:
            return {"model": model, "messages": messages, "stream": True}

        v1 = "/v1/chat/completions"
        paths: list[tuple[str, str, dict[str, object], dict[str, str]]] = [
            ("direct", sim.url + v1, completion("sim"), {}),
            ("slipstream", slip.service.url + v1, completion("primary"), slip.auth_headers),
            # The browser's endpoint: a new conversation per request, stored as it streams.
            (
                "chat",
                slip.service.url + "/chat/stream/",
                {"content": "benchmark"},
                slip.session_headers,
            ),
        ]
        if not args.no_litellm:
            peer = harness.start_litellm(tmp, sim.url)
            services.append(peer)
            paths.append(("litellm", peer.url + v1, completion("sim"), {}))
        results: dict[str, dict[str, list[float]]] = {
            name: {"ttft": [], "itl": []} for name, *_ in paths
        }
        busy0, t0 = harness.machine_busy()[0], time.monotonic()
        with httpx.Client(timeout=30) as client:
            for round_ in range(5 + args.requests):  # 5 warm-up rounds: pools and code paths
                for name, url, body, headers in paths:
                    ttft, gaps = measure(client, url, body, headers)
                    if round_ >= 5:
                        results[name]["ttft"].append(ttft)
                        results[name]["itl"].extend(gaps)
        busy = 100 * (harness.machine_busy()[0] - busy0) / (time.monotonic() - t0)
    finally:
        harness.stop_all(services)
        harness.remove(tmp)

    figures = {
        name: {"ttft_ms": percentiles(r["ttft"]), "itl_ms": percentiles(r["itl"])}
        for name, r in results.items()
    }

    def added(name: str) -> dict[str, dict[str, float]]:
        return {
            kind: {
                q: round(figures[name][kind][q] - figures["direct"][kind][q], 3)
                for q in figures["direct"][kind]
            }
            for kind in ("ttft_ms", "itl_ms")
        }

    report: dict[str, Any] = {
        "requests": args.requests,
        "tokens_per_answer": TOKENS,
        "simulator_tokens_per_s": TOKENS_PER_S,
        "simulator_ttft_ms": TTFT_MS,
        # Busy CPU of the machine meanwhile, % of one core (2 cores: 200; this run itself uses
        # about one: client, server and simulator take turns).
        "machine_busy_pct": round(busy, 1),
        "direct": figures["direct"],
        "relay": figures["slipstream"],
        "added": added("slipstream"),
        "chat": figures["chat"],
        "added_chat": added("chat"),
    }
    rows = [("direct", figures["direct"]), ("slipstream", figures["slipstream"])]
    rows.append(("added", report["added"]))
    rows += [("chat", figures["chat"]), ("added", report["added_chat"])]
    if "litellm" in figures:
        report["litellm_version"] = harness.LITELLM_VERSION
        report["litellm"] = figures["litellm"]
        report["added_litellm"] = added("litellm")
        rows += [("litellm", figures["litellm"]), ("added", report["added_litellm"])]
    print(
        f"{'':>10} {'TTFT p50':>9} {'p90':>8} {'p99':>8} {'ITL p50':>9} {'p90':>8} {'p99':>8}"
        f"   (ms; {args.requests} requests each)"
    )
    for name, row in rows:
        ttft, itl = row["ttft_ms"], row["itl_ms"]
        print(
            f"{name:>10} {ttft['p50']:9.2f} {ttft['p90']:8.2f} {ttft['p99']:8.2f} "
            f"{itl['p50']:9.2f} {itl['p90']:8.2f} {itl['p99']:8.2f}"
        )
    print(f"machine busy meanwhile: {busy:.0f}% of 200% (this run alone uses about 100%)")
    out = harness.write_result("relay_latency", report)
    print(f"written to {out.relative_to(harness.ROOT)}")


if __name__ == "__main__":
    main()
