"""Where daphne spends its CPU: ``python bench/profile_relay.py [--streams 500]``.

Starts the simulator and Slipstream (one plain daphne process, on a throwaway database set up as
``capacity.py`` does) and profiles it with py-spy (installed in ``bench/.venv-litellm``; 100
samples/s of the thread holding the GIL, so time in C code that releases it, such as SQLite
queries, is left out) in two phases:

1. *Per request* (the path to the first token): requests sent one at a time, so nothing else
   runs. For four kinds, the CPU daphne spends per request (``/proc``, ms; whole process and
   main thread): ``POST /v1/chat/completions`` without a key (401: the framework alone), with an
   unknown model (404: plus the key and slot lookups), and 33-token and 3-token streams from an
   instant simulator (the whole request). The line through the two streams' costs, at 0 tokens,
   is the CPU per request outside its content chunks (auth, body, dispatch, role and finish
   chunks, recording, teardown). The 3-token requests are sampled by py-spy.
2. *Steady* (the per-token path): ``--streams`` concurrent ``/v1`` streams of ``--tokens`` tokens
   at 20 tokens/s, started over ``--ramp-s``; once the simulator holds every stream, py-spy
   samples ``--seconds`` (10). A flamegraph of this phase is written to
   ``bench/results/profile_steady.svg``. Over the same window: daphne's CPU per relayed chunk
   (µs: its CPU over the content tokens the clients received meanwhile) and its RSS, idle
   (after the warm-up) and streaming, with the difference per stream (KiB).

Between the two, *idle streams*: for each of ``--idle-streams`` (500 and 1,000), that many streams
held open before their first token (the simulator waits 10 minutes to answer), daphne's RSS before
and with them: KiB per idle stream.

Reported per sampled phase, in % of the samples: the top functions by self time (the leaf frame,
where the interpreter was), by inclusive time, and self time by package (django, twisted,
httpx/httpcore, asyncio, json, chat.relay...), with the split between the main thread (the event
loop) and other threads (asgiref runs each request's ORM calls in a thread of its own). Writes
``bench/results/profile.json``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import capacity
import harness
import httpx
from harness import Service

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
# Leaf frames that wait rather than run: py-spy's GIL detection without pausing the process
# sometimes samples them; they are counted apart ("waiting") and left out of the rankings.
WAITING = {
    "EpollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "_worker (concurrent/futures/thread.py)",
    "Thread._wait_for_tstate_lock (threading.py)",
}


def parse_raw(path: Path) -> list[tuple[str, list[str], int]]:
    """py-spy's raw output (``--threads``): (thread name, frames root first, samples)."""
    stacks = []
    for line in path.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        _, _, rest = head.partition(": ")
        name, *frames = rest.split(";")
        stacks.append((name, frames, int(count)))
    return stacks


def function_of(frame: str) -> str:
    """``func (file)`` without the line number."""
    match = FRAME.match(frame)
    return f"{match['func']} ({match['file']})" if match else frame


