"""A Redis outage degrades Slipstream, it does not fail it (issue 29): while Redis is down the
chat and /v1 are served by the process alone, the widget (whose rate limits live in Redis)
answers 503 with ``Retry-After``, nothing answers 500; streams already running finish and are
stored whole; the log says so in a line or two, not a traceback per write; after Redis returns
everything works again.

The test runs a redis-server of its own on a free port (stopped and started again on that
port) and a daphne process pointed at it; the machine's Redis is never touched. Runs when
REDIS_URL is set and the database is PostgreSQL (the test command's second pass)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from chat.models import Message, Widget
from chat.relay.cluster import (
    LOCAL_LEASE,
    PROBE_S,
    STOP_CHANNEL,
    Shared,
    SharedUnavailable,
    gen_key,
)
from chat.relay.generation import Generation, Status
from chat.relay.sse import ServerSentEvent, SSEDecoder
from chat.relay.types import Chunk
from tests.conftest import server_env, session_client
from tests.support.daphne_server import DaphneServer
from tests.support.llama_server import free_port
from tests.support.polling import until
from tests.support.sse_client import text_of

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (os.environ.get("REDIS_URL") and "postgres" in os.environ.get("DATABASE_URL", "")),
        reason="needs REDIS_URL and DATABASE_URL=postgres://… (the test command's second pass)",
    ),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

ORIGIN = "https://docs.example.com"
HELLO = [{"role": "user", "content": "Hello"}]
# What the log may say about one outage and its end: a line each way, and some slack.
MAX_REDIS_LINES = 5


class OwnRedis:
    """A redis-server of this test's own on 127.0.0.1:``port``, which the test stops and starts
    again on the same port. Nothing is kept on disk, unless ``keep`` names a directory: then
    ``stop(save=True)`` saves the data there and the next start loads it (a Redis restarted
    with persistence)."""

    def __init__(self, keep: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.keep = keep
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        disk = ("--dir", str(self.keep), "--dbfilename", "dump.rdb") if self.keep else ()
        self.process = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", *disk),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self.answers():
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        # from_url: no retries (a client built directly retries a lost connection with
        # backoff, seconds after SHUTDOWN).
        return redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self, *, save: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if save:
            with self.client() as client:
                client.shutdown(save=True)  # SHUTDOWN SAVE: even with no save points set
        else:
            self.process.terminate()
        self.process.wait(10)
        self.process = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def daphne(own_redis: OwnRedis, transactional_db: None) -> Iterator[DaphneServer]:
    """Slipstream on the test database, sharing through the test's own Redis only."""
    with DaphneServer(env={**server_env(), "REDIS_URL": own_redis.url}) as server:
        yield server


@pytest.fixture
def widget(slot: Any) -> Widget:
    # Room for the requests below: new visitors from one address are limited to 20 an hour.
    return Widget.objects.create(
        name="Docs", slot=slot, allowed_origins=f"{ORIGIN}/\n", ip_visitors_per_hour=1000
    )


class Reader:
    """One streaming response's events, read in as many goes as the test needs."""

    def __init__(self, response: httpx.Response) -> None:
        self.raw = response.iter_raw()
        self.decoder = SSEDecoder()
        self.events: list[ServerSentEvent] = []

    def read(self, words: int | None = None) -> list[ServerSentEvent]:
        """Every event so far, read to the end, or until ``words`` words of answer arrived."""
        for piece in self.raw:
            self.events += self.decoder.feed(piece)
            if words is not None and len(text_of(self.events).split()) >= words:
                return self.events
        self.events += self.decoder.flush()
        return self.events


def whole(events: list[ServerSentEvent] | None) -> bool:
    """A stream (not None) that ended as a complete answer does: ``[DONE]``, no error event."""
    if not events:
        return False
    errors = [e for e in events if e.event == "message" and '"error"' in e.data[:20]]
    return events[-1].data == "[DONE]" and not errors


class Outcome:
    """One request's status, and for a 200 stream whether it came whole."""

    def __init__(self, response: httpx.Response, events: list[ServerSentEvent] | None) -> None:
        self.status = response.status_code
        self.retry_after = response.headers.get("Retry-After")
        self.events = events
        self.body = "" if events is not None else response.text

    def __repr__(self) -> str:
        return f"<{self.status} Retry-After={self.retry_after} {self.body[:200]!r}>"


def stream(client: httpx.Client, url: str, **kwargs: Any) -> Outcome:
    with client.stream("POST", url, **kwargs) as response:
        if response.status_code != 200 or "event-stream" not in response.headers.get(
            "content-type", ""
        ):
            response.read()
            return Outcome(response, None)
        return Outcome(response, Reader(response).read())


