"""``chat.relay.responses``: the Responses API over a chat-completions upstream, without a
server. Real recorded chat streams go through ``ResponseEvents`` and every event is checked
against OpenAI's own schemas (``tests/fixtures/openapi/openai-responses.yaml``); what the final
response says is compared with what the chunks carried, computed here independently."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chat.relay.errors import RelayError
from chat.relay.responses import (
    REFUSE,
    ResponseEvents,
    ToolTranslation,
    TranslationError,
    chat_request,
    error_of,
    initial_of,
    input_items,
    items_to_messages,
    output_text,
    render,
    replay,
    skeleton,
    whole_as_chunk,
)
from chat.relay.sse import SSEDecoder
from tests.support.openapi import assert_valid

FIXTURES = Path(__file__).parents[1] / "fixtures"
SSE = FIXTURES / "sse"
RECORDINGS = [
    "openai-chat-parallel-tool-calls.sse",
    "openai-chat-tool-calls.sse",
    "llamacpp-chat-tool-calls.sse",
    "openai-chat-refusal.sse",
    "deepseek-reasoning-content.sse",
    "vllm-chat-include-usage.sse",
    "openai-chat-include-usage-length.sse",
    "llamacpp-chat-reasoning-content.sse",
]
# What each recording must carry, so a comparison with an empty expectation cannot pass alone.
CARRIES = {
    "openai-chat-parallel-tool-calls.sse": {"calls"},
    "openai-chat-tool-calls.sse": {"calls"},
    "llamacpp-chat-tool-calls.sse": {"calls"},
    "openai-chat-refusal.sse": {"refusal"},
    "deepseek-reasoning-content.sse": {"reasoning", "content"},
    "vllm-chat-include-usage.sse": {"content"},
    "openai-chat-include-usage-length.sse": set(),
    "llamacpp-chat-reasoning-content.sse": {"reasoning", "content"},
}
BODY: dict[str, Any] = {"model": "m", "input": "x"}
CREATED_AT = 1700000000
COMPLETED_AT = 1700000042
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def chunks_of(name: str) -> list[dict[str, Any]]:
    """A recording's chat chunks: no ``[DONE]``, nothing that is not a JSON object, no error
    events."""
    path = SSE / name
    assert path.is_file(), f"missing recording {name}"
    decoder = SSEDecoder()
    chunks = []
    for event in decoder.feed(path.read_bytes()) + decoder.flush():
        try:
            chunk = json.loads(event.data)
        except ValueError:
            continue
        if isinstance(chunk, dict) and "error" not in chunk:
            chunks.append(chunk)
    assert chunks, f"no chunks in {name}"
    return chunks


def fresh_skeleton() -> dict[str, Any]:
    return skeleton(BODY, response_id="resp_abc", model="slot", created_at=CREATED_AT)


def live(
    chunks: list[dict[str, Any]], **ending: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events a live stream sends for ``chunks`` (fed one by one) and the final response."""
    stream = ResponseEvents(fresh_skeleton())
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(copy.deepcopy(chunk))
    events += stream.finish(**ending)
    return events, stream.response


@dataclass
class Carried:
    """What chat chunks said (choice 0), folded here without the module under test."""

    content: str = ""
    reasoning: str = ""
    refusal: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None

    def add_delta(self, delta: dict[str, Any]) -> None:
        self.content += delta.get("content") or ""
        self.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
        self.refusal += delta.get("refusal") or ""
        for fragment in delta.get("tool_calls") or ():
            call = self.calls.setdefault(
                fragment.get("index", 0), {"id": None, "name": "", "arguments": ""}
            )
            function = fragment.get("function") or {}
            call["id"] = call["id"] or fragment.get("id")
            call["name"] = call["name"] or function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""

    def call_list(self) -> list[tuple[str, str, str]]:
        return [(c["id"], c["name"], c["arguments"]) for _, c in sorted(self.calls.items())]


def carried_by(chunks: list[dict[str, Any]]) -> Carried:
    carried = Carried()
    for chunk in chunks:
        if chunk.get("usage"):
            carried.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            carried.add_delta(choice.get("delta") or {})
            carried.finish_reason = choice.get("finish_reason") or carried.finish_reason
    return carried


