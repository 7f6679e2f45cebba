"""Every benchmark in one go: ``python bench/run_all.py [--quick] [--only STEP ...]``.

``make bench`` runs it. Each question's script runs in its own process, in this order (about
20 minutes in full on 2 cores; ``--quick`` shortens every sweep, a smoke run of a few minutes):

1. ``simulator``: ``capacity.py --target direct``: the simulator's own capacity, first, so that
   every later row can rule it out as the bottleneck;
2. ``latency``: ``relay_latency.py``: added TTFT and ITL at one stream, 200 requests, through
   Slipstream's ``/v1`` (chat completions, and ``/v1/responses`` native and translated) and
   LiteLLM's proxy in the same run;
3. ``capacity_v1``, ``capacity_litellm``, ``capacity_chat``: ``capacity.py`` through one daphne
   process (``/v1``), through LiteLLM's proxy, and through the browser's ``/chat/stream/`` with
   its database writes per answer;
   ``scaling``: 1,000 ``/v1`` streams through 2 and through 4 daphne processes behind one
   address (``--processes``), on a machine of 8 cores or more only;
4. ``render``: ``render.py``: Chromium rendering a 20,000-token answer at 1,000 tokens/s;
5. ``profile``: ``profile_relay.py``: py-spy on daphne, per request and under 500 streams;
6. ``micro``: ``sse_decode.py`` and ``dispatch_overhead.py`` (in-process costs).

On a machine of 8 cores or more, Slipstream's capacity sweeps run as the issue measured them:
each daphne process on a core of its own, the simulator on the next, 4 load generator processes
on the rest (``capacity.py --pin --loadgen-procs 4``). A step that fails is reported and the
others still run. Other work on the machine skews every
figure: before each step it waits (``--wait-quiet``, 60 s at most) for the machine to be less
than 30 % busy and records how busy it was; the capacity sweeps also repeat a row that other
work disturbed. Then it prints one table of figures against the issue's targets (ratios,
same run), the capacity rows of every target, and the profile's top functions, and writes it
all to ``bench/results/summary.json`` (each script also writes its own JSON there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import capacity
import harness

BENCH = harness.BENCH
# Each step and the results (bench/results/<name>.json) it writes.
OUTPUTS = {
    "simulator": ["capacity_direct"],
    "latency": ["relay_latency"],
    "capacity_v1": ["capacity_v1"],
    "capacity_litellm": ["capacity_litellm"],
    "capacity_chat": ["capacity_chat"],
    "scaling": ["capacity_v1_p2", "capacity_v1_p4"],
    "render": ["render"],
    "profile": ["profile"],
    "micro": ["dispatch_overhead"],
}
STEPS = list(OUTPUTS)
CORES = os.cpu_count() or 1
# Cores enough to pin 4 daphne processes, the simulator and the load generators apart.
MANY_CORES = CORES >= 8


def commands(quick: bool) -> dict[str, list[list[str]]]:
    """The command lines of each step."""
    if quick:
        sweep = ["--levels", "1", "50", "200", "--tokens", "100", "--ramp-s", "2"]
        sweep += ["--refine", "0"]
        latency = ["--requests", "30"]
        render = ["--runs", "1", "--tokens", "5000"]
        profile = ["--streams", "200", "--tokens", "300", "--seconds", "4", "--idle-streams", "200"]
        dispatch = ["--requests", "100"]
    else:
        sweep, latency, render, profile, dispatch = [], ["--requests", "200"], [], [], []
    pin = ["--pin", "--loadgen-procs", "4"] if MANY_CORES else []
    scale = [*sweep, "--levels", "1000", "--refine", "0", *pin]  # the last --levels wins

    def scaling(processes: int) -> list[str]:
        result = f"capacity_v1_p{processes}"
        return [
            "capacity.py",
            "--target",
            "v1",
            "--processes",
            str(processes),
            *scale,
            "--result",
            result,
        ]

    return {
        "simulator": [["capacity.py", "--target", "direct", *sweep, *pin]],
        "latency": [["relay_latency.py", *latency]],
        "capacity_v1": [["capacity.py", "--target", "v1", *sweep, *pin]],
        "capacity_litellm": [["capacity.py", "--target", "litellm", *sweep]],
        "capacity_chat": [["capacity.py", "--target", "chat", *sweep, *pin]],
        "scaling": [scaling(2), scaling(4)] if MANY_CORES else [],
        "render": [["render.py", *render]],
        "profile": [["profile_relay.py", *profile]],
        "micro": [["sse_decode.py"], ["dispatch_overhead.py", *dispatch]],
    }


def run_step(name: str, lines: list[list[str]], log: Path) -> dict[str, Any]:
    """Run one step's scripts, echoing their output; returns status, time and output."""
    started = time.monotonic()
    outputs, codes = [], []
    if not lines:
        print(f"\n=== {name}: skipped (needs 8 cores; this machine has {CORES})", flush=True)
    for line in lines:
        print(f"\n=== {name}: python bench/{' '.join(line)}", flush=True)
        process = subprocess.Popen(
            [harness.PYTHON, str(BENCH / line[0]), *line[1:]],
            cwd=harness.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        text = []
        with log.open("a") as out:
            for chunk in process.stdout:
                sys.stdout.write(chunk)
                sys.stdout.flush()
                out.write(chunk)
                text.append(chunk)
        codes.append(process.wait())
        outputs.append("".join(text))
    return {
        "exit_codes": codes,
        "ok": all(code == 0 for code in codes),
        "seconds": round(time.monotonic() - started, 1),
        "output": "\n".join(outputs),
    }


def load_json(name: str, since: float) -> dict[str, Any] | None:
    """bench/results/<name>.json if it was written after ``since`` (``time.time()``), read at
    once: another run writing the same file later does not change this run's figures."""
    path = harness.RESULTS / f"{name}.json"
    try:
        if path.stat().st_mtime < since:
            return None
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


# ------------------------------------------------------------------------------------------------
# The summary
# ------------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def row_at(capacity: dict[str, Any] | None, streams: int) -> dict[str, Any] | None:
    if capacity is None:
        return None
    rows = [r for r in capacity["rows"] if r["streams"] == streams]
    return rows[0] if rows else None


def capacity_text(capacity: dict[str, Any] | None) -> str:
    if capacity is None:
        return "-"
    prefix = ">= " if capacity["capacity_is_lower_bound"] else ""
    knee = capacity["knee_streams"]
    return f"{prefix}{capacity['capacity_streams']} streams" + (f" (knee {knee})" if knee else "")


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


Results = dict[str, dict[str, Any] | None]
Figure = tuple[str, str, str, str]


def simulator_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    direct = results["capacity_direct"]
    if not direct:
        return []
    top = max(direct["rows"], key=lambda r: r["streams"])
    sim = top["processes"]["simulator"]
    return [
        (
            "simulator alone: capacity",
            f"{capacity_text(direct)}; at {top['streams']}: d/off "
            f"{fmt(top['delivered_per_offered'], 3)}, CPU {fmt(sim['cpu_pct'], 0)}%",
            "not the bottleneck",
            verdict(direct["capacity_is_lower_bound"]),
        )
    ]


def latency_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    latency = results["relay_latency"]
    if not latency:
        return []
    out: list[Figure] = []
    for key, who in (
        ("added", "Slipstream /v1"),
        ("added_chat", "Slipstream /chat/stream/"),
        ("added_responses_native", "Slipstream /v1/responses native"),
        ("added_responses_translated", "Slipstream /v1/responses translated"),
        ("added_litellm", "LiteLLM"),
    ):
        if key not in latency:
            continue
        ttft, itl = latency[key]["ttft_ms"], latency[key]["itl_ms"]
        mine = key != "added_litellm"
        out.append(
            (
                f"added TTFT p50 / p99, {who} (1 stream)",
                f"{fmt(ttft['p50'])} / {fmt(ttft['p99'])} ms",
                "<= 1 / <= 5 ms" if mine else "(peer)",
                verdict(ttft["p50"] <= 1 and ttft["p99"] <= 5) if mine else "",
            )
        )
        out.append(
            (
                f"added ITL p50 / p99, {who} (1 stream)",
                f"{fmt(itl['p50'], 3)} / {fmt(itl['p99'])} ms",
                "p50 <= 0.5 ms" if mine else "(peer)",
                verdict(itl["p50"] <= 0.5) if mine else "",
            )
        )
    return out


def against_direct(row: dict[str, Any], direct: dict[str, Any] | None) -> tuple[str, str]:
    """A relay's capacity row judged by issue 14's bar: delivered/sent and /offered >= 0.98 and
    p99 ITL <= 2x the simulator's own at the same level (``direct``, its row from
    ``capacity_direct``). Returns the figures and the verdict ("-" without a direct row)."""
    direct_p99 = direct["itl_ms"]["p99"] if direct else None
    value = (
        f"d/sent {fmt(row['delivered_per_sent'], 3)}, d/off "
        f"{fmt(row['delivered_per_offered'], 3)}; p99 ITL {fmt(row['itl_ms']['p99'], 0)} ms "
        f"(direct {fmt(direct_p99, 0)}), p99 TTFT {fmt(row['ttft_ms']['p99'], 0)} ms"
    )
    if direct_p99 is None:
        return value, "-"
    ratio = min(row["delivered_per_sent"] or 0, row["delivered_per_offered"] or 0)
    return value, verdict(ratio >= 0.98 and row["itl_ms"]["p99"] <= 2 * direct_p99)


def delivery_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    """Issue 14's one-process rows: at 500 and 1,000 streams, delivered/sent and /offered
    >= 0.98 and p99 ITL <= 2x the simulator's own at the same level (``capacity_direct``)."""
    out: list[Figure] = []
    for streams in (500, 1000):
        direct = row_at(results["capacity_direct"], streams)
        for name, label in (("capacity_v1", "/v1"), ("capacity_chat", "/chat/stream/")):
            row = row_at(results[name], streams)
            if row:
                value, judged = against_direct(row, direct)
                target = ">= 0.98, p99 ITL <= 2x direct"
                out.append((f"one process at {streams} streams, {label}", value, target, judged))
    return out


def scaling_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    """Issue 14's several-process rows: N daphne processes behind one address at 1,000
    streams, judged as the one-process rows are."""
    out: list[Figure] = []
    for processes in (2, 4):
        data = results[f"capacity_v1_p{processes}"]
        if not data or not data["rows"]:
            continue
        row = max(data["rows"], key=lambda r: r["streams"])
        value, judged = against_direct(row, row_at(results["capacity_direct"], row["streams"]))
        each = [
            fmt(v["cpu_pct"], 0)
            for k, v in sorted(row["processes"].items())
            if k.startswith("server")
        ]
        out.append(
            (
                f"{processes} processes at {row['streams']} streams, /v1",
                f"{value}; CPU {'/'.join(each)}%",
                ">= 0.98, p99 ITL <= 2x direct",
                judged,
            )
        )
    return out


def capacity_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    for name, label in (
        ("capacity_v1", "Slipstream /v1"),
        ("capacity_litellm", "LiteLLM"),
        ("capacity_chat", "Slipstream /chat/stream/"),
    ):
        data = results[name]
        if data:
            criteria = data["criteria"]
            out.append(
                (
                    f"capacity, {label}",
                    capacity_text(data),
                    f"p99 ITL <= {criteria['itl_p99_bound_ms']:g} ms, p99 TTFT <= "
                    f"{criteria['ttft_p99_bound_ms']:g} ms, d/sent and d/off >= "
                    f"{criteria['min_ratio']}, 0 errors",
                    "",
                )
            )
    return out


def peer_ratio_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    v1, peer = results["capacity_v1"], results["capacity_litellm"]
    if not (v1 and peer):
        return []
    mine, theirs = v1["capacity_streams"], peer["capacity_streams"]
    ratio = mine / theirs if theirs else None
    value = f"{mine} / {theirs} = {fmt(ratio)}x" if ratio else f"{mine} / {theirs}"
    if v1["capacity_is_lower_bound"]:
        value += " (Slipstream's is a lower bound)"
    return [
        (
            "capacity Slipstream / LiteLLM at equal p99 ITL",
            value,
            ">= 2x",
            verdict(ratio >= 2 if ratio is not None else None),
        )
    ]


def db_write_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    chat = results["capacity_chat"]
    if not chat:
        return []
    measured = [r for r in chat["rows"] if r.get("db_writes") and r["completed"]]
    if not measured:
        return []
    row = max(measured, key=lambda r: r["streams"])
    per = row["db_writes_per_answer"]
    checkpoints = row.get("db_checkpoint_writes_per_answer", 0)
    seconds = chat["config"]["tokens"] / chat["config"]["rate"]
    return [
        (
            "DB writes per answer (chat)",
            f"{fmt(per)} at {row['streams']} streams: {fmt(per - checkpoints)} fixed + "
            f"{fmt(checkpoints)} checkpoints for {seconds:g}-s answers",
            "O(1)",
            verdict(checkpoints == 0),
        )
    ]


def render_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    render = results["render"]
    if not render:
        return []
    return [
        (
            "render: longest main-thread task (median)",
            f"{fmt(render['longest_task_ms_median'], 1)} ms",
            "<= 50 ms",
            verdict(render["meets_target"]),
        )
    ]


def micro_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    micro = steps.get("micro", {}).get("output", "")
    if match := re.search(r"([\d.]+) µs/event", micro):
        out.append(("SSE decoder cost (in process)", f"{match.group(1)} µs/event", "", ""))
    dispatch = results["dispatch_overhead"]
    if dispatch and "dispatcher" in dispatch:
        first = dispatch["dispatcher"]["added_first_chunk_ms"]
        per_chunk = dispatch["dispatcher"]["added_per_chunk_ms"]
        out.append(
            (
                "dispatcher's own cost (in process)",
                f"first chunk p50 {fmt(first['p50'], 3)} ms; per chunk p50 "
                f"{fmt(per_chunk['p50'], 4)} ms",
                "",
                "",
            )
        )
    return out


def hot_path_figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    """Issue 14's per-chunk, per-request and memory targets, from profile_relay.py."""
    profile = results["profile"]
    if not profile:
        return []
    out: list[Figure] = []
    steady = profile.get("steady", {})
    per_chunk = steady.get("cpu_us_per_chunk")
    if per_chunk is not None:
        out.append(
            (
                f"daphne CPU per relayed chunk ({profile['streams']} streams)",
                f"{fmt(per_chunk, 1)} µs",
                "<= 60 µs",
                verdict(per_chunk <= 60),
            )
        )
    outside = profile.get("per_request", {}).get("outside_chunks_cpu_ms")
    if outside is not None:
        out.append(
            (
                "daphne CPU per /v1 stream request outside its chunks (1 stream)",
                f"{fmt(outside)} ms",
                "<= 2 ms",
                verdict(outside <= 2),
            )
        )
    idle_rows = profile.get("idle_streams") or []
    for idle in idle_rows if isinstance(idle_rows, list) else [idle_rows]:
        out.append(
            (
                f"daphne RSS per idle stream ({idle['held']} held)",
                f"{fmt(idle['kib_per_stream'], 1)} KiB ({idle['rss_mb_before']} -> "
                f"{idle['rss_mb_during']} MB)",
                "<= 50 KiB",
                verdict(idle["kib_per_stream"] <= 50),
            )
        )
    return out


# The summary table's rows, in this order; each gives none when its results are missing.
FIGURES = (
    simulator_figures,
    latency_figures,
    delivery_figures,
    scaling_figures,
    capacity_figures,
    peer_ratio_figures,
    db_write_figures,
    hot_path_figures,
    render_figures,
    micro_figures,
)


def figures(results: Results, steps: dict[str, Any]) -> list[Figure]:
    """(figure, value, target, verdict) rows."""
    return [row for rows_of in FIGURES for row in rows_of(results, steps)]


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def capacity_rows(results: dict[str, dict[str, Any] | None]) -> list[tuple[str, ...]]:
    out = []
    for name in (
        "capacity_direct",
        "capacity_v1",
        "capacity_v1_p2",
        "capacity_v1_p4",
        "capacity_litellm",
        "capacity_chat",
    ):
        data = results[name]
        if not data:
            continue
        for r in sorted(data["rows"], key=lambda r: r["streams"]):
            p = r["processes"]
            server = capacity.servers_cpu(p)
            loadgen = sum((v["cpu_pct"] or 0) for k, v in p.items() if k.startswith("loadgen"))
            out.append(
                (
                    data["target"] + (f" x{data['config']['processes']}" if "_p" in name else ""),
                    str(r["streams"]),
                    str(r["errors"]),
                    fmt(r["delivered_per_sent"], 3),
                    fmt(r["delivered_per_offered"], 3),
                    f"{fmt(r['ttft_ms']['p50'], 0)}/{fmt(r['ttft_ms']['p99'], 0)}",
                    f"{fmt(r['itl_ms']['p50'], 1)}/{fmt(r['itl_ms']['p99'], 1)}",
                    fmt(p["simulator"]["cpu_pct"], 0),
                    f"{fmt(server['cpu_pct'], 0)}/{fmt(server['main_thread_pct'], 0)}"
                    if server
                    else "-",
                    fmt(loadgen, 0),
                    fmt(r.get("other_cpu_pct"), 0),
                    fmt(server["rss_mb"], 0) if server else "-",
                    fmt(server.get("threads_max")) if server else "-",
                    fmt(r.get("server_gc_pct"), 1),
                    fmt(r.get("db_writes_per_answer")),
                    ("ok" if r["passes"] else "MISS:" + "+".join(r.get("failed", [])))
                    + (f" (rep {r['repeats']})" if r.get("repeats") else ""),
                    r["cpu_bound"],
                )
            )
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sweeps: a smoke run")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    parser.add_argument("--skip", nargs="+", choices=STEPS, default=[], help="leave these out")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        help="before each step, wait at most this long for the machine to be < 30%% busy",
    )
    return parser.parse_args()


