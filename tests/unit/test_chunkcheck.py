"""``chat.relay.chunkcheck``: what the relay accepts from an upstream. Every recorded real stream
must pass, so the checks never turn a real server's answer into an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat.relay import chunkcheck
from chat.relay.sse import SSEDecoder

SSE = Path(__file__).parents[1] / "fixtures" / "sse"
RECORDINGS = sorted(p.name for p in SSE.glob("*.sse") if not p.name.startswith("openai-responses"))


@pytest.mark.parametrize("name", RECORDINGS)
def test_every_recorded_chunk_passes(name: str) -> None:
    decoder = SSEDecoder()
    events = decoder.feed((SSE / name).read_bytes()) + decoder.flush()
    chunks = [chunkcheck.loads(e.data) for e in events if e.data != "[DONE]"]
    assert chunks
    assert [chunkcheck.chunk_problem(c) for c in chunks if "error" not in c] == [None] * len(
        [c for c in chunks if "error" not in c]
    )


@pytest.mark.parametrize(
    ("chunk", "problem"),
    [
        ({"choices": "x"}, "choices is not an array"),
        ({"choices": ["x"]}, "a choice is not an object"),
        ({"choices": [{"index": -1}]}, "index"),
        ({"choices": [{"index": True}]}, "index"),
        ({"choices": [{"finish_reason": 1}]}, "finish_reason"),
        ({"choices": [{"text": ["a"]}]}, "text"),
        ({"choices": [{"delta": "hi"}]}, "delta is not an object"),
        ({"choices": [{"delta": {"content": 123}}]}, "delta.content"),
        ({"choices": [{"delta": {"reasoning": {}}}]}, "delta.reasoning"),
        ({"choices": [{"delta": {"tool_calls": {}}}]}, "tool_calls is not an array"),
        ({"choices": [{"delta": {"tool_calls": [{"function": "f"}]}}]}, "function"),
        ({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": 1}}]}}]}, "arguments"),
    ],
)
def test_malformed_chunks_are_named(chunk: dict[str, object], problem: str) -> None:
    found = chunkcheck.chunk_problem(chunk)
    assert found is not None
    assert problem in found


def test_a_completion_must_be_whole() -> None:
    whole = {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
    assert chunkcheck.completion_problem(whole, chat=True) is None
    cut = {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": None}]}
    assert "finish_reason" in (chunkcheck.completion_problem(cut, chat=True) or "")
    text = {"choices": [{"index": 0, "text": 5, "finish_reason": "stop"}]}
    assert "text" in (chunkcheck.completion_problem(text, chat=False) or "")
    assert chunkcheck.completion_problem({"choices": []}, chat=True) is not None


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', "[-Infinity]"])
def test_nan_and_infinity_are_not_json(text: str) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        chunkcheck.loads(text)


def test_usage_keeps_only_well_formed_figures() -> None:
    usage = {
        "prompt_tokens": -5,
        "completion_tokens": 7,
        "total_tokens": "many",
        "cost": 0.0012,
        "odd": float("nan"),
        "flag": True,
        "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 1.5},
        "prompt_tokens_details": {"cached_tokens": -1},
        "nested": {"x": 1},
    }
    assert chunkcheck.clean_usage(usage) == {
        "completion_tokens": 7,
        "cost": 0.0012,
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    assert chunkcheck.clean_usage({"prompt_tokens": 2**40}) is None
    assert chunkcheck.clean_usage("many") is None


def test_nul_characters_are_replaced_everywhere() -> None:
    data = json.dumps({"a\x00": ["b\x00c", {"d": "\x00"}], "n": 1})
    assert chunkcheck.has_nul(data)
    assert chunkcheck.without_nul(json.loads(data)) == {
        "a\ufffd": ["b\ufffdc", {"d": "\ufffd"}],
        "n": 1,
    }
    assert not chunkcheck.has_nul(json.dumps({"a": "plain"}))


def test_vision_as_llama_cpp_and_ollama_say_it() -> None:
    from chat.relay.capabilities import _vision

    assert _vision({"modalities": {"vision": True, "audio": False}}) is True
    assert _vision({"modalities": {"vision": False}}) is False
    assert _vision({"capabilities": ["completion", "vision"]}) is True
    assert _vision({"capabilities": ["completion", "tools"]}) is False
    assert _vision({"modalities": {"vision": "yes"}}) is None
    assert _vision({"object": "list", "data": []}) is None
    assert _vision(["vision"]) is None
