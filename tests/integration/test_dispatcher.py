"""The slot dispatcher end to end: daphne serving Slipstream, the simulator as the upstream,
clients over real HTTP (raw httpx, the openai SDK, the browser's stream endpoint). Every
behaviour is observed through the simulator's own counters."""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from chat.models import ApiCall, Message, Slot
from chat.relay.sse import SSEDecoder
from tests.conftest import FIXTURES, KEEPALIVE_S, make_slot
from tests.support.llama_server import free_port
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Hello"}]


def api_stream(server, api_key: str, **body: Any) -> tuple[int, bytes, httpx.Headers]:
    """One raw streaming call to /v1/chat/completions: status, the raw body, the headers."""
    payload = {"model": "primary", "messages": HELLO, "stream": True, **body}
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as response:
        return response.status_code, response.read(), response.headers


def content_of(raw: bytes) -> str:
    decoder = SSEDecoder()
    text = ""
    for event in [*decoder.feed(raw), *decoder.flush()]:
        if event.data == "[DONE]":
            continue
        obj = json.loads(event.data)
        for choice in obj.get("choices") or ():
            text += choice.get("delta", {}).get("content") or ""
    return text


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


# --- Cold boot ------------------------------------------------------------------------------


def test_cold_boot_waits_with_keepalives_then_answers(server, api_key, slot, sim) -> None:
    sim.configure(cold_boot_s=KEEPALIVE_S + 1.5, ttft_ms=0, tokens_per_s=0, length=10)
    status, raw, _ = api_stream(server, api_key)
    assert status == 200
    assert b": keep-alive\n\n" in raw
    assert raw.endswith(b"data: [DONE]\n\n") and b'"error"' not in raw
    assert len(content_of(raw).split()) == 10
    stats = sim.stats()
    assert stats["requests"] >= 2  # the 503s while loading, then the one that worked
    assert stats["streams_started"] == 1 and stats["completed"] == 1
    wait_until(lambda: Slot.objects.get().state == "ready")


def test_cold_boot_shows_warming_to_the_browser(slot, sim, browser_session) -> None:
    sim.configure(cold_boot_s=1.5, ttft_ms=0, tokens_per_s=0, length=5)
    answer = post_message(browser_session, "Hello")
    statuses = [json.loads(e.data) for e in answer.events if e.event == "slipstream.status"]
    assert {"state": "warming", "slot": "primary"} in statuses
    assert answer.events[-1].data == "[DONE]"
    message = Message.objects.get(role="assistant")
    assert message.status == "complete" and len(message.content.split()) == 5


def test_cold_boot_timeout_is_503_with_retry_after(server, api_key, sim, transactional_db):
    make_slot(sim.base_url, cold_boot_timeout_s=0.3)
    sim.configure(cold_boot_s=30)
    status, raw, headers = api_stream(server, api_key)
    assert status == 503
    assert json.loads(raw)["error"]["code"] == "slot_warming"
    assert int(headers["Retry-After"]) >= 1
    wait_until(lambda: Slot.objects.get().state == "warming")
    # Non-streaming waits the same way and fails the same way.
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="primary", messages=HELLO)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["Retry-After"]


def test_slot_state_is_shown_live(slot, sim, browser_session) -> None:
    sim.configure(cold_boot_s=1.0)
    # Asking for the states is the on-demand probe: cold -> warming -> ready with no request.
    states = browser_session.get("/chat/slots/").json()["slots"]
    assert [s["name"] for s in states] == ["primary"]
    wait_until(lambda: Slot.objects.get().state == "warming")
    wait_until(lambda: Slot.objects.get().state == "ready")
    (shown,) = browser_session.get("/chat/slots/").json()["slots"]
    assert shown["state"] == "ready" and shown["changed_at"]
    page = browser_session.get("/").text
    assert 'data-state="ready"' in page and "primary · ready" in page


# --- Single-flight --------------------------------------------------------------------------


@pytest.mark.parametrize("clients", [2, 10])
def test_identical_streams_share_one_upstream_call(server, api_key, sim, clients) -> None:
    make_slot(sim.base_url, single_flight="always")
    sim.configure(ttft_ms=300, tokens_per_s=200, length=20)
    barrier = threading.Barrier(clients)

    def one(_: int) -> tuple[int, bytes, httpx.Headers]:
        barrier.wait()
        return api_stream(server, api_key)

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    assert {status for status, _, _ in results} == {200}
    texts = {content_of(raw) for _, raw, _ in results}
    assert len(texts) == 1 and len(texts.pop().split()) == 20
    assert sim.stats()["streams_started"] == 1
    # Each client still gets its own completion id, as OpenAI would give.
    ids = {json.loads(raw.split(b"data: ")[1].split(b"\n")[0])["id"] for _, raw, _ in results}
    assert len(ids) == clients


