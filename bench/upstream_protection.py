"""What a failing upstream receives from Slipstream: ``python bench/upstream_protection.py``.

The case of issue 12: a backend whose health check (``GET /v1/models``) answers 200 while every
chat completion answers 503 (a server still loading behind a ready proxy, or shedding load).
``--clients`` clients (default 20) each send one non-streaming ``/v1/chat/completions`` call at
once to one daphne process whose slot has a ``--cold-boot-s`` (default 30) cold-boot timeout.
It prints what the upstream received (completion calls and health checks, per second), the
slot row's UPDATEs (counted by ``bench/daphne_counted.py``, one process only), and what the
clients got (status, ``Retry-After``, time to answer). Before the fix one such client made 13,685
calls in 120 s.

``--processes N`` puts N daphne processes behind one address (the clients spread over them by
the kernel). With ``REDIS_URL`` in the environment (a Redis database of the bench's own: the
slot's keys are the same every run) the rule holds across them (issue 29); without, each process
protects the slot on its own, which is the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    PYTHON,
    ROOT,
    start_simulator,
    start_slipstream,
    stop_all,
    workdir,
    write_result,
)


async def one_client(base_url: str, key: str) -> tuple[int, str, float, str]:
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=600) as client:
        response = await client.post(
            base_url + "/v1/chat/completions",
            json={"model": "primary", "messages": [{"role": "user", "content": "Hello"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
    code = response.json().get("error", {}).get("code", "") if response.content else ""
    return (
        response.status_code,
        response.headers.get("Retry-After", ""),
        time.monotonic() - started,
        code,
    )


def after_the_first_wave(per_second: list[int]) -> float | None:
    """Calls per second in the whole seconds after the first second with any call."""
    first = next((i for i, n in enumerate(per_second) if n), len(per_second))
    after = per_second[first + 1 : -1]  # the last second is cut short by the clients' end
    return round(sum(after) / len(after), 2) if after else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--cold-boot-s", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=1, help="daphne processes, one address")
    args = parser.parse_args()
    tmp = workdir("slipstream-protect-")
    services = []
    try:
        sim = start_simulator(tmp, ttft_ms=0, tokens_per_s=0, length=8)
        services.append(sim)
        httpx.post(
            sim.url + "/sim/config", json={"fail_requests": 10**9, "fail_status": 503}
        ).raise_for_status()
        counted = args.processes == 1
        slipstream = start_slipstream(tmp, sim.url, count_writes=counted, processes=args.processes)
        services.extend(slipstream.processes)
        update = "from chat.models import Slot; Slot.objects.update(cold_boot_timeout_s=%s)"
        update %= args.cold_boot_s
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{slipstream.database}"}
        command = [PYTHON, "manage.py", "shell", "-c", update]
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        before = httpx.get(sim.url + "/sim/stats").json()
        started = time.monotonic()

        per_second: list[int] = []  # completion calls in each second of the run

        async def count_calls(clients: asyncio.Future[Any]) -> None:
            seen = before["requests"]
            async with httpx.AsyncClient() as client:
                while not clients.done():
                    await asyncio.wait((clients,), timeout=1.0)
                    now = (await client.get(sim.url + "/sim/stats")).json()["requests"]
                    per_second.append(now - seen)
                    seen = now

        async def run() -> list[tuple[int, str, float, str]]:
            clients = asyncio.gather(
                *(
                    one_client(slipstream.service.url, slipstream.api_key)
                    for _ in range(args.clients)
                )
            )
            await count_calls(clients)
            return await clients

        answers = asyncio.run(run())
        elapsed = time.monotonic() - started
        after = httpx.get(sim.url + "/sim/stats").json()
        writes = slipstream.counters().get("writes", {})
    finally:
        stop_all(services)
    calls = after["requests"] - before["requests"]
    checks = after["health_checks"] - before["health_checks"]
    slot_updates = (
        sum(n for verb, n in writes.items() if verb.startswith("UPDATE chat_slot"))
        if counted
        else None
    )
    outcomes = Counter((status, retry_after, code) for status, retry_after, _, code in answers)
    result = {
        "clients": args.clients,
        "processes": args.processes,
        "across_processes": bool(os.environ.get("REDIS_URL")),
        "cold_boot_timeout_s": args.cold_boot_s,
        "elapsed_s": round(elapsed, 2),
        "completion_calls": calls,
        "health_checks": checks,
        "upstream_requests_per_s": round((calls + checks) / elapsed, 2),
        "completion_calls_per_second": per_second,
        # After the second of the first wave (the calls made before any failure came back).
        "after_the_first_wave_per_s": after_the_first_wave(per_second),
        "slot_row_updates": slot_updates,
        "answers": {f"{s} Retry-After={r or '-'} {c}": n for (s, r, c), n in outcomes.items()},
        "answer_time_s": [
            round(min(a[2] for a in answers), 2),
            round(max(a[2] for a in answers), 2),
        ],
    }
    print(json.dumps(result, indent=2))
    write_result("upstream_protection", result)


if __name__ == "__main__":
    main()
