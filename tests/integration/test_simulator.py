"""The built-in simulator over real HTTP on loopback, with httpx and the official OpenAI SDK."""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import openai
import pytest
from django.core.management import load_command_class
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from chat.simulator import SimConfig, Simulator, SimulatorThread

SSE = Path(__file__).parents[1] / "fixtures" / "sse"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about rivers"}  # 4 prompt words
]
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


@pytest.fixture
def fast(sim: SimulatorThread) -> SimulatorThread:
    sim.configure(ttft_ms=0, tokens_per_s=0)
    return sim


@pytest.fixture
def client(sim: SimulatorThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.base_url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def post(sim: SimulatorThread, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 10)
    return httpx.post(sim.base_url + "/v1/chat/completions", json=body, **kwargs)


def data_lines(body: str) -> list[str]:
    return [line[len("data: ") :] for line in body.split("\n") if line.startswith("data: ")]


def chunks(body: str) -> list[dict[str, Any]]:
    return [json.loads(d) for d in data_lines(body) if d != "[DONE]"]


def stream_text(sdk: openai.OpenAI, **kwargs: Any) -> tuple[str, str | None]:
    content, finish = "", None
    for chunk in sdk.chat.completions.create(model="sim", messages=MESSAGES, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return content, finish


def test_stream_wire_format_matches_openai(fast: SimulatorThread) -> None:
    response = post(fast, {"model": "gpt-x", "messages": MESSAGES, "stream": True})
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["transfer-encoding"] == "chunked"
    events = response.text.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    payloads = data_lines(response.text)[:-1]
    for raw in payloads:  # compact JSON, key order as OpenAI's
        assert json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False) == raw
    parsed = [json.loads(raw) for raw in payloads]
    first, finish = parsed[0], parsed[-1]
    assert list(first) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert re.fullmatch(r"chatcmpl-[A-Za-z0-9]{24}", first["id"])
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == "gpt-x"
    assert first["system_fingerprint"] == "fp_sim"
    assert isinstance(first["created"], int)
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert {c["id"] for c in parsed} == {first["id"]}
    contents = [c["choices"][0]["delta"]["content"] for c in parsed[1:-1]]
    assert len(contents) == SimConfig().max_tokens_default
    assert not contents[0].startswith(" ")
    assert all(t.startswith(" ") for t in contents[1:])
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]


