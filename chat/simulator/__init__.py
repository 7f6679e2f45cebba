"""The built-in OpenAI-compatible test upstream; a test double, not a model.

``config.py`` (SimConfig), ``planning.py`` (the answer and its bytes), ``http.py`` (HTTP/1.1 on
asyncio streams), ``server.py`` (Simulator: routes, counters, faults), ``thread.py``
(SimulatorThread, for synchronous code).
"""

from __future__ import annotations

from chat.simulator.config import DEFAULT_REPLAY_DIR, SimConfig
from chat.simulator.server import Simulator, Stats
from chat.simulator.thread import SimulatorThread

__all__ = ["DEFAULT_REPLAY_DIR", "SimConfig", "Simulator", "SimulatorThread", "Stats"]
