"""A generation: one upstream streaming call in flight, its append-only chunk buffer and the
subscribers reading it.

The dispatcher (``chat.relay.dispatch``) runs each generation as its own asyncio task and
``publish``-es chunks into it; requests ``subscribe`` and read every chunk from a sequence number
on, so a coalesced duplicate request (single-flight) or a late joiner gets the whole answer from
the first chunk. Sequence numbers count chunks from 1; ``subscribe(after=n)`` skips the first n.

Times are ``time.monotonic()`` seconds; derived figures are in ms (TTFT) and tokens/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, overload

from chat.relay.accumulate import MessageAccumulator
from chat.relay.background import spawn
from chat.relay.errors import RelayError
from chat.relay.idle import IdleTimer
from chat.relay.types import Chunk

logger = logging.getLogger(__name__)


class Status(StrEnum):
    """How a generation ends (``streaming`` until then); ``Message.Status`` stores the same
    values, plus ``interrupted`` for an answer whose process died."""

    STREAMING = "streaming"
    COMPLETE = "complete"
    STOPPED = "stopped"
    ERROR = "error"


class PhaseState(StrEnum):
    """What a generation waits on before its answer streams (``Phase.state``)."""

    QUEUED = "queued"
    WARMING = "warming"
    RETRYING = "retrying"
    STREAMING = "streaming"


@dataclass(frozen=True, slots=True)
class Phase:
    """What a generation is doing before its answer streams, for status lines in the chat.

    ``state`` is ``queued`` (``position`` 1 is next in line), ``warming`` (the slot's model
    is loading), ``retrying`` (``attempt`` n, next try in ``retry_in_s`` s) or ``streaming``;
    ``slot`` names the slot it waits on (a fallback slot's name once used).
    """

    state: PhaseState
    slot: str
    position: int | None = None
    attempt: int | None = None
    retry_in_s: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


class _Keepalive:
    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE: Final = _Keepalive()
"""Yielded by ``Generation.subscribe`` after ``keepalive_s`` without news: time for an SSE
comment line so proxies and clients keep the connection open."""

FinishCallback = Callable[["Generation"], Awaitable[None]]


class ReaderStop:
    """Ends one subscriber's reading while the generation goes on for the others: an answer
    stopped on its own while it shares its generation with another's (single-flight), such as
    a disabled widget's sharing a chat user's. ``stop()`` makes that subscriber's
    ``subscribe`` return at once, even while it waits for news (``stopped`` then says so)."""

    __slots__ = ("_waiter", "stopped")

    def __init__(self) -> None:
        self.stopped = False
        self._waiter: asyncio.Future[bool] | None = None

    def stop(self) -> None:
        self.stopped = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)


def _no_news(waiter: asyncio.Future[bool]) -> None:
    waiter.set_result(False)


# Streaming answers are written to the database at most this often (s), so a process that dies
# mid-answer loses at most about this much of it (DESIGN.md, "Persistence").
CHECKPOINT_INTERVAL_S = 1.0

# Chunks at the end of the buffer kept whole (``ChunkLog``): live readers are this close behind,
# anyone further back parses the text again.
PARSED_TAIL = 8

# How long an ended generation stays findable by id: a tab that reconnects just after the end
# still reads the tail from the buffer instead of the database.
RESUME_GRACE_S = 60.0

# Live generations by id, per event loop (their futures belong to it).
_live: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Generation]] = (
    weakref.WeakKeyDictionary()
)


def find(generation_id: str) -> Generation | None:
    """The generation with that id in this process, while it runs and for ``RESUME_GRACE_S``
    after it ended; None otherwise (another process's, or long gone)."""
    return _live.get(asyncio.get_running_loop(), {}).get(generation_id)


def live() -> list[Generation]:
    """Every generation ``find`` knows in this process (running loop): running, mirrored, or
    ended within ``RESUME_GRACE_S`` (``chat.relay.drain`` waits on them)."""
    return list(_live.get(asyncio.get_running_loop(), {}).values())


class ChunkLog(Sequence[Chunk]):
    """A generation's chunks in order: the text of every chunk, and the ``Chunk`` objects (with
    their parsed objects) of the last ``PARSED_TAIL`` only. ``log[i]`` of an older chunk is a
    new ``Chunk`` of its text, parsed when its ``obj`` is read.

    Why not a list of ``Chunk``: a parsed chunk is about 2 KiB and four objects the cyclic
    garbage collector tracks, and even a bare ``Chunk`` is one, while text is neither. Every
    tracked object of every stream in flight is walked by each full collection, which stops the
    event loop and every stream with it: at 300 streams through one process the pauses were
    100-128 ms each (bench/capacity.py, ``server_gc_full_ms``), the worst gaps between tokens. A
    stream now leaves a list of strings behind its tail, whatever its length.
    """

    __slots__ = ("_tail", "_texts")

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._tail: deque[Chunk] = deque(maxlen=PARSED_TAIL)

    def append(self, chunk: Chunk) -> None:
        self._texts.append(chunk.data)
        self._tail.append(chunk)

    def __len__(self) -> int:
        return len(self._texts)

    @overload
    def __getitem__(self, index: int) -> Chunk: ...

    @overload
    def __getitem__(self, index: slice) -> list[Chunk]: ...

    def __getitem__(self, index: int | slice) -> Chunk | list[Chunk]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._texts)))]
        count = len(self._texts)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("chunk index out of range")
        back = count - index  # 1: the newest
        if back <= len(self._tail):
            return self._tail[-back]
        return Chunk(self._texts[index], None)

    def __iter__(self) -> Iterator[Chunk]:
        older = len(self._texts) - len(self._tail)
        for text in self._texts[:older]:
            yield Chunk(text, None)
        yield from list(self._tail)


