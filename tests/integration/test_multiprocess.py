"""Several daphne processes on one PostgreSQL and one Redis behave as one: resume and Stop from
another process, single-flight across processes, and a killed process's answer kept as
``interrupted``. Runs when REDIS_URL is set and the database is PostgreSQL (the second pass of
the test command)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx
import pytest
from django.conf import settings

from chat.models import Message
from chat.relay.sse import SSEDecoder
from tests.conftest import make_slot, server_env, session_client
from tests.support.daphne_server import DaphneServer
from tests.support.sse_client import text_of

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (os.environ.get("REDIS_URL") and "postgres" in os.environ.get("DATABASE_URL", "")),
        reason="needs REDIS_URL and DATABASE_URL=postgres://… (the test command's second pass)",
    ),
]

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def second(django_db_setup: None, django_db_blocker) -> Iterator[DaphneServer]:
    """Process B, next to the session's ``server`` (process A)."""
    with django_db_blocker.unblock():
        env = server_env()
    with DaphneServer(env=env) as daphne:
        yield daphne


def read_some(raw: Iterator[bytes], words: int | None = None) -> list:
    """Events from ``raw`` (a response's one byte iterator) until ``words`` words of answer
    arrived, or to the end."""
    decoder = SSEDecoder()
    events = []
    for piece in raw:
        events += decoder.feed(piece)
        if words is not None and len(text_of(events).split()) >= words:
            return events
    return events + decoder.flush()


def full_answer(sim, body: dict) -> str:
    again = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    again["sim"] = {"ttft_ms": 0, "tokens_per_s": 0}  # the same words, without the pacing
    answer = httpx.post(sim.base_url + "/v1/chat/completions", json=again, timeout=30).json()
    return str(answer["choices"][0]["message"]["content"])


def test_start_on_a_resume_and_stop_on_b(server, second, slot, sim, user) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=25, length=400)
    with closing(session_client(server, user)) as a:
        b = session_client(second, user, session=a.cookies["sessionid"])
        with a.stream("POST", "/chat/stream/", json={"content": "long"}) as response:
            events = read_some(response.iter_raw(), 5)
            meta = json.loads(events[0].data)
            seen = max(int(e.id) for e in events if e.id)
            generation = meta["generation_id"]
            with b.stream("GET", f"/chat/generations/{generation}/?after={seen}") as resumed:
                tail = resumed.iter_raw()
                more = read_some(tail, 10)
                stopped = b.post(f"/chat/generations/{generation}/stop/")
                assert stopped.status_code == 200
                assert stopped.json()["status"] == "stopped"
                more += read_some(tail)
        b.close()
    stats = sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=3)
    assert stats["streams_started"] == 1
    first_ids = [int(e.id) for e in more if e.id]
    assert first_ids[0] == seen + 1  # nothing repeated, nothing skipped
    message = Message.objects.get(pk=meta["assistant_message_id"])
    assert message.status == "stopped"
    received = text_of(events) + text_of(more)
    assert message.content.startswith(received)
    assert len(message.content.split()) < 400


def test_identical_requests_to_two_processes_share_one_call(server, second, sim, api_key):
    make_slot(sim.base_url, single_flight="always")
    # The model loads until both requests were submitted (each has its status, which /v1 holds
    # until the first chunk or keep-alive): the shared answer cannot end before the second
    # arrives, however slow this run is.
    sim.configure(ttft_ms=0, tokens_per_s=100, length=20, cold_boot_s=3600)
    submitted = threading.Barrier(3, timeout=60)

    def call(base_url: str) -> str:
        with httpx.stream(
            "POST",
            base_url + "/v1/chat/completions",
            json={"model": "primary", "messages": HELLO, "stream": True},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=60,
        ) as response:
            submitted.wait()
            assert response.status_code == 200
            decoder = SSEDecoder()
            return text_of(decoder.feed(response.read()) + decoder.flush())

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(call, url) for url in (server.base_url, second.base_url)]
        submitted.wait()
        sim.configure(cold_boot_s=0)
        answers = [future.result() for future in futures]
    assert answers[0] == answers[1]
    assert len(answers[0].split()) == 20
    assert sim.stats()["streams_started"] == 1


def test_a_killed_process_leaves_its_answer_interrupted(server, slot, sim, user) -> None:
    rate = 20
    sim.configure(ttft_ms=0, tokens_per_s=rate, length=400)
    with DaphneServer(env=server_env()) as doomed, closing(session_client(doomed, user)) as c:
        response = c.send(
            c.build_request("POST", "/chat/stream/", json={"content": "long"}), stream=True
        )
        # Three and a half seconds in: the third checkpoint (due about a second after the
        # second, counted from the generation's start, not its first token) has landed, so at
        # least two seconds of text are stored whatever the delay before the first token; at
        # three seconds exactly it raced the kill, and the second held 39 words, not 40.
        events = read_some(response.iter_raw(), 3 * rate + rate // 2)
        meta = json.loads(events[0].data)
        assert doomed.process is not None
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait()
        killed_at = time.monotonic()
        response.close()
    sent_body = sim.stats()["last_request"]
    stats = sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=3)
    record = stats["history"][-1]
    sent_words = int((record["cancelled_at"] - record["started_at"]) * rate)
    # Another process's sweeper notices: the liveness key lapses within seconds.
    deadline = time.monotonic() + 20
    message = Message.objects.get(pk=meta["assistant_message_id"])
    while message.status == "streaming":
        assert time.monotonic() < deadline, "never marked interrupted"
        time.sleep(0.2)
        message.refresh_from_db()
    assert message.status == "interrupted"
    full = full_answer(sim, sent_body)
    assert full.startswith(message.content)
    # Stored from its shared buffer (every chunk relayed), not its last checkpoint: at least
    # what the reader got, but for the writes still on their way to Redis at the kill.
    kept = len(message.content.split())
    assert kept >= len(text_of(events).split()) - rate // 4
    assert sent_words - kept <= rate * 1.5, (sent_words, kept)  # about a second lost, at most
    assert kept >= 2 * rate
    assert killed_at
    assert settings.REDIS_URL
