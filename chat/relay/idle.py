"""A timer that fires when a waiter has waited too long, costing one timer per interval rather
than one per wait.

The relay waits on two things many times a second per stream: the upstream's next bytes (with
a read timeout) and a generation's next chunk (with a keep-alive interval). A timeout on every
wait (``asyncio.timeout``, ``asyncio.wait(..., timeout=)``) schedules a timer and cancels it on
nearly every chunk: a heap push, a cancelled handle for the loop to sweep, and a share of the
relay's CPU that grows with the stream count (bench/profile_relay.py). ``IdleTimer`` keeps one
timer per waiter-owner and moves it only when it fires early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class IdleTimer:
    """Calls ``expire(waiter)`` once the current waiter has waited ``interval_s`` (s, the
    loop's clock) without being resolved.

    ``waiting(waiter, interval_s)`` starts each wait. The timer is set at most once per wait
    sequence: when it fires before the current wait is due (the owner was woken and waits
    again since), it is set again for the current wait; when nobody waits, it lapses and the
    next ``waiting`` sets it. So it fires about once per ``interval_s`` of activity, whatever
    the number of waits. ``close`` cancels it.
    """

    __slots__ = ("_expire", "_interval_s", "_loop", "_since", "_timer", "_waiter")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, expire: Callable[[asyncio.Future[Any]], None]
    ) -> None:
        self._loop = loop
        self._expire = expire
        self._interval_s = 0.0
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[Any] | None = None

    def waiting(self, waiter: asyncio.Future[Any], interval_s: float) -> None:
        """The owner waits on ``waiter`` from now, for at most ``interval_s``."""
        self._waiter = waiter
        self._interval_s = interval_s
        self._since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + interval_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting now: the next wait sets the timer again
        due = self._since + self._interval_s
        if self._loop.time() >= due:
            self._waiter = None
            self._expire(waiter)
        else:
            self._timer = self._loop.call_at(due, self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiter = None
