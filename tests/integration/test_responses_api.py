"""``/v1/responses`` and ``/v1/embeddings`` through the official openai SDK (and raw HTTP where
the SDK hides the wire), against Slipstream under daphne with the simulator as its upstream: the
translation path (Responses → chat completions → Responses events). The native path (a backend's
own ``/responses``) is ``test_responses_native.py``.

Every streamed event and every response body is validated against OpenAI's own schemas
(``tests/fixtures/openapi/openai-responses.yaml``)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from chat import readcache
from chat.models import ApiCall, ApiKey, Backend, Slot, StoredResponse
from chat.relay.sse import SSEDecoder
from chat.services import api_key_create
from tests.conftest import make_slot
from tests.support.openapi import assert_valid

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def slot(transactional_db, sim) -> Slot:
    """The simulator's slot on a backend set to translate Responses to chat completions (the
    simulator also serves them natively: ``test_responses_native.py``)."""
    made = make_slot(sim.base_url)
    Backend.objects.filter(pk=made.backend_id).update(responses_api="translate")
    readcache.invalidate()  # .update() sends no signal
    return made


def body_of(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    """The error object of an SDK exception (the SDK keeps the envelope's ``error``)."""
    body = caught.value.body
    assert isinstance(body, dict)
    return body


def raw_events(server, api_key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A streamed response's events as sent (``event:`` name checked against ``type``)."""
    decoder = SSEDecoder()
    with httpx.stream(
        "POST",
        server.base_url + "/v1/responses",
        json={**body, "stream": True},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = []
        for chunk in response.iter_bytes():
            events += decoder.feed(chunk)
    out = []
    for event in events + decoder.flush():
        data = json.loads(event.data)
        assert event.event == data["type"]
        out.append(data)
    return out


def resumed_events(server, api_key: str, response_id: str, after: int) -> list[dict[str, Any]]:
    """``GET /v1/responses/{id}?stream=true&starting_after=<after>``: the events it re-sends."""
    with httpx.stream(
        "GET",
        f"{server.base_url}/v1/responses/{response_id}",
        params={"stream": "true", "starting_after": after},
        headers={"Authorization": f"Bearer {api_key}"},
    ) as resumed:
        assert resumed.status_code == 200
        decoder = SSEDecoder()
        return [json.loads(e.data) for e in decoder.feed(resumed.read()) + decoder.flush()]


def wait_for_row(response_id: str, status: str) -> StoredResponse:
    """The stored response once its end is written (by the stream's leave hook, just after
    the last byte)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stored = StoredResponse.objects.filter(pk=response_id).first()
        if stored is not None and stored.status == status:
            return stored
        time.sleep(0.02)
    raise AssertionError(f"{response_id} never stored as {status}")


# ------------------------------------------------------------------------------------------------
# Streaming
# ------------------------------------------------------------------------------------------------
def test_stream_events_in_order_numbered_and_valid(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=500, length=6)
    events = list(openai_client.responses.create(model="primary", input="Hello", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4:10] == ["response.output_text.delta"] * 6
    assert types[10:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for event in events:
        assert_valid(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert len(text.split()) == 6
    final = events[-1].response
    assert final.id.startswith("resp_")
    assert final.model == "primary"
    assert final.status == "completed"
    assert final.output_text == text
    assert events[-2].item.content[0].text == text
    assert (final.usage.output_tokens, final.usage.total_tokens) == (
        6,
        final.usage.input_tokens + 6,
    )
    assert final.completed_at >= final.created_at
    stored = wait_for_row(final.id, "completed")
    assert stored.response == final.model_dump(mode="json", exclude_unset=True)
    call = ApiCall.objects.get()
    assert (call.endpoint, call.outcome, call.stream, call.completion_tokens) == (
        "responses",
        "complete",
        True,
        6,
    )
    sent = sim.stats()["last_request"]
    assert sent["messages"] == [{"role": "user", "content": "Hello"}]
    assert sent["model"] == "sim"


def test_stream_helper_gives_the_final_response(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    deltas = []
    with openai_client.responses.stream(
        model="primary", input="Hi", instructions="Be brief.", temperature=0.3
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert final.instructions == "Be brief."
    sent = sim.stats()["last_request"]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["temperature"] == 0.3


def test_reasoning_streams_as_a_reasoning_item_first(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3, reasoning_tokens=4)
    events = list(openai_client.responses.create(model="primary", input="Think", stream=True))
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert len(reasoning.split()) == 4
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == reasoning
    assert len(final.output_text.split()) == 3
    for event in events:
        assert_valid(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")


def test_max_output_tokens_ends_incomplete(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=20)
    events = list(
        openai_client.responses.create(
            model="primary", input="Long", max_output_tokens=5, stream=True
        )
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].item.status == "incomplete"
    assert sim.stats()["last_request"]["max_tokens"] == 5


def test_stop_strings_are_held_back_from_text_deltas(openai_client, slot, sim) -> None:
    """A slot's stop string spanning two tokens: the relay holds back a delta's tail that may
    begin it, so no delta carries it or what follows; the response still ends ``completed``
    (OpenAI's ``incomplete_details.reason`` has no stop reason)."""
    sim.configure(ttft_ms=0, tokens_per_s=0, length=30, ignore_stop=True)
    full = openai_client.responses.create(model="primary", input="Hello").output_text
    words = full.split()
    stop = f"{words[5][-2:]} {words[6][:2]}"  # the end of one token and the start of the next
    expected = full[: full.find(stop)]
    Slot.objects.update(stop=[stop])
    readcache.invalidate()  # .update() sends no signal
    events = list(openai_client.responses.create(model="primary", input="Hello", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas
    assert not any(stop in delta for delta in deltas)
    assert "".join(deltas) == expected  # nothing after the stop string either
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == expected
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == expected
    assert events[-1].response.incomplete_details is None


def test_mid_stream_error_ends_in_response_failed(server, api_key, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=30, error_after=4)
    events = raw_events(server, api_key, {"model": "primary", "input": "Hi"})
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert_valid(events[-1], "ResponseStreamEvent")
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len("".join(e["delta"] for e in deltas).split()) == 4
    assert wait_for_row(failed["id"], "failed").response["error"] == failed["error"]


# ------------------------------------------------------------------------------------------------
# Function calling and continuation
# ------------------------------------------------------------------------------------------------
def test_function_call_round_trip_with_previous_response_id(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    events = list(
        openai_client.responses.create(
            model="primary", input="Weather in Oslo?", tools=[WEATHER_TOOL], stream=True
        )
    )
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    for event in events:
        assert_valid(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
    first = events[-1].response
    (call,) = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert events[-3].arguments == call.arguments
    sent = sim.stats()["last_request"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["parameters"],
                "description": "The weather in a city.",
            },
        }
    ]
    wait_for_row(first.id, "completed")

    second = openai_client.responses.create(
        model="primary",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER_TOOL],
    )
    assert second.previous_response_id == first.id
    assert [item.type for item in second.output] == ["message"]
    assert len(second.output_text.split()) == 5
    messages = sim.stats()["last_request"]["messages"]
    assert messages == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"},
    ]


def test_previous_response_id_carries_the_conversation(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    first = openai_client.responses.create(model="primary", input="One", store=True)
    second = openai_client.responses.create(
        model="primary", input="Two", previous_response_id=first.id
    )
    openai_client.responses.create(model="primary", input="Three", previous_response_id=second.id)
    assert sim.stats()["last_request"]["messages"] == [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "Three"},
    ]


def test_unstored_response_cannot_be_continued_or_read(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    response = openai_client.responses.create(model="primary", input="One", store=False)
    assert response.store is False
    assert not StoredResponse.objects.exists()
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.responses.create(
            model="primary", input="Two", previous_response_id=response.id
        )
    assert body_of(caught)["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(response.id)


# ------------------------------------------------------------------------------------------------
# Whole responses, stored responses
# ------------------------------------------------------------------------------------------------
def test_whole_response_retrieve_input_items_delete(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    response = openai_client.responses.create(
        model="primary",
        input=[
            {"role": "developer", "content": "Answer in words."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        ],
        metadata={"ticket": "42"},
    )
    body = response.model_dump(mode="json", exclude_unset=True)
    assert_valid(body, "Response")
    assert response.status == "completed"
    assert response.metadata == {"ticket": "42"}
    assert len(response.output_text.split()) == 4
    assert response.usage.output_tokens == 4
    assert sim.stats()["last_request"]["messages"] == [
        {"role": "developer", "content": "Answer in words."},
        {"role": "user", "content": "Hello"},
    ]

    again = openai_client.responses.retrieve(response.id)
    assert again.model_dump(mode="json", exclude_unset=True) == body

    items = openai_client.responses.input_items.list(response.id)
    assert_valid(items.model_dump(mode="json", exclude_unset=True), "ResponseItemList")
    assert [item.role for item in items.data] == ["user", "developer"]  # newest first
    assert items.data[0].content[0].text == "Hello"
    ascending = openai_client.responses.input_items.list(response.id, order="asc", limit=1)
    assert [item.role for item in ascending.data] == ["developer"]
    assert ascending.has_more is True

    openai_client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.responses.retrieve(response.id)
    assert body_of(caught)["message"] == f"Response with id '{response.id}' not found."
    assert ApiCall.objects.filter(endpoint="responses", stream=False).count() == 1


def test_another_users_response_is_not_found(openai_client, server, slot, sim, user) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    response = openai_client.responses.create(model="primary", input="Mine")
    from django.contrib.auth.models import User

    other = User.objects.create_user("other", password="pw-other-123")
    _, raw = api_key_create(user=other, name="other")
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=raw, max_retries=0) as stranger:
        with pytest.raises(openai.NotFoundError):
            stranger.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.input_items.list(response.id)
        with pytest.raises(openai.NotFoundError):
            stranger.responses.create(
                model="primary", input="Theirs", previous_response_id=response.id
            )
        with pytest.raises(openai.NotFoundError) as caught:
            stranger.responses.cancel(response.id)
        assert_valid(caught.value.response.json(), "ErrorResponse")
    resumed = httpx.get(
        f"{server.base_url}/v1/responses/{response.id}",
        params={"stream": "true", "starting_after": 0},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert resumed.status_code == 404
    assert_valid(resumed.json(), "ErrorResponse")
    assert resumed.json()["error"]["message"] == f"Response with id '{response.id}' not found."
    assert StoredResponse.objects.get(pk=response.id).status == "completed"


def test_resume_by_starting_after_gives_the_exact_tail(server, api_key, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=8, reasoning_tokens=2)
    events = raw_events(server, api_key, {"model": "primary", "input": "Hi"})
    response_id = events[0]["response"]["id"]
    wait_for_row(response_id, "completed")
    for after in (-1, 0, 5, len(events) - 2):
        assert resumed_events(server, api_key, response_id, after) == events[after + 1 :]


def test_resume_while_streaming_joins_the_live_stream(server, api_key, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=40, length=30)
    headers = {"Authorization": f"Bearer {api_key}"}
    with (
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client,
        client.stream(
            "POST", "/v1/responses", json={"model": "primary", "input": "Hi", "stream": True}
        ) as first,
    ):
        decoder = SSEDecoder()
        seen: list[dict[str, Any]] = []
        chunks = first.iter_bytes()
        while sum(e["type"] == "response.output_text.delta" for e in seen) < 3:
            seen += [json.loads(e.data) for e in decoder.feed(next(chunks))]
        response_id = seen[0]["response"]["id"]
        wait_for_row(response_id, "in_progress")
        with client.stream(
            "GET",
            f"/v1/responses/{response_id}",
            params={"stream": "true", "starting_after": 4},
        ) as resumed:
            resumed_decoder = SSEDecoder()
            tail = [
                json.loads(e.data)
                for e in resumed_decoder.feed(resumed.read()) + resumed_decoder.flush()
            ]
        for chunk in chunks:
            seen += [json.loads(e.data) for e in decoder.feed(chunk)]
    assert seen[-1]["type"] == "response.completed"
    assert tail == seen[5:]


def close_mid_stream(openai_client: Any, sim: Any) -> tuple[str, float]:
    """Stream a long response and close it at its first text delta, then wait (2 s at most)
    for the simulator to see its request cancelled. Returns the response's id and when it was
    closed (monotonic s)."""
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    stream = openai_client.responses.create(model="primary", input="Long", stream=True)
    response_id = ""
    for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            break
    stream.close()
    closed_at = time.monotonic()
    sim.wait_for(lambda s: s["cancelled"] >= 1, timeout_s=2)
    return response_id, closed_at


def test_disconnect_cancels_upstream_and_stores_cancelled(openai_client, slot, sim) -> None:
    response_id, closed_at = close_mid_stream(openai_client, sim)
    assert sim.stats()["cancelled"] == 1
    assert sim.stats()["cancel_times"][0] - closed_at < 1.0
    stored = wait_for_row(response_id, "cancelled")
    assert stored.response["output"][0]["status"] == "incomplete"


def test_cancel_stops_a_response_in_progress(server, openai_client, api_key, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    headers = {"Authorization": f"Bearer {api_key}"}
    with (
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client,
        client.stream(
            "POST", "/v1/responses", json={"model": "primary", "input": "Hi", "stream": True}
        ) as streamed,
    ):
        decoder = SSEDecoder()
        seen: list[dict[str, Any]] = []
        chunks = streamed.iter_bytes()
        while not any(e["type"] == "response.output_text.delta" for e in seen):
            seen += [json.loads(e.data) for e in decoder.feed(next(chunks))]
        response_id = seen[0]["response"]["id"]
        wait_for_row(response_id, "in_progress")
        answered = openai_client.responses.with_raw_response.cancel(response_id)
        assert_valid(answered.http_response.json(), "Response")
        cancelled = answered.parse()
        for chunk in chunks:
            seen += [json.loads(e.data) for e in decoder.feed(chunk)]
    assert cancelled.status == "cancelled"
    assert seen[-1]["type"] == "response.failed"
    assert seen[-1]["response"]["status"] == "cancelled"
    as_sent = cancelled.model_dump(mode="json", exclude_unset=True)
    assert seen[-1]["response"]["output"] == as_sent["output"]
    assert (
        wait_for_row(response_id, "cancelled").response["output"] == seen[-1]["response"]["output"]
    )
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.cancel(response_id)
    assert_valid(caught.value.response.json(), "ErrorResponse")


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {
                "input": "x",
                "tools": [{"type": "namespace", "name": "n", "description": "d", "tools": []}],
            },
            "tools[0].tools",
        ),
        (
            {
                "input": "x",
                "tools": [
                    {
                        "type": "namespace",
                        "name": "n",
                        "description": "d",
                        "tools": [{"type": "web_search"}],
                    }
                ],
            },
            "tools[0].tools[0].type",
        ),
        ({"input": "x", "tools": [{"type": "custom"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice.name"),
        (
            {
                "input": "x",
                "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": {"a": 1}},
            },
            "tool_choice.tools",
        ),
        (
            {"input": "x", "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [5]}},
            "tool_choice.tools[0]",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": None}]}]},
            "input[0].content[0].text",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_text", "text": 5}],
                    }
                ]
            },
            "input[0].output[0].text",
        ),
        (
            {"input": [{"type": "custom_tool_call_output", "call_id": "c", "output": ["x"]}]},
            "input[0].output[0]",
        ),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "background": True}, "background"),
        ({"input": [{"type": "function_call", "call_id": "c"}]}, "input[0].name"),
        ({"input": "x", "metadata": {"k": 5}}, "metadata"),
    ],
)
def test_bad_requests_are_400s_naming_the_param(openai_client, slot, body, param) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.create(model="primary", **body)
    assert body_of(caught)["param"] == param
    assert body_of(caught)["type"] == "invalid_request_error"
    assert_valid(caught.value.response.json(), "ErrorResponse")


def test_unknown_model_and_bad_key(openai_client, server, slot) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.responses.create(model="nope", input="x")
    assert caught.value.code == "model_not_found"
    assert_valid(caught.value.response.json(), "ErrorResponse")
    with openai.OpenAI(
        base_url=server.base_url + "/v1", api_key="sk-slip-wrong", max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.responses.create(model="primary", input="x")
        assert_valid(refused.value.response.json(), "ErrorResponse")
        with pytest.raises(openai.AuthenticationError):
            wrong.responses.retrieve("resp_123")


def test_a_full_slot_answers_with_chat_completions_429(server, api_key, sim, transactional_db):
    """A slot at its limit whose queue wait runs out refuses /v1/responses (streamed or not,
    native or translated) with the very envelope and Retry-After chat completions get."""
    made = make_slot(sim.base_url, max_concurrency=1, queue_timeout_s=0.2, single_flight="off")
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)  # busy for longer than the test
    headers = {"Authorization": f"Bearer {api_key}"}
    hello = [{"role": "user", "content": "Hello"}]
    with (
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "primary", "messages": hello, "stream": True},
        ) as busy,
    ):
        assert busy.status_code == 200
        sim.wait_for(lambda s: s["streams_started"] == 1, timeout_s=5)
        chat = client.post(
            "/v1/chat/completions", json={"model": "primary", "messages": hello, "stream": True}
        )
        refused = []
        for mode in ("native", "translate"):
            Backend.objects.filter(pk=made.backend_id).update(responses_api=mode)
            readcache.invalidate()  # .update() sends no signal
            for stream in (True, False):
                refused.append(
                    client.post(
                        "/v1/responses", json={"model": "primary", "input": "Hi", "stream": stream}
                    )
                )
    assert chat.status_code == 429
    assert_valid(chat.json(), "ErrorResponse")
    error = chat.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "slot_queue_timeout")
    for response in refused:
        assert response.status_code == 429
        assert response.json() == chat.json()
        assert response.headers["Retry-After"] == chat.headers["Retry-After"]
    assert sim.stats()["requests"] == 1


def test_keys_that_keep_conversations_keep_responses(openai_client, slot, sim, user) -> None:
    ApiKey.objects.update(store_conversations=True)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    list(openai_client.responses.create(model="primary", input="Kept", stream=True))
    deadline = time.monotonic() + 5
    while not user.conversations.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    conversation = user.conversations.get()
    assert conversation.messages.order_by("pk").first().content == "Kept"


@pytest.mark.parametrize("mode", ["translate", "native"])
def test_keys_that_keep_conversations_keep_whole_responses(
    openai_client, slot, sim, user, mode
) -> None:
    """Not only streamed calls: a non-streamed response is kept before it is answered."""
    Backend.objects.filter(pk=slot.backend_id).update(responses_api=mode)
    key = ApiKey.objects.get()
    key.store_conversations = True
    key.save()  # as the admin saves it: the cached lookup is invalidated (chat.readcache)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    response = openai_client.responses.create(model="primary", input="Kept whole")
    assert ("messages" in sim.stats()["last_request"]) is (mode == "translate")
    conversation = user.conversations.get()
    assert list(conversation.messages.order_by("pk").values_list("role", "content")) == [
        ("user", "Kept whole"),
        ("assistant", response.output_text),
    ]
    assert conversation.messages.get(role="assistant").status == "complete"


# ------------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------------
def test_embeddings_pass_through(openai_client, slot, sim) -> None:
    result = openai_client.embeddings.create(
        model="primary", input=["a river", "a lamp"], dimensions=4
    )
    assert_valid(result.model_dump(mode="json", exclude_unset=True), "CreateEmbeddingResponse")
    assert result.model == "primary"
    assert [len(d.embedding) for d in result.data] == [4, 4]
    assert result.data[0].embedding != result.data[1].embedding
    assert sim.stats()["embeddings"] == 1
    assert sim.stats()["last_request"]["model"] == "sim"
    call = ApiCall.objects.get()
    assert (call.endpoint, call.prompt_tokens) == ("embeddings", 4)
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(model="primary", input=[])
    assert body_of(caught)["param"] == "input"


def test_cancel_of_a_response_whose_process_died(openai_client, slot, sim, user, api_key) -> None:
    """A row left in_progress by a process that died (its generation runs nowhere) is
    cancelled on request, not left in progress for ever."""
    from chat.relay.responses import skeleton

    initial = skeleton(
        {"model": "primary"}, response_id="resp_orphan", model="primary", created_at=1
    )
    StoredResponse.objects.create(
        id="resp_orphan",
        user=user,
        slot_name="primary",
        status="in_progress",
        generation_id="0" * 32,
        response=initial,
    )
    cancelled = openai_client.responses.cancel("resp_orphan")
    assert cancelled.status == "cancelled"
    assert StoredResponse.objects.get(pk="resp_orphan").status == "cancelled"
    assert openai_client.responses.retrieve("resp_orphan").status == "cancelled"
