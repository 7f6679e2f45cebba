"""The slot dispatcher end to end: daphne serving Slipstream, the simulator as the upstream,
clients over real HTTP (raw httpx, the openai SDK, the browser's stream endpoint). Every
behaviour is observed through the simulator's own counters."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from chat import readcache
from chat.models import ApiCall, Message, Slot
from chat.relay.sse import ServerSentEvent, SSEDecoder
from tests.conftest import FIXTURES, make_slot
from tests.support.llama_server import free_port
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


def api_stream(
    server,
    api_key: str,
    *,
    endpoint: str = "chat/completions",
    on_headers: Callable[[], object] | None = None,
    **body: Any,
) -> tuple[int, bytes, httpx.Headers]:
    """One raw streaming call to /v1/chat/completions (or /v1/completions): status, the raw
    body, the headers. ``on_headers`` is called when the status arrived: Slipstream has
    submitted the request by then (it holds the status until the first chunk or the first
    keep-alive)."""
    prompt = {"messages": HELLO} if endpoint == "chat/completions" else {"prompt": "Hello"}
    payload = {"model": "primary", **prompt, "stream": True, **body}
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/{endpoint}",
        json=payload,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as response:
        if on_headers is not None:
            on_headers()
        return response.status_code, response.read(), response.headers


def content_of(raw: bytes) -> str:
    decoder = SSEDecoder()
    text = ""
    for event in [*decoder.feed(raw), *decoder.flush()]:
        if event.data == "[DONE]":
            continue
        obj = json.loads(event.data)
        for choice in obj.get("choices") or ():
            text += choice.get("text") or choice.get("delta", {}).get("content") or ""
    return text


def events_of(response: httpx.Response) -> Iterator[ServerSentEvent]:
    """A streamed response's SSE events as they arrive."""
    decoder = SSEDecoder()
    for raw in response.iter_raw():
        yield from decoder.feed(raw)
    yield from decoder.flush()


def read_to(events: Iterator[ServerSentEvent], predicate) -> list[ServerSentEvent]:
    """Events up to and including the first that ``predicate`` accepts (all, if none does)."""
    seen = []
    for event in events:
        seen.append(event)
        if predicate(event):
            break
    return seen


def is_status(state: str):
    return lambda e: e.event == "slipstream.status" and json.loads(e.data)["state"] == state


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


# --- Cold boot ------------------------------------------------------------------------------


