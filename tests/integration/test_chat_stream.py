"""The browser's stream endpoint, over real HTTP: daphne serving Slipstream, the simulator as
the upstream."""

from __future__ import annotations

import json
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.models import Conversation, Message
from chat.relay.sse import SSEDecoder
from tests.support.sse_client import post_message, read_sse

pytestmark = pytest.mark.django_db(transaction=True)

SSE = Path(__file__).parents[1] / "fixtures" / "sse"


def without_volatile(chunk: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in chunk.items() if k not in ("id", "created")}


def test_answer_streams_and_is_stored(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=20, tokens_per_s=400, length=30)
    answer = post_message(browser_session, "Hello there")
    assert answer.status_code == 200
    assert answer.events[-1].data == "[DONE]"
    assert answer.events[0].event == "slipstream.message"
    meta = answer.meta("slipstream.message")
    done = answer.meta("slipstream.done")

    message = Message.objects.get(pk=meta["assistant_message_id"])
    assert message.status == "complete"
    assert message.content == answer.content and len(answer.content.split()) == 30
    assert message.finish_reason == done["finish_reason"] == "stop"
    assert message.ttft_ms is not None and message.ttft_ms >= 20
    assert message.usage and message.usage["completion_tokens"] == 30
    user_message = Message.objects.get(pk=meta["user_message_id"])
    assert (user_message.role, user_message.content) == ("user", "Hello there")
    conversation = Conversation.objects.get(pk=meta["conversation_id"])
    assert conversation.title == "Hello there"


def test_chunks_are_relayed_in_order_and_unchanged(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=40)
    relayed = post_message(browser_session, "Same question").chunks
    # Ask the simulator directly with the very body the relay sent: its answer is deterministic.
    sent = sim.stats()["last_request"]
    with httpx.stream("POST", sim.base_url + "/v1/chat/completions", json=sent) as response:
        direct = [json.loads(e.data) for e in read_sse(response) if e.data != "[DONE]"]
    assert [without_volatile(c) for c in relayed] == [without_volatile(c) for c in direct]
    assert len({c["id"] for c in relayed}) == 1


