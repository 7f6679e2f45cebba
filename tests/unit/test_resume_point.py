"""A checkpoint says where its text stands in the generation's chunks (chat.services.resume_point),
and a page that goes on from it ends with what it would have had reading every chunk: for every
recorded stream and every chunk a checkpoint could follow, static/chat/delta.js seeded with
``resume_delta`` and fed the rest agrees with delta.js fed it all."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chat import services
from chat.models import Message
from chat.relay.accumulate import MessageAccumulator
from chat.relay.sse import SSEDecoder

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "sse").glob("*.sse"))
DUMP = ROOT / "tests" / "js" / "dump_resumed.mjs"
NODE = shutil.which("node")


def chunks_of(raw: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a recorded stream, in order: what a generation numbers from 1."""
    decoder = SSEDecoder()
    chunks = []
    for event in decoder.feed(raw) + decoder.flush():
        if event.event != "message" or event.data == "[DONE]":
            continue
        try:
            chunk = json.loads(event.data)
        except ValueError:
            continue
        if isinstance(chunk, dict) and "error" not in chunk:
            chunks.append(chunk)
    return chunks


def delta_chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta}]}


# <think> in the content (a model served without a reasoning parser), its tags cut between
# chunks and a checkpoint possible inside either; a refusal; tool calls numbered from 1 whose
# fragments arrive interleaved.
THINK = [
    delta_chunk({"role": "assistant", "content": ""}),
    delta_chunk({"content": "  <thi"}),
    delta_chunk({"content": "nk>\nFirst, "}),
    delta_chunk({"content": "the sums.  \n</th"}),
    delta_chunk({"content": "ink>\n\n"}),
    delta_chunk({"content": "\nIt is **42**"}),
    delta_chunk({"content": "."}),
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
]
REFUSAL = [
    delta_chunk({"role": "assistant", "refusal": "I can't "}),
    delta_chunk({"refusal": "help with that."}),
    delta_chunk({"content": "Though "}),
    delta_chunk({"content": "this I can."}),
]
TOOLS = [
    delta_chunk({"reasoning_content": "\n  Two lookups."}),
    delta_chunk(
        {"tool_calls": [{"index": 2, "id": "b", "function": {"name": "g", "arguments": ""}}]}
    ),
    delta_chunk(
        {"tool_calls": [{"index": 1, "id": "a", "type": "function", "function": {"name": "f"}}]}
    ),
    delta_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"q": '}}]}),
    delta_chunk({"tool_calls": [{"index": 2, "function": {"arguments": '{"n": 1}'}}]}),
    delta_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"x"}'}}]}),
]
# Chat streams only: the chat page never reads /v1/completions' text or Responses events.
CHAT = [
    path for path in FIXTURES if "-completions" not in path.stem and "responses" not in path.stem
]
STREAMS = {path.stem: chunks_of(path.read_bytes()) for path in CHAT} | {
    "think-in-content": THINK,
    "refusal-then-content": REFUSAL,
    "tool-calls-from-index-1": TOOLS,
}


def checkpointed(chunks: list[dict[str, Any]], after: int) -> Message:
    """The streaming message as the checkpoint after chunk ``after`` stores it (the
    checkpoint's JSON as the database gives it back)."""
    acc = MessageAccumulator()
    for chunk in chunks[:after]:
        acc.add(chunk)
    text = services.messages._accumulated_text(acc)
    point = json.loads(json.dumps(services.resume_point(acc, text, sequence=after)))
    return Message(status=Message.Status.STREAMING, checkpoint=point, **text)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_the_page_goes_on_from_any_checkpoint_to_the_same_answer(name: str) -> None:
    chunks = STREAMS[name]
    assert chunks
    cuts: list[tuple[int, dict[str, Any] | None]] = []
    for after in range(1, len(chunks) + 1):
        message = checkpointed(chunks, after)
        assert isinstance(message.checkpoint, dict)
        assert message.checkpoint["seq"] == after
        cuts.append((after, services.resume_delta(message)))
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(DUMP)],
        input=json.dumps({"chunks": chunks, "cuts": cuts}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    for (cut, _), resumed in zip(cuts, answers["resumed"], strict=True):
        assert resumed == answers["whole"], cut


def test_a_checkpoint_keeps_only_the_raw_text_the_stored_fields_are_not() -> None:
    plain = checkpointed(STREAMS["openai-chat-content-usage"], 3)
    assert plain.checkpoint == {"seq": 3}  # the text is not stored twice
    think = checkpointed(THINK, 4)
    assert think.checkpoint == {
        "seq": 4,
        "content": "  <think>\nFirst, the sums.  \n</th",
        "reasoning": "",  # none came in reasoning fields: the stored reasoning is the <think>'s
    }
    assert (think.content, think.reasoning) == ("", "First, the sums.  \n</th")
    assert checkpointed(REFUSAL, 2).checkpoint == {"seq": 2, "content": ""}
    tools = checkpointed(TOOLS, 6)
    assert tools.checkpoint == {"seq": 6, "tool_indices": [1, 2]}
    assert services.resume_delta(tools) == {
        "content": "",
        "reasoning_content": "\n  Two lookups.",  # as stored; the page trims it as it streams
        "tool_calls": [
            {
                "index": 1,
                "id": "a",
                "type": "function",
                "function": {"name": "f", "arguments": '{"q": "x"}'},
            },
            {
                "index": 2,
                "id": "b",
                "type": "function",
                "function": {"name": "g", "arguments": '{"n": 1}'},
            },
        ],
    }


def test_no_delta_to_go_on_from_without_a_checkpoint_that_says_where_it_stands() -> None:
    before = Message(status=Message.Status.STREAMING, content="so far")  # checkpointed before
    assert services.resume_delta(before) is None
    ended = checkpointed(THINK, 4)
    ended.status = Message.Status.COMPLETE
    assert services.resume_delta(ended) is None
    assert services.resume_delta(Message(status="streaming", checkpoint={"seq": "3"})) is None
