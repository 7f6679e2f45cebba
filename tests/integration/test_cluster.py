"""chat.relay.cluster on a real Redis: single-flight claims as several processes make them (each
``Shared`` here stands for one process). Runs when REDIS_URL is set, the test command's second
pass. Where a race needs two steps to interleave, the test runs the other side inside the first
side's Redis call, so the interleaving happens every time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.conf import settings

from chat.relay import dispatch
from chat.relay.cluster import LIVE_TTL_S, Shared, flight_key
from chat.relay.types import BackendConfig, SlotConfig

pytestmark = pytest.mark.skipif(
    not settings.REDIS_URL, reason="needs REDIS_URL (the test command's second pass)"
)

HELLO = {"messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
async def processes() -> AsyncIterator[tuple[Shared, Shared]]:
    a, b = Shared(settings.REDIS_URL), Shared(settings.REDIS_URL)
    yield a, b
    await a.aclose()
    await b.aclose()


def new_flight() -> tuple[str, str]:
    """A slot name and request key no other test claims."""
    return "sf-test", uuid.uuid4().hex


async def test_a_claim_released_between_set_and_get_is_still_made(processes, monkeypatch):
    a, b = processes
    slot, key = new_flight()
    assert await a.claim(slot, key, "first") is None
    real_get = b.redis.get

    async def get_after_the_first_ended(name: str) -> Any:
        monkeypatch.setattr(b.redis, "get", real_get)
        await a.unclaim(slot, key, "first")  # the first answer ends just then
        return await real_get(name)

    monkeypatch.setattr(b.redis, "get", get_after_the_first_ended)
    assert await b.claim(slot, key, "second") is None
    # The second answer is registered: an identical request anywhere joins it instead of
    # starting a third upstream call.
    assert await a.claim(slot, key, "third") == "second"
    await b.unclaim(slot, key, "second")


async def test_a_dead_process_claim_is_taken_over_once(processes, monkeypatch):
    a, b = processes
    slot, key = new_flight()
    long_ago = time.time() - LIVE_TTL_S - 10
    await a.redis.set(flight_key(slot, key), f"dead {long_ago:.3f}")
    real_is_live = b.is_live

    async def is_live_while_a_takes_over(generation_id: str) -> bool:
        monkeypatch.setattr(b, "is_live", real_is_live)
        # Both processes found the claim dead; a takes it over first.
        assert await a.claim(slot, key, "a") is None
        return await real_is_live(generation_id)

    monkeypatch.setattr(b, "is_live", is_live_while_a_takes_over)
    assert await b.claim(slot, key, "b") == "a"
    await a.unclaim(slot, key, "a")
    assert await a.redis.get(flight_key(slot, key)) is None


async def test_identical_requests_in_one_process_join_one_generation(sim) -> None:
    """Ten at once: one generation, which the other nine join here, none through a mirror of
    this process's own buffer (read back from Redis, and logged a second time at its end)."""
    sim.configure(cold_boot_s=3600)  # the answer cannot end while they arrive
    slot = SlotConfig(
        name=f"sf-{uuid.uuid4().hex[:8]}",
        upstream_model="sim",
        backend=BackendConfig(base_url=sim.base_url + "/v1"),
        id=7,
        single_flight="always",
    )
    results = await asyncio.gather(
        *(dispatch.submit(slot, "chat/completions", HELLO) for _ in range(10))
    )
    generations = {generation for generation, _ in results}
    try:
        assert sorted(joined for _, joined in results) == [False] + [True] * 9
        (generation,) = generations
        assert not generation.is_mirror
        assert generation.subscribers == 10
    finally:
        for generation, _ in results:
            generation.detach()  # the last one out cancels it
    for generation in generations:
        assert generation.task is not None
        await asyncio.wait((generation.task,))
