"""Stream capacity: ``python bench/capacity.py --target {direct,v1,litellm,chat}``.

One simulator process streams every answer: ``--tokens`` (300) content tokens at ``--rate`` (20)
tokens/s each after ``--ttft-ms`` (50). The target sits between it and the load generator:

- ``direct``: nothing; the simulator's own capacity, the baseline every other row needs.
- ``v1``: one daphne process serving Slipstream's ``POST /v1/chat/completions`` (bearer key).
- ``litellm``: LiteLLM's proxy (``litellm --config ... --num_workers 1``, no master key, no
  database), installed in ``bench/.venv-litellm`` at a pinned version.
- ``chat``: one daphne process serving the browser's ``POST /chat/stream/`` (a logged-in
  session and its CSRF token), which stores each answer.

Slipstream runs on a throwaway SQLite database with one slot (single-flight off, slot and
backend concurrency 2,000), under ``bench/daphne_counted.py``, which counts its database
writes (by verb, table and, for an UPDATE, the columns set); every request's text is distinct.
For each level of concurrent streams (``--levels``, default 1 50 200 500 1000),
``bench/loadgen.py`` (a bare-asyncio client in its own process) starts the streams evenly over
``--ramp-s`` (5 s: 200 new streams/s at 1,000; 15-s streams then all overlap for about 10 s)
and records every token's arrival. Per level (a "row"):

- in the steady window (from the last request's first token to the first request's last token
  on the schedule of an instant relay: token k of a stream at sent + TTFT + k / rate, so that
  every stream should be streaming), tokens/s *delivered* to the clients, *sent* by the
  simulator (the same schedule from when each request reached it, from its request history)
  and *offered* (streams x rate). ``d/sent`` and ``d/off`` are the ratios: a relay that falls
  behind delivers less than was sent (the backlog waits in socket buffers), one that admits
  requests late delivers less than was offered. ``simlate`` (p99, ms): how late the simulator
  finished its streams against its own schedule (it must stay near 0);
- TTFT (request sent -> first content token) p50/p99 and ITL (gap between a stream's
  consecutive tokens) p50/p99/max, ms; errors (non-200, connection failures, an error event,
  no ``[DONE]``), the kernel's listen-queue overflows, and the requests that reached the
  simulator and were still streaming there when the clients were done (a relay that does not
  cancel abandoned requests; each level first waits for the simulator to be idle);
- CPU over the steady window, % of one core, of each process (simulator, server, load
  generator: whole process / main thread, where asyncio runs) and of everything else on the
  machine (``other``; 2 cores = 200 %); peak RSS (MB) and threads. A process whose main thread
  is >= 90 % is CPU-bound; so is the machine at >= 190 %;
- Slipstream's database writes in the row, and per completed answer; the share of daphne's
  time spent in GC pauses and its full collections.

The machine may be shared: a row during which other work used more than ``--max-other-pct``
(30 %) of a core is measured again once the machine is quiet (at most twice, waiting at most
``--quiet-budget-s`` in all); the row keeps its ``other%`` and ``repeats``.

A row passes when it has no errors, both ratios are >= ``--min-ratio`` (0.98), p99 ITL is
<= ``--itl-bound-ms`` (100: two token intervals) and p99 TTFT <= ``--ttft-bound-ms`` (1,000).
The knee is the first failing level; ``--refine`` (2) bisection rounds between the last
passing level and it narrow it down at once, before the larger levels run (RSS is the peak so
far of the one server process). Capacity is the largest passing level below the knee.
Writes ``bench/results/capacity_<target>.json`` (``--result`` names another).

On a machine with cores to spare, ``--pin`` gives each daphne process a core of its own, the
simulator the next and the load generators the rest, as the issue's table was measured, and
``--processes N`` puts N daphne processes behind one address (``SO_REUSEPORT`` sockets of one
port: the kernel spreads connections over them); ``srv%`` is then their CPU summed over the
busiest main thread, and ``srvMB`` their RSS summed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import httpx
from harness import Sampler, Service, Slipstream

LOADGEN = harness.BENCH / "loadgen.py"
CPU_BOUND_PCT = 90.0
CORES = os.cpu_count() or 1
MACHINE_BUSY_PCT = 95.0 * CORES  # every core busy (190 % on 2 cores)


@dataclass
class Target:
    name: str
    server: Service | None
    host: str
    port: int
    path: str
    headers: dict[str, str]
    body: str
    slipstream: Slipstream | None = None
    pids: dict[str, int] | None = None  # processes sampled in every round, by role
    loadgen_cores: set[int] | None = None  # where the load generators run (--pin), None: any


@dataclass
class Placement:
    """Which CPUs each role runs on (``--pin``): daphne process i on ``servers[i]``, the
    simulator on ``simulator``, the load generators on ``loadgen``; all None without ``--pin``."""

    servers: list[int] | None = None
    simulator: set[int] | None = None
    loadgen: set[int] | None = None

    @classmethod
    def of(cls, args: argparse.Namespace) -> Placement:
        """One core per daphne process from core 0, the next for the simulator, the rest for
        the load generators. Raises SystemExit when the machine has too few cores."""
        if not args.pin:
            return cls()
        processes = getattr(args, "processes", 1)
        servers = list(range(processes))
        sim = processes
        if sim + 2 > CORES:
            raise SystemExit(f"--pin needs {sim + 2} cores for {processes} daphne processes")
        return cls(servers, {sim}, set(range(sim + 1, CORES)))

    def pin_this_process(self) -> None:
        """Keep the calling (bench) process, and what it starts unpinned, off the cores of
        daphne and the simulator."""
        if self.loadgen:
            os.sched_setaffinity(0, self.loadgen)


def chat_completion_body(model: str) -> str:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "capacity stream %INDEX%"}],
            "stream": True,
        }
    )


def start_target(
    name: str,
    tmp: Path,
    sim: Service,
    services: list[Service],
    *,
    count_writes: bool = True,
    processes: int = 1,
    cores: list[int] | None = None,
) -> Target:
    """The target ``name`` in front of ``sim``; Slipstream's with ``processes`` daphne processes
    (on ``cores``, one each, when given), counting its writes when ``count_writes`` and one
    process."""
    if name == "direct":
        body = chat_completion_body("sim")
        return Target(name, None, "127.0.0.1", sim.port, "/v1/chat/completions", {}, body)
    if name == "litellm":
        peer = harness.start_litellm(tmp, sim.url)
        services.append(peer)
        body = chat_completion_body("sim")
        return Target(name, peer, "127.0.0.1", peer.port, "/v1/chat/completions", {}, body)
    slip = harness.start_slipstream(
        tmp, sim.url, count_writes=count_writes and processes == 1, processes=processes, cores=cores
    )
    services.extend(slip.processes)
    port = slip.service.port
    if name == "v1":
        body = chat_completion_body("primary")
        path, headers = "/v1/chat/completions", slip.auth_headers
    else:
        body = json.dumps({"content": "capacity stream %INDEX%"})
        path, headers = "/chat/stream/", slip.session_headers
    return Target(name, slip.service, "127.0.0.1", port, path, headers, body, slip)


def run_load(
    target: Target, streams: int, *, tag: str, ramp_s: float, timeout_s: float, procs: int
) -> tuple[list[dict[str, Any]], Sampler, list[int]]:
    """Run ``streams`` streams through ``target`` with ``procs`` load generator processes,
    sampling every process meanwhile. Returns the stream records, the sampler and the load
    generators' pids."""
    tmp = harness.workdir("load")
    start_at = time.monotonic() + 1.0  # the load generators start in well under a second
    spec = {
        "host": target.host,
        "port": target.port,
        "path": target.path,
        "headers": target.headers,
        "body": target.body.replace("%INDEX%", f"{tag}-%INDEX%"),
        "streams": streams,
        "shards": procs,
        "start_at": start_at,
        "ramp_s": ramp_s,
        "timeout_s": timeout_s,
    }
    children = []
    pin = harness.pinned_to(target.loadgen_cores)
    for shard in range(procs):
        spec_file, out_file = tmp / f"spec{shard}.json", tmp / f"out{shard}.json"
        spec_file.write_text(json.dumps({**spec, "shard": shard}))
        command = [harness.PYTHON, str(LOADGEN), str(spec_file), str(out_file)]
        child = subprocess.Popen(command, cwd=harness.ROOT, preexec_fn=pin)
        children.append((child, out_file))
    pids = {"loadgen" if procs == 1 else f"loadgen{i}": p.pid for i, (p, _) in enumerate(children)}
    sampler = Sampler({**pids, **(target.pids or {})}).start()
    records: list[dict[str, Any]] = []
    try:
        for process, out_file in children:
            process.wait(timeout_s + ramp_s + 30)
            records += json.loads(out_file.read_text())["streams"]
    finally:
        sampler.stop()
        for process, _ in children:
            if process.poll() is None:
                process.kill()
                process.wait()
        harness.remove(tmp)
    return records, sampler, list(pids.values())


