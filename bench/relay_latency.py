"""Relay overhead at one stream: ``python bench/relay_latency.py [--requests 200] [--no-litellm]``

Runs the simulator, Slipstream (one daphne process, on a throwaway SQLite database) and
LiteLLM's proxy (``bench/.venv-litellm``, one worker, no master key, no database; leave it out
with ``--no-litellm``) as separate processes on loopback. The simulator answers every request
with 50 tokens at 200 tokens/s (5 ms apart: fine-grained enough to see per-chunk overhead) after
a 20 ms TTFT. The same streaming chat request is sent, one at a time, in turn straight to the
simulator, through Slipstream's ``/v1/chat/completions``, through the browser's
``/chat/stream/`` (a logged-in session; each request starts and stores a conversation) and
through LiteLLM's. The Responses API (``/v1/responses``, ``"input": "benchmark"``, stored as by
default) goes straight to the simulator's own ``/v1/responses`` (``direct_responses``) and
through Slipstream's on two slots: ``primary``, whose backend is set to pass it to the
simulator's ``/v1/responses`` (``responses_native``), and ``primary-translate``, on a second
backend at the same simulator set to translate it to chat completions (``responses_translated``).
Each path runs ``--requests`` times (after 5 warm-up rounds). Reports TTFT (request sent ->
first content chunk: a chat chunk with content, or a ``response.output_text.delta`` event) and
ITL (gap between consecutive content chunks or deltas) p50/p90/p99 in ms for each path, and
each relay's *added* TTFT and ITL: its percentile minus its baseline's (``added``: Slipstream's
/v1, ``added_chat``: the chat's, ``added_litellm``: LiteLLM, all against ``direct``;
``added_responses_native`` against ``direct_responses``; ``added_responses_translated``
against ``direct``, the chat completions that go upstream). The client (httpx, one pooled
connection per server) costs the same on every path. Prints a table and writes
``bench/results/relay_latency.json``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import harness
import httpx
from harness import Service

TOKENS = 50
TOKENS_PER_S = 200
TTFT_MS = 20
# The bench backend passes /v1/responses to the simulator's own; a second backend at the same
# simulator, with its own slot, translates it to chat completions.
SETUP = """
backend.responses_api = Backend.ResponsesApi.NATIVE
backend.save()
translating = Backend.objects.create(
    name="sim-translate", base_url=backend.base_url, max_concurrency=backend.max_concurrency,
    responses_api=Backend.ResponsesApi.TRANSLATE,
)
Slot.objects.create(
    name="primary-translate", backend=translating, upstream_model="sim",
    single_flight="off", max_concurrency=backend.max_concurrency,
)
"""


def is_chat_token(line: str) -> bool:
    """A chat completion chunk with content."""
    return line.startswith("data: {") and '"content":"' in line and '"content":""' not in line


def is_responses_token(line: str) -> bool:
    """A Responses ``response.output_text.delta`` event's data line."""
    return line.startswith("data: {") and '"type":"response.output_text.delta"' in line


def measure(
    client: httpx.Client,
    url: str,
    body: dict[str, object],
    headers: dict[str, str],
    is_token: Callable[[str], bool] = is_chat_token,
) -> tuple[float, list[float]]:
    """(TTFT ms, inter-token gaps ms) of one streamed answer."""
    sent = time.perf_counter()
    arrivals: list[float] = []
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if is_token(line):
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
        slip = harness.start_slipstream(tmp, sim.url, setup=SETUP)
        services.append(slip.service)
        messages = [{"role": "user", "content": "benchmark"}]

        def completion(model: str) -> dict[str, object]:
            return {"model": model, "messages": messages, "stream": True}

        def response(model: str) -> dict[str, object]:
            return {"model": model, "input": "benchmark", "stream": True}

        v1, rs = "/v1/chat/completions", "/v1/responses"
        slip_url, auth = slip.service.url, slip.auth_headers
        chat, resp = is_chat_token, is_responses_token
        paths: list[tuple[str, str, dict[str, object], dict[str, str], Callable[[str], bool]]] = [
            ("direct", sim.url + v1, completion("sim"), {}, chat),
            ("slipstream", slip_url + v1, completion("primary"), auth, chat),
            # The browser's endpoint: a new conversation per request, stored as it streams.
            (
                "chat",
                slip_url + "/chat/stream/",
                {"content": "benchmark"},
                slip.session_headers,
                chat,
            ),
            ("direct_responses", sim.url + rs, response("sim"), {}, resp),
            ("responses_native", slip_url + rs, response("primary"), auth, resp),
            ("responses_translated", slip_url + rs, response("primary-translate"), auth, resp),
        ]
        if not args.no_litellm:
            peer = harness.start_litellm(tmp, sim.url)
            services.append(peer)
            paths.append(("litellm", peer.url + v1, completion("sim"), {}, chat))
        results: dict[str, dict[str, list[float]]] = {
            name: {"ttft": [], "itl": []} for name, *_ in paths
        }
        busy0, t0 = harness.machine_busy()[0], time.monotonic()
        with httpx.Client(timeout=30) as client:
            for round_ in range(5 + args.requests):  # 5 warm-up rounds: pools and code paths
                for name, url, body, headers, is_token in paths:
                    ttft, gaps = measure(client, url, body, headers, is_token)
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

    def added(name: str, baseline: str = "direct") -> dict[str, dict[str, float]]:
        return {
            kind: {
                q: round(figures[name][kind][q] - figures[baseline][kind][q], 3)
                for q in figures[baseline][kind]
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
        "direct_responses": figures["direct_responses"],
        "responses_native": figures["responses_native"],
        "added_responses_native": added("responses_native", "direct_responses"),
        "responses_translated": figures["responses_translated"],
        "added_responses_translated": added("responses_translated"),
    }
    rows = [("direct", figures["direct"]), ("slipstream", figures["slipstream"])]
    rows.append(("added", report["added"]))
    rows += [("chat", figures["chat"]), ("added", report["added_chat"])]
    rows += [
        ("direct_responses", figures["direct_responses"]),
        ("responses_native", figures["responses_native"]),
        ("added", report["added_responses_native"]),
        ("responses_translated", figures["responses_translated"]),
        ("added", report["added_responses_translated"]),
    ]
    if "litellm" in figures:
        report["litellm_version"] = harness.LITELLM_VERSION
        report["litellm"] = figures["litellm"]
        report["added_litellm"] = added("litellm")
        rows += [("litellm", figures["litellm"]), ("added", report["added_litellm"])]
    print(
        f"{'':>20} {'TTFT p50':>9} {'p90':>8} {'p99':>8} {'ITL p50':>9} {'p90':>8} {'p99':>8}"
        f"   (ms; {args.requests} requests each)"
    )
    for name, row in rows:
        ttft, itl = row["ttft_ms"], row["itl_ms"]
        print(
            f"{name:>20} {ttft['p50']:9.2f} {ttft['p90']:8.2f} {ttft['p99']:8.2f} "
            f"{itl['p50']:9.2f} {itl['p90']:8.2f} {itl['p99']:8.2f}"
        )
    print(f"machine busy meanwhile: {busy:.0f}% of 200% (this run alone uses about 100%)")
    out = harness.write_result("relay_latency", report)
    print(f"written to {out.relative_to(harness.ROOT)}")


if __name__ == "__main__":
    main()
