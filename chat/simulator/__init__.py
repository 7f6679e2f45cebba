"""The built-in OpenAI-compatible test upstream (see ``server.py``); a test double, not a model."""

from __future__ import annotations

from chat.simulator.server import DEFAULT_REPLAY_DIR, SimConfig, Simulator, SimulatorThread, Stats

__all__ = ["DEFAULT_REPLAY_DIR", "SimConfig", "Simulator", "SimulatorThread", "Stats"]
