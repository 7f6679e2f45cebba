"""Upstream protection across processes (issue 29): with REDIS_URL, issue 12's rule (a slot whose
last real call failed gets one caller at a time, spaced by the slot-wide backoff, until a call
succeeds) holds for all processes together, not for each on its own.

Two kinds of test: ``SlotRuntime``s on ``Shared`` instances of their own stand for processes
(needs REDIS_URL), and two daphne processes on one PostgreSQL and one Redis (the test command's
second pass). The per-process fallback while Redis does not answer needs neither."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.conf import settings

from chat.relay.background import cancel_all
from chat.relay.cluster import Shared
from chat.relay.slots import CALL_BACKOFF_BASE_S, SlotRuntime, state_listeners
from chat.relay.sse import SSEDecoder
from tests.conftest import make_slot, server_env
from tests.support.daphne_server import DaphneServer
from tests.support.llama_server import free_port
from tests.support.polling import until

needs_redis = pytest.mark.skipif(
    not settings.REDIS_URL, reason="needs REDIS_URL (the test command's second pass)"
)
needs_cluster = pytest.mark.skipif(
    not (os.environ.get("REDIS_URL") and "postgres" in os.environ.get("DATABASE_URL", "")),
    reason="needs REDIS_URL and DATABASE_URL=postgres://… (the test command's second pass)",
)
ALWAYS = 10**6  # fail_requests: every request, for the whole test


# --- The rule in Redis: runtimes of two (or three) "processes" in one test --------------------


@pytest.fixture
def no_listeners() -> Iterator[None]:
    # In process, without the database: keep the app's state listener (an UPDATE) out.
    saved = list(state_listeners)
    state_listeners.clear()
    yield
    state_listeners.extend(saved)


@pytest.fixture
async def processes(no_listeners: None) -> AsyncIterator[tuple[Shared, Shared, Shared]]:
    stores = (Shared(settings.REDIS_URL), Shared(settings.REDIS_URL), Shared(settings.REDIS_URL))
    yield stores
    await cancel_all()  # reports and listeners first: then their connections close
    for store in stores:
        await store.aclose()


def runtimes_of(*stores: Shared) -> list[SlotRuntime]:
    """One slot's runtime in each "process", on a slot no other test uses."""
    name = f"guarded-{uuid.uuid4().hex[:8]}"
    return [SlotRuntime(29, name, store=store) for store in stores]