def machine_before(wait_quiet: float) -> tuple[float, tuple[float, float, float]]:
    """Wait (at most ``wait_quiet`` s) for a quiet machine and report how busy it was: (% of
    one core busy, the 1/5/15-minute load averages)."""
    waited, load = harness.wait_quiet(wait_quiet)
    load_avg = os.getloadavg()
    if waited:
        print(f"waited {waited:g} s for the machine to quieten")
    print(
        f"before the run: machine busy {load:.0f}% of {100 * CORES}% ({CORES} cores); load average "
        f"{load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}"
    )
    if load > 30:
        print("WARNING: other work is running; every figure below is skewed by it")
    return load, load_avg


def run_steps(
    chosen: list[str], lines: dict[str, list[list[str]]], log: Path, wait_quiet: float
) -> tuple[dict[str, Any], Results]:
    """Run ``chosen`` in order; returns (each step's ``run_step`` record with how busy the
    machine was and the code it measured, each output's results or None)."""
    steps: dict[str, Any] = {}
    results: Results = {n: None for ns in OUTPUTS.values() for n in ns}
    for step in chosen:
        waited, busy = harness.wait_quiet(wait_quiet)
        since, code = time.time(), harness.code_version()
        steps[step] = run_step(step, lines[step], log)
        steps[step]["machine_busy_before_pct"] = busy
        steps[step]["waited_for_quiet_s"] = waited
        steps[step]["code"] = code
        for name in OUTPUTS[step]:
            results[name] = load_json(name, since)
        # render.py exits 1 when it misses its target; what matters is that it measured.
        steps[step]["ok"] = steps[step]["ok"] or all(results[n] for n in OUTPUTS[step])
        if not steps[step]["ok"]:
            print(f"!!! step {step} failed (exit codes {steps[step]['exit_codes']})")
    return steps, results