def parts_text(response: dict[str, Any], item_type: str, part_type: str) -> str:
    """The concatenated text of every ``part_type`` part of every ``item_type`` item."""
    key = "refusal" if part_type == "refusal" else "text"
    return "".join(
        part[key]
        for item in response["output"]
        if item["type"] == item_type
        for part in item["content"]
        if part["type"] == part_type
    )


def calls_of(response: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (item["call_id"], item["name"], item["arguments"])
        for item in response["output"]
        if item["type"] == "function_call"
    ]


def whole_completion(carried: Carried) -> dict[str, Any]:
    """The non-streaming chat completion that says what the chunks said."""
    message: dict[str, Any] = {"role": "assistant", "content": carried.content or None}
    if carried.reasoning:
        message["reasoning_content"] = carried.reasoning
    if carried.refusal:
        message["refusal"] = carried.refusal
    if carried.calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in carried.call_list()
        ]
    return {
        "id": "chatcmpl-whole",
        "object": "chat.completion",
        "created": CREATED_AT,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": carried.finish_reason}],
        "usage": carried.usage,
    }


# ------------------------------------------------------------------------------------------------
# Recorded streams through ResponseEvents
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RECORDINGS)
def test_sequence_numbers_run_from_zero_without_gaps(name: str) -> None:
    """Clients resume with ``starting_after=<n>``: numbers must be 0..n-1, in order."""
    events, _ = live(chunks_of(name), completed_at=COMPLETED_AT)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in ("response.completed", "response.incomplete")


@pytest.mark.parametrize("name", RECORDINGS)
def test_every_event_and_the_final_response_match_openai_schemas(name: str) -> None:
    """The SDKs parse each event by its type's schema; one wrong field breaks a client."""
    events, final = live(chunks_of(name), completed_at=COMPLETED_AT)
    for event in events:
        assert_valid(event, "ResponseStreamEvent")
    assert_valid(fresh_skeleton(), "Response")
    assert_valid(final, "Response")


@pytest.mark.parametrize("name", RECORDINGS)
def test_final_response_says_what_the_chunks_carried(name: str) -> None:
    """No text, reasoning, refusal or argument fragment is lost, doubled or reordered."""
    chunks = chunks_of(name)
    carried = carried_by(chunks)
    _, final = live(chunks, completed_at=COMPLETED_AT)
    said = {
        "content": carried.content,
        "reasoning": carried.reasoning,
        "refusal": carried.refusal,
        "calls": carried.calls,
    }
    assert {k for k, v in said.items() if v} == CARRIES[name]
    assert output_text(final) == carried.content
    assert parts_text(final, "message", "output_text") == carried.content
    assert parts_text(final, "reasoning", "reasoning_text") == carried.reasoning
    assert parts_text(final, "message", "refusal") == carried.refusal
    assert calls_of(final) == carried.call_list()


@pytest.mark.parametrize("name", RECORDINGS)
def test_deltas_and_done_events_agree_with_the_final_items(name: str) -> None:
    """A client that folds deltas and one that reads ``.done`` events see the same answer."""
    events, final = live(chunks_of(name), completed_at=COMPLETED_AT)
    done_items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done_items == final["output"]
    assert events[-1]["response"] == final
    for kind, field_name in [
        ("response.output_text", "text"),
        ("response.reasoning_text", "text"),
        ("response.refusal", "refusal"),
        ("response.function_call_arguments", "arguments"),
    ]:
        deltas: dict[tuple[str, int], str] = {}
        for event in events:
            if event["type"] == f"{kind}.delta":
                where = (event["item_id"], event.get("content_index", 0))
                deltas[where] = deltas.get(where, "") + event["delta"]
        dones = {
            (e["item_id"], e.get("content_index", 0)): e[field_name]
            for e in events
            if e["type"] == f"{kind}.done"
        }
        assert dones == deltas


@pytest.mark.parametrize("name", RECORDINGS)
def test_events_are_snapshots_not_later_states(name: str) -> None:
    """An event shows the response as it stood when sent: a later chunk must not change an
    event already rendered (``response.created`` stays empty, an added item stays open)."""
    events, final = live(chunks_of(name), completed_at=COMPLETED_AT)
    assert events[0]["response"] == events[1]["response"] == fresh_skeleton()
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert len(added) == len(final["output"])
    for item in added:
        assert item["status"] == "in_progress"
        assert item.get("content", []) == []
        assert item.get("arguments", "") == ""
    for event in events:
        if event["type"] == "response.content_part.added":
            assert event["part"].get("text", event["part"].get("refusal")) == ""