class Generation:
    """One answer being generated, shared by every request that subscribes to it.

    ``status`` goes from ``streaming`` to ``complete``, ``stopped`` (cancelled: Stop, or its last
    subscriber left) or ``error`` (``error`` then holds the ``RelayError``), matching
    ``Message.Status``. ``ended`` turns True after the finish callbacks ran (the answer is
    stored), so a subscriber that sees the end can read the stored row.
    """

    def __init__(
        self,
        *,
        slot: str,
        started_at: float | None = None,
        keep_running: bool = False,
        generation_id: str | None = None,
    ) -> None:
        self.id = generation_id or uuid.uuid4().hex
        self.slot = slot
        self.accumulator = MessageAccumulator()
        self.chunks = ChunkLog()
        self.phase: Phase | None = None
        self.started_at = started_at if started_at is not None else time.monotonic()
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.status = Status.STREAMING
        self.error: RelayError | None = None
        self.ended = False
        # Keep generating when nobody watches (the chat page, which can resume); otherwise the
        # last subscriber to leave cancels the upstream call (the API, the widget).
        self.keep_running = keep_running
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        # Fed from another process's buffer (chat.relay.cluster) rather than run here.
        self.is_mirror = False
        # Where else events go (chat.relay.cluster's stream writer), when processes share them.
        self.sink: Any = None
        self._callbacks: list[FinishCallback] = []
        self._checkpoints: list[FinishCallback] = []
        self._checkpointed_at = time.monotonic()
        self._checkpointing: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        # Each waiting subscriber's own future, resolved (True) by the next news: one future per
        # wait, never shared, so a subscriber's cancellation touches nobody else's.
        self._waiters: list[asyncio.Future[bool]] = []
        registry = _live.setdefault(loop, {})
        registry[self.id] = self
        self._registry = registry

    # -- the producer's side (the dispatcher) --

    def publish(self, chunk: Chunk) -> None:
        """Append one chunk to the buffer and wake every subscriber (and, at most once per
        ``CHECKPOINT_INTERVAL_S``, start the checkpoint callbacks)."""
        self.chunks.append(chunk)
        if self.accumulator.add(chunk.obj) and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if self.sink is not None:
            self.sink.chunk(chunk)
        self._notify()
        if self._checkpoints and self._checkpointing is None:
            now = time.monotonic()
            if now - self._checkpointed_at >= CHECKPOINT_INTERVAL_S:
                self._checkpointed_at = now
                self._checkpointing = spawn(self._checkpoint())

    def set_phase(self, phase: Phase) -> None:
        if phase != self.phase:
            self.phase = phase
            if self.sink is not None:
                self.sink.phase(phase)
            self._notify()

    def set_slot(self, name: str) -> None:
        """The slot now answering (a fallback's name once it took over)."""
        if name != self.slot:
            self.slot = name
            if self.sink is not None:
                self.sink.slot(name)

    def add_checkpoint_callback(self, callback: FinishCallback) -> None:
        """Run ``callback(generation)`` now and then while streaming (store the text so far)."""
        self._checkpoints.append(callback)

    async def _checkpoint(self) -> None:
        try:
            for callback in list(self._checkpoints):
                try:
                    await callback(self)
                except Exception:
                    logger.exception("generation %s: checkpoint failed", self.id)
        finally:
            self._checkpointing = None

    def add_finish_callback(self, callback: FinishCallback) -> bool:
        """Run ``callback(generation)`` once the answer ends, before subscribers see the end.
        Returns False when it is too late (the generation is already finishing)."""
        if self.status != Status.STREAMING:
            return False
        self._callbacks.append(callback)
        return True

    async def finish(self, status: Status, error: RelayError | None = None) -> None:
        """End the generation: record the outcome, run the finish callbacks (each failure is
        logged, never raised), then wake subscribers to the end. Called once, by the
        dispatcher's task; shield it from cancellation so the answer is stored."""
        if self.status != Status.STREAMING:
            return
        self.status, self.error = status, error
        self.ended_at = time.monotonic()
        if self.sink is not None:
            self.sink.end(status, error)
        try:
            if self._checkpointing is not None:  # let it land before the final write
                await asyncio.wait((self._checkpointing,))
            for callback in self._callbacks:
                try:
                    await callback(self)
                except Exception:
                    logger.exception("generation %s: finish callback failed", self.id)
        finally:
            self.ended = True
            self._notify()
            asyncio.get_running_loop().call_later(RESUME_GRACE_S, self._registry.pop, self.id, None)
            logger.info(
                "generation %s slot=%s status=%s ttft_ms=%s chunks=%d",
                self.id,
                self.slot,
                self.status,
                None if self.ttft_ms is None else round(self.ttft_ms, 1),
                len(self.chunks),
            )

    def cancel(self) -> None:
        """Stop generating: cancels the dispatcher's task, which closes the upstream response
        (the upstream stops) and finishes as ``stopped``."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    # -- the consumers' side (requests) --

    def attach(self) -> None:
        """Count one more consumer; it must ``detach`` when it leaves, however it leaves."""
        self.subscribers += 1

    def detach(self) -> None:
        """One consumer left. The last to leave before the end cancels the generation unless
        ``keep_running`` is set."""
        self.subscribers -= 1
        if self.subscribers <= 0 and not self.keep_running and not self.ended:
            self.cancel()

    async def subscribe(
        self,
        *,
        after: int = 0,
        keepalive_s: float | None = None,
        stop: ReaderStop | None = None,
    ) -> AsyncGenerator[Chunk | Phase | _Keepalive, None]:
        """Every chunk after sequence number ``after``, then live ones until the end; a
        ``Phase`` each time the phase changes before the first chunk; ``KEEPALIVE`` after
        ``keepalive_s`` without news. Returns when the generation has ended and every chunk was
        yielded: read ``status`` and ``error`` then; or as soon as ``stop`` is stopped (this
        reader alone: the generation goes on).

        The caller ``attach``-es before and ``detach``-es after (in a ``finally``).
        """
        index = after
        seen_phase: Phase | None = None
        loop = asyncio.get_running_loop()
        # Resolves a wait with False (no news) after keepalive_s: one timer per subscriber,
        # not one per chunk.
        clock = IdleTimer(loop, _no_news) if keepalive_s is not None else None
        try:
            while True:
                while index < len(self.chunks):
                    index += 1
                    yield self.chunks[index - 1]
                if self.ended or (stop is not None and stop.stopped):
                    return
                if self.phase is not seen_phase and not self.chunks:
                    seen_phase = self.phase
                    if seen_phase is not None:
                        yield seen_phase
                    continue
                waiter: asyncio.Future[bool] = loop.create_future()
                self._waiters.append(waiter)
                if clock is not None and keepalive_s is not None:
                    clock.waiting(waiter, keepalive_s)
                if stop is not None:
                    stop._waiter = waiter
                if not await waiter:
                    self._forget_waiter(waiter)  # else kept until the next news
                    yield KEEPALIVE
        finally:
            if clock is not None:
                clock.close()

    async def wait_started(self, timeout_s: float) -> bool:
        """Wait until the first chunk or the end, at most ``timeout_s``. True when either came:
        a caller can then still answer an error with an HTTP status."""
        deadline = time.monotonic() + timeout_s
        while not self.chunks and not self.ended:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            done, _ = await asyncio.wait((waiter,), timeout=remaining)
            if not done:
                self._forget_waiter(waiter)
        return True

    def _forget_waiter(self, waiter: asyncio.Future[bool]) -> None:
        """Drop a wait that ended without news: a generation that waits long (a queue, a cold
        boot) would otherwise hold one finished future per keep-alive per subscriber."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    # -- figures --

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token in ms: from the request's start to the first chunk with text."""
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.started_at) * 1000

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second after the first token, or None below two tokens."""
        tokens = self.accumulator.completion_tokens()
        end = self.ended_at or time.monotonic()
        if self.first_token_at is None or tokens < 2 or end <= self.first_token_at:
            return None
        return (tokens - 1) / (end - self.first_token_at)
