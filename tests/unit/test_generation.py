"""A generation's buffer keeps its chunks' text, and their parsed objects only near its end;
readers from any point still get every chunk whole, and keep-alives come from one timer."""

from __future__ import annotations

import asyncio
import gc
import json
from contextlib import aclosing

from chat.relay.generation import KEEPALIVE, PARSED_TAIL, Generation, Status
from chat.relay.types import Chunk


def chunk(n: int) -> Chunk:
    obj = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": f"t{n} "}, "finish_reason": None}],
    }
    return Chunk(json.dumps(obj), obj)


async def test_only_the_tail_keeps_parsed_objects_and_late_readers_get_everything() -> None:
    generation = Generation(slot="s")
    for n in range(100):
        generation.publish(chunk(n))
    parsed = [c._obj is not None for c in generation.chunks]
    assert parsed == [False] * (100 - PARSED_TAIL) + [True] * PARSED_TAIL
    await generation.finish(Status.COMPLETE)

    generation.attach()
    seen = []
    async with aclosing(generation.subscribe(after=0)) as events:
        async for item in events:
            assert isinstance(item, Chunk)
            seen.append(item.obj["choices"][0]["delta"]["content"])
    generation.detach()
    assert seen == [f"t{n} " for n in range(100)]
    assert generation.accumulator.content() == "".join(seen)


async def test_a_long_answer_leaves_only_text_behind_its_tail() -> None:
    # Every Chunk, and every parsed chunk, is an object the cyclic GC walks in each full
    # collection, with the event loop stopped: a long answer must not leave one per token.
    def chunks_alive() -> int:
        return sum(type(o) is Chunk for o in gc.get_objects())

    before = chunks_alive()
    generation = Generation(slot="s")
    for n in range(2_000):
        generation.publish(chunk(n))
    assert chunks_alive() - before <= PARSED_TAIL
    assert len(generation.chunks) == 2_000
    assert generation.chunks[0].obj["choices"][0]["delta"]["content"] == "t0 "
    assert generation.chunks[-1] == chunk(1_999) == generation.chunks[1_999]
    assert [c.data for c in generation.chunks[10:13]] == [chunk(n).data for n in (10, 11, 12)]
    assert [c.data for c in generation.chunks] == [chunk(n).data for n in range(2_000)]
    await generation.finish(Status.COMPLETE)


async def test_a_waiting_subscriber_gets_keepalives_then_news() -> None:
    generation = Generation(slot="s")
    generation.attach()
    async with aclosing(generation.subscribe(keepalive_s=0.05)) as events:
        assert await anext(events) is KEEPALIVE
        assert await anext(events) is KEEPALIVE
        assert generation._waiters == []  # waits that ended in a keep-alive are not kept
        generation.publish(chunk(1))
        assert await anext(events) == chunk(1)
    # A keep-alive interval far longer than the test: only the news can wake the reader.
    async with aclosing(generation.subscribe(after=1, keepalive_s=3600)) as events:
        asyncio.get_running_loop().call_soon(generation.publish, chunk(2))
        assert await anext(events) == chunk(2)
    generation.detach()