@pytest.mark.parametrize("name", RECORDINGS)
def test_usage_maps_prompt_and_completion_tokens(name: str) -> None:
    """Billing reads ``usage``: prompt → input, completion → output, details kept."""
    chunks = chunks_of(name)
    usage = carried_by(chunks).usage
    assert usage is not None
    _, final = live(chunks, completed_at=COMPLETED_AT)
    assert final["usage"]["input_tokens"] == usage["prompt_tokens"]
    assert final["usage"]["output_tokens"] == usage["completion_tokens"]
    assert final["usage"]["total_tokens"] == usage["total_tokens"]
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == reasoning
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == cached


@pytest.mark.parametrize("name", RECORDINGS)
def test_status_follows_the_finish_reason(name: str) -> None:
    """``length`` is ``incomplete`` (max_output_tokens); any other finish completes."""
    chunks = chunks_of(name)
    events, final = live(chunks, completed_at=COMPLETED_AT)
    if carried_by(chunks).finish_reason == "length":
        assert final["status"] == "incomplete"
        assert final["incomplete_details"] == {"reason": "max_output_tokens"}
        assert final["completed_at"] is None
        assert events[-1]["type"] == "response.incomplete"
    else:
        assert final["status"] == "completed"
        assert final["incomplete_details"] is None
        assert final["completed_at"] == COMPLETED_AT
        assert events[-1]["type"] == "response.completed"
        assert {item["status"] for item in final["output"]} == {"completed"}


