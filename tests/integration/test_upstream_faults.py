"""Upstreams that misbehave the way real ones do (issue 12): a server that answers 503 to chat
while its health checks pass, one that resets or closes connections, a close-delimited stream cut
short, bad usage and bad chunk values. Each case was a broken promise; each is observed through
the simulator's counters and the stored rows, never through timing."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

from chat.models import ApiCall, Message
from chat.relay import dispatch
from chat.relay.background import cancel_all
from chat.relay.generation import Generation
from chat.relay.slots import StateChange, state_listeners
from chat.relay.types import BackendConfig, SlotConfig
from chat.relay.upstream import aclose_clients
from chat.simulator.thread import SimulatorThread
from tests.conftest import make_slot
from tests.support.llama_server import free_port
from tests.support.sse_client import post_message

HELLO = [{"role": "user", "content": "Hello"}]
ALWAYS = 10**6  # fail_requests: every request, for the whole test


def api_call(server: Any, api_key: str, *, stream: bool, **body: Any) -> httpx.Response:
    """One raw /v1/chat/completions call, read to its end."""
    payload = {"model": "primary", "messages": HELLO, "stream": stream, **body}
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as response:
        response.read()
        return response


# --- Upstream protection: no retry storm ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", [False, True])
def test_one_request_against_503_while_healthy_makes_few_calls(server, api_key, sim, stream):
    # Seen before the fix: 13,685 POSTs in 120 s for one non-streaming request, 2,112 in 21 s
    # for a streaming one: every "ready" health check woke the request to call again at once.
    make_slot(sim.base_url, cold_boot_timeout_s=1.5)  # under KEEPALIVE_S: a real status
    sim.configure(ttft_ms=0, fail_requests=ALWAYS, fail_status=503)
    started = time.monotonic()
    response = api_call(server, api_key, stream=stream)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "slot_warming"
    assert int(response.headers["Retry-After"]) >= 1
    stats = sim.stats()
    # The slot-wide backoff: 0.125 to 0.25 s, 0.25 to 0.5 s, 0.5 to 1 s, then 1 to 2 s apart.
    assert stats["requests"] <= 4 + elapsed


@pytest.fixture
async def no_listeners():
    # In process, without the database: keep the app's state listener (an UPDATE) out.
    saved = list(state_listeners)
    state_listeners.clear()
    yield state_listeners
    state_listeners.clear()
    state_listeners.extend(saved)
    await cancel_all()
    await aclose_clients()


def slot_on(sim: SimulatorThread, **policy: Any) -> SlotConfig:
    return SlotConfig(
        name="guarded",
        upstream_model="sim",
        backend=BackendConfig(base_url=sim.base_url + "/v1"),
        id=12,
        single_flight="off",
        **policy,
    )


@pytest.fixture
def own_simulator():
    """A simulator of the test's own: the session's also answers other tests' slot probes."""
    with SimulatorThread() as simulator:
        yield simulator


async def twenty_answers(slot: SlotConfig) -> list[Generation]:
    """20 different requests submitted at once to ``slot``, each awaited to its end."""
    generations = []
    for i in range(20):
        generation, _ = await dispatch.submit(
            slot, "chat/completions", {"messages": [{"role": "user", "content": f"q{i}"}]}
        )
        generations.append(generation)
    await asyncio.gather(*(g.task for g in generations if g.task is not None))
    return generations


async def test_twenty_waiting_clients_share_one_careful_caller(own_simulator, no_listeners):
    simulator = own_simulator
    simulator.configure(ttft_ms=0, tokens_per_s=0, length=3, fail_requests=ALWAYS, fail_status=503)
    changes: list[StateChange] = []
    no_listeners.append(changes.append)
    slot = slot_on(simulator, cold_boot_timeout_s=4)
    started = time.monotonic()
    generations = await twenty_answers(slot)
    elapsed = time.monotonic() - started
    for generation in generations:
        generation.detach()
        assert generation.status == "error"
        assert generation.error is not None
        assert (generation.error.status, generation.error.code) == (503, "slot_warming")
        assert generation.error.retry_after
    stats = simulator.stats()
    # 20 first calls (nothing was known), then one caller at a time, at most one a second.
    assert stats["requests"] <= 20 + 4 + elapsed
    assert stats["health_checks"] <= 2 + elapsed
    # State changes reach listeners (the slot row's UPDATE) at most once a second.
    assert 1 <= len(changes) <= 1 + elapsed
    assert changes[-1].state == "warming"


