"""``SimulatorThread``: a ``Simulator`` on its own event loop in a daemon thread, so that
synchronous code (pytest tests, scripts) can start, configure and read one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from chat.simulator.config import SimConfig
from chat.simulator.server import Simulator, Stats

_T = TypeVar("_T")


class SimulatorThread:
    """A ``Simulator`` on its own event loop in a daemon thread, for synchronous tests.

    ``with SimulatorThread(config=SimConfig(ttft_ms=0)) as sim:`` then ``sim.base_url``,
    ``sim.stats()``, ``sim.configure(**fields)``, ``sim.reset()``, ``sim.wait_for(pred)``.
    Every method is safe to call from any thread: it runs on the simulator's loop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SimConfig | None = None,
        models: list[str] | None = None,
        replay_dir: Path | None = None,
    ) -> None:
        self.simulator = Simulator(
            host=host, port=port, config=config, models=models, replay_dir=replay_dir
        )
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> str:
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name="slipstream-simulator", daemon=True
        )
        self._loop = loop
        self._thread.start()
        self.base_url = self._call(self.simulator.start())
        return self.base_url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self.simulator.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None

    def stats(self) -> Stats:
        return self._run(lambda: self.simulator.stats)

    def configure(self, **fields: Any) -> SimConfig:
        return self._run(lambda: self.simulator.configure(**fields))

    def reset(self) -> None:
        self._run(self.simulator.reset)

    def wait_for(self, predicate: Callable[[Stats], bool], timeout_s: float = 1.0) -> Stats:
        """Poll ``stats()`` every 10 ms until ``predicate`` holds, else ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while not predicate(stats := self.stats()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator stats never matched: {stats}")
            time.sleep(0.01)
        return stats

    def _run(self, fn: Callable[[], _T]) -> _T:
        async def call() -> _T:
            return fn()

        return self._call(call())

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("SimulatorThread is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)