def test_length_recording_is_incomplete() -> None:
    """The one recording cut by ``max_tokens`` really ends ``incomplete``."""
    _, final = live(chunks_of("openai-chat-include-usage-length.sse"))
    assert (final["status"], final["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )


def test_parallel_tool_calls_are_one_item_each() -> None:
    """Two calls streamed in one answer are two ``function_call`` items, not one merged."""
    _, final = live(chunks_of("openai-chat-parallel-tool-calls.sse"))
    assert [item["type"] for item in final["output"]] == ["function_call", "function_call"]
    calls = calls_of(final)
    assert [name for _, name, _ in calls] == ["GetWeatherArgs", "get_stock_price"]
    assert calls[0][0] == "call_JMW1whyEaYG438VE1OIflxA2"
    assert calls[0][0] != calls[1][0]
    assert all(call_id.startswith("call_") for call_id, _, _ in calls)
    for _, _, arguments in calls:
        assert isinstance(json.loads(arguments), dict)
    assert len({item["id"] for item in final["output"]}) == 2


def test_reasoning_comes_before_the_message() -> None:
    """A reasoning model's thoughts are a ``reasoning`` item ahead of the answer's message."""
    _, final = live(chunks_of("deepseek-reasoning-content.sse"))
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]


# ------------------------------------------------------------------------------------------------
# Determinism: render and replay
# ------------------------------------------------------------------------------------------------
def _cut(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first half of a stream: an answer stopped mid-way."""
    return chunks[: len(chunks) // 2]


def _as_length(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same stream ended by ``max_tokens`` instead of a stop."""
    out = copy.deepcopy(chunks)
    for chunk in out:
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                choice["finish_reason"] = "length"
    return out


FAILURE = RelayError("upstream closed the connection", code="upstream_disconnected")
ENDINGS: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
    (
        "completed",
        chunks_of("vllm-chat-include-usage.sse"),
        {"completed_at": COMPLETED_AT},
        "response.completed",
    ),
    ("incomplete", _as_length(chunks_of("vllm-chat-include-usage.sse")), {}, "response.incomplete"),
    (
        "incomplete",
        chunks_of("openai-chat-include-usage-length.sse"),
        {},
        "response.incomplete",
    ),
    (
        "cancelled",
        _cut(chunks_of("deepseek-reasoning-content.sse")),
        {"cancelled": True},
        "response.failed",
    ),
    (
        "failed",
        _cut(chunks_of("openai-chat-parallel-tool-calls.sse")),
        {"error": error_of(FAILURE)},
        "response.failed",
    ),
]


@pytest.mark.parametrize(("status", "chunks", "ending", "last"), ENDINGS)
def test_render_is_deterministic(
    status: str, chunks: list[dict[str, Any]], ending: dict[str, Any], last: str
) -> None:
    """Resuming a stream re-renders it: the same inputs must give the same events."""
    first, final = render(fresh_skeleton(), copy.deepcopy(chunks), **ending)
    second, again = render(fresh_skeleton(), copy.deepcopy(chunks), **ending)
    assert first == second
    assert final == again
    assert (final["status"], first[-1]["type"]) == (status, last)
    assert (first, final) == live(chunks, **ending)


@pytest.mark.parametrize(("status", "chunks", "ending", "last"), ENDINGS)
def test_replay_of_stored_response_gives_the_live_events(
    status: str, chunks: list[dict[str, Any]], ending: dict[str, Any], last: str
) -> None:
    """``starting_after`` replays the stored response and chunks: every event, number and
    field must equal what the live stream sent, whatever the ending."""
    events, final = live(chunks, **ending)
    assert final["status"] == status
    for event in events:
        assert_valid(event, "ResponseStreamEvent")
    stored = json.loads(json.dumps(final))
    texts = [json.dumps(chunk) for chunk in chunks]
    assert initial_of(stored) == fresh_skeleton()
    assert replay(stored, texts) == events


def test_failed_response_carries_the_error() -> None:
    """A failure is ``response.failed`` with an ``error`` in OpenAI's enum, the relay's own
    code kept in the message; open items end ``incomplete``."""
    events, final = live(_cut(chunks_of("openai-chat-tool-calls.sse")), error=error_of(FAILURE))
    assert final["error"] == {
        "code": "server_error",
        "message": "upstream_disconnected: upstream closed the connection",
    }
    assert events[-1]["type"] == "response.failed"
    assert final["output"]
    assert {item["status"] for item in final["output"]} == {"incomplete"}
    limited = error_of(RelayError("slow down", status=429))
    assert limited == {"code": "rate_limit_exceeded", "message": "slow down"}


def test_cancelled_response_is_failed_event_with_cancelled_status() -> None:
    """OpenAI's stream has no cancelled event: ``response.failed`` carries status
    ``cancelled`` and no error."""
    events, final = live(_cut(chunks_of("vllm-chat-include-usage.sse")), cancelled=True)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "cancelled"
    assert final["error"] is None
    assert final["completed_at"] is None


# ------------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------------
def test_input_string_is_one_user_message() -> None:
    """``input="…"`` is stored as one user message item with an ``input_text`` part."""
    assert input_items("Hello", response_id="resp_abc") == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Hello"}],
            "status": "completed",
            "id": "msg_abci000",
        }
    ]


def test_input_items_get_ids_and_parts() -> None:
    """Items without an id get one by kind and position; given ids are kept; a string content
    becomes an ``input_text`` part (``output_text`` for the assistant); the caller's list is
    left as it was."""
    given: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"type": "message", "role": "assistant", "content": "Hi", "id": "msg_given"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "reasoning", "summary": []},
        {"role": "user", "content": [{"type": "input_text", "text": "More"}], "id": "m9"},
    ]
    before = copy.deepcopy(given)
    items = input_items(given, response_id="resp_abc")
    assert given == before
    assert [item["id"] for item in items] == [
        "msg_abci000",
        "msg_given",
        "fc_abci002",
        "fco_abci003",
        "item_abci004",
        "m9",
    ]
    assert [item["type"] for item in items] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "message",
    ]
    assert items[0]["content"] == [{"type": "input_text", "text": "Be brief."}]
    assert items[1]["content"] == [{"type": "output_text", "text": "Hi"}]
    assert items[5]["content"] == [{"type": "input_text", "text": "More"}]
    assert "status" not in items[2]


def _call_item(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def _tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_function_calls_merge_into_one_assistant_message() -> None:
    """Parallel calls are one assistant message with two ``tool_calls`` (chat servers reject
    a tool result whose call is not in the message just before), and merge onto a preceding
    assistant text message; outputs become ``tool`` messages; reasoning is dropped."""
    said = [{"type": "output_text", "text": "On it."}]
    rain = [{"type": "input_text", "text": "rain"}]
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": "Weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": said},
        _call_item("call_a", "w", '{"c":"P"}'),
        _call_item("call_b", "w", '{"c":"L"}'),
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b", "output": rain},
        _call_item("call_c", "x", "{}"),
    ]
    assert items_to_messages(items) == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "On it.",
            "tool_calls": [
                _tool_call("call_a", "w", '{"c":"P"}'),
                _tool_call("call_b", "w", '{"c":"L"}'),
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
        {"role": "assistant", "content": "", "tool_calls": [_tool_call("call_c", "x", "{}")]},
    ]