def package_of(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    if file.startswith("chat/"):
        return file.removesuffix(".py").replace("/", ".")
    first = file.split("/", 1)[0].removesuffix(".py")
    return first if "/" in file else f"stdlib:{first}"


def summarise(stacks: list[tuple[str, list[str], int]], top: int) -> dict[str, Any]:
    waiting = sum(n for _, frames, n in stacks if frames and function_of(frames[-1]) in WAITING)
    stacks = [s for s in stacks if s[1] and function_of(s[1][-1]) not in WAITING]
    total = sum(n for _, _, n in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    app: Counter[str] = Counter()
    callers: dict[str, Counter[str]] = {}
    parents: dict[str, Counter[str]] = {}
    for thread, frames, n in stacks:
        threads["main" if thread == "MainThread" else "other threads"] += n
        if not frames:
            continue
        leaf = function_of(frames[-1])
        self_time[leaf] += n
        packages[package_of(frames[-1])] += n
        functions = {function_of(f) for f in frames}
        for function in functions:
            inclusive[function] += n
            if "(chat/" in function:
                app[function] += n
        # The innermost frame of Slipstream's own code: what to change to avoid this leaf.
        caller = next((function_of(f) for f in reversed(frames) if "(chat/" in f), "(no app frame)")
        callers.setdefault(leaf, Counter())[caller] += n
        parent = function_of(frames[-2]) if len(frames) > 1 else "-"
        parents.setdefault(leaf, Counter())[parent] += n

    def pct(counter: Counter[str], k: int) -> list[dict[str, Any]]:
        return [
            {"name": name, "pct": round(100 * n / total, 1)} for name, n in counter.most_common(k)
        ]

    return {
        "samples": total,
        "waiting_samples_left_out": waiting,
        "threads_pct": {k: round(100 * v / total, 1) for k, v in threads.items()},
        "self": [
            {
                **item,
                "parent": parents[item["name"]].most_common(1)[0][0],
                "app_caller": callers[item["name"]].most_common(1)[0][0],
            }
            for item in pct(self_time, top)
        ],
        "app_inclusive": pct(app, top),
        "inclusive": pct(inclusive, 40),
        "packages": pct(packages, top),
    }


def spy(pid: int, seconds: float, out: Path, fmt: str = "raw") -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` for ``seconds`` in the background (``finish`` it)."""
    command = [str(harness.pyspy()), "record", "--pid", str(pid), "--rate", "100"]
    # Only the thread holding the GIL: py-spy's idle detection is unreliable without pausing
    # the process, and pausing it (ptrace) is far too slow with a thread per open request.
    command += ["--duration", str(max(1, round(seconds))), "--threads", "--gil", "--nonblocking"]
    command += ["--format", fmt, "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(recorder: subprocess.Popen[bytes], seconds: float) -> None:
    try:
        recorder.wait(seconds + 30)
    except subprocess.TimeoutExpired:
        recorder.kill()
        recorder.wait()
        raise


SHORT_STREAM = "200: 3-token stream, instant simulator"
LONGER_STREAM = "200: 33-token stream, instant simulator"
EXTRA_TOKENS = 30


def request_costs(app: str, key: str, pid: int, tmp: Path, seconds: float) -> dict[str, Any]:
    """CPU per request, requests sent one at a time; the stream requests are profiled."""
    auth = {"Authorization": f"Bearer {key}"}
    messages = [{"role": "user", "content": "profile"}]
    instant = {"ttft_ms": 0, "tokens_per_s": 0, "length": 3}
    longer = {**instant, "length": 3 + EXTRA_TOKENS}
    kinds = [
        ("401: no key (framework only)", {}, {"model": "primary"}),
        (
            "404: unknown model (+ key and slot lookups)",
            auth,
            {"model": "nope", "messages": messages},
        ),
        (
            LONGER_STREAM,
            auth,
            {"model": "primary", "messages": messages, "stream": True, "sim": longer},
        ),
        (
            SHORT_STREAM,
            auth,
            {"model": "primary", "messages": messages, "stream": True, "sim": instant},
        ),
    ]
    costs = {}
    raw = tmp / "requests.txt"
    with httpx.Client(timeout=30) as client:
        for i, (name, headers, body) in enumerate(kinds):
            for _ in range(20):  # warm
                client.post(app + "/v1/chat/completions", headers=headers, json=body)
            profiled = i == len(kinds) - 1
            recorder = spy(pid, seconds, raw) if profiled else None
            n, cpu0, t0 = 0, harness.proc_cpu(pid), time.monotonic()
            while time.monotonic() - t0 < seconds:
                client.post(app + "/v1/chat/completions", headers=headers, json=body)
                n += 1
            cpu1, t1 = harness.proc_cpu(pid), time.monotonic()
            if recorder is not None:
                finish(recorder, seconds)
            costs[name] = {
                "requests": n,
                "wall_ms": round((t1 - t0) * 1000 / n, 2),
                "cpu_ms": round((cpu1[0] - cpu0[0]) * 1000 / n, 2),
                "main_thread_cpu_ms": round((cpu1[1] - cpu0[1]) * 1000 / n, 2),
            }
    # CPU = outside + tokens * per token: the line through the two streams, at 0 tokens.
    per_token = (costs[LONGER_STREAM]["cpu_ms"] - costs[SHORT_STREAM]["cpu_ms"]) / EXTRA_TOKENS
    outside = costs[SHORT_STREAM]["cpu_ms"] - 3 * per_token
    return {
        "costs": costs,
        "outside_chunks_cpu_ms": round(outside, 2),
        "per_token_cpu_us_one_stream": round(per_token * 1000, 1),
        "profile": summarise(parse_raw(raw), 15),
    }


def idle_stream_rss(
    target: capacity.Target, sim: Service, daphne: int, streams: int
) -> dict[str, Any]:
    """daphne's RSS with ``streams`` /v1 streams open and waiting for their first token (the
    simulator holds them: a TTFT of 10 minutes), against its RSS just before: KiB per idle
    stream. Runs before the steady phase, whose freed memory Python would reuse."""
    httpx.post(sim.url + "/sim/config", json={"ttft_ms": 600_000}, timeout=10).raise_for_status()
    before = harness.proc_rss(daphne)
    loader = threading.Thread(
        target=capacity.run_load,
        args=(target, streams),
        kwargs={"tag": "idle", "ramp_s": 2.0, "timeout_s": 20.0, "procs": 1},
    )
    loader.start()
    deadline = time.monotonic() + 30
    held = 0
    while time.monotonic() < deadline and held < streams:
        time.sleep(0.25)
        held = active_streams(sim)
    during = harness.proc_rss(daphne)
    loader.join()
    httpx.post(sim.url + "/sim/reset", timeout=10).raise_for_status()
    capacity.drain(sim)
    return {
        "streams": streams,
        "held": held,
        "rss_mb_before": round(before / 2**20, 1),
        "rss_mb_during": round(during / 2**20, 1),
        "kib_per_stream": round((during - before) / 1024 / max(held, 1), 1),
    }


def active_streams(sim: Service) -> int:
    active: int = httpx.get(sim.url + "/sim/stats", timeout=10).json()["active"]
    return active


def print_profile(name: str, phase: dict[str, Any], top: int) -> None:
    threads = ", ".join(f"{k} {v}%" for k, v in phase["threads_pct"].items())
    print(f"\n{name}: {phase['samples']} samples holding the GIL ({threads})")
    if phase.get("daphne_cpu_pct"):
        whole, main = phase["daphne_cpu_pct"]
        print(f"  daphne CPU meanwhile: {whole:.0f}% of a core, main thread {main:.0f}%")
    print(f"  {'self %':>6}  function (top {top} by self time)  <- innermost Slipstream caller")
    for item in phase["self"][:top]:
        print(f"  {item['pct']:>6.1f}  {item['name']}  <- {item['app_caller']}")
    print(f"  {'self %':>6}  package")
    for item in phase["packages"][:10]:
        print(f"  {item['pct']:>6.1f}  {item['name']}")
    print(f"  {'incl %':>6}  Slipstream function (inclusive)")
    for item in phase["app_inclusive"][:12]:
        print(f"  {item['pct']:>6.1f}  {item['name']}")


def print_requests(result: dict[str, Any]) -> None:
    print("daphne CPU per request, requests one at a time (ms):")
    for name, cost in result["per_request"]["costs"].items():
        print(
            f"  {name:<46} wall {cost['wall_ms']:>6.2f}  CPU {cost['cpu_ms']:>6.2f}  "
            f"(main thread {cost['main_thread_cpu_ms']:.2f})"
        )
    print(
        f"  outside its chunks (the two streams' line at 0 tokens): "
        f"{result['per_request']['outside_chunks_cpu_ms']} ms; per token at one stream "
        f"{result['per_request']['per_token_cpu_us_one_stream']} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=600, help="30 s at 20 tokens/s")
    parser.add_argument("--ramp-s", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=10, help="steady-phase sampling")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--requests-only", action="store_true", help="the per-request phase alone, printed"
    )
    parser.add_argument(
        "--pin", action="store_true", help="daphne, the simulator and the clients on cores apart"
    )
    parser.add_argument(
        "--idle-streams",
        type=int,
        nargs="+",
        default=[500, 1000],
        help="RSS with this many streams held before their first token (one row each)",
    )
    args = parser.parse_args()
    harness.raise_fd_limit()
    harness.pyspy()  # installs it on first use, before anything runs
    rate, ttft_ms = 20.0, 50.0
    tmp = harness.workdir("profile")
    services: list[Service] = []
    result: dict[str, Any] = {"streams": args.streams, "tokens": args.tokens}
    placement = capacity.Placement.of(args)
    placement.pin_this_process()
    try:
        sim = harness.start_simulator(
            tmp, ttft_ms=ttft_ms, tokens_per_s=rate, length=args.tokens, cores=placement.simulator
        )
        services.append(sim)
        target = capacity.start_target(
            "v1", tmp, sim, services, count_writes=False, cores=placement.servers
        )
        target.loadgen_cores = placement.loadgen
        assert target.server is not None
        assert target.slipstream is not None
        daphne = target.server.pid
        target.pids = {"simulator": sim.pid, "server": daphne}
        capacity.warm_up(target, sim)
        rss_idle = harness.proc_rss(daphne)
        result["per_request"] = request_costs(
            target.server.url, target.slipstream.api_key, daphne, tmp, 4
        )
        if args.requests_only:
            print_requests(result)
            print_profile("per request (3-token streams)", result["per_request"]["profile"], 25)
            return
        result["idle_streams"] = [
            idle_stream_rss(target, sim, daphne, streams) for streams in args.idle_streams
        ]

        outcome: dict[str, Any] = {}

        def load() -> None:
            outcome["records"], outcome["sampler"], _ = capacity.run_load(
                target,
                args.streams,
                tag="profile",
                ramp_s=args.ramp_s,
                timeout_s=args.tokens / rate * 4 + 60,
                procs=1,
            )

        loader = threading.Thread(target=load)
        loader.start()
        started = time.monotonic() + 1.0  # run_load starts the streams 1 s after it is called
        admitted_at = None
        while time.monotonic() < started + args.ramp_s + 30:
            time.sleep(0.25)
            if active_streams(sim) >= args.streams:
                admitted_at = time.monotonic()
                break
        steady_raw = tmp / "steady.txt"
        steady_from = time.monotonic()
        cpu_from = harness.proc_cpu(daphne)
        finish(spy(daphne, args.seconds, steady_raw), args.seconds)
        cpu_to = harness.proc_cpu(daphne)
        steady_to = time.monotonic()
        rss_streaming = harness.proc_rss(daphne)
        svg = harness.RESULTS / "profile_steady.svg"
        harness.RESULTS.mkdir(parents=True, exist_ok=True)
        finish(spy(daphne, 5, svg, "flamegraph"), 5)
        loader.join()
        records = outcome.get("records", [])
        sampler = outcome.get("sampler")
        result["all_admitted"] = admitted_at is not None
        result["admitted_after_s"] = admitted_at and round(admitted_at - started, 2)
        result["stream_errors"] = sum(1 for r in records if r["error"] or not r["done"])
        steady = {"seconds": args.seconds, **summarise(parse_raw(steady_raw), args.top)}
        if sampler is not None:
            cpu = sampler.cpu_pct("server", steady_from, steady_to)
            steady["daphne_cpu_pct"] = cpu and [round(v, 1) for v in cpu]
        # Every content token the clients received in the window is one chunk relayed (the
        # role and finish chunks of streams that start or end meanwhile are left out, so this
        # errs high).
        chunks = sum(steady_from <= t <= steady_to for r in records for t in r["arrivals"])
        steady["chunks_relayed"] = chunks
        steady["cpu_us_per_chunk"] = (
            round((cpu_to[0] - cpu_from[0]) / chunks * 1e6, 1) if chunks else None
        )
        steady["rss_mb"] = {"idle": round(rss_idle / 2**20, 1)}
        steady["rss_mb"]["streaming"] = round(rss_streaming / 2**20, 1)
        steady["rss_kib_per_stream"] = round((rss_streaming - rss_idle) / 1024 / args.streams, 1)
        result["steady"] = steady
        result["flamegraph"] = str(svg.relative_to(harness.ROOT))
    finally:
        harness.stop_all(services)
        harness.remove(tmp)
    out = harness.write_result("profile", result)

    print_requests(result)
    print_profile(
        "per request (3-token streams, one at a time)", result["per_request"]["profile"], 10
    )
    admitted = (
        f"all admitted after {result['admitted_after_s']} s"
        if result["all_admitted"]
        else "NOT all admitted"
    )
    print(
        f"\n{args.streams} streams through /v1 started over {args.ramp_s:g} s: {admitted}; "
        f"{result['stream_errors']} stream errors"
    )
    for idle in result["idle_streams"]:
        print(
            f"\n{idle['held']} idle streams (held before their first token): daphne RSS "
            f"{idle['rss_mb_before']} -> {idle['rss_mb_during']} MB, {idle['kib_per_stream']} "
            "KiB per idle stream"
        )
    steady = result["steady"]
    print(
        f"daphne CPU per relayed chunk: {steady['cpu_us_per_chunk']} µs "
        f"({steady['chunks_relayed']} chunks in {args.seconds:g} s); RSS idle "
        f"{steady['rss_mb']['idle']} MB, streaming {steady['rss_mb']['streaming']} MB: "
        f"{steady['rss_kib_per_stream']} KiB per stream"
    )
    print_profile("steady streaming", steady, args.top)
    print(f"\nwrote {out.relative_to(harness.ROOT)} and {result['flamegraph']}")


if __name__ == "__main__":
    main()