async def test_waiters_all_get_through_once_the_slot_recovers(own_simulator, no_listeners):
    simulator = own_simulator
    # The first 3 calls fail, however many requests made their first call before the slot was
    # known to fail (all 20 in one process; fewer when each submit waits on Redis for a lease),
    # so the others wait their turn; the 4th call is the first to open.
    simulator.configure(ttft_ms=0, tokens_per_s=0, length=3, fail_requests=3, fail_status=503)
    slot = slot_on(simulator, cold_boot_timeout_s=30)
    generations = await twenty_answers(slot)
    for generation in generations:
        generation.detach()
    assert [g.status for g in generations] == ["complete"] * 20
    # Exactly one more call per request once it came back: nobody called twice after it.
    assert simulator.stats()["requests"] == 3 + 20


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["reset", "close"])
def test_resets_are_retried_a_bounded_number_of_times(server, api_key, sim, how) -> None:
    make_slot(sim.base_url, max_retries=2, cold_boot_timeout_s=30)
    sim.configure(fail_requests=ALWAYS, fail_with=how)
    response = api_call(server, api_key, stream=True)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_reset"
    # A server that drops connections is failing, not loading: no cold-boot wait.
    assert sim.stats()["requests"] == 3


@pytest.mark.django_db(transaction=True)
def test_a_refused_connection_is_told_apart(server, api_key) -> None:
    make_slot(f"http://127.0.0.1:{free_port()}", max_retries=0)
    response = api_call(server, api_key, stream=False)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_refused"


# --- Honest endings -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_truncated_close_delimited_stream_is_an_error_for_the_sdk(openai_client, slot, sim):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=20, close_delimited=True, drop_after=5)
    stream = openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        # extend() keeps the items it took before the error.
        received.extend(
            chunk.choices[0].delta.content or "" if chunk.choices else "" for chunk in stream
        )
    assert "cut off" in str(caught.value.message)
    assert len("".join(received).split()) == 5
    call = ApiCall.objects.get()
    assert (call.outcome, call.error_code) == ("error", "upstream_incomplete")


@pytest.mark.django_db(transaction=True)
def test_a_truncated_answer_is_stored_as_an_error_with_its_text(slot, sim, browser_session):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=20, close_delimited=True, drop_after=5)
    answer = post_message(browser_session, "Tell me everything")
    assert json.loads(answer.events[-1].data)["error"]["code"] == "upstream_incomplete"
    message = Message.objects.get(role="assistant")
    assert message.status == "error"
    assert message.error is not None
    assert message.error["error"]["code"] == "upstream_incomplete"
    assert message.content == answer.content
    assert len(answer.content.split()) == 5


@pytest.mark.django_db(transaction=True)
def test_a_whole_close_delimited_stream_is_complete(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=20, close_delimited=True)
    answer = post_message(browser_session, "Tell me everything")
    assert answer.events[-1].data == "[DONE]"
    message = Message.objects.get(role="assistant")
    assert message.status == "complete"
    assert message.content == answer.content


# --- Untrusted values -----------------------------------------------------------------------

BAD_USAGE = ['{"prompt_tokens": -5, "completion_tokens": 4, "total_tokens": -1}', '"many"']
BAD_USAGE += ['{"prompt_tokens": "many", "completion_tokens": 1.5}']


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("usage", BAD_USAGE)
def test_bad_usage_costs_the_usage_not_the_answer(server, api_key, slot, sim, usage) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4, usage_json=usage)
    streamed = api_call(server, api_key, stream=True)
    assert streamed.status_code == 200
    assert streamed.text.endswith("data: [DONE]\n\n")
    whole = api_call(server, api_key, stream=False)
    assert whole.status_code == 200
    assert whole.json()["choices"][0]["finish_reason"] == "stop"
    calls = list(ApiCall.objects.order_by("id"))
    assert [c.outcome for c in calls] == ["complete", "complete"]
    assert all(c.prompt_tokens is None for c in calls)
    assert calls[0].completion_tokens == 4  # counted from the chunks when usage says nothing