def test_message_parts_become_chat_content() -> None:
    """All-text parts collapse to one string; an image makes a part list with ``image_url``."""
    items: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"},
            ],
        },
    ]
    assert items_to_messages(items) == [
        {"role": "user", "content": "ab"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
                },
            ],
        },
    ]


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"type": "message", "role": "user", "content": "a"}, {"type": "item_reference"}],
         "input[1].type"),
        ([{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                       {"type": "input_audio"}]}],
         "input[0].content[1].type"),
    ],
)  # fmt: skip
def test_unknown_item_and_part_types_name_the_field(
    items: list[dict[str, Any]], param: str
) -> None:
    """The 400 a client gets names the offending field, as OpenAI's do."""
    with pytest.raises(TranslationError) as caught:
        items_to_messages(items)
    assert caught.value.param == param


def test_chat_request_translates_the_responses_fields() -> None:
    """Every Responses field with a chat equivalent is said in chat's terms."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body: dict[str, Any] = {
        "model": "m",
        "input": "x",
        "instructions": "Be brief.",
        "max_output_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "A", "schema": schema, "strict": True}},
        "reasoning": {"effort": "low"},
    }
    items = input_items(body["input"], response_id="resp_abc")
    history = [{"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"}]
    request = chat_request(body, history=history, items=items)
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        *history,
        {"role": "user", "content": "x"},
    ]
    assert request["max_tokens"] == 64
    assert (request["model"], request["temperature"], request["top_p"]) == ("m", 0.2, 0.9)
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["parameters"],
                "description": "The weather in a city.",
            },
        }
    ]
    assert request["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "A", "schema": schema, "strict": True},
    }
    assert request["reasoning_effort"] == "low"
    for name in ("input", "instructions", "max_output_tokens", "text", "reasoning"):
        assert name not in request


def test_chat_request_passes_extras_and_drops_responses_only_fields() -> None:
    """``extra_body`` fields reach a local server; Responses-only fields never go upstream
    (a strict server rejects unknown fields)."""
    body: dict[str, Any] = {
        "model": "m",
        "input": "x",
        "seed": 7,
        "top_k": 20,
        "min_p": 0.05,
        "store": True,
        "metadata": {"k": "v"},
        "previous_response_id": "resp_prev",
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "stream": True,
        "tool_choice": "required",
    }
    request = chat_request(body, history=[], items=input_items("x", response_id="resp_abc"))
    assert (request["seed"], request["top_k"], request["min_p"]) == (7, 20, 0.05)
    assert request["tool_choice"] == "required"
    assert request["messages"] == [{"role": "user", "content": "x"}]
    for name in ("store", "metadata", "previous_response_id", "include", "truncation"):
        assert name not in request
    assert "max_tokens" not in request


def test_hosted_tools_are_refused_by_index_under_the_refuse_policy() -> None:
    """A hosted tool cannot be run by a chat server: on a slot that refuses them, a 400
    naming ``tools[i].type`` (or ``tool_choice.type``, or the hosted tool's item)."""
    body = {"model": "m", "input": "x", "tools": [WEATHER_TOOL, {"type": "web_search"}]}
    with pytest.raises(TranslationError) as caught:
        chat_request(body, history=[], items=[], tools=refusing(body))
    assert caught.value.param == "tools[1].type"
    choice = {"model": "m", "input": "x", "tool_choice": {"type": "file_search"}}
    with pytest.raises(TranslationError) as caught:
        chat_request(choice, history=[], items=[], tools=refusing(choice))
    assert caught.value.param == "tool_choice.type"
    items = [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]
    with pytest.raises(TranslationError) as caught:
        items_to_messages(items, tools=refusing(BODY))
    assert caught.value.param == "input[0].type"


def refusing(body: dict[str, Any]) -> ToolTranslation:
    return ToolTranslation(body.get("tools") or (), policy=REFUSE)


def test_json_object_format_and_plain_text() -> None:
    """``json_object`` maps to chat's; ``text`` format adds no ``response_format``."""
    json_body = {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    assert chat_request(json_body, history=[], items=[])["response_format"] == {
        "type": "json_object"
    }
    text_body = {"model": "m", "input": "x", "text": {"format": {"type": "text"}}}
    assert "response_format" not in chat_request(text_body, history=[], items=[])


# ------------------------------------------------------------------------------------------------
# A whole completion says the same as its stream
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RECORDINGS)
def test_whole_completion_gives_the_same_output_as_its_stream(name: str) -> None:
    """``stream: false`` upstreams go through ``whole_as_chunk``: the response must not depend
    on how the answer was split."""
    chunks = chunks_of(name)
    carried = carried_by(chunks)
    _, streamed = live(chunks, completed_at=COMPLETED_AT)
    _, whole = live([whole_as_chunk(whole_completion(carried))], completed_at=COMPLETED_AT)
    assert output_text(whole) == output_text(streamed) == carried.content
    for item_type, part_type in [("reasoning", "reasoning_text"), ("message", "refusal")]:
        assert parts_text(whole, item_type, part_type) == parts_text(streamed, item_type, part_type)
    assert calls_of(whole) == calls_of(streamed) == carried.call_list()
    assert [item["type"] for item in whole["output"]] == [
        item["type"] for item in streamed["output"]
    ]
    assert (whole["status"], whole["incomplete_details"]) == (
        streamed["status"],
        streamed["incomplete_details"],
    )
    assert whole["usage"] == streamed["usage"]


# ------------------------------------------------------------------------------------------------
# Tool-call fragments as servers really split them (bugs found by these tests' first run)
# ------------------------------------------------------------------------------------------------
def _calls_chunk(*fragments: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "delta": {"tool_calls": list(fragments)}, "finish_reason": finish}]
    }


