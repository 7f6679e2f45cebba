from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chat.relay.accumulate import MessageAccumulator
from chat.relay.sse import SSEDecoder

SSE = Path(__file__).parents[1] / "fixtures" / "sse"


def chunks_of(name: str) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    events = decoder.feed((SSE / name).read_bytes()) + decoder.flush()
    return [json.loads(e.data) for e in events if e.data != "[DONE]"]


def fold(name: str) -> MessageAccumulator:
    acc = MessageAccumulator()
    for chunk in chunks_of(name):
        acc.add(chunk)
    return acc


def test_content_and_usage_openai() -> None:
    acc = fold("openai-chat-content-usage.sse")
    assert acc.content().startswith("I'm unable to provide real-time weather updates.")
    assert acc.finish_reason() == "stop"
    assert acc.usage is not None
    assert acc.usage["completion_tokens"] == acc.completion_tokens()
    assert acc.reasoning() == ""
    assert acc.tool_calls() == []


def test_parallel_tool_calls_are_kept_apart_by_index() -> None:
    acc = fold("openai-chat-parallel-tool-calls.sse")
    calls = acc.tool_calls()
    assert [c["function"]["name"] for c in calls] == ["GetWeatherArgs", "get_stock_price"]
    assert all(c["id"].startswith("call_") for c in calls)
    for call in calls:
        assert isinstance(json.loads(call["function"]["arguments"]), dict)
    assert acc.finish_reason() == "tool_calls"


def test_repeated_tool_call_name_is_not_doubled_openrouter() -> None:
    calls = fold("openrouter-chat-tool-calls.sse").tool_calls()
    assert len(calls) == 1
    assert calls[0]["function"] == {"name": "llm_version", "arguments": "{}"}


@pytest.mark.parametrize(
    "name",
    [
        "openai-chat-tool-calls.sse",
        "openai-chat-tool-calls-gpt4o-mini.sse",
        "llamacpp-chat-tool-calls.sse",
    ],
)
def test_single_tool_call_arguments_are_complete_json(name: str) -> None:
    calls = fold(name).tool_calls()
    assert len(calls) == 1
    assert calls[0]["function"]["name"]
    assert isinstance(json.loads(calls[0]["function"]["arguments"]), dict)


def test_reasoning_and_reasoning_content_in_one_delta_count_once() -> None:
    acc = fold("vllm-reasoning-and-reasoning_content-partial.sse")
    assert acc.reasoning() == "好的"
    assert acc.content() == "，用户让我"


@pytest.mark.parametrize(
    "name",
    [
        "deepseek-reasoning-content.sse",
        "llamacpp-chat-reasoning-content.sse",
        "ollama-chat-reasoning-field.sse",
        "openrouter-reasoning-comments.sse",
        "vllm-reasoning-field-partial.sse",
    ],
)
def test_reasoning_is_collected_apart_from_content(name: str) -> None:
    acc = fold(name)
    expected = "".join(
        (
            c["choices"][0]["delta"].get("reasoning_content")
            or c["choices"][0]["delta"].get("reasoning")
            or ""
        )
        for c in chunks_of(name)
        if c.get("choices") and "delta" in c["choices"][0]
    )
    assert expected
    assert acc.reasoning() == expected
    assert expected not in acc.content()


def test_n3_keeps_every_choice() -> None:
    acc = fold("openai-chat-n3-multichoice.sse")
    assert sorted(acc.choices) == [0, 1, 2]
    assert all(acc.finish_reason(i) == "stop" for i in range(3))
    assert len({acc.content(i) for i in range(3)}) >= 2


def test_legacy_completions_text() -> None:
    acc = fold("openai-completions.sse")
    expected = "".join(c["choices"][0]["text"] for c in chunks_of("openai-completions.sse"))
    assert acc.content() == expected
    assert acc.finish_reason() == "length"


def test_refusal_is_collected() -> None:
    acc = fold("openai-chat-refusal.sse")
    assert acc.refusal()
    assert acc.content() == ""


def test_ttft_signal_ignores_role_only_chunk() -> None:
    acc = MessageAccumulator()
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    text = {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    assert acc.add(role) is False
    assert acc.add(text) is True


def test_completion_tokens_fall_back_to_text_chunks_without_usage() -> None:
    acc = MessageAccumulator()
    for word in ["a", "b", "c"]:
        acc.add({"choices": [{"index": 0, "delta": {"content": word}}]})
    acc.add({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    assert acc.completion_tokens() == 3
    assert acc.finish_reason() == "length"


def test_think_tags_in_content_become_reasoning() -> None:
    from chat.relay.accumulate import split_think

    assert split_think("<think>\nplan it\n</think>\n\nThe answer") == ("plan it", "The answer")
    assert split_think("  <think>still going") == ("still going", "")
    assert split_think("No tags <think>here</think>") == ("", "No tags <think>here</think>")
    acc = MessageAccumulator()
    for piece in ["<thi", "nk>why", "</th", "ink>", "Because."]:
        acc.add({"choices": [{"index": 0, "delta": {"content": piece}}]})
    assert (acc.reasoning(), acc.content()) == ("why", "Because.")