def scheduled_between(starts: list[float], lo: float, hi: float, args: argparse.Namespace) -> int:
    """How many tokens fall between ``lo`` and ``hi`` on the schedule of streams started at
    ``starts``: token k (0-based) at start + TTFT + k / rate."""
    ttft_s, interval = args.ttft_ms / 1000, 1 / args.rate
    count = 0
    for start in starts:
        first = start + ttft_s
        k_lo = max(0, math.ceil((lo - first) / interval))
        k_hi = min(args.tokens - 1, math.floor((hi - first) / interval))
        count += max(0, k_hi - k_lo + 1)
    return count


def sim_late_p99_ms(history: list[dict[str, Any]], args: argparse.Namespace) -> float | None:
    """p99 of how late the simulator finished its streams against its own schedule, ms. It
    writes token k at start + TTFT + k / rate; a stream that ends late was held back (by the
    simulator's CPU, or by TCP backpressure from a reader that does not keep up)."""
    ttft_s, interval = args.ttft_ms / 1000, 1 / args.rate
    late = [
        (r["ended_at"] - r["started_at"] - ttft_s - (args.tokens - 1) * interval) * 1000
        for r in history
        if r.get("outcome") == "completed" and r.get("ended_at") is not None
    ]
    return harness.percentile(late, 0.99)