def recorded_turns(store: Shared, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every answer ``store.protect_turn`` gives (one Redis command each), in order."""
    verdicts: list[str] = []
    real = store.protect_turn

    async def protect_turn(slot_key: str, token: str) -> tuple[str, float]:
        verdict, wait = await real(slot_key, token)
        verdicts.append(verdict)
        return verdict, wait

    monkeypatch.setattr(store, "protect_turn", protect_turn)
    return verdicts


@needs_redis
async def test_a_failure_in_one_process_makes_the_slot_suspect_in_all(processes) -> None:
    a, b, c = processes
    ra, rb, rc = runtimes_of(a, b, c)
    assert await rb.take_turn(1) is None  # healthy: b calls at once (and now hears news)
    ra.call_failed("HTTP 503", warming=True)
    await until(lambda: rb.suspect, timeout_s=5)  # told over pub/sub
    # A process that starts using the slot later reads the state once.
    turn = await rc.take_turn(5)
    assert rc.suspect
    assert turn is not None
    rc.end_turn(turn)
    assert [r._cluster_down for r in (ra, rb, rc)] == [False] * 3  # Redis answered throughout


@needs_redis
async def test_one_caller_at_a_time_across_processes_after_the_backoff(processes, monkeypatch):
    a, b, _ = processes
    ra, rb = runtimes_of(a, b)
    await rb.take_turn(1)
    asked_b = recorded_turns(b, monkeypatch)
    ra.call_failed("HTTP 503", warming=True)
    await until(lambda: rb.suspect, timeout_s=5)
    turn_a = await ra.take_turn(5)
    assert turn_a is not None  # a holds the cluster's turn: its call is in flight
    state, turn_key = a._protect_keys(ra.slot_key)
    waiting_b = [asyncio.create_task(rb.take_turn(10)) for _ in range(5)]
    await until(
        lambda: "busy" in asked_b, timeout_s=5
    )  # b's turn holder asked, and was told to wait
    assert not any(task.done() for task in waiting_b)
    failed_at = time.monotonic()
    ra.call_failed("HTTP 503", warming=True, turn=turn_a)  # gives the cluster's turn back
    ra.end_turn(turn_a)
    turn_b = await asyncio.wait_for(asyncio.shield(waiting_b[0]), 10)
    waited = time.monotonic() - failed_at
    assert turn_b is not None
    # The second failure of the streak: the next call waits 0.25 to 0.5 s (half of it fixed).
    assert waited >= CALL_BACKOFF_BASE_S * 2 / 2 - 0.01
    assert int(await a.redis.hget(state, "failures")) == 2
    assert await a.redis.get(turn_key) == rb._token
    # b's other requests wait in b (no Redis command of theirs); b's holder asked a handful
    # of times: busy, then after news of the failure the backoff, then the turn.
    assert not any(task.done() for task in waiting_b[1:])
    assert asked_b[-1] == "granted"
    assert len(asked_b) <= 5, asked_b
    # A success anywhere clears the slot everywhere: b's waiters go, and so do a's.
    waiting_a = [asyncio.create_task(ra.take_turn(10)) for _ in range(3)]
    await until(lambda: ra._turn is not None and len(ra._turn_waiters) == 2, timeout_s=5)
    rb.call_succeeded()
    results = await asyncio.wait_for(asyncio.gather(*waiting_b[1:], *waiting_a), 10)
    assert results == [None] * 7
    assert (ra.suspect, rb.suspect) == (False, False)
    assert await a.redis.exists(state, turn_key) == 0


@needs_redis
async def test_a_dead_process_turn_lapses(processes) -> None:
    _, b, _ = processes
    (rb,) = runtimes_of(b)
    state, turn_key = b._protect_keys(rb.slot_key)
    # A process took the turn and died: nobody renews it.
    await b.redis.hset(state, mapping={"failures": 1, "next_at": 0})
    await b.redis.set(turn_key, "dead", px=300)
    started = time.monotonic()
    turn = await rb.take_turn(10)
    assert turn is not None
    assert time.monotonic() - started >= 0.2
    token = rb._token
    assert token is not None
    assert await b.redis.get(turn_key) == token
    assert await b.protect_keep(rb.slot_key, token)  # renewed while its call runs
    rb.end_turn(turn)
    await until(lambda: rb._reports is not None and rb._reports.done(), timeout_s=5)
    assert await b.redis.get(turn_key) is None  # given back without a result
    assert not await b.protect_keep(rb.slot_key, token)  # and never renewed after


# --- Redis away: the rule per process, said once -----------------------------------------------


async def test_without_redis_the_rule_is_per_process_and_said_once(caplog, no_listeners):
    store = Shared(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    runtime = SlotRuntime(29, "no-redis", store=store)
    caplog.set_level(logging.INFO, logger="chat.relay.slots")
    try:
        runtime.call_failed("HTTP 503", warming=True)
        first = await runtime.take_turn(5)
        assert first is not None  # this process's turn, after its own backoff
        assert time.monotonic() >= runtime.next_call_at
        second = asyncio.create_task(runtime.take_turn(5))
        await asyncio.sleep(0)
        assert not second.done()  # one caller at a time, in this process
        runtime.call_failed("HTTP 503", warming=True, turn=first)
        runtime.end_turn(first)
        turn = await second
        assert turn is not None
        runtime.end_turn(turn)
        for _ in range(3):
            runtime.call_failed("HTTP 503", warming=True)
        assert runtime._reports is not None
        await asyncio.wait((runtime._reports,))
    finally:
        await store.aclose()
    said = [r for r in caplog.records if "upstream protection" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"], [r.getMessage() for r in said]
    assert "per process" in said[0].getMessage()


# --- Two daphne processes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def second(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """Process B, next to the session's ``server`` (process A)."""
    with django_db_blocker.unblock():
        env = server_env()
    with DaphneServer(env=env) as daphne:
        yield daphne


CLIENTS = 20  # per process


class Clients:
    """Streaming /v1 chat completions, each with its own question (no single-flight), on
    threads: ``start`` one, and ``headers`` counts those whose response began."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.pool = ThreadPoolExecutor(2 * CLIENTS)
        self.futures: list[Any] = []
        self.headers = threading.Semaphore(0)

    def start(self, base_url: str) -> None:
        self.futures.append(self.pool.submit(self._call, base_url, len(self.futures)))

    def _call(self, base_url: str, number: int) -> tuple[int, list[str]]:
        body = {
            "model": "primary",
            "messages": [{"role": "user", "content": f"client {number}"}],
            "stream": True,
        }
        with httpx.stream(
            "POST",
            base_url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=120,
        ) as response:
            self.headers.release()
            decoder = SSEDecoder()
            events = decoder.feed(response.read()) + decoder.flush()
        return response.status_code, [e.data for e in events if e.event == "message"]

    def results(self) -> list[tuple[int, list[str]]]:
        try:
            return [future.result(timeout=120) for future in self.futures]
        finally:
            self.pool.shutdown()


def warming_out(status: int, data: list[str]) -> bool:
    """A client told the slot was still warming: 503 before its keep-alive status, else a final
    error event."""
    if status == 503:
        return True
    return status == 200 and json.loads(data[-1])["error"]["code"] == "slot_warming"


def start_after_the_first_failure(clients: Clients, sim: Any, a: str, b: str) -> None:
    """One client on process A; once A has seen the slot fail (its second call comes only after
    its report of the first reached Redis), 19 more on A and 20 on B."""
    clients.start(a)
    sim.wait_for(lambda s: s["requests"] >= 2, timeout_s=20)
    for _ in range(CLIENTS - 1):
        clients.start(a)
    for _ in range(CLIENTS):
        clients.start(b)


@needs_cluster
@pytest.mark.django_db(transaction=True)
def test_a_failing_slot_gets_one_caller_across_two_processes(server, second, sim, api_key):
    # Issue 29: before, each process protected the slot on its own: B's 20 requests all called
    # a slot A already knew to be failing, and then each process ran its own backoff.
    cold_boot_s = 8.0
    make_slot(
        sim.base_url, cold_boot_timeout_s=cold_boot_s, single_flight="off", max_concurrency=64
    )
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3, fail_requests=ALWAYS, fail_status=503)
    clients = Clients(api_key)
    started = time.monotonic()
    start_after_the_first_failure(clients, sim, server.base_url, second.base_url)
    results = clients.results()
    elapsed = time.monotonic() - started
    stats = sim.stats()
    assert all(warming_out(status, data) for status, data in results), results
    calls = stats["requests"]
    print(  # the figure the issue asks for (pytest -s shows it)
        f"\n2 processes x {CLIENTS} clients, a slot answering 503 while healthy: "
        f"{calls} upstream calls in {elapsed:.1f} s ({calls / elapsed:.2f}/s), "
        f"{stats['health_checks']} health checks"
    )
    # One caller at a time in the cluster, spaced by the one backoff: 0.125 to 0.25 s, 0.25 to
    # 0.5, 0.5 to 1, then 1 to 2 s apart, so at most 4 calls in the first 0.875 s and one a
    # second after that; per process it was B's 20 at once, then two backoffs.
    assert calls <= 5 + elapsed
    assert calls / elapsed <= 2


@needs_cluster
@pytest.mark.django_db(transaction=True)
def test_waiting_clients_of_both_processes_are_served_once_it_recovers(
    server, second, sim, api_key
) -> None:
    make_slot(sim.base_url, cold_boot_timeout_s=60, single_flight="off", max_concurrency=64)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3, fail_requests=ALWAYS, fail_status=503)
    clients = Clients(api_key)
    start_after_the_first_failure(clients, sim, server.base_url, second.base_url)
    for _ in range(2 * CLIENTS):  # every response began: all 40 wait in the relay
        assert clients.headers.acquire(timeout=60)
    before = sim.stats()["requests"]
    sim.configure(fail_requests=0)
    results = clients.results()
    stats = sim.stats()
    for status, data in results:
        assert status == 200
        assert data[-1] == "[DONE]"
        words = "".join(
            choice["delta"].get("content") or ""
            for obj in map(json.loads, data[:-1])
            for choice in obj["choices"]
        )
        assert len(words.split()) == 3
    # Each waiting client called once after the recovery, and only the one turn's call (at
    # most) fell between reading the counter and the recovery.
    assert stats["streams_started"] == 2 * CLIENTS
    assert 2 * CLIENTS <= stats["requests"] - before <= 2 * CLIENTS + 1