def test_sdk_streams_content_and_finish_reason(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    content, finish = stream_text(client)
    assert len(content.split()) == 64
    assert finish == "stop"


def test_max_tokens_caps_length_with_a_prefix_of_the_answer(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    full, _ = stream_text(client)
    capped, finish = stream_text(client, max_tokens=5)
    assert finish == "length"
    assert capped.split() == full.split()[:5]
    capped, finish = stream_text(client, max_completion_tokens=7)
    assert (len(capped.split()), finish) == (7, "length")


def test_forced_length_below_max_tokens_finishes_with_stop(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    fast.configure(length=3)
    content, finish = stream_text(client, max_tokens=10)
    assert (len(content.split()), finish) == (3, "stop")


def test_usage_chunk_has_empty_choices(fast: SimulatorThread, client: openai.OpenAI) -> None:
    got = list(
        client.chat.completions.create(
            model="sim",
            messages=MESSAGES,
            stream=True,
            max_tokens=6,
            stream_options={"include_usage": True},
        )
    )
    last = got[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 6)
    assert last.usage.total_tokens == 10
    assert all(c.usage is None for c in got[:-1])


def test_n_two_interleaves_both_choices(fast: SimulatorThread, client: openai.OpenAI) -> None:
    texts = {0: "", 1: ""}
    finishes: dict[int, list[str]] = {0: [], 1: []}
    order = []
    for chunk in client.chat.completions.create(
        model="sim", messages=MESSAGES, stream=True, n=2, max_tokens=4
    ):
        (choice,) = chunk.choices
        order.append(choice.index)
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finishes[choice.index].append(choice.finish_reason)
    assert finishes == {0: ["length"], 1: ["length"]}
    assert len(texts[0].split()) == len(texts[1].split()) == 4
    assert texts[0] != texts[1]
    assert order[:4] == [0, 0, 1, 1]  # role + first token of choice 0, then of choice 1


def test_tool_call_deltas_accumulate_to_json_arguments(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(
        model="sim", messages=MESSAGES, stream=True, tools=[WEATHER_TOOL]
    ):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        assert not choice.delta.content
        for call in choice.delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += call.id or ""
            if call.function:
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "get_weather"
    arguments = json.loads(calls[0]["arguments"])
    assert set(arguments) == {"city", "days"}
    assert isinstance(arguments["days"], int)


def test_tool_call_first_delta_has_openai_shape(fast: SimulatorThread) -> None:
    response = post(fast, {"messages": MESSAGES, "stream": True, "sim": {"tool_call": True}})
    deltas = [c["choices"][0]["delta"] for c in chunks(response.text)]
    (call,) = deltas[0]["tool_calls"]
    assert deltas[0]["role"] == "assistant"
    assert deltas[0]["content"] is None
    assert call["function"] == {"name": "sim_tool", "arguments": ""}
    assert call["type"] == "function"
    assert call["index"] == 0
    assert all(set(d["tool_calls"][0]) == {"index", "function"} for d in deltas[1:-1])


SHELL_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "exec_command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    },
}


def tool_call_deltas(response: httpx.Response) -> list[dict[str, Any]]:
    """A streamed answer's ``tool_calls`` deltas, in order (one call per delta here)."""
    deltas = [c["choices"][0]["delta"] for c in chunks(response.text) if c["choices"]]
    return [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]


def test_tool_name_and_arguments_script_the_call(fast: SimulatorThread) -> None:
    arguments = '{"cmd": "printf hi > hello.txt"}'
    fast.configure(tool_name="exec_command", tool_arguments=arguments)
    body = {"messages": MESSAGES, "stream": True, "tools": [WEATHER_TOOL, SHELL_TOOL]}
    deltas = tool_call_deltas(post(fast, body))
    assert deltas[0]["function"]["name"] == "exec_command"
    assert "".join(d["function"]["arguments"] for d in deltas) == arguments  # byte for byte
    assert len(deltas) > 2  # streamed in fragments, as generated arguments are
    whole = post(fast, {**body, "stream": False}).json()["choices"][0]["message"]
    (call,) = whole["tool_calls"]
    assert call["function"] == {"name": "exec_command", "arguments": arguments}


def test_tool_name_not_offered_calls_the_first_tool(fast: SimulatorThread) -> None:
    sim = {"tool_name": "exec_command", "tool_arguments": '{"city": "Oslo"}'}
    body = {"messages": MESSAGES, "stream": True, "tools": [WEATHER_TOOL], "sim": sim}
    deltas = tool_call_deltas(post(fast, body))
    assert deltas[0]["function"]["name"] == "get_weather"
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Oslo"}'


def test_scripted_tool_call_still_answers_a_tool_result_in_words(fast: SimulatorThread) -> None:
    fast.configure(tool_name="exec_command", tool_arguments='{"cmd": "true"}')
    call = {"id": "call_1", "type": "function", "function": {"name": "exec_command"}}
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ]
    body = {"messages": messages, "tools": [SHELL_TOOL]}
    answer = post(fast, body).json()["choices"][0]
    assert answer["finish_reason"] == "stop"
    assert answer["message"]["content"]


def test_reasoning_content_comes_first(fast: SimulatorThread, client: openai.OpenAI) -> None:
    kinds = []
    for chunk in client.chat.completions.create(
        model="sim",
        messages=MESSAGES,
        stream=True,
        max_tokens=2,
        extra_body={"sim": {"reasoning_tokens": 3}},
    ):
        delta = chunk.choices[0].delta
        if (delta.model_extra or {}).get("reasoning_content"):
            kinds.append("reasoning")
        elif delta.content:
            kinds.append("content")
    assert kinds == ["reasoning"] * 3 + ["content"] * 2


def test_non_stream_chat_completion(fast: SimulatorThread, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="m1", messages=MESSAGES, max_tokens=9)
    assert completion.object == "chat.completion"
    assert completion.model == "m1"
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert len((choice.message.content or "").split()) == 9
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 9)
    raw = post(fast, {"messages": MESSAGES, "max_tokens": 1}).json()
    assert list(raw) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
    ]