def test_interleaved_parallel_call_fragments_keep_every_argument() -> None:
    """Fragments of two calls that alternate (each call's id first, its arguments later) all
    land in their own call: no closed item drops a late fragment."""
    events, response = live(
        [
            _calls_chunk({"index": 0, "id": "c0", "function": {"name": "a", "arguments": "{"}}),
            _calls_chunk({"index": 1, "id": "c1", "function": {"name": "b", "arguments": "{"}}),
            _calls_chunk({"index": 0, "function": {"arguments": "}"}}),
            _calls_chunk({"index": 1, "function": {"arguments": "}"}}, finish="tool_calls"),
        ]
    )
    assert calls_of(response) == [("c0", "a", "{}"), ("c1", "b", "{}")]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["output_index"], e["arguments"]) for e in done] == [(0, "{}"), (1, "{}")]
    for event in events:
        assert_valid(event, "ResponseStreamEvent")


def test_fragments_without_index_are_separate_calls() -> None:
    """Two whole calls in one delta without ``index`` are two calls, as the accumulator that
    stores the answer counts them."""
    _, response = live(
        [
            _calls_chunk(
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                finish="tool_calls",
            )
        ]
    )
    assert calls_of(response) == [("a", "f", "{}"), ("b", "g", "{}")]


def test_a_late_id_and_name_reach_the_finished_call() -> None:
    """A call whose id and name come after its first fragment ends with them."""
    events, response = live(
        [
            _calls_chunk({"index": 0, "function": {"arguments": "{"}}),
            _calls_chunk({"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "}"}}),
        ]
    )
    assert calls_of(response) == [("call_1", "f", "{}")]
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert (done["item"]["call_id"], done["item"]["name"]) == ("call_1", "f")


def test_a_missing_tool_output_is_empty_text() -> None:
    """A ``function_call_output`` without output is an empty tool message, not "null"."""
    messages = items_to_messages([{"type": "function_call_output", "call_id": "c", "output": None}])
    assert messages == [{"role": "tool", "tool_call_id": "c", "content": ""}]


def test_malformed_upstream_usage_counts_as_absent() -> None:
    """An upstream's usage with text or negative counts must not break the stream's end."""
    chunk = {
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": "many", "completion_tokens": -5, "total_tokens": 3.5},
    }
    events, response = live([chunk])
    assert events[-1]["type"] == "response.completed"
    assert "usage" not in response
