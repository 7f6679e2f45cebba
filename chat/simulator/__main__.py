"""Run the simulator in the foreground: ``python -m chat.simulator --port 8001``.

``manage.py llm_sim`` reuses ``add_arguments`` and ``run``. Stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chat.simulator.config import SimConfig
from chat.simulator.server import Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimConfig()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--ttft-ms", type=float, default=defaults.ttft_ms)
    parser.add_argument("--tokens-per-s", type=float, default=defaults.tokens_per_s)
    parser.add_argument("--length", type=int, default=None, help="answer length in tokens")
    parser.add_argument("--max-tokens-default", type=int, default=defaults.max_tokens_default)
    parser.add_argument(
        "--model", action="append", dest="models", metavar="NAME", help="repeatable; default sim"
    )
    parser.add_argument("--replay-dir", type=Path, default=None)


def run(options: Mapping[str, Any]) -> None:
    """Serve until Ctrl-C / SIGTERM; ``options`` are the parsed flags (argparse dests)."""
    config = SimConfig(
        ttft_ms=options["ttft_ms"],
        tokens_per_s=options["tokens_per_s"],
        length=options["length"],
        max_tokens_default=options["max_tokens_default"],
    )
    simulator = Simulator(
        host=options["host"],
        port=options["port"],
        config=config,
        models=options["models"],
        replay_dir=options["replay_dir"],
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(simulator))


async def _serve(simulator: Simulator) -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    url = await simulator.start()
    # The first line names the URL: scripts (bench/, `manage.py serve`) may read it.
    print(f"Slipstream simulator (a test upstream, not a model) on {url}", flush=True)
    print(f"OpenAI base_url: {url}/v1 -- Ctrl-C to stop", flush=True)
    try:
        await stopping.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m chat.simulator",
        description="Run the built-in OpenAI-compatible simulator (a test upstream).",
    )
    add_arguments(parser)
    run(vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