def test_a_late_joiner_gets_the_whole_answer(server, api_key, sim, transactional_db) -> None:
    make_slot(sim.base_url, single_flight="always")
    sim.configure(ttft_ms=0, tokens_per_s=20, length=30)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(api_stream, server, api_key)
        sim.wait_for(lambda s: s["streams_started"] == 1, timeout_s=5)
        time.sleep(0.5)  # ~10 tokens already relayed to the first client
        late = pool.submit(api_stream, server, api_key)
        (_, first_raw, _), (_, late_raw, _) = first.result(), late.result()
    assert content_of(late_raw) == content_of(first_raw)
    assert len(content_of(late_raw).split()) == 30
    assert sim.stats()["streams_started"] == 1


def test_single_flight_only_while_not_ready_by_default(server, api_key, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=100, length=10, cold_boot_s=1.0)
    with ThreadPoolExecutor(2) as pool:
        cold = list(pool.map(lambda _: api_stream(server, api_key), range(2)))
    assert sim.stats()["streams_started"] == 1
    assert content_of(cold[0][1]) == content_of(cold[1][1])
    # Ready now: identical requests each get their own upstream call.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: api_stream(server, api_key), range(2)))
    assert sim.stats()["streams_started"] == 3


# --- Queueing ---------------------------------------------------------------------------------


def test_queue_serves_in_order_within_the_limit(server, api_key, sim, transactional_db) -> None:
    make_slot(sim.base_url, max_concurrency=1, single_flight="off")
    sim.configure(ttft_ms=0, tokens_per_s=50, length=10)
    finished: list[str] = []
    lock = threading.Lock()

    def one(word: str) -> None:
        status, raw, _ = api_stream(server, api_key, messages=[{"role": "user", "content": word}])
        assert status == 200 and len(content_of(raw).split()) == 10
        with lock:
            finished.append(word)

    with ThreadPoolExecutor(3) as pool:
        futures = []
        for word in ("one", "two", "three"):
            futures.append(pool.submit(one, word))
            # Each arrives after the previous one reached the slot (queued or streaming).
            time.sleep(0.15)
        for future in futures:
            future.result()
    assert finished == ["one", "two", "three"]
    history = sorted(sim.stats()["history"], key=lambda r: r["started_at"])
    assert len(history) == 3
    for earlier, later in itertools.pairwise(history):
        assert later["started_at"] >= earlier["ended_at"]  # never two in flight


def test_queue_position_reaches_the_browser(slot, sim, browser_session, server) -> None:
    Slot.objects.update(max_concurrency=1, single_flight="off")
    sim.configure(ttft_ms=0, tokens_per_s=20, length=20)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(post_message, browser_session, "first")
        sim.wait_for(lambda s: s["streams_started"] == 1, timeout_s=5)
        second = post_message(browser_session, "second")
        busy.result()
    statuses = [json.loads(e.data) for e in second.events if e.event == "slipstream.status"]
    assert {"state": "queued", "slot": "primary", "position": 1} in statuses
    assert second.events[-1].data == "[DONE]"


