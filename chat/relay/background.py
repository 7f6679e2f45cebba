"""Tasks that outlive the request that started them: generations, probes, state writes."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

# The event loop keeps only weak references to tasks; these are the strong ones, dropped when
# each task ends.
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
    """Run ``coro`` as a task in a fresh, empty context.

    Django runs each request inside asgiref's ``ThreadSensitiveContext``, a context variable
    that routes the ORM's ``sync_to_async`` calls to that request's own executor, which is shut
    down when the response ends. A task created with the request's context would inherit it and
    fail its later database calls ("CurrentThreadExecutor already quit"); an empty context sends
    them to asgiref's process-wide executor instead.
    """
    task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def cancel_all() -> None:
    """Cancel this loop's background tasks and wait for them to end (shutdown, tests)."""
    loop = asyncio.get_running_loop()
    tasks = [task for task in _running if task.get_loop() is loop and not task.done()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
