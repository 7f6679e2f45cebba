"""Answer rendering cost in the browser: ``python bench/render.py [--tokens N --rate R --runs K]``

Serves the repository on loopback and opens ``bench/render_harness.html`` in headless Chromium
(Debian's, with the e2e tests' flags and a fresh profile). The page feeds one ``AnswerView``
(static/chat/render.js) a long markdown answer (headings, paragraphs, lists, tables, fenced code)
token by token at a fixed rate, as chat.js's ``onChunk`` would, scrolling to the bottom after
every frame. Reports, for the feeding window:

- longest main-thread task (Chrome trace ``RunTask`` events on the renderer's main thread) and
  the count of long tasks (≥ 50 ms, PerformanceObserver ``longtask``);
- main-thread time in script, layout and style (CDP ``Performance.getMetrics`` deltas);
- frames: rAF callbacks, gaps longer than two frames (33.3 ms) and the longest gap;
- render.js's own work per frame (``flush``) and for ``finish``;
- and, apart, rendering the same answer from history (``AnswerView.hydrate``, one task).

Runs three times by default (fresh profiles), one column each, as the figures move with
whatever else the machine is doing (the 1-minute load average is recorded). Prints a table and
writes ``bench/results/render.json``. Target: longest task ≤ 50 ms (median of the runs).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "render.json"
CHROMIUM = "/usr/bin/chromium"
# The flags of tests/e2e/conftest.py (Playwright adds --headless).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TRACE_CATEGORIES = (
    "toplevel,devtools.timeline,disabled-by-default-devtools.timeline,blink.user_timing"
)
FRAME_MS = 1000 / 60
TARGET_LONGEST_TASK_MS = 50

_PROSE = """the stream relay renders markdown blocks while tokens arrive and only the last block
changes so earlier paragraphs stay in the document untouched by later frames which keeps layout
work small even when answers grow long with lists tables and code"""
WORDS = _PROSE.split()
CODE = [
    "def {name}(items: list[int], limit: int = {n}) -> list[int]:",
    '    """Keep the items under the limit, sorted."""',
    "    kept = [item for item in items if item < limit]",
    "    kept.sort()",
    "    for index, value in enumerate(kept):",
    '        print(f"{{index}}: {{value}}")',
    "    return kept",
    "",
    "class {cls}:",
    "    def __init__(self, size: int) -> None:",
    "        self.size = size",
    "        self.buffer: dict[str, float] = {{}}",
    "",
    "    def add(self, key: str, value: float) -> None:",
    "        self.buffer[key] = self.buffer.get(key, 0.0) + value * {n}",
]


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def markdown_answer(tokens: int, seed: int = 7) -> list[str]:
    """A deterministic markdown answer cut into ``tokens`` tokens (a word with its leading
    blanks, or a run of punctuation, as a BPE tokenizer would roughly cut it)."""
    rng = random.Random(seed)
    section = 0
    pieces: list[str] = []
    while len(pieces) < tokens:
        section += 1
        parts = [f"## Section {section}: {sentence(rng, 4)[:-1]}\n\n"]
        para = " ".join(sentence(rng, rng.randint(8, 16)) for _ in range(4))
        parts.append(
            para.replace(" the ", " **the** ", 1).replace(" block", " `block`", 1) + "\n\n"
        )
        parts.append("".join(f"- {sentence(rng, rng.randint(6, 12))}\n" for _ in range(6)) + "\n")
        items = []
        for i in range(1, 5):
            items.append(f"{i}. {sentence(rng, rng.randint(5, 10))}\n")
            items.append(f"   - {sentence(rng, 6)}\n   - {sentence(rng, 5)}\n")
        parts.append("".join(items) + "\n")
        code = "\n".join(CODE).format(name=f"select_{section}", cls=f"Store{section}", n=section)
        parts.append(f"```python\n{code}\n```\n\n")
        if section % 3 == 0:
            rows = "".join(
                f"| {rng.choice(WORDS)} | {rng.randint(1, 999)} | {sentence(rng, 4)} |\n"
                for _ in range(5)
            )
            parts.append("| name | count | note |\n|---|---:|---|\n" + rows + "\n")
        parts.append(f"> {sentence(rng, 12)}\n\n")
        pieces += re.findall(r"\s*[\w']+|\s*[^\w\s]+|\s+", "".join(parts))
    return pieces[:tokens]


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {
            **http.server.SimpleHTTPRequestHandler.extensions_map,
            ".js": "text/javascript",
            ".mjs": "text/javascript",
        }

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def read_trace(cdp: Any, page: Any) -> list[dict[str, Any]]:
    done: dict[str, Any] = {}
    cdp.on("Tracing.tracingComplete", lambda params: done.update(params))
    cdp.send("Tracing.end")
    deadline = time.monotonic() + 60
    while "stream" not in done:
        if time.monotonic() > deadline:
            raise RuntimeError("the trace never completed")
        page.wait_for_timeout(100)
    chunks = []
    while True:
        read = cdp.send("IO.read", {"handle": done["stream"], "size": 1 << 20})
        chunks.append(read["data"])
        if read.get("eof"):
            break
    cdp.send("IO.close", {"handle": done["stream"]})
    trace = json.loads("".join(chunks))
    events: list[dict[str, Any]] = trace["traceEvents"] if isinstance(trace, dict) else trace
    return events


def main_thread_tasks(events: list[dict[str, Any]]) -> list[float]:
    """Durations (ms) of the renderer main thread's top-level tasks between the bench marks."""
    marks = {e["name"]: e["ts"] for e in events if e.get("name") in ("bench-start", "bench-end")}
    main = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "thread_name"
        and e["args"]["name"] == "CrRendererMain"
    }
    start, end = marks.get("bench-start", 0), marks.get("bench-end", float("inf"))
    return [
        e["dur"] / 1000
        for e in events
        if e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask")
        and e.get("ph") == "X"
        and (e["pid"], e["tid"]) in main
        and start <= e["ts"] <= end
    ]