def measure(
    target: Target,
    sim: Service,
    streams: int,
    args: argparse.Namespace,
    tag: str,
    kind: str,
) -> dict[str, Any]:
    """One row: ``streams`` concurrent streams through ``target``."""
    httpx.post(sim.url + "/sim/reset", timeout=10).raise_for_status()
    slip = target.slipstream
    counters_before = slip.counters() if slip else {}
    overflows_before = harness.tcp_listen_overflows()
    ramp_s = args.ramp_s if streams > 1 else 0.0
    timeout_s = args.ttft_ms / 1000 + args.tokens / args.rate * 4 + 60
    records, sampler, _ = run_load(
        target,
        streams,
        tag=tag,
        ramp_s=ramp_s,
        timeout_s=timeout_s,
        procs=args.loadgen_procs,
    )
    overflows = harness.tcp_listen_overflows() - overflows_before
    stats = httpx.get(sim.url + "/sim/stats", timeout=30).json()
    history = stats["history"]
    counters_after = slip.counters() if slip else {}

    ok = [r for r in records if r["error"] is None and r["done"] and r["status"] == 200]
    errors = Counter((r["error"] or "")[:80] for r in records if r not in ok)
    gaps = [b - a for r in records for a, b in itertools.pairwise(r["arrivals"])]
    ttfts = [r["arrivals"][0] - r["sent"] for r in records if r["arrivals"] and r["sent"]]
    # The steady window comes from the schedule, not from what the target did: from the last
    # request's first token to the first request's last token, had each been relayed at once.
    sent_at = [r["sent"] for r in records if r["sent"]]
    ttft_s, length_s = args.ttft_ms / 1000, (args.tokens - 1) / args.rate
    lo, hi = max(sent_at) + ttft_s, min(sent_at) + ttft_s + length_s
    if hi - lo < 1.0:  # the ramp outlasts a stream: the whole schedule instead
        lo, hi = min(sent_at) + ttft_s, max(sent_at) + ttft_s + length_s
    window = max(hi - lo, 1e-9)
    delivered = sum(lo <= t <= hi for r in records for t in r["arrivals"]) / window
    # Sent: on the simulator's schedule from when each request reached it. Offered: on the
    # same schedule from when each request was sent, i.e. what an instant relay would deliver.
    sent = scheduled_between([h["started_at"] for h in history], lo, hi, args) / window
    offered = scheduled_between(sent_at, lo, hi, args) / window
    sim_late_ms = sim_late_p99_ms(history, args)

    cpu: dict[str, dict[str, float | None]] = {}
    for name in sampler.pids:
        pct = sampler.cpu_pct(name, lo, hi)
        rss = sampler.rss_max(name)
        cpu[name] = {
            "cpu_pct": None if pct is None else round(pct[0], 1),
            "main_thread_pct": None if pct is None else round(pct[1], 1),
            "rss_mb": None if rss is None else round(rss / 2**20, 1),
            "threads_max": sampler.threads_max(name),
        }
    machine = sampler.machine_pct(lo, hi)
    ours = sum(p["cpu_pct"] or 0 for p in cpu.values())
    itl_ms = {k: v for k, v in harness.percentiles([g * 1000 for g in gaps], 2).items()}
    row: dict[str, Any] = {
        "streams": streams,
        "kind": kind,
        "completed": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(3)),
        "listen_overflows": overflows,
        # Requests that reached the simulator, and streams still running there when every
        # client had finished or given up (a relay that does not cancel abandoned requests).
        "upstream_requests": stats["requests"],
        "upstream_active_after": stats["active"],
        "tokens_delivered": sum(len(r["arrivals"]) for r in records),
        "offered_tps": round(offered, 1),
        "sent_tps": round(sent, 1),
        "delivered_tps": round(delivered, 1),
        "delivered_per_sent": round(delivered / sent, 4) if sent else None,
        "delivered_per_offered": round(delivered / offered, 4) if offered else None,
        "ttft_ms": harness.percentiles([t * 1000 for t in ttfts], 1),
        "itl_ms": {**itl_ms, "max": round(max(gaps) * 1000, 1) if gaps else None},
        "window_s": round(hi - lo, 2),
        "sim_late_p99_ms": None if sim_late_ms is None else round(sim_late_ms, 1),
        "machine_cpu_pct": None if machine is None else round(machine, 1),
        # Busy CPU of everything else on the machine (other work skews every figure).
        "other_cpu_pct": None if machine is None else round(max(0.0, machine - ours), 1),
        "processes": cpu,
    }
    row["cpu_bound"] = cpu_bound(row)
    row["failed"] = failures(row, args)
    row["passes"] = not row["failed"]
    if slip and slip.counts_file is not None:
        before, after = counters_before["writes"], counters_after["writes"]
        writes = {k: v - before.get(k, 0) for k, v in after.items()}
        writes = {k: v for k, v in sorted(writes.items()) if v}
        answers = max(1, len(ok))
        # Checkpoints: UPDATEs of a streaming answer's text, without its final status.
        checkpoints = sum(
            n
            for k, n in writes.items()
            if k.startswith("UPDATE chat_message") and "status" not in k
        )
        row["db_writes"] = writes
        row["db_writes_per_answer"] = round(sum(writes.values()) / answers, 2)
        row["db_checkpoint_writes_per_answer"] = round(checkpoints / answers, 2)
        # The garbage collector's share of the server's time in the row (its pauses stop the
        # event loop), and its full (generation 2) collections.
        elapsed = counters_after["at"] - counters_before["at"]
        gc_s = sum(counters_after["gc_seconds"]) - sum(counters_before["gc_seconds"])
        row["server_gc_pct"] = round(100 * gc_s / elapsed, 1) if elapsed > 0 else None
        row["server_gc_full"] = (
            counters_after["gc_collections"][2] - counters_before["gc_collections"][2]
        )
        # Each full collection's pause (ms): the event loop stops for all of it, every stream's
        # next token waits.
        pauses = counters_after["gc_full_pauses"][len(counters_before["gc_full_pauses"]) :]
        row["server_gc_full_ms"] = [round(1000 * p, 1) for p in pauses]
    return row