def test_cold_boot_waits_with_keepalives_then_answers(server, api_key, slot, sim) -> None:
    # Loading until the client has seen a keep-alive, however late this request arrives.
    sim.configure(cold_boot_s=3600, ttft_ms=0, tokens_per_s=0, length=10)
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json={"model": "primary", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as response:
        status, raw, chunks = response.status_code, b"", response.iter_raw()
        for part in chunks:
            raw += part
            if b": keep-alive\n\n" in raw:
                break
        sim.configure(cold_boot_s=0)
        raw += b"".join(chunks)
    assert status == 200
    assert b": keep-alive\n\n" in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"error"' not in raw
    assert len(content_of(raw).split()) == 10
    stats = sim.stats()
    assert stats["requests"] >= 2  # the 503s while loading, then the one that worked
    assert stats["streams_started"] == 1
    assert stats["completed"] == 1
    wait_until(lambda: Slot.objects.get().state == "ready")


def test_cold_boot_shows_warming_to_the_browser(slot, sim, browser_session) -> None:
    sim.configure(cold_boot_s=3600, ttft_ms=0, tokens_per_s=0, length=5)
    with browser_session.stream("POST", "/chat/stream/", json={"content": "Hello"}) as response:
        events = events_of(response)
        warming = read_to(events, is_status("warming"))[-1]
        sim.configure(cold_boot_s=0)  # loaded only once the browser was told it is warming
        rest = list(events)
    assert json.loads(warming.data) == {"state": "warming", "slot": "primary"}
    assert rest[-1].data == "[DONE]"
    message = Message.objects.get(role="assistant")
    assert message.status == "complete"
    assert len(message.content.split()) == 5


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
    sim.configure(cold_boot_s=3600)  # loading until the test has seen "warming"
    # Asking for the states is the on-demand probe: cold -> warming -> ready with no request.
    states = browser_session.get("/chat/slots/").json()["slots"]
    assert [s["name"] for s in states] == ["primary"]
    wait_until(lambda: Slot.objects.get().state == "warming")
    sim.configure(cold_boot_s=0)
    wait_until(lambda: Slot.objects.get().state == "ready")
    (shown,) = browser_session.get("/chat/slots/").json()["slots"]
    assert shown["state"] == "ready"
    assert shown["changed_at"]
    page = browser_session.get("/").text
    assert 'data-state="ready"' in page
    assert "primary · ready" in page


# --- Single-flight --------------------------------------------------------------------------


@pytest.mark.parametrize("clients", [2, 10])
def test_identical_streams_share_one_upstream_call(server, api_key, sim, clients) -> None:
    make_slot(sim.base_url, single_flight="always")
    # The model loads until every client has its status, i.e. every request was submitted: the
    # shared answer cannot end before the last client arrives (it did on a loaded machine, and
    # the last one rightly started a second call). Requests that did not share would each call
    # the upstream once it is up.
    sim.configure(cold_boot_s=3600, ttft_ms=0, tokens_per_s=200, length=20)
    submitted = threading.Barrier(clients + 1, timeout=60)
    with ThreadPoolExecutor(clients) as pool:
        futures = [
            pool.submit(api_stream, server, api_key, on_headers=submitted.wait)
            for _ in range(clients)
        ]
        submitted.wait()
        sim.configure(cold_boot_s=0)
        results = [future.result() for future in futures]
    assert {status for status, _, _ in results} == {200}
    texts = {content_of(raw) for _, raw, _ in results}
    assert len(texts) == 1
    assert len(texts.pop().split()) == 20
    assert sim.stats()["streams_started"] == 1
    # Each client still gets its own completion id, as OpenAI would give.
    ids = {json.loads(raw.split(b"data: ")[1].split(b"\n")[0])["id"] for _, raw, _ in results}
    assert len(ids) == clients


def test_a_late_joiner_gets_the_whole_answer(server, api_key, sim, transactional_db) -> None:
    make_slot(sim.base_url, single_flight="always")
    # Ten tokens, then a pause (pinged, so nothing times out) in which the late one joins: it
    # arrives once the first client has read those ten.
    sim.configure(
        ttft_ms=0, tokens_per_s=50, length=30, stall_after=10, stall_s=3, keepalive_comment_s=0.5
    )
    relayed = threading.Event()

    def first_client() -> bytes:
        with httpx.stream(
            "POST",
            server.base_url + "/v1/chat/completions",
            json={"model": "primary", "messages": HELLO, "stream": True},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=60,
        ) as response:
            raw = b""
            for part in response.iter_raw():
                raw += part
                if len(content_of(raw).split()) >= 10:
                    relayed.set()
            return raw

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(first_client)
        assert relayed.wait(30)
        _, late_raw, _ = api_stream(server, api_key)
        first_raw = first.result()
    assert content_of(late_raw) == content_of(first_raw)
    assert len(content_of(late_raw).split()) == 30
    assert sim.stats()["streams_started"] == 1


def test_single_flight_only_while_not_ready_by_default(server, api_key, slot, sim) -> None:
    # Loading until both requests were submitted (each has its status): the slot is not ready
    # while the second arrives, however late.
    sim.configure(ttft_ms=0, tokens_per_s=100, length=10, cold_boot_s=3600)
    submitted = threading.Barrier(3, timeout=60)
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(api_stream, server, api_key, on_headers=submitted.wait) for _ in range(2)
        ]
        submitted.wait()
        sim.configure(cold_boot_s=0)
        cold = [future.result() for future in futures]
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

    def one(endpoint: str, on_headers: Callable[[], object] | None = None) -> None:
        status, raw, _ = api_stream(server, api_key, endpoint=endpoint, on_headers=on_headers)
        assert status == 200
        assert len(content_of(raw).split()) == 10

    # The first takes the slot's place and holds it while the model loads; each of the others
    # is sent once the previous one was submitted (it has its status: queued that long), and
    # the model is up once all three wait. The second alone asks /v1/completions, so the
    # simulator's history tells it apart: the order there is the order served.
    sim.configure(cold_boot_s=3600)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(one, "chat/completions")]
        sim.wait_for(lambda s: s["requests"] >= 1, timeout_s=30)
        for endpoint in ("completions", "chat/completions"):
            submitted = threading.Event()
            futures.append(pool.submit(one, endpoint, submitted.set))
            assert submitted.wait(30)
        sim.configure(cold_boot_s=0)
        for future in futures:
            future.result()
    history = sorted(sim.stats()["history"], key=lambda r: r["started_at"])
    served = [record["path"] for record in history]
    assert served == ["/v1/chat/completions", "/v1/completions", "/v1/chat/completions"]
    for earlier, later in itertools.pairwise(history):
        assert later["started_at"] >= earlier["ended_at"]  # never two in flight


