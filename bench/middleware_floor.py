"""The floor of Django's request path: ``python bench/middleware_floor.py [--requests 2000]``.

One daphne process serves an empty async view (``bench/floor``: Slipstream's settings and URLs
plus ``/bench/empty/``) under one middleware chain per row: none, each of ``MIDDLEWARE`` alone,
then (``--each``) the chain
growing by one middleware per row in its order (each needs those before it), else the whole
chain at once. One client sends ``--requests`` GETs one after another on a kept-alive
connection (after 200 to warm up) and reports, per row:

- daphne's CPU per request (``/proc``: whole process and its main thread, µs);
- the request's wall time as the client sees it (p50 / p99, ms);
- the threads daphne started (asgiref runs each ``sync_to_async`` hop in its executor: a
  middleware that needs one shows up as CPU off the main thread).

"added" columns are against the row without middleware, measured in the same run. The view's
own cost and daphne's are in that row; a chain whose added CPU is near zero costs nothing but
its Python calls. Writes ``bench/results/middleware_floor.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
import httpx

FLOOR = harness.BENCH / "floor"


def middleware_of_settings() -> list[str]:
    """``MIDDLEWARE`` as Slipstream's settings list it."""
    sys.path.insert(0, str(harness.ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-not-secret")
    from django.conf import settings

    return list(settings.MIDDLEWARE)


def measure(chain: list[str], requests: int, tmp: Path) -> dict[str, Any]:
    """One daphne process with ``chain``; ``requests`` sequential GETs of the empty view."""
    port = harness.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{FLOOR}{os.pathsep}{harness.ROOT}",
        "DJANGO_SETTINGS_MODULE": "settings",
        "BENCH_MIDDLEWARE": ",".join(chain),
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
        "DJANGO_SECRET_KEY": "bench-not-secret",
        "DJANGO_DEBUG": "false",
    }
    command = harness.server.command("127.0.0.1", port)  # as manage.py serve runs it
    service = harness.spawn("daphne", command, "", tmp, env)
    service.url = f"http://127.0.0.1:{port}"
    try:
        harness.wait_http(service, "/bench/empty/")
        with httpx.Client(base_url=service.url, timeout=10) as client:
            for _ in range(200):
                client.get("/bench/empty/").raise_for_status()
            cpu0 = harness.proc_cpu(service.pid)
            walls = []
            for _ in range(requests):
                started = time.perf_counter()
                client.get("/bench/empty/").raise_for_status()
                walls.append((time.perf_counter() - started) * 1000)
            cpu1 = harness.proc_cpu(service.pid)
        threads = harness.proc_threads(service.pid)
    finally:
        service.stop()
    return {
        "cpu_us": round((cpu1[0] - cpu0[0]) / requests * 1e6, 1),
        "main_thread_cpu_us": round((cpu1[1] - cpu0[1]) / requests * 1e6, 1),
        "wall_ms": harness.percentiles(walls, 3),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--each", action="store_true", help="add one middleware per row")
    args = parser.parse_args()
    full = middleware_of_settings()
    rows: list[tuple[str, list[str]]] = [("none", [])]
    if args.each:
        rows += [("+ " + m.rsplit(".", 1)[-1], full[: i + 1]) for i, m in enumerate(full)]
    else:
        rows.append(("whole chain", full))
    tmp = harness.workdir("floor")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
        "DJANGO_SECRET_KEY": "bench-not-secret",
    }
    subprocess.run([harness.PYTHON, "manage.py", "migrate", "-v0"], env=env, check=True)
    print(f"empty async view, {args.requests} sequential requests per row, one daphne process")
    print(
        f"{'chain':<28} {'CPU µs':>8} {'main µs':>8} {'added':>8} {'step':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7}"
    )
    results: dict[str, Any] = {"requests": args.requests, "rows": {}}
    base: float | None = None
    previous: float | None = None
    try:
        for name, chain in rows:
            row = measure(chain, args.requests, tmp)
            base = row["cpu_us"] if base is None else base
            row["added_cpu_us"] = round(row["cpu_us"] - base, 1)
            row["step_cpu_us"] = round(row["cpu_us"] - (previous or row["cpu_us"]), 1)
            previous = row["cpu_us"]
            results["rows"][name] = row
            print(
                f"{name:<28} {row['cpu_us']:>8.0f} {row['main_thread_cpu_us']:>8.0f} "
                f"{row['added_cpu_us']:>8.0f} {row['step_cpu_us']:>7.0f} "
                f"{row['wall_ms']['p50']:>7.3f} {row['wall_ms']['p99']:>7.3f}",
                flush=True,
            )
    finally:
        harness.remove(tmp)
    out = harness.write_result("middleware_floor", results)
    print(f"wrote {out.relative_to(harness.ROOT)}")


if __name__ == "__main__":
    main()