def test_conversation_continues_with_history(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    first = post_message(browser_session, "One")
    conversation_id = first.meta("slipstream.message")["conversation_id"]
    second = post_message(browser_session, "Two", conversation=conversation_id)
    assert second.meta("slipstream.message")["conversation_id"] == conversation_id
    sent = sim.stats()["last_request"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == first.content
    assert Message.objects.filter(conversation_id=conversation_id).count() == 4


def test_slot_defaults_reach_the_upstream(transactional_db, sim, browser_session) -> None:
    from tests.conftest import make_slot

    make_slot(sim.base_url, system_prompt="Be brief.", temperature=0.25, max_tokens=7)
    sim.configure(ttft_ms=0, tokens_per_s=0)
    answer = post_message(browser_session, "Hi")
    sent = sim.stats()["last_request"]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (sent["temperature"], sent["max_tokens"], sent["stream"]) == (0.25, 7, True)
    assert sent["stream_options"] == {"include_usage": True}
    assert answer.meta("slipstream.done")["finish_reason"] == "length"


REPLAYS = sorted(p.name for p in SSE.glob("*.sse") if not p.name.startswith("openai-responses"))


def reference_fold(name: str) -> dict[str, Any]:
    """What the recorded stream carried for choice 0, read independently of the relay."""
    decoder = SSEDecoder()
    events = decoder.feed((SSE / name).read_bytes()) + decoder.flush()
    content, reasoning, refusal, args, error = "", "", "", {}, None
    for event in events:
        if event.data == "[DONE]":
            break
        obj = json.loads(event.data)
        if event.event == "error" or obj.get("error"):
            error = obj["error"]
            break
        for choice in obj.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content += delta.get("content") or choice.get("text") or ""
            reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
            refusal += delta.get("refusal") or ""
            for call in delta.get("tool_calls") or []:
                args[call["index"]] = args.get(call["index"], "") + (
                    call.get("function", {}).get("arguments") or ""
                )
    # A refusal is what the user is shown when there is no content.
    return {"content": content or refusal, "reasoning": reasoning, "args": args, "error": error}


@pytest.mark.parametrize("name", REPLAYS)
def test_recorded_stream_replays_through_the_relay(name, slot, sim, browser_session) -> None:
    sim.configure(replay=name, tokens_per_s=0, ttft_ms=0)
    answer = post_message(browser_session, "replay")
    expected = reference_fold(name)
    message = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert message.content == expected["content"]
    assert message.reasoning == expected["reasoning"]
    assert [c["function"]["arguments"] for c in message.tool_calls] == list(
        expected["args"].values()
    )
    if expected["error"]:
        assert message.status == "error"
        last = json.loads(answer.events[-1].data)
        assert last["error"]["message"] == expected["error"]["message"]
    else:
        assert message.status == "complete"
        assert answer.events[-1].data == "[DONE]"


def test_client_disconnect_cancels_upstream_and_keeps_partial(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    received = ""
    with browser_session.stream("POST", "/chat/stream/", json={"content": "long"}) as response:
        decoder = SSEDecoder()
        for raw in response.iter_raw():
            for event in decoder.feed(raw):
                if event.event == "slipstream.message":
                    message_id = json.loads(event.data)["assistant_message_id"]
                elif event.event == "message":
                    delta = json.loads(event.data)["choices"][0]["delta"]
                    received += delta.get("content") or ""
            if len(received.split()) >= 5:
                break
        closed_at = time.monotonic()
    deadline = closed_at + 1.0
    while sim.stats()["cancelled"] < 1 and time.monotonic() < deadline + 1:
        time.sleep(0.02)
    stats = sim.stats()
    assert stats["cancelled"] == 1
    assert stats["cancel_times"][0] - closed_at < 1.0
    for _ in range(50):
        message = Message.objects.get(pk=message_id)
        if message.status != "streaming":
            break
        time.sleep(0.05)
    assert message.status == "stopped"
    assert message.content.startswith(received) and len(message.content.split()) < 400


def test_upstream_unreachable_ends_in_an_error_event(transactional_db, sim, browser_session):
    from tests.conftest import make_slot
    from tests.support.llama_server import free_port

    make_slot(f"http://127.0.0.1:{free_port()}")
    answer = post_message(browser_session, "Anyone?")
    last = json.loads(answer.events[-1].data)
    assert last["error"]["code"] == "upstream_unreachable"
    message = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert message.status == "error" and message.error["error"]["code"] == "upstream_unreachable"


def test_mid_stream_error_keeps_partial_content(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=50, error_after=10)
    answer = post_message(browser_session, "fail midway")
    assert "error" in json.loads(answer.events[-1].data)
    message = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert message.status == "error"
    assert message.content == answer.content and len(message.content.split()) == 10


@pytest.mark.parametrize(
    "body, status",
    [({"content": ""}, 400), ({"content": "   "}, 400), ({"nope": 1}, 400), ([1, 2], 400)],
)
def test_bad_input_gets_an_openai_envelope(slot, browser_session, body, status) -> None:
    response = browser_session.post("/chat/stream/", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_invalid_json_gets_400(slot, browser_session) -> None:
    response = browser_session.post(
        "/chat/stream/", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_someone_elses_conversation_is_404(slot, sim, server, browser_session) -> None:
    from django.contrib.auth import get_user_model

    from tests.conftest import session_client

    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    mine = post_message(browser_session, "private").meta("slipstream.message")
    other = get_user_model().objects.create_user(username="eve", password="another pass 42")
    with closing(session_client(server, other)) as eve:
        assert eve.get(mine["conversation_url"]).status_code == 404
        refused = post_message(eve, "let me in", conversation=mine["conversation_id"])
        assert refused.status_code == 404
    assert Message.objects.filter(conversation_id=mine["conversation_id"]).count() == 2


def test_stream_requires_login(server, transactional_db) -> None:
    response = httpx.post(server.base_url + "/chat/stream/", json={"content": "hi"})
    assert response.status_code in (302, 403)