def cpu_bound(row: dict[str, Any]) -> str:
    """The process whose main thread saturated a core, or the machine when both cores were
    busy, or "none"."""
    bound = [
        f"{name} ({p['main_thread_pct']:.0f}% main thread)"
        for name, p in row["processes"].items()
        if p["main_thread_pct"] is not None and p["main_thread_pct"] >= CPU_BOUND_PCT
    ]
    machine = row["machine_cpu_pct"]
    if machine is not None and machine >= MACHINE_BUSY_PCT:
        bound.append(f"machine ({machine:.0f}% of {100 * CORES}%)")
    return ", ".join(bound) or "none"


def failures(row: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The pass criteria this row misses (empty: it passes)."""
    missed = []
    if row["errors"]:
        missed.append("errors")
    if min(row["delivered_per_sent"] or 0, row["delivered_per_offered"] or 0) < args.min_ratio:
        missed.append("ratio")
    p99 = row["itl_ms"]["p99"]
    if p99 is None or p99 > args.itl_bound_ms:
        missed.append("itl")
    ttft = row["ttft_ms"]["p99"]
    if ttft is None or ttft > args.ttft_bound_ms:
        missed.append("ttft")
    return missed


def sweep(target: Target, sim: Service, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    budget = {"left_s": args.quiet_budget_s}

    def run(streams: int, kind: str) -> dict[str, Any]:
        for attempt in range(3):
            drained = drain(sim)
            row = measure(target, sim, streams, args, f"{kind}{len(rows)}-{attempt}", kind)
            row["drain_before_s"], row["repeats"] = drained, attempt
            time.sleep(args.settle_s)
            other = row["other_cpu_pct"] or 0
            if other <= args.max_other_pct or budget["left_s"] <= 0 or attempt == 2:
                break
            # Other work on the machine took CPU from this row: measure it again once quiet.
            print(f"  (other work took {other:.0f}% of a core: repeating {streams} when quiet)")
            waited, _ = harness.wait_quiet(budget["left_s"])
            budget["left_s"] -= waited
        rows.append(row)
        print_row(row, args)
        return row

    refined = False
    for level in args.levels:
        if run(level, "sweep")["passes"] or refined:
            continue
        # The knee: bisect between the last passing level and this one now, before the larger
        # levels leave the process bigger (RSS) or busy with abandoned requests.
        refined = True
        hi = level
        lo = max((r["streams"] for r in rows if r["passes"] and r["streams"] < hi), default=0)
        for _ in range(args.refine):
            mid = (lo + hi) // 2
            if mid > 50:
                mid = round(mid / 10) * 10
            if not lo < mid < hi:
                break
            if run(mid, "refine")["passes"]:
                lo = mid
            else:
                hi = mid
    return rows


def drain(sim: Service, timeout_s: float = 180) -> float:
    """Wait until the simulator streams nothing (a target may still be relaying requests whose
    clients gave up); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if httpx.get(sim.url + "/sim/stats", timeout=30).json()["active"] == 0:
            break
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    ordered = sorted(rows, key=lambda r: r["streams"])
    failing = [r["streams"] for r in ordered if not r["passes"]]
    knee = min(failing) if failing else None
    passing = [
        r["streams"] for r in ordered if r["passes"] and (knee is None or r["streams"] < knee)
    ]
    return {
        "knee_streams": knee,
        "capacity_streams": max(passing, default=0),
        "capacity_is_lower_bound": knee is None,
        "criteria": {
            "errors": 0,
            "min_ratio": args.min_ratio,
            "itl_p99_bound_ms": args.itl_bound_ms,
            "ttft_p99_bound_ms": args.ttft_bound_ms,
        },
    }


HEADER = (
    f"{'streams':>7} {'err':>4} {'offer t/s':>9} {'sent t/s':>9} {'deliv t/s':>9} "
    f"{'d/sent':>6} {'d/off':>6} {'ttft50':>6} {'ttft99':>6} {'itl50':>6} {'itl99':>6} "
    f"{'itlmax':>6} {'simlate':>7} {'sim%':>5} {'srv%':>11} {'gen%':>5} {'other%':>6} "
    f"{'srvMB':>6} {'gc%':>4}  verdict, CPU-bound"
)


def servers_cpu(processes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The daphne processes of a row taken together: CPU and RSS summed, the busiest main
    thread and the most threads (``server``, or ``server0`` ... with several processes); None
    when there are none."""
    servers = [v for k, v in processes.items() if k.startswith("server")]
    if not servers or any(v["cpu_pct"] is None for v in servers):
        return None
    return {
        "cpu_pct": sum(v["cpu_pct"] for v in servers),
        "main_thread_pct": max(v["main_thread_pct"] or 0 for v in servers),
        "rss_mb": sum(v["rss_mb"] or 0 for v in servers),
        "threads_max": max(v.get("threads_max") or 0 for v in servers),
    }


def print_row(row: dict[str, Any], args: argparse.Namespace) -> None:
    p = row["processes"]
    server = servers_cpu(p)
    loadgen = sum((v["cpu_pct"] or 0) for k, v in p.items() if k.startswith("loadgen"))

    def num(value: float | None, width: int, digits: int = 0) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    srv = f"{server['cpu_pct']:.0f}/{server['main_thread_pct']:.0f}" if server else "-"
    print(
        f"{row['streams']:>7} {row['errors']:>4} {row['offered_tps']:>9.0f} "
        f"{row['sent_tps']:>9.0f} {row['delivered_tps']:>9.0f} "
        f"{num(row['delivered_per_sent'], 6, 3)} {num(row['delivered_per_offered'], 6, 3)} "
        f"{num(row['ttft_ms']['p50'], 6)} {num(row['ttft_ms']['p99'], 6)} "
        f"{num(row['itl_ms']['p50'], 6, 1)} {num(row['itl_ms']['p99'], 6, 1)} "
        f"{num(row['itl_ms']['max'], 6)} {num(row['sim_late_p99_ms'], 7)} "
        f"{num(p['simulator']['cpu_pct'], 5)} {srv:>11} "
        f"{loadgen:>5.0f} {num(row['other_cpu_pct'], 6)} "
        f"{num(server['rss_mb'] if server else None, 6)} {num(row.get('server_gc_pct'), 4)}  "
        f"{'ok' if row['passes'] else 'MISS:' + '+'.join(row['failed'])} {row['cpu_bound']}"
        + (f"  [{row['kind']}]" if row["kind"] != "sweep" else "")
        + (f"  errors: {row['error_kinds']}" if row["errors"] else ""),
        flush=True,
    )


def chat_rows_left_streaming(database: Path) -> dict[str, int]:
    """Messages by role and status after the sweep, read straight from the SQLite file."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT role, status, COUNT(*) FROM chat_message GROUP BY 1, 2")
        return {f"{role} {status}": n for role, status, n in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["direct", "v1", "litellm", "chat"], required=True)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 50, 200, 500, 1000])
    parser.add_argument("--tokens", type=int, default=300, help="content tokens per stream")
    parser.add_argument("--rate", type=float, default=20, help="tokens/s per stream")
    parser.add_argument("--ttft-ms", type=float, default=50)
    parser.add_argument(
        "--ramp-s", type=float, default=5, help="the streams of a level start evenly over this"
    )
    parser.add_argument("--refine", type=int, default=2, help="bisection rounds at the knee")
    parser.add_argument("--itl-bound-ms", type=float, default=100)
    parser.add_argument("--ttft-bound-ms", type=float, default=1000)
    parser.add_argument("--min-ratio", type=float, default=0.98)
    parser.add_argument("--loadgen-procs", type=int, default=1)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="daphne processes behind one address (v1, chat): SO_REUSEPORT sockets of one port",
    )
    parser.add_argument(
        "--result", help="the results file's name (bench/results/NAME.json): capacity_TARGET"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="each daphne process on a core of its own, the simulator on the next, the load "
        "generators on the rest (a machine with cores to spare)",
    )
    parser.add_argument("--settle-s", type=float, default=2)
    parser.add_argument(
        "--max-other-pct",
        type=float,
        default=30,
        help="repeat a row (twice at most) when other work used more CPU than this meanwhile",
    )
    parser.add_argument(
        "--quiet-budget-s", type=float, default=120, help="most time spent waiting for quiet"
    )
    args = parser.parse_args()
    harness.raise_fd_limit()

    tmp = harness.workdir(f"capacity-{args.target}")
    services: list[Service] = []
    placement = Placement.of(args)
    placement.pin_this_process()
    try:
        sim = harness.start_simulator(
            tmp,
            ttft_ms=args.ttft_ms,
            tokens_per_s=args.rate,
            length=args.tokens,
            cores=placement.simulator,
        )
        services.append(sim)
        target = start_target(
            args.target, tmp, sim, services, processes=args.processes, cores=placement.servers
        )
        target.loadgen_cores = placement.loadgen
        target.pids = {"simulator": sim.pid}
        if target.slipstream is not None and args.processes > 1:
            for i, process in enumerate(target.slipstream.processes):
                target.pids[f"server{i}"] = process.pid
        elif target.server is not None:
            target.pids["server"] = target.server.pid
        warm_up(target, sim)
        print(
            f"capacity through {args.target}: {args.tokens} tokens/stream at {args.rate:g} tok/s, "
            f"TTFT {args.ttft_ms:g} ms; pass: 0 errors, ratios >= {args.min_ratio}, "
            f"p99 ITL <= {args.itl_bound_ms:g} ms, p99 TTFT <= {args.ttft_bound_ms:g} ms"
        )
        print("(CPU in % of one core over the steady window; srv% = process/main thread)")
        print(HEADER)
        rows = sweep(target, sim, args)
        result: dict[str, Any] = {
            "target": args.target,
            "config": {
                k: getattr(args, k)
                for k in (
                    "levels",
                    "tokens",
                    "rate",
                    "ttft_ms",
                    "ramp_s",
                    "loadgen_procs",
                    "processes",
                    "pin",
                )
            },
            "rows": rows,
            **summarise(rows, args),
        }
        if args.target == "litellm":
            result["litellm_version"] = harness.LITELLM_VERSION
        if target.slipstream is not None and args.target == "chat":
            result["messages_after"] = chat_rows_left_streaming(target.slipstream.database)
    finally:
        harness.stop_all(services)
        harness.remove(tmp)
    out = harness.write_result(args.result or f"capacity_{args.target}", result)
    knee = result["knee_streams"]
    print(
        f"knee: {knee if knee else 'none up to ' + str(max(args.levels))} streams; capacity "
        f"{'>= ' if result['capacity_is_lower_bound'] else ''}{result['capacity_streams']} "
        f"streams; wrote {out.relative_to(harness.ROOT)}"
    )


def warm_up(target: Target, sim: Service) -> None:
    """20 short streams: pools filled, code paths warm, the slot seen ready (its one state
    write) before any row is measured. The simulator's length is cut for them, then reset."""
    httpx.post(sim.url + "/sim/config", json={"length": 5}, timeout=10).raise_for_status()
    records, _, _ = run_load(target, 20, tag="warm", ramp_s=0.2, timeout_s=30, procs=1)
    httpx.post(sim.url + "/sim/reset", timeout=10).raise_for_status()
    failed = [r["error"] for r in records if r["error"] or not r["done"]]
    if failed:
        raise RuntimeError(f"warm-up failed: {failed[:3]}")


if __name__ == "__main__":
    main()
