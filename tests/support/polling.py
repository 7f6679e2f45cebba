"""Waiting for a condition in tests: polled with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.05


def wait_until(predicate: Callable[[], Any], *, timeout_s: float = 10.0, what: str = "") -> Any:
    """``predicate()``'s first truthy value, polled every ``POLL_S``; ``AssertionError``
    naming ``what`` after ``timeout_s`` (s)."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(POLL_S)
    return value


async def until(predicate: Callable[[], Any], *, timeout_s: float = 10.0, what: str = "") -> Any:
    """``wait_until`` on the event loop: ``predicate`` may return a value or an awaitable of
    one; polled every ``POLL_S`` without blocking the loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(POLL_S)