def test_completions_endpoint_stream_and_non_stream(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    got = list(client.completions.create(model="sim", prompt="one two", max_tokens=4, stream=True))
    assert [c.object for c in got] == ["text_completion"] * 4
    assert [c.choices[0].finish_reason for c in got] == [None, None, None, "length"]
    text = "".join(c.choices[0].text for c in got)
    assert len(text.split()) == 4
    whole = client.completions.create(model="sim", prompt="one two", max_tokens=4)
    assert whole.choices[0].text == text
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == 2
    raw = httpx.post(
        fast.base_url + "/v1/completions",
        json={
            "prompt": "x",
            "stream": True,
            "max_tokens": 1,
            "stream_options": {"include_usage": True},
        },
    )
    first, usage = chunks(raw.text)
    assert list(first) == ["id", "object", "created", "choices", "model", "usage"]
    assert first["usage"] is None
    assert list(usage) == ["id", "object", "created", "model", "usage", "choices"]


# OpenAI's CreateCompletionRequest.prompt: a string, an array of strings, an array of token ids
# or an array of token-id arrays. A token id is one prompt token.
@pytest.mark.parametrize(
    ("prompt", "tokens"),
    [([1, 2, 3], 3), ([[1, 2], [3]], 3), (["one two", "three"], 3), ([], 0), (None, 0)],
)
@pytest.mark.parametrize("stream", [False, True])
def test_completions_take_every_prompt_shape(
    fast: SimulatorThread, client: openai.OpenAI, prompt: Any, tokens: int, stream: bool
) -> None:
    if stream:
        got = list(
            client.completions.create(
                model="sim",
                prompt=prompt,
                max_tokens=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = got[-1].usage
        assert "".join(c.choices[0].text for c in got if c.choices)
    else:
        whole = client.completions.create(model="sim", prompt=prompt, max_tokens=2)
        usage = whole.usage
        assert whole.choices[0].text
    assert usage is not None
    assert usage.prompt_tokens == tokens


def test_a_prompt_of_another_shape_is_a_400(fast: SimulatorThread) -> None:
    for prompt in ({"text": "hi"}, 7, [{"text": "hi"}]):
        response = httpx.post(fast.base_url + "/v1/completions", json={"prompt": prompt})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "prompt"


def tool(parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "lookup", "parameters": parameters}}


# Schemas a model server is sent and answers: JSON Schema allows every one of them
# (draft 2020-12: ``true`` is a schema, ``type`` may be a list, ``anyOf``), and OpenAI's
# FunctionParameters is any object.
ODD_SCHEMAS: list[tuple[Any, Any]] = [
    ({"type": "object"}, lambda args: args == {"query": args["query"]}),
    (None, lambda args: set(args) == {"query"}),
    ({"type": "object", "properties": {"x": True}}, lambda args: set(args) == {"x"}),
    ({"type": "object", "properties": {"x": "string"}}, lambda args: set(args) == {"x"}),
    ({"type": "object", "properties": ["x"]}, lambda args: set(args) == {"query"}),
    (
        {"type": "object", "properties": {"n": {"anyOf": [{"type": "null"}, {"type": "integer"}]}}},
        lambda args: isinstance(args["n"], int),
    ),
    (
        {"type": "object", "properties": {"s": {"type": ["null", "string"], "maxLength": 3}}},
        lambda args: isinstance(args["s"], str) and len(args["s"]) <= 3,
    ),
    (
        {"type": "object", "properties": {"b": {"type": ["boolean", "null"]}}},
        lambda args: args["b"] is True,
    ),
    ({"type": "object", "properties": {"e": {"enum": {"a": 1}}}}, lambda args: set(args) == {"e"}),
    (
        {"type": "object", "properties": {"c": {"const": "fixed"}}},
        lambda args: args["c"] == "fixed",
    ),
    (
        {"type": "object", "properties": {"s": {"type": "string", "maxLength": "3"}}},
        lambda args: isinstance(args["s"], str),
    ),
]


@pytest.mark.parametrize(("parameters", "fits"), ODD_SCHEMAS)
def test_a_tool_schema_it_cannot_read_fully_still_gets_a_call(
    fast: SimulatorThread, parameters: Any, fits: Any
) -> None:
    body = {"messages": MESSAGES, "tools": [tool(parameters)]}
    whole = post(fast, body)
    assert whole.status_code == 200, whole.text
    (call,) = whole.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup"
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments, dict)
    assert fits(arguments), arguments
    streamed = tool_call_deltas(post(fast, {**body, "stream": True}))
    assert "".join(d["function"]["arguments"] for d in streamed) == call["function"]["arguments"]


def test_a_stop_that_is_not_text_is_a_400(fast: SimulatorThread) -> None:
    for stop in ([1], {"a": "b"}, 3):
        response = post(fast, {"messages": MESSAGES, "stop": stop})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "stop"


def test_error_after_raises_api_error_mid_stream(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    stream = client.chat.completions.create(
        model="sim", messages=MESSAGES, stream=True, extra_body={"sim": {"error_after": 3}}
    )
    seen: list[str | None] = []
    with pytest.raises(openai.APIError, match="Simulated upstream error") as raised:
        # extend() keeps the items it took before the error.
        seen.extend(chunk.choices[0].delta.content for chunk in stream)
    assert not isinstance(raised.value, openai.APIConnectionError)
    assert len([s for s in seen if s]) == 3
    # The simulator records the outcome just after its last write: the client may be faster.
    stats = fast.wait_for(lambda s: s["history"][-1]["outcome"] != "active")
    assert stats["history"][-1]["outcome"] == "error"


def test_drop_after_leaves_an_incomplete_stream(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    parts: list[bytes] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            fast.base_url + "/v1/chat/completions",
            json={"messages": MESSAGES, "stream": True, "sim": {"drop_after": 3}},
        ) as response,
    ):
        parts.extend(response.iter_bytes())  # keeps the parts read before the error
    body = b"".join(parts)
    contents = [c["choices"][0]["delta"].get("content") for c in chunks(body.decode())]
    assert contents[0] == ""
    assert len(contents) == 4  # role + 3 tokens
    assert all(contents[1:])
    assert b"[DONE]" not in body
    with pytest.raises(openai.APIConnectionError):
        stream_text(client, extra_body={"sim": {"drop_after": 2}})
    assert [r["outcome"] for r in fast.stats()["history"]] == ["dropped", "dropped"]


def test_malformed_after_sends_a_non_json_data_line(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    response = post(fast, {"messages": MESSAGES, "stream": True, "sim": {"malformed_after": 2}})
    lines = data_lines(response.text)
    bad = [i for i, line in enumerate(lines) if line != "[DONE]" and not _is_json(line)]
    assert bad == [3]  # role+token, token, then the broken line
    with pytest.raises(json.JSONDecodeError):
        stream_text(client, extra_body={"sim": {"malformed_after": 1}})


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_cold_boot_answers_503_then_ready(sim: SimulatorThread, client: openai.OpenAI) -> None:
    sim.configure(cold_boot_s=0.5, ttft_ms=0, tokens_per_s=0)
    health = httpx.get(sim.base_url + "/health")
    assert health.status_code == 503
    assert (
        health.content
        == b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    )
    documented = json.loads((SSE / "llamacpp-health-503-loading-model.json").read_text())
    assert health.json() == documented
    with pytest.raises(openai.InternalServerError) as raised:
        stream_text(client)
    assert raised.value.status_code == 503
    assert httpx.get(sim.base_url + "/v1/models").status_code == 503
    time.sleep(0.55)
    assert httpx.get(sim.base_url + "/health").json() == {"status": "ok"}
    assert stream_text(client)[1] == "stop"


def test_replay_is_byte_identical(fast: SimulatorThread) -> None:
    # One keep-alive connection: the framing of each replay must end exactly where it should.
    # The Azure recording ends with a single "\n", not a blank line.
    names = ["openai-chat-content-usage.sse", "azureopenai-completions-logprobs.sse"] * 2
    with httpx.Client(base_url=fast.base_url) as http:
        for name in names:
            body = {"messages": MESSAGES, "stream": True, "sim": {"replay": name}}
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            assert response.content == (SSE / name).read_bytes()
    missing = post(fast, {"messages": MESSAGES, "sim": {"replay": "../pyproject.toml"}})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "sim.replay"


def test_client_disconnect_mid_stream_is_counted_within_a_second(sim: SimulatorThread) -> None:
    # 2 tokens/s: the disconnect must be seen while sleeping, not at the next write 0.5 s later.
    sim.configure(ttft_ms=0, tokens_per_s=2)
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            sim.base_url + "/v1/chat/completions",
            json={"messages": MESSAGES, "stream": True},
        ) as response,
    ):
        parts = response.iter_bytes()  # keep a reference: dropping it would close the response
        next(parts)
        closed_at = time.monotonic()
    stats = sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=1.0)
    assert (stats["completed"], stats["active"], stats["streams_started"]) == (0, 0, 1)
    (record,) = stats["history"]
    assert record["outcome"] == "cancelled"
    assert 0 <= record["cancelled_at"] - closed_at < 0.25
    assert stats["cancel_times"] == [record["cancelled_at"]]