def test_queue_timeout_is_429_with_retry_after(server, api_key, sim, transactional_db) -> None:
    make_slot(sim.base_url, max_concurrency=1, queue_timeout_s=0.2, single_flight="off")
    sim.configure(ttft_ms=0, tokens_per_s=20, length=40)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(api_stream, server, api_key)
        sim.wait_for(lambda s: s["streams_started"] == 1, timeout_s=5)
        status, raw, headers = api_stream(server, api_key)
        busy.result()
    assert status == 429
    error = json.loads(raw)["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "slot_queue_timeout")
    assert int(headers["Retry-After"]) >= 1
    assert sim.stats()["requests"] == 1


# --- Retries and fallback -------------------------------------------------------------------


def test_retries_before_the_first_byte(openai_client, slot, sim) -> None:
    sim.configure(fail_requests=2, fail_status=502, ttft_ms=0, tokens_per_s=0, length=8)
    chunks = list(
        openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 8
    assert sim.stats()["requests"] == 3  # two failures, then the answer


def test_retries_are_bounded(openai_client, sim, transactional_db) -> None:
    make_slot(sim.base_url, max_retries=1)
    sim.configure(fail_requests=5, fail_status=504)
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    assert caught.value.status_code == 502
    assert sim.stats()["requests"] == 2
    assert ApiCall.objects.get().error_code == "504"  # the upstream's own code, passed on


def test_no_retry_after_the_first_byte(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=30, drop_after=5)
    stream = openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert sim.stats()["requests"] == 1


def test_fallback_when_retries_are_spent(openai_client, sim, transactional_db) -> None:
    backup = make_slot(sim.base_url, name="backup", model="sim-backup")
    make_slot(sim.base_url, name="primary", max_retries=1, fallback=backup)
    sim.configure(fail_requests=2, fail_status=502, ttft_ms=0, length=6)
    chunks = list(
        openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    )
    assert len("".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split()) == 6
    stats = sim.stats()
    assert stats["requests"] == 3 and stats["last_request"]["model"] == "sim-backup"
    assert {c.model for c in chunks} == {"primary"}  # the client asked for primary


def test_fallback_takes_over_a_slot_in_error(slot, sim, browser_session) -> None:
    dead = make_slot(f"http://127.0.0.1:{free_port()}", name="dead", max_retries=0)
    dead.fallback = slot
    dead.save()
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    first = post_message(browser_session, "Hello", slot="dead")
    assert first.meta("slipstream.done")["slot"] == "primary"
    assert (
        Message.objects.get(pk=first.meta("slipstream.message")["assistant_message_id"]).slot_name
        == "primary"
    )
    wait_until(lambda: Slot.objects.get(name="dead").state == "error")
    second = post_message(browser_session, "Hello again", slot="dead")
    assert second.events[-1].data == "[DONE]"
    assert sim.stats()["streams_started"] == 2


# --- Stop sequences ---------------------------------------------------------------------------


def test_stop_strings_are_enforced_when_the_upstream_ignores_them(openai_client, slot, sim):
    sim.configure(ttft_ms=0, tokens_per_s=100, length=40, ignore_stop=True)
    full = openai_client.chat.completions.create(model="primary", messages=HELLO)
    text = full.choices[0].message.content
    stop = " " + text.split()[7]
    expected = text[: text.find(stop)]

    chunks = list(
        openai_client.chat.completions.create(
            model="primary", messages=HELLO, stream=True, stop=[stop]
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # The upstream kept going, so the relay hung up on it.
    sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=2)
    plain = openai_client.chat.completions.create(model="primary", messages=HELLO, stop=stop)
    assert plain.choices[0].message.content == expected
    assert plain.choices[0].finish_reason == "stop"


def test_a_slots_stop_strings_apply_to_the_stored_answer(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=40, ignore_stop=True)
    full = post_message(browser_session, "Hello").content
    word = " " + full.split()[5]
    Slot.objects.update(stop=[word])
    answer = post_message(browser_session, "Hello")
    assert answer.content == full[: full.find(word)]
    stored = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert stored.content == answer.content and stored.finish_reason == "stop"


# --- Mid-stream errors --------------------------------------------------------------------------


def test_mid_stream_error_is_one_final_event_and_stored(api_key, server, sim, user) -> None:
    make_slot(sim.base_url)
    key = user.api_keys.get()
    key.store_conversations = True
    key.save()
    sim.configure(ttft_ms=0, tokens_per_s=0, length=30, malformed_after=6)
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0)
    received = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model="primary", messages=HELLO, stream=True):
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert "malformed" in caught.value.message
    wait_until(lambda: Message.objects.filter(role="assistant").exists())
    message = Message.objects.get(role="assistant")
    assert message.status == "error" and message.content == received and len(received.split()) == 6
    assert ApiCall.objects.get().outcome == "error"


@pytest.mark.parametrize(
    "name", ["groq-midstream-error-event.sse", "openrouter-midstream-error-comments.sse"]
)
def test_recorded_mid_stream_errors_end_the_same_way(name, server, api_key, slot, sim) -> None:
    """Groq's ``event: error`` and OpenRouter's error chunk both become one final
    ``data: {"error": …}`` event after the content that came before it, then the stream ends."""
    recorded_decoder = SSEDecoder()
    recorded = (
        recorded_decoder.feed((FIXTURES / "sse" / name).read_bytes()) + recorded_decoder.flush()
    )
    error_event = next(
        e
        for e in recorded
        if e.event == "error" or (e.data != "[DONE]" and "error" in json.loads(e.data))
    )
    recorded_error = json.loads(error_event.data)["error"]
    before = "".join(
        (c.get("delta") or {}).get("content") or ""
        for e in recorded[: recorded.index(error_event)]
        if e.data != "[DONE]"
        for c in json.loads(e.data).get("choices") or ()
    )
    sim.configure(replay=name, ttft_ms=0, tokens_per_s=0)
    status, raw, _ = api_stream(server, api_key)
    assert status == 200  # the error came after the stream began
    decoder = SSEDecoder()
    events = decoder.feed(raw) + decoder.flush()
    final = json.loads(events[-1].data)
    assert events[-1].event == "message" and final["error"]["message"] == recorded_error["message"]
    assert not any(e.data == "[DONE]" for e in events)
    assert content_of(b"".join(f"data: {e.data}\n\n".encode() for e in events[:-1])) == before

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(model="primary", messages=HELLO, stream=True):
            pass
    assert caught.value.message == recorded_error["message"]