class Surfaces:
    """One request of each kind the outage must not turn into a 500."""

    def __init__(self, server: DaphneServer, chat: httpx.Client, api_key: str, widget: Widget):
        self.server, self.chat, self.widget = server, chat, widget
        self.api = httpx.Client(
            base_url=server.base_url + "/v1",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        self.visitor = httpx.Client(base_url=f"{server.base_url}/widget/{widget.public_key}/")
        self.visitor.headers["Origin"] = ORIGIN

    def close(self) -> None:
        self.api.close()
        self.visitor.close()

    def new_visitor(self) -> Outcome:
        response = self.visitor.post("visitor/")
        if response.status_code == 200:
            self.visitor.headers["X-Widget-Visitor"] = response.json()["token"]
        return Outcome(response, None)

    def each(self) -> dict[str, Outcome]:
        body = {"model": "primary", "messages": HELLO}
        return {
            "chat": stream(self.chat, "/chat/stream/", json={"content": "Hello"}),
            "v1 stream": stream(self.api, "/chat/completions", json={**body, "stream": True}),
            "v1 whole": Outcome(self.api.post("/chat/completions", json=body), None),
            "v1 text": stream(
                self.api, "/completions", json={"model": "primary", "prompt": "Hi", "stream": True}
            ),
            "v1 models": Outcome(self.api.get("/models"), None),
            "widget stream": stream(self.visitor, "stream/", json={"content": "Hello"}),
            "widget history": Outcome(self.visitor.get("conversation/"), None),
            "widget visitor": self.new_visitor(),
        }


def redis_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "redis" in line.lower()]


def test_while_redis_is_down_requests_are_served_or_refused_with_retry_after(
    own_redis, daphne, slot, sim, user, api_key, widget
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=8)
    with (
        closing(session_client(daphne, user)) as chat,
        closing(Surfaces(daphne, chat, api_key, widget)) as surfaces,
    ):
        assert surfaces.new_visitor().status == 200
        before = surfaces.each()
        assert {name: o.status for name, o in before.items()} == dict.fromkeys(before, 200)
        logged_before = len(daphne.log_text())

        own_redis.stop()
        # The requests that find Redis gone, those that skip it after, and those after the
        # process asked it again (every PROBE_S) and found it still gone.
        down_until = time.monotonic() + 2.5 * PROBE_S
        during = [surfaces.each()]
        while time.monotonic() < down_until or len(during) < 3:
            during.append(surfaces.each())
        own_redis.start()

        for outcomes in during:
            assert all(o.status != 500 for o in outcomes.values()), outcomes
            # Served by this process alone: a whole answer, as with Redis.
            for name in ("chat", "v1 stream", "v1 text"):
                assert outcomes[name].status == 200, outcomes
                assert whole(outcomes[name].events), (name, outcomes[name].events)
            for name in ("v1 whole", "v1 models", "widget history"):
                assert outcomes[name].status == 200, outcomes
            # The widget's rate limits live in Redis: refused, with when to try again.
            for name in ("widget stream", "widget visitor"):
                assert outcomes[name].status == 503, outcomes
                assert outcomes[name].retry_after is not None, outcomes
                assert int(outcomes[name].retry_after) >= 1

        # Back: the widget counts its limits again, within seconds of Redis' return.
        deadline = time.monotonic() + 30
        while (after := surfaces.each())["widget stream"].status != 200:
            assert time.monotonic() < deadline, after
            time.sleep(0.2)
        assert {name: o.status for name, o in after.items()} == dict.fromkeys(after, 200)
    log = daphne.log_text()[logged_before:]
    assert "Traceback" not in log, log[-3000:]
    assert len(redis_lines(log)) <= MAX_REDIS_LINES, redis_lines(log)


def test_streams_running_when_redis_stops_finish_and_are_stored(
    own_redis, daphne, slot, sim, user, api_key, widget
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=40, length=120)
    with (
        closing(session_client(daphne, user)) as chat,
        closing(Surfaces(daphne, chat, api_key, widget)) as surfaces,
    ):
        assert surfaces.new_visitor().status == 200
        body = {"model": "primary", "messages": HELLO, "stream": True}
        logged_before = len(daphne.log_text())
        with (
            chat.stream("POST", "/chat/stream/", json={"content": "long"}) as in_chat,
            surfaces.api.stream("POST", "/chat/completions", json=body) as in_api,
            surfaces.visitor.stream("POST", "stream/", json={"content": "long"}) as in_widget,
        ):
            responses = {"chat": in_chat, "v1": in_api, "widget": in_widget}
            assert {n: r.status_code for n, r in responses.items()} == dict.fromkeys(responses, 200)
            readers = {name: Reader(response) for name, response in responses.items()}
            for reader in readers.values():
                reader.read(5)
            own_redis.stop()
            answers = {name: reader.read() for name, reader in readers.items()}
    for name, events in answers.items():
        assert whole(events), (name, events[-3:])
        assert len(text_of(events).split()) == 120, name
    for name in ("chat", "widget"):
        meta = json.loads(answers[name][0].data)
        stored = Message.objects.get(pk=meta["assistant_message_id"])
        assert (stored.status, stored.content) == ("complete", text_of(answers[name])), name
    log = daphne.log_text()[logged_before:]
    assert "Traceback" not in log, log[-3000:]
    assert len(redis_lines(log)) <= MAX_REDIS_LINES, redis_lines(log)