@pytest.mark.django_db(transaction=True)
def test_bad_usage_in_the_chat_keeps_the_answer(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4, usage_json=BAD_USAGE[0])
    answer = post_message(browser_session, "Count")
    assert answer.events[-1].data == "[DONE]"
    message = Message.objects.get(role="assistant")
    assert message.status == "complete"
    assert message.content == answer.content
    assert message.usage == {"completion_tokens": 4}


def chunk_with(choice: Any) -> str:
    return json.dumps({"id": "x", "object": "chat.completion.chunk", "choices": [choice]})


MALFORMED = {
    "number content": chunk_with({"index": 0, "delta": {"content": 123}}),
    "string choice": json.dumps({"id": "x", "choices": ["x"]}),
    "object tool_calls": chunk_with({"index": 0, "delta": {"tool_calls": {"a": 1}}}),
    "NaN": '{"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}, "score": NaN}]}',
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_chunk_ends_the_answer_as_stored(slot, sim, browser_session, data) -> None:
    # Seen before the fix: the client saw a complete answer while the message stayed
    # "streaming", then was swept as "interrupted" with empty content.
    sim.configure(ttft_ms=0, tokens_per_s=0, length=10, inject_after=3, inject_data=data)
    answer = post_message(browser_session, "Hello")
    assert json.loads(answer.events[-1].data)["error"]["code"] == "upstream_malformed_chunk"
    message = Message.objects.get(role="assistant")
    assert message.status == "error"
    assert message.content == answer.content
    assert len(answer.content.split()) == 3


ODD_BUT_STORABLE = {
    "long finish_reason": chunk_with(
        {"index": 0, "delta": {"content": " odd"}, "finish_reason": "x" * 100}
    ),
    "NUL": chunk_with({"index": 0, "delta": {"content": " a\u0000b"}}),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("data", ODD_BUT_STORABLE.values(), ids=ODD_BUT_STORABLE.keys())
def test_odd_values_are_stored_as_the_client_got_them(slot, sim, browser_session, data) -> None:
    # Seen before the fix on PostgreSQL: a NUL character or a finish_reason longer than its
    # column failed the final UPDATE, and the answer was lost.
    sim.configure(ttft_ms=0, tokens_per_s=0, length=10, inject_after=10, inject_data=data)
    answer = post_message(browser_session, "Hello")
    assert answer.events[-1].data == "[DONE]"
    message = Message.objects.get(role="assistant")
    assert message.status == "complete"
    assert message.content == answer.content
    assert len(answer.content.split()) == 11
    assert "\x00" not in message.content
    assert message.finish_reason == answer.meta("slipstream.done")["finish_reason"][:32]


FAULTS = {
    "drop": {"drop_after": 4},
    "error event": {"error_after": 4},
    "malformed": {"malformed_after": 4},
    "close-delimited cut": {"close_delimited": True, "drop_after": 4},
    "bad chunk": {"inject_after": 4, "inject_data": chunk_with({"delta": {"content": 1}})},
    "NUL": {"inject_after": 4, "inject_data": chunk_with({"delta": {"content": " \u0000"}})},
    "bad usage": {"usage_json": '{"prompt_tokens": -5}'},
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_the_stored_answer_is_what_the_client_received(slot, sim, browser_session, fault):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=8, **fault)
    answer = post_message(browser_session, "Hello")
    last = answer.events[-1].data
    message = Message.objects.get(role="assistant")
    assert message.content == answer.content
    assert answer.content
    if last == "[DONE]":
        assert message.status == "complete"
    else:
        assert message.status == "error"
        assert message.error == json.loads(last)