def test_queue_position_reaches_the_browser(slot, sim, browser_session, server) -> None:
    Slot.objects.update(max_concurrency=1, single_flight="off")
    # The first answer holds the slot's place while the model loads, until the second one was
    # told its place in the queue.
    sim.configure(ttft_ms=0, tokens_per_s=20, length=20, cold_boot_s=3600)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(post_message, browser_session, "first")
        sim.wait_for(lambda s: s["requests"] >= 1, timeout_s=30)
        with browser_session.stream("POST", "/chat/stream/", json={"content": "second"}) as r:
            events = events_of(r)
            queued = read_to(events, is_status("queued"))[-1]
            sim.configure(cold_boot_s=0)
            rest = list(events)
        assert busy.result().events[-1].data == "[DONE]"
    assert json.loads(queued.data) == {"state": "queued", "slot": "primary", "position": 1}
    assert rest[-1].data == "[DONE]"


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
    assert stats["requests"] == 3
    assert stats["last_request"]["model"] == "sim-backup"
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
    readcache.invalidate()  # .update() sends no signal; the chat's slot is cached, as /v1's
    answer = post_message(browser_session, "Hello")
    assert answer.content == full[: full.find(word)]
    stored = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert stored.content == answer.content
    assert stored.finish_reason == "stop"


# --- Mid-stream errors --------------------------------------------------------------------------


def test_mid_stream_error_is_one_final_event_and_stored(api_key, server, sim, user) -> None:
    make_slot(sim.base_url)
    key = user.api_keys.get()
    key.store_conversations = True
    key.save()
    sim.configure(ttft_ms=0, tokens_per_s=0, length=30, malformed_after=6)
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0)
    received: list[str] = []
    stream = client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError) as caught:
        received.extend(c.choices[0].delta.content or "" if c.choices else "" for c in stream)
    assert "malformed" in caught.value.message
    wait_until(lambda: Message.objects.filter(role="assistant").exists())
    message = Message.objects.get(role="assistant")
    assert message.status == "error"
    assert message.content == "".join(received)
    assert len("".join(received).split()) == 6
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
    assert events[-1].event == "message"
    assert final["error"]["message"] == recorded_error["message"]
    assert not any(e.data == "[DONE]" for e in events)
    assert content_of(b"".join(f"data: {e.data}\n\n".encode() for e in events[:-1])) == before

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(model="primary", messages=HELLO, stream=True):
            pass
    assert caught.value.message == recorded_error["message"]


def test_slot_states_say_what_is_queued_and_how_fast_it_answers(slot, sim, browser_session):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    assert post_message(browser_session, "Warm it up").status_code == 200
    (shown,) = browser_session.get("/chat/slots/").json()["slots"]
    assert (shown["in_flight"], shown["queued"]) == (0, 0)
    assert shown["ttft_p50_ms"] is not None  # today's answers: one
    assert 0 < shown["ttft_p50_ms"] <= 100  # the simulator answered at once: the first bucket

    slot.max_concurrency = 1
    slot.save()
    sim.configure(ttft_ms=0, tokens_per_s=2, length=40)  # 20 s each: held while we look
    with (
        browser_session.stream("POST", "/chat/stream/", json={"content": "one"}) as first,
        browser_session.stream("POST", "/chat/stream/", json={"content": "two"}) as second,
    ):
        # The line iterators stay referenced: dropping one would close its stream.
        opened = [first_event(response) for response in (first, second)]
        generations = [data["generation_id"] for data, _ in opened]

        def load() -> tuple[int, int]:
            (state,) = browser_session.get("/chat/slots/").json()["slots"]
            return state["queued"], state["in_flight"]

        try:
            wait_until(lambda: load() == (1, 1))
        finally:
            # Chat answers run on without a reader: stop them, or they stream into later tests.
            for generation in generations:
                browser_session.post(f"/chat/generations/{generation}/stop/")


def first_event(response: httpx.Response) -> tuple[dict[str, Any], Iterator[str]]:
    """The JSON of the first ``data:`` line of an SSE response (the chat's
    ``slipstream.message`` event), and the iterator of the lines after it."""
    lines = response.iter_lines()
    for line in lines:
        if line.startswith("data:"):
            return json.loads(line.removeprefix("data:")), lines
    raise AssertionError("the stream ended before its first event")
