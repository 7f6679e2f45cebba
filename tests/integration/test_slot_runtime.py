"""The dispatcher's per-slot runtime in process, against real simulators on loopback: state from
probes, the FIFO admission queue, and a generation shared by its subscribers."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from chat.relay import dispatch
from chat.relay.background import cancel_all
from chat.relay.errors import RelayError
from chat.relay.generation import Generation, Status
from chat.relay.slots import SlotRuntime, state_listeners
from chat.relay.types import BackendConfig, Chunk, SlotConfig
from chat.relay.upstream import aclose_clients
from chat.simulator.thread import SimulatorThread
from tests.support.llama_server import free_port

HELLO = {"messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture(autouse=True)
async def _no_listeners_and_fresh_clients():
    # These tests have no database: keep the app's state listener out of them.
    saved = list(state_listeners)
    state_listeners.clear()
    yield
    state_listeners.extend(saved)
    await cancel_all()  # probes and generations this test started, before its loop closes
    await aclose_clients()


def runtime_on(base_url: str) -> SlotRuntime:
    runtime = SlotRuntime(1, "probe-me")
    runtime.note_backend(BackendConfig(base_url=base_url + "/v1", connect_timeout_s=1), "/models")
    return runtime


async def test_probe_states_follow_the_backend() -> None:
    with SimulatorThread() as sim:
        runtime = runtime_on(sim.base_url)
        sim.configure(cold_boot_s=30)
        assert await runtime.probe() == "warming"  # 503 "Loading model"
        sim.configure(cold_boot_s=0)
        assert await runtime.probe() == "ready"
        base_url = sim.base_url
        await cancel_all()  # the probe loop that "warming" started
        await aclose_clients()  # hang up first, so the simulator stops with no connection open
    # Gone after being seen up: a restart in progress, so warming rather than error.
    assert await runtime.probe() == "warming"
    assert "unreachable" in runtime.last_error
    never_up = runtime_on(f"http://127.0.0.1:{free_port()}")
    assert await never_up.probe() == "error"
    assert base_url  # the first runtime did see a real server


async def test_admission_is_fifo_and_a_waiter_that_gives_up_leaves_no_hole() -> None:
    runtime = SlotRuntime(2, "queue")
    await runtime.acquire(limit=1, timeout_s=1)
    order: list[str] = []

    async def wait(name: str, timeout_s: float) -> None:
        try:
            await runtime.acquire(limit=1, timeout_s=timeout_s)
        except RelayError as exc:
            order.append(f"{name}:{exc.status}")
            return
        order.append(name)
        runtime.release(limit=1)

    impatient = asyncio.create_task(wait("impatient", 0.05))
    await asyncio.sleep(0)
    first = asyncio.create_task(wait("first", 5))
    await asyncio.sleep(0)
    second = asyncio.create_task(wait("second", 5))
    await impatient  # it times out while queued, ahead of the others
    assert order == ["impatient:429"]
    runtime.release(limit=1)
    await asyncio.gather(impatient, first, second)
    assert order == ["impatient:429", "first", "second"]
    assert runtime.in_flight == 0
    assert not runtime.waiters


async def test_subscribers_read_from_any_sequence_number(simulator: SimulatorThread) -> None:
    simulator.reset()
    simulator.configure(ttft_ms=0, tokens_per_s=200, length=20)
    slot = SlotConfig(
        name="shared",
        upstream_model="sim",
        backend=BackendConfig(base_url=simulator.base_url + "/v1"),
        id=3,
        single_flight="always",
    )
    generation, joined = await dispatch.submit(slot, "chat/completions", HELLO)
    again, joined_again = await dispatch.submit(slot, "chat/completions", HELLO)
    assert (joined, joined_again, again) == (False, True, generation)

    async def read(after: int) -> list[Chunk]:
        async with aclosing(generation.subscribe(after=after)) as events:
            return [item async for item in events if isinstance(item, Chunk)]

    try:
        whole, tail = await asyncio.gather(read(0), read(5))
    finally:
        generation.detach()
        again.detach()
    assert tail == whole[5:]
    assert len(whole) == len(generation.chunks)
    assert generation.status == "complete"
    assert generation.ended
    assert simulator.stats()["streams_started"] == 1


async def test_last_subscriber_leaving_cancels_the_upstream(simulator: SimulatorThread) -> None:
    simulator.reset()
    simulator.configure(ttft_ms=0, tokens_per_s=20, length=200)
    slot = SlotConfig(
        name="leaver",
        upstream_model="sim",
        backend=BackendConfig(base_url=simulator.base_url + "/v1"),
        id=4,
    )
    generation, _ = await dispatch.submit(slot, "chat/completions", HELLO)
    await generation.wait_started(5)
    generation.detach()
    assert generation.task is not None
    await asyncio.wait_for(asyncio.shield(generation.task), 2)
    assert generation.status == "stopped"
    await asyncio.to_thread(simulator.wait_for, lambda s: s["cancelled"] == 1, 2)


async def test_finish_callbacks_run_before_subscribers_see_the_end() -> None:
    generation = Generation(slot="x")
    seen: list[str] = []

    async def store(finished: Generation) -> None:
        await asyncio.sleep(0.01)
        seen.append(f"stored {finished.status}")

    generation.add_finish_callback(store)
    generation.attach()

    async def watch() -> None:
        async with aclosing(generation.subscribe()) as events:
            async for _ in events:
                pass
        seen.append("subscriber saw the end")

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await generation.finish(Status.COMPLETE)
    await watcher
    assert seen == ["stored complete", "subscriber saw the end"]
    assert not generation.add_finish_callback(store)  # too late once finishing


async def test_the_upstream_client_reads_through_asyncio_streams(simulator: SimulatorThread):
    """The relay's httpx client uses chat.relay.transport, not AnyIO (bench/profile_relay.py
    found AnyIO's per-read cancel scopes the largest cost), and still streams and times out."""
    from chat.relay.transport import AsyncioBackend
    from chat.relay.upstream import UpstreamStream, client_for

    simulator.reset()
    backend = BackendConfig(base_url=simulator.base_url + "/v1", read_timeout_s=0.3)
    pool = client_for(backend)._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool._network_backend, AsyncioBackend)
    simulator.configure(ttft_ms=0, tokens_per_s=0, length=5)
    body = {"model": "sim", "messages": HELLO["messages"], "stream": True}
    stream = await UpstreamStream.open(backend, "chat/completions", body)
    chunks = [chunk async for chunk in stream.chunks()]
    await stream.aclose()
    assert sum(bool(c.obj.get("choices")) for c in chunks) >= 5
    simulator.configure(ttft_ms=0, tokens_per_s=0, length=5, stall_after=2, stall_s=2)
    stream = await UpstreamStream.open(backend, "chat/completions", body)
    with pytest.raises(RelayError) as caught:
        async for _ in stream.chunks():
            pass
    await stream.aclose()
    assert caught.value.code == "upstream_timeout"
