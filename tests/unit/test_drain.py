"""chat.relay.drain: refusals while draining, waiting for answers in flight, and the deadline's
``interrupted`` end: every chunk published before it reaches the readers, nothing after it."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

import pytest

from chat.relay import drain
from chat.relay.errors import RelayError
from chat.relay.generation import Generation, Status
from chat.relay.types import Chunk


@pytest.fixture(autouse=True)
def fresh_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that is not draining, whatever another test did (the state is per process)."""
    monkeypatch.setattr(drain, "_state", drain._State())


def chunk(n: int) -> Chunk:
    obj = {"choices": [{"index": 0, "delta": {"content": f"t{n} "}, "finish_reason": None}]}
    return Chunk(json.dumps(obj), obj)


def running(generation: Generation, *, chunks: int | None = None) -> None:
    """Feed ``generation`` a chunk every 5 ms (``chunks`` of them, then complete; forever when
    None) as the dispatcher's task does, finishing as stopped when cancelled."""

    async def run() -> None:
        try:
            n = 0
            while chunks is None or n < chunks:
                generation.publish(chunk(n))
                n += 1
                await asyncio.sleep(0.005)
            await generation.finish(Status.COMPLETE)
        except asyncio.CancelledError:
            await asyncio.shield(generation.finish(Status.STOPPED))
            raise

    generation.task = asyncio.get_running_loop().create_task(run())


async def read(generation: Generation) -> list[str]:
    generation.attach()
    try:
        async with aclosing(generation.subscribe()) as events:
            return [item.data async for item in events if isinstance(item, Chunk)]
    finally:
        generation.detach()


async def test_new_answers_are_refused_only_while_draining() -> None:
    drain.refuse()
    with drain.whole_call():
        assert drain.busy()["whole"] == 1
    drain.begin(10)
    assert drain.draining()
    with pytest.raises(RelayError) as refused:
        drain.refuse()
    assert (refused.value.status, refused.value.code) == (503, "draining")
    assert refused.value.retry_after == drain.RETRY_AFTER_S
    with pytest.raises(RelayError), drain.whole_call():
        pass
    assert drain.busy()["whole"] == 0


async def test_settle_waits_for_answers_that_end_before_the_deadline() -> None:
    generation = Generation(slot="s", keep_running=True)
    running(generation, chunks=20)
    reader = asyncio.ensure_future(read(generation))
    await asyncio.sleep(0)
    drain.begin(30)
    assert await drain.settle() == []
    assert generation.status == Status.COMPLETE
    assert len(await reader) == 20
    assert drain.busy() == {"running": 0, "readers": 0, "whole": 0}


async def test_answers_past_the_deadline_end_interrupted_with_every_chunk_published() -> None:
    stored: list[tuple[str, str | None, int]] = []

    async def store(ended: Generation) -> None:
        code = ended.error.code if ended.error else None
        stored.append((ended.status, code, len(ended.chunks)))

    generation = Generation(slot="s", keep_running=True)
    generation.add_finish_callback(store)
    running(generation)
    reader = asyncio.ensure_future(read(generation))
    drain.begin(0.05)

    assert await drain.settle() == [generation]
    received = await reader
    assert generation.ended
    assert stored == [(Status.ERROR, drain.INTERRUPTED, len(received))]
    assert received == [c.data for c in generation.chunks]  # nothing after the end
    assert received  # its first chunk comes at its first step, before the deadline
    assert generation.error is not None
    assert generation.error.status == 503
    assert generation.task is not None
    assert generation.task.cancelled()  # the upstream closed