def print_capacity_rows(results: Results) -> None:
    rows = capacity_rows(results)
    if not rows:
        return
    print(
        "\ncapacity rows (TTFT/ITL ms p50/p99; CPU % of one core over the steady window: "
        "server = process/main thread, other = everything else on the machine)\n"
    )
    print_table(
        rows,
        (
            "target",
            "streams",
            "err",
            "d/sent",
            "d/off",
            "ttft",
            "itl",
            "sim%",
            "srv%",
            "gen%",
            "other%",
            "srvMB",
            "thr",
            "gc%",
            "writes",
            "verdict",
            "CPU-bound",
        ),
    )


def print_profile(profile: dict[str, Any] | None) -> None:
    if not profile or "steady" not in profile:
        return
    print(f"\nprofile: daphne under {profile['streams']} /v1 streams, top self time")
    for item in profile["steady"]["self"][:10]:
        print(f"  {item['pct']:>5.1f}%  {item['name']}  <- {item['app_caller']}")
    print("profile: per request (one at a time), top self time")
    for item in profile["per_request"]["profile"]["self"][:10]:
        print(f"  {item['pct']:>5.1f}%  {item['name']}  <- {item['app_caller']}")
    for name, cost in profile["per_request"]["costs"].items():
        print(f"  CPU per request, {name}: {cost['cpu_ms']} ms")


