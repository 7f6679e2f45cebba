"""Relay overhead at one stream: ``python bench/relay_latency.py [--requests 200]``

Runs the simulator and Slipstream (daphne) as separate processes on loopback, on a throwaway
SQLite database, then sends the same streaming chat request alternately straight to the
simulator and through Slipstream's ``/v1/chat/completions``. Reports TTFT (request sent → first
content chunk) and ITL (gap between content chunks) for both, and the relay's *added* TTFT and
ITL (p50/p90/p99, ms). Prints a table and writes ``bench/results/relay_latency.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.llama_server import free_port  # noqa: E402

TOKENS = 50
TOKENS_PER_S = 200  # 5 ms between tokens: fine-grained enough to see per-chunk overhead
SETUP = """
from django.contrib.auth.models import User
from chat.models import Backend, Slot
from chat.services import api_key_create
user = User.objects.create_user("bench", password="bench-pass-123")
backend = Backend.objects.create(name="sim", base_url="{sim}/v1")
Slot.objects.create(name="primary", backend=backend, upstream_model="sim", is_default=True)
print(api_key_create(user=user, name="bench")[1])
"""


def wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


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
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 3), "p90": round(q[89], 3), "p99": round(q[98], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="slipstream-bench-"))
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "DJANGO_SECRET_KEY": "bench-not-secret",
        "SLIPSTREAM_LOG_LEVEL": "WARNING",
    }
    sim_port, app_port = free_port(), free_port()
    sim_url, app_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{app_port}"
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    key = (
        subprocess.run(
            [python, "manage.py", "shell", "-c", SETUP.format(sim=sim_url)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    processes = [
        subprocess.Popen(
            [python, "-m", "chat.simulator", "--port", str(sim_port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                python,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(app_port),
                "chatsite.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_for(sim_url + "/health", processes[0])
        wait_for(app_url + "/login/", processes[1])
        sim = {"ttft_ms": 20, "tokens_per_s": TOKENS_PER_S, "length": TOKENS}
        messages = [{"role": "user", "content": "benchmark"}]
        direct_body = {"model": "sim", "messages": messages, "stream": True, "sim": sim}
        relay_body = {"model": "primary", "messages": messages, "stream": True, "sim": sim}
        auth = {"Authorization": f"Bearer {key}"}
        results: dict[str, dict[str, list[float]]] = {
            "direct": {"ttft": [], "itl": []},
            "relay": {"ttft": [], "itl": []},
        }
        with httpx.Client(timeout=30) as client:
            for _ in range(5):  # warm up pools and code paths
                measure(client, sim_url + "/v1/chat/completions", direct_body, {})
                measure(client, app_url + "/v1/chat/completions", relay_body, auth)
            for _ in range(args.requests):
                for name, url, body, headers in (
                    ("direct", sim_url + "/v1/chat/completions", direct_body, {}),
                    ("relay", app_url + "/v1/chat/completions", relay_body, auth),
                ):
                    ttft, gaps = measure(client, url, body, headers)
                    results[name]["ttft"].append(ttft)
                    results[name]["itl"].extend(gaps)
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)

    direct_ttft = percentiles(results["direct"]["ttft"])
    relay_ttft = percentiles(results["relay"]["ttft"])
    direct_itl = percentiles(results["direct"]["itl"])
    relay_itl = percentiles(results["relay"]["itl"])
    added = {
        "ttft_ms": {k: round(relay_ttft[k] - direct_ttft[k], 3) for k in direct_ttft},
        "itl_ms": {k: round(relay_itl[k] - direct_itl[k], 3) for k in direct_itl},
    }
    report = {
        "requests": args.requests,
        "tokens_per_answer": TOKENS,
        "simulator_tokens_per_s": TOKENS_PER_S,
        "direct": {"ttft_ms": direct_ttft, "itl_ms": direct_itl},
        "relay": {"ttft_ms": relay_ttft, "itl_ms": relay_itl},
        "added": added,
    }
    print(
        f"{'':>8} {'TTFT p50':>9} {'p90':>8} {'p99':>8} {'ITL p50':>9} {'p90':>8} {'p99':>8}   (ms)"
    )
    for name, ttft, itl in (
        ("direct", direct_ttft, direct_itl),
        ("relay", relay_ttft, relay_itl),
        ("added", added["ttft_ms"], added["itl_ms"]),
    ):
        print(
            f"{name:>8} {ttft['p50']:9.2f} {ttft['p90']:8.2f} {ttft['p99']:8.2f} "
            f"{itl['p50']:9.2f} {itl['p90']:8.2f} {itl['p99']:8.2f}"
        )
    out = ROOT / "bench" / "results" / "relay_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