# ------------------------------------------------------------------------------------------------
# chat.relay.cluster itself (each Shared stands for one process)
# ------------------------------------------------------------------------------------------------
def chunk(n: int) -> Chunk:
    obj = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": f"w{n} "}}],
    }
    return Chunk(json.dumps(obj), obj)


@pytest.fixture
async def outage(tmp_path: Path) -> AsyncIterator[tuple[OwnRedis, Shared, Shared]]:
    """A Redis that keeps its data across a restart, and two processes' shared state on it."""
    server = OwnRedis(keep=tmp_path)
    await asyncio.to_thread(server.start)
    a, b = Shared(server.url), Shared(server.url)
    yield server, a, b
    await a.aclose()
    await b.aclose()
    await asyncio.to_thread(server.stop)


async def test_a_buffer_written_while_redis_was_down_is_whole_once_it_returns(
    outage, caplog
) -> None:
    server, a, b = outage
    generation = Generation(slot="primary", keep_running=True)
    a.publish(generation)
    for n in range(3):
        generation.publish(chunk(n))

    async def buffered(count: int) -> bool:
        return bool(await b.redis.xlen(gen_key(generation.id)) == count)

    await until(lambda: buffered(4), timeout_s=20, what="the slot and 3 chunks written")
    await asyncio.to_thread(server.stop, save=True)
    for n in range(3, 6):
        generation.publish(chunk(n))

    async def down() -> bool:
        return not a.health.up

    await until(down, timeout_s=20, what="the writer finds Redis gone")
    await asyncio.to_thread(server.start)
    await generation.finish(Status.COMPLETE)
    await until(lambda: buffered(8), timeout_s=20, what="the held chunks and the end written")
    # Another process resumes the answer as if Redis had never been away.
    mirror = b.mirror(generation.id, slot="primary", keep_running=False)
    mirror.attach()
    try:
        read = [item.data async for item in mirror.subscribe() if isinstance(item, Chunk)]
    finally:
        mirror.detach()
    assert read == [chunk(n).data for n in range(6)]
    assert mirror.status == Status.COMPLETE
    said = [r.getMessage() for r in caplog.records if r.name == "chat.relay.cluster"]
    assert [line.split(" (")[0].split(" after")[0] for line in said] == [
        "redis unavailable",
        "redis back",
    ], said


async def test_a_buffer_redis_lost_is_given_up_not_written_with_a_hole(outage) -> None:
    server, a, _ = outage
    generation = Generation(slot="primary", keep_running=True)
    a.publish(generation)
    generation.publish(chunk(0))
    writer = generation.sink

    async def written() -> bool:
        return bool(writer.written == 2)

    await until(written, timeout_s=20, what="the slot and a chunk written")
    await asyncio.to_thread(server.stop)  # its data gone with it
    generation.publish(chunk(1))

    async def down() -> bool:
        return not a.health.up

    await until(down, timeout_s=20, what="the writer finds Redis gone")
    await asyncio.to_thread(server.start)
    await generation.finish(Status.COMPLETE)
    await asyncio.wait_for(writer.task, 20)
    assert writer.given_up
    assert not await a.redis.exists(gen_key(generation.id))  # no buffer with a hole


async def test_after_an_outage_stops_are_heard_and_leases_given_back(outage) -> None:
    server, a, _ = outage
    lease = await a.acquire_lease("1:primary", limit=1, timeout_s=1)
    assert lease
    running = Generation(slot="primary", keep_running=True)
    running.task = asyncio.create_task(asyncio.sleep(3600))  # the upstream call it would cancel
    await asyncio.to_thread(server.stop, save=True)
    # While Redis is down: the slot's limit is each process's own, a Stop cannot be sent.
    assert await a.acquire_lease("1:primary", limit=1, timeout_s=1) == LOCAL_LEASE
    with pytest.raises(SharedUnavailable):
        await a.request_stop(running.id)
    await a.release_lease(lease)  # given back once Redis answers
    await asyncio.to_thread(server.start)
    with server.client() as raw:

        async def given_back() -> bool:
            return raw.zcard("slipstream:slot:1:primary:leases") == 0

        await until(given_back, timeout_s=20, what="the lease given back")

        async def stopped() -> bool:
            # Sent by another process; lost while this one was not subscribed yet: send again.
            raw.publish(STOP_CHANNEL, running.id)
            return running.task is not None and running.task.done()

        await until(stopped, timeout_s=20, what="the Stop heard")