def warn_if_code_changed(steps: dict[str, Any]) -> None:
    versions = {
        f"{r['code']['head']}{'+changes' if r['code']['app_changed'] else ''}"
        for r in steps.values()
    }
    if len(versions) > 1:
        print(
            "\nWARNING: the application changed during the run; each step measured the code of "
            "its own start: "
            + ", ".join(
                f"{name} {r['code']['head']}{'+changes' if r['code']['app_changed'] else ''}"
                for name, r in steps.items()
            )
        )


def main() -> None:
    args = parse_args()
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    log = harness.RESULTS / "run_all.log"
    log.write_text("")
    started = time.monotonic()
    load, load_avg = machine_before(args.wait_quiet)
    chosen = [s for s in (args.only or STEPS) if s not in args.skip]
    steps, results = run_steps(chosen, commands(args.quick), log, args.wait_quiet)
    table = figures(results, steps)
    summary: dict[str, Any] = {
        "quick": args.quick,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "machine_busy_before_pct": round(load, 1),
        "load_average_before": [round(v, 2) for v in load_avg],
        "litellm_version": harness.LITELLM_VERSION,
        "steps": {k: {kk: vv for kk, vv in v.items() if kk != "output"} for k, v in steps.items()},
        "figures": [
            dict(zip(("figure", "value", "target", "verdict"), r, strict=True)) for r in table
        ],
    }

    print(
        f"\n{'=' * 100}\nSlipstream benchmark summary ({summary['minutes']} min; LiteLLM "
        f"{harness.LITELLM_VERSION}; machine busy {load:.0f}% of {100 * CORES}% before the run)\n"
    )
    print_table(table, ("figure", "value", "target", "verdict"))
    print_capacity_rows(results)
    print_profile(results["profile"])
    warn_if_code_changed(steps)
    summary["code"] = {name: r["code"] for name, r in steps.items()}
    failed = [s for s, r in steps.items() if not r["ok"]]
    if failed:
        print(f"\nsteps that failed: {', '.join(failed)} (see {log.relative_to(harness.ROOT)})")
    out = harness.write_result("summary", summary)
    print(f"\nwrote {out.relative_to(harness.ROOT)} and {log.relative_to(harness.ROOT)}")


if __name__ == "__main__":
    main()