def metrics(cdp: Any) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def run_once(p: Any, base_url: str, tokens: list[str], rate: float) -> dict[str, Any]:
    """One run in a fresh profile: the figures of the module docstring."""
    with tempfile.TemporaryDirectory(prefix="render-bench-") as profile:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 800},
        )
        try:
            page = context.new_page()
            page.goto(base_url + "/bench/render_harness.html")
            page.wait_for_function("window.harnessReady === true")
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            cdp.send(
                "Tracing.start", {"transferMode": "ReturnAsStream", "categories": TRACE_CATEGORIES}
            )
            load = os.getloadavg()[0]
            before = metrics(cdp)
            page_result = page.evaluate(
                "args => window.runBench(args)", {"tokens": tokens, "tokensPerS": rate}
            )
            after = metrics(cdp)
            tasks = main_thread_tasks(read_trace(cdp, page))
            hydrate_ms = page.evaluate("tokens => window.runHydrate(tokens)", tokens)
        finally:
            context.close()

    gaps = page_result["gaps"]
    flushes = page_result["flushes"]

    def seconds_ms(name: str) -> int:
        return round((after[name] - before[name]) * 1000)

    return {
        "load_average_1m": round(load, 2),  # other work on the machine skews every figure
        "seconds": round(page_result["seconds"], 2),
        "blocks": page_result["blocks"],
        "code_blocks": page_result["codeBlocks"],
        "longest_task_ms": round(max(tasks), 1) if tasks else None,
        "tasks_traced": len(tasks),
        "long_tasks_50ms": len(page_result["longTasks"]),
        "task_ms": seconds_ms("TaskDuration"),
        "script_ms": seconds_ms("ScriptDuration"),
        "layout_ms": seconds_ms("LayoutDuration"),
        "style_ms": seconds_ms("RecalcStyleDuration"),
        "frames": page_result["frames"],
        "frame_gaps_over_2_frames": sum(1 for g in gaps if g > 2 * FRAME_MS),
        "longest_frame_gap_ms": round(max(gaps), 1) if gaps else None,
        "flush_ms": {
            "count": len(flushes),
            "p50": round(statistics.median(flushes), 2),
            "p99": round(statistics.quantiles(flushes, n=100)[98], 2),
            "max": round(max(flushes), 2),
            "first_1000_mean": round(statistics.fmean(flushes[:1000]), 3),
            "last_1000_mean": round(statistics.fmean(flushes[-1000:]), 3),
            "total": round(sum(flushes)),
            "of_which_scroll_layout_total": round(sum(page_result["scrolls"])),
        },
        "finish_ms": round(page_result["finishMs"], 2),
        "hydrate_stored_ms": round(hydrate_ms, 1),
    }


ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("load average (1 min)", lambda r: f"{r['load_average_1m']}"),
    ("blocks / code blocks", lambda r: f"{r['blocks']} / {r['code_blocks']}"),
    ("feeding took", lambda r: f"{r['seconds']} s"),
    ("longest main-thread task", lambda r: f"{r['longest_task_ms']} ms"),
    ("long tasks (≥ 50 ms)", lambda r: str(r["long_tasks_50ms"])),
    ("main thread busy", lambda r: f"{r['task_ms']} ms"),
    (
        "  script / layout / style",
        lambda r: f"{r['script_ms']}/{r['layout_ms']}/{r['style_ms']} ms",
    ),
    ("frames", lambda r: str(r["frames"])),
    (
        "gaps > 2 frames (longest)",
        lambda r: f"{r['frame_gaps_over_2_frames']} ({r['longest_frame_gap_ms']} ms)",
    ),
    ("flush p50 / p99 / max", lambda r: "{p50}/{p99}/{max} ms".format(**r["flush_ms"])),
    (
        "flush total (scroll+layout)",
        lambda r: "{total} ms ({of_which_scroll_layout_total})".format(**r["flush_ms"]),
    ),
    (
        "flush mean first/last 1000",
        lambda r: "{first_1000_mean}/{last_1000_mean} ms".format(**r["flush_ms"]),
    ),
    ("finish()", lambda r: f"{r['finish_ms']} ms"),
    ("hydrate from history", lambda r: f"{r['hydrate_stored_ms']} ms"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000, help="tokens per second")
    parser.add_argument("--runs", type=int, default=3, help="fresh browser profiles, in a row")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    tokens = markdown_answer(args.tokens)
    server, base_url = serve(ROOT)
    try:
        with sync_playwright() as p:
            runs = [run_once(p, base_url, tokens, args.rate) for _ in range(args.runs)]
    finally:
        server.shutdown()

    longest = [r["longest_task_ms"] for r in runs if r["longest_task_ms"] is not None]
    result = {
        "tokens": len(tokens),
        "chars": len("".join(tokens)),
        "tokens_per_s": args.rate,
        "target_longest_task_ms": TARGET_LONGEST_TASK_MS,
        "longest_task_ms_median": statistics.median(longest) if longest else None,
        "runs": runs,
    }
    result["meets_target"] = bool(longest) and statistics.median(longest) <= TARGET_LONGEST_TASK_MS
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"{result['tokens']} tokens ({result['chars']} chars) at {args.rate:g} tok/s, "
        f"{len(runs)} run(s); target: longest task ≤ {TARGET_LONGEST_TASK_MS} ms (median)"
    )
    width = max(len(name) for name, _ in ROWS)
    for name, cell in ROWS:
        print(f"{name:<{width}}  " + "  ".join(f"{cell(r):<22}" for r in runs).rstrip())
    print(f"median longest task: {result['longest_task_ms_median']} ms")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    if not result["meets_target"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