def test_client_disconnect_while_waiting_for_first_token(sim: SimulatorThread) -> None:
    sim.configure(ttft_ms=10_000)
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            sim.base_url + "/v1/chat/completions",
            json={"messages": MESSAGES, "stream": True},
        ) as response,
    ):
        assert response.status_code == 200
        closed_at = time.monotonic()
    stats = sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=1.0)
    assert stats["cancel_times"][0] - closed_at < 1.0


def test_client_disconnect_from_non_stream_request(sim: SimulatorThread) -> None:
    sim.configure(ttft_ms=10_000)
    with pytest.raises(httpx.ReadTimeout):
        post(sim, {"messages": MESSAGES}, timeout=0.2)
    sim.wait_for(lambda s: s["cancelled"] == 1 and s["active"] == 0, timeout_s=1.0)


async def test_async_sdk_stream_close_cancels_upstream(sim: SimulatorThread) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=20)
    async with openai.AsyncOpenAI(base_url=sim.base_url + "/v1", api_key="x") as sdk:
        stream = await sdk.chat.completions.create(model="sim", messages=MESSAGES, stream=True)
        got = []
        async for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                break
        await stream.close()
    stats = sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=1.0)
    assert stats["completed"] == 0


def test_identical_requests_give_identical_answers(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    first, _ = stream_text(client)
    assert stream_text(client)[0] == first
    assert (
        client.chat.completions.create(model="sim", messages=MESSAGES).choices[0].message.content
        == first
    )
    other: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Something else"}]
    different = client.chat.completions.create(model="sim", messages=other)
    assert different.choices[0].message.content != first
    assert stream_text(client, seed=7)[0] != first


def test_stop_strings_cut_content_unless_ignored(
    fast: SimulatorThread, client: openai.OpenAI
) -> None:
    words = stream_text(client)[0].split()
    stop = " " + words[3]
    assert stop not in " ".join(words[:3])  # the cut lands at the first occurrence
    cut, finish = stream_text(client, stop=[stop])
    assert (cut, finish) == (" ".join(words[:3]), "stop")
    full, _ = stream_text(client, stop=[stop], extra_body={"sim": {"ignore_stop": True}})
    assert full.split() == words


def test_sim_config_and_reset_endpoints(sim: SimulatorThread, client: openai.OpenAI) -> None:
    # The simulator is the session's: an answer an earlier test left running (a chat answer
    # goes on without its reader) would finish after the reset and count as completed here.
    sim.wait_for(lambda stats: stats["active"] == 0, timeout_s=60)
    sim.reset()
    base = sim.base_url
    assert (
        httpx.post(base + "/sim/config", json={"length": 3, "tokens_per_s": 0}).status_code == 200
    )
    assert httpx.get(base + "/sim/config").json()["length"] == 3
    assert len(stream_text(client)[0].split()) == 3
    stats = httpx.get(base + "/sim/stats").json()
    assert (stats["requests"], stats["streams_started"], stats["completed"]) == (1, 1, 1)
    assert stats["last_request"]["messages"] == MESSAGES
    bad = httpx.post(base + "/sim/config", json={"lenght": 3})
    assert bad.status_code == 400
    assert "lenght" in bad.json()["error"]["message"]
    assert httpx.post(base + "/sim/reset").json()["length"] is None
    stats = httpx.get(base + "/sim/stats").json()
    assert (stats["requests"], stats["completed"], stats["last_request"]) == (0, 0, None)


def test_header_override_and_body_wins(fast: SimulatorThread) -> None:
    header = {"x-sim-config": json.dumps({"length": 2})}
    body = {"messages": MESSAGES}
    got = post(fast, body, headers=header).json()["choices"][0]["message"]["content"]
    assert len(got.split()) == 2
    got = post(fast, body | {"sim": {"length": 5}}, headers=header).json()
    assert len(got["choices"][0]["message"]["content"].split()) == 5
    bad = post(fast, body | {"sim": {"length": "many"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "sim"


def test_pacing_ttft_and_stall(sim: SimulatorThread) -> None:
    sim.configure(ttft_ms=100, tokens_per_s=20, length=5, stall_after=3, stall_s=0.3)
    arrivals = []
    start = time.monotonic()
    with httpx.stream(
        "POST", sim.base_url + "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
                "content"
            ):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 5
    assert 0.09 <= arrivals[0] < 0.3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.03 < g < 0.15 for g in gaps[:2] + gaps[3:]), gaps
    assert 0.3 <= gaps[2] < 0.5, gaps


def test_keepalive_comments_while_waiting(sim: SimulatorThread) -> None:
    sim.configure(ttft_ms=350, keepalive_comment_s=0.1, length=1)
    body = post(sim, {"messages": MESSAGES, "stream": True}).text
    before_data = body[: body.index("data:")]
    pings = before_data.count(": ping\n\n")
    assert pings in (2, 3)
    assert before_data == ": ping\n\n" * pings  # at 0.1, 0.2, 0.3 s


def test_keep_alive_connection_and_chunked_framing(fast: SimulatorThread) -> None:
    host, port = fast.base_url.removeprefix("http://").split(":")
    payload = json.dumps({"messages": MESSAGES, "stream": True, "max_tokens": 3}).encode()
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        bodies = []
        for _ in range(2):
            headers = [("host", host), ("content-length", str(len(payload)))]
            request = h11.Request(method="POST", target="/v1/chat/completions", headers=headers)
            sock.sendall(
                conn.send(request)
                + conn.send(h11.Data(data=payload))
                + conn.send(h11.EndOfMessage())
            )
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            bodies.append(body.decode())
            conn.start_next_cycle()  # raises unless both sides kept the connection open
    assert [len(chunks(b)) for b in bodies] == [5, 5]
    assert all(b.endswith("data: [DONE]\n\n") for b in bodies)


def test_models_and_error_envelopes(fast: SimulatorThread, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["sim"]
    models = httpx.get(fast.base_url + "/v1/models").json()
    assert models["object"] == "list"
    assert set(models["data"][0]) == {"id", "object", "created", "owned_by"}
    missing = httpx.get(fast.base_url + "/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    bad = httpx.post(fast.base_url + "/v1/chat/completions", content=b"{not json")
    assert bad.status_code == 400
    assert bad.json() == {
        "error": {
            "message": "We could not parse the JSON body of your request.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="sim", messages=None)  # type: ignore[call-overload]  # deliberately invalid
    assert httpx.get(fast.base_url + "/v1/chat/completions").status_code == 405


async def test_simulator_on_the_test_loop_with_models() -> None:
    simulator = Simulator(config=SimConfig(ttft_ms=0, tokens_per_s=0, length=2), models=["a", "b"])
    base = await simulator.start()
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            ids = [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
            answer = await http.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert ids == ["a", "b"]
        assert answer.json()["model"] == "a"
        stats = await simulator.wait_for(lambda s: s["completed"] == 1)
        assert stats["requests"] == 1
    finally:
        await simulator.stop()


def test_module_cli_serves_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chat.simulator", "--port", "0", "--model", "x"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"http://[\d.]+:\d+", proc.stdout.readline())
        assert match
        assert httpx.get(match.group() + "/v1/models").json()["data"][0]["id"] == "x"
    finally:
        proc.terminate()
        code = proc.wait(5)
        if proc.stdout:
            proc.stdout.close()
    assert code == 0


def test_llm_sim_command_reuses_the_module_flags() -> None:
    command = load_command_class("chat", "llm_sim")
    parser = command.create_parser("manage.py", "llm_sim")
    options = parser.parse_args(
        ["--port", "9", "--tokens-per-s", "5", "--model", "a", "--model", "b"]
    )
    assert (options.port, options.tokens_per_s, options.models) == (9, 5.0, ["a", "b"])


def test_says_whether_it_reads_images_as_llama_cpp_and_ollama_do(fast: SimulatorThread) -> None:
    assert httpx.get(fast.base_url + "/props").status_code == 404
    assert httpx.post(fast.base_url + "/api/show", json={"model": "sim"}).status_code == 404
    fast.configure(vision=True)
    props = httpx.get(fast.base_url + "/props").json()
    assert props["modalities"] == {"vision": True, "audio": False}
    show = httpx.post(fast.base_url + "/api/show", json={"model": "sim"}).json()
    assert "vision" in show["capabilities"]
    fast.configure(vision=False)
    assert httpx.post(fast.base_url + "/api/show", json={"model": "sim"}).json() == {
        "capabilities": ["completion"]
    }
