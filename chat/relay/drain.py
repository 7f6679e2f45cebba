"""Graceful drain (issue 29): a process told to stop (SIGTERM, ``chatsite.server``) finishes the
answers it has before it exits, and starts none.

- ``begin(timeout_s)``: the drain starts; ``draining()`` turns True (``/readyz`` says 503).
- New answers are refused where the dispatcher admits them (``refuse``, ``whole_call``): a
  ``RelayError`` 503 ``draining`` with ``Retry-After``, which each surface answers in its own
  error shape, so a proxy (nginx's ``proxy_next_upstream http_503``) or the client retries on
  another process. Resumes of answers already running are served as before (they start none).
- ``settle()``: waits until no answer runs in this process (its own generations, the readers
  of any generation, mirrors' included, and whole calls), at most until the deadline; answers
  still running then are ended as ``INTERRUPTED``: the upstream closed, every chunk already
  relayed kept, their readers here and their mirrors in other processes told by an explicit
  end (an error event with code ``interrupted``, never a normal end), and their messages
  stored ``interrupted`` with that text (``chat.services.generation_fields``).

One drain per process (a process stops once); the counts are read on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from chat.relay.background import spawn
from chat.relay.errors import RelayError
from chat.relay.generation import Generation, Status, live

logger = logging.getLogger(__name__)

# The code of an answer ended by the drain's deadline (its error's ``code``); the app stores
# such an answer as ``interrupted``, as it does one whose process died.
INTERRUPTED = "interrupted"
# Retry-After of a refused answer (s): another process can take it at once.
RETRY_AFTER_S = 1.0
# How often ``settle`` looks at what still runs (s): a check walks this loop's generations
# (hundreds at most), cheap next to a drain's seconds.
POLL_S = 0.05
# How long an interrupted answer may take to end (s): its message stored, its end written to
# the shared buffer, its readers handed their last events.
INTERRUPT_GRACE_S = 10.0


@dataclass(slots=True)
class _State:
    started_at: float | None = None  # time.monotonic() s
    deadline: float = float("inf")  # time.monotonic() s
    whole_calls: int = 0


_state = _State()


def begin(timeout_s: float) -> None:
    """Start draining: answers in flight get ``timeout_s`` more seconds, new ones are refused.
    A second call (a second signal) moves the deadline to now."""
    now = time.monotonic()
    if _state.started_at is None:
        _state.started_at = now
        _state.deadline = now + max(0.0, timeout_s)
    else:
        _state.deadline = min(_state.deadline, now)


def draining() -> bool:
    """Whether this process is draining (``begin`` was called)."""
    return _state.started_at is not None


def draining_for_s() -> float:
    """Seconds since the drain began (0 when not draining)."""
    return 0.0 if _state.started_at is None else time.monotonic() - _state.started_at


def time_left_s() -> float:
    """Seconds until the drain's deadline (0 past it; infinite when not draining)."""
    return max(0.0, _state.deadline - time.monotonic())


def refuse() -> None:
    """Raise ``RelayError`` 503 (``draining``, ``Retry-After``) while the process drains; the
    dispatcher calls it before it starts or joins an answer."""
    if draining():
        raise RelayError(
            "This server is restarting and takes no new answers. Try again: another server "
            "will answer.",
            status=503,
            type="service_unavailable",
            code="draining",
            retry_after=RETRY_AFTER_S,
        )


@contextlib.contextmanager
def whole_call() -> Iterator[None]:
    """Count a non-streaming call in flight (the drain waits for it); ``refuse`` first."""
    refuse()
    _state.whole_calls += 1
    try:
        yield
    finally:
        _state.whole_calls -= 1


def interrupted_error() -> RelayError:
    """The error an answer ended by the drain's deadline ends with."""
    return RelayError(
        "This server restarted before the answer ended; it is kept as far as it got.",
        status=503,
        type="service_unavailable",
        code=INTERRUPTED,
    )


def _running_here(generation: Generation) -> bool:
    return not generation.is_mirror and generation.status == Status.STREAMING


def busy() -> dict[str, int]:
    """What keeps this process's answers in flight: ``running`` (its own generations),
    ``readers`` (requests reading any generation, a mirror's included, up to their last
    event), ``whole`` (non-streaming calls). All 0 when it may stop."""
    generations = live()
    return {
        "running": sum(1 for g in generations if _running_here(g)),
        "readers": sum(max(0, g.subscribers) for g in generations),
        "whole": _state.whole_calls,
    }


async def settle() -> list[Generation]:
    """Wait until no answer is in flight here (``busy``), at most until the drain's deadline;
    then end those still running as ``INTERRUPTED`` (``interrupt``). Returns the interrupted
    generations. Requests reading another process's generation are left to the caller, which
    closes them: their clients resume elsewhere."""
    while any(busy().values()):
        if time.monotonic() >= _state.deadline:
            return await interrupt()
        await asyncio.sleep(POLL_S)
    return []


async def interrupt() -> list[Generation]:
    """End every generation running here as ``INTERRUPTED`` (an error of ``interrupted_error``)
    and wait, up to ``INTERRUPT_GRACE_S``, until each was stored, its end written to the
    shared buffer and its readers here left. Returns them."""
    running = [g for g in live() if _running_here(g)]
    ending = [spawn(_interrupt(g)) for g in running]
    if running:
        logger.warning(
            "drain deadline: %d answers still running were interrupted: %s",
            len(running),
            " ".join(g.id for g in running),
        )
    grace_until = time.monotonic() + INTERRUPT_GRACE_S
    # Their tasks too: once cancelled, each gives up its single-flight claim and slot lease.
    tasks = [g.task for g in running if g.task is not None]
    writers = [w for g in running if isinstance(w := getattr(g.sink, "task", None), asyncio.Task)]
    if ending or tasks or writers:
        await asyncio.wait([*ending, *tasks, *writers], timeout=INTERRUPT_GRACE_S)
    # Readers leaving have no event of their own: a look every POLL_S, within the grace.
    while time.monotonic() < grace_until and any(_ending(g) for g in running):  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
    return running


async def _interrupt(generation: Generation) -> None:
    # Cancel, then finish at once, in one step of this task: the outcome is set before the
    # generation's task sees its cancellation (at its next step, after this one), so that task
    # can publish nothing more, and its own ``finish(stopped)`` then does nothing.
    generation.cancel()
    await generation.finish(Status.ERROR, interrupted_error())


def _ending(generation: Generation) -> bool:
    """Whether an interrupted generation has still something to do: its end's callbacks, its
    writes to the shared buffer (``chat.relay.cluster``'s writer task), its readers' last
    events."""
    writer = getattr(generation.sink, "task", None)
    writing = isinstance(writer, asyncio.Task) and not writer.done()
    return not generation.ended or writing or generation.subscribers > 0
