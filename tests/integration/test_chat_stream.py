"""The browser's stream endpoint, over real HTTP: daphne serving Slipstream, the simulator as
the upstream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection, transaction

from chat.models import Conversation, Message
from chat.relay.sse import SSEDecoder
from tests.conftest import session_client
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
    assert message.content == answer.content
    assert len(answer.content.split()) == 30
    assert message.finish_reason == done["finish_reason"] == "stop"
    assert message.ttft_ms is not None
    assert message.ttft_ms >= 20
    assert message.usage
    assert message.usage["completion_tokens"] == 30
    user_message = Message.objects.get(pk=meta["user_message_id"])
    assert (user_message.role, user_message.content) == ("user", "Hello there")
    conversation = Conversation.objects.get(pk=meta["conversation_id"])
    assert conversation.title == "Hello there"


@contextmanager
def messages_locked() -> Iterator[None]:
    """Hold back every write to ``chat_message`` until the block ends: SQLite's write lock, or
    an EXCLUSIVE lock on the table (PostgreSQL), taken by this test's own connection."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("LOCK TABLE chat_message IN EXCLUSIVE MODE")
        else:  # a write statement takes the database's write lock, even when it changes nothing
            cursor.execute("UPDATE chat_message SET content = content WHERE 0")
        yield


def test_the_upstream_call_leaves_before_the_turn_is_written(slot, sim, browser_session) -> None:
    # The conversation, the user's message and the answer's row are stored while the upstream
    # works on its first token, not before the call (they were 2-3 ms of the chat's TTFT).
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    answers: list[Any] = []

    def send() -> None:
        answers.append(post_message(browser_session, "Hi"))

    with messages_locked():
        sender = threading.Thread(target=send)
        sender.start()
        sim.wait_for(lambda stats: stats["requests"] == 1, timeout_s=10)
        assert not Conversation.objects.exists()  # nothing of the turn is committed yet
    sender.join(timeout=30)
    [answer] = answers
    assert answer.events[-1].data == "[DONE]"
    meta = answer.meta("slipstream.message")
    stored = Message.objects.get(pk=meta["assistant_message_id"])
    assert (stored.status, stored.content) == ("complete", answer.content)
    assert Message.objects.get(pk=meta["user_message_id"]).content == "Hi"
    assert Conversation.objects.get(pk=meta["conversation_id"]).title == "Hi"


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
    content, reasoning, refusal, error = "", "", "", None
    args: dict[int, str] = {}
    finished = False
    for event in events:
        if event.data == "[DONE]":
            finished = True
            break
        obj = json.loads(event.data)
        if event.event == "error" or obj.get("error"):
            error = obj["error"]
            break
        for choice in obj.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            finished = finished or bool(choice.get("finish_reason"))
            delta = choice.get("delta") or {}
            content += delta.get("content") or choice.get("text") or ""
            reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
            refusal += delta.get("refusal") or ""
            for call in delta.get("tool_calls") or []:
                args[call["index"]] = args.get(call["index"], "") + (
                    call.get("function", {}).get("arguments") or ""
                )
    if error is None and not finished:
        # A partial recording: no [DONE], no finish_reason. The relay must not call it complete.
        error = {"code": "upstream_incomplete"}
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
        if "message" in expected["error"]:
            assert last["error"]["message"] == expected["error"]["message"]
        else:
            assert last["error"]["code"] == expected["error"]["code"]
    else:
        assert message.status == "complete"
        assert answer.events[-1].data == "[DONE]"


def read_until(response: httpx.Response, words: int) -> tuple[dict[str, Any], str, int]:
    """Read an answer until ``words`` words arrived: (message meta, text, last sequence id)."""
    decoder = SSEDecoder()
    meta: dict[str, Any] = {}
    received, last_id = "", 0
    for raw in response.iter_raw():
        for event in decoder.feed(raw):
            if event.event == "slipstream.message":
                meta = json.loads(event.data)
            elif event.event == "message" and event.data != "[DONE]":
                received += json.loads(event.data)["choices"][0]["delta"].get("content") or ""
                assert event.id is not None
                last_id = int(event.id)
        if len(received.split()) >= words:
            break
    return meta, received, last_id


def test_closing_the_page_does_not_stop_the_answer(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=100, length=60)
    with browser_session.stream("POST", "/chat/stream/", json={"content": "long"}) as response:
        meta, received, _ = read_until(response, 5)
    sim.wait_for(lambda s: s["completed"] == 1, timeout_s=5)
    assert sim.stats()["cancelled"] == 0
    wait_for_status(meta["assistant_message_id"], "complete")
    message = Message.objects.get(pk=meta["assistant_message_id"])
    assert message.content.startswith(received)
    assert len(message.content.split()) == 60


def test_resume_after_a_reload_loses_and_repeats_nothing(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=50, length=80)
    with browser_session.stream("POST", "/chat/stream/", json={"content": "long"}) as response:
        meta, received, last_id = read_until(response, 10)
    # The reloaded page asks for everything after the last sequence number it saw.
    resumed = browser_session.get(f"/chat/generations/{meta['generation_id']}/?after={last_id}")
    decoder = SSEDecoder()
    events = decoder.feed(resumed.content) + decoder.flush()
    assert json.loads(events[0].data)["resumed_after"] == last_id
    chunks = [e for e in events if e.event == "message" and e.data != "[DONE]"]
    assert chunks[0].id is not None
    assert int(chunks[0].id) == last_id + 1
    rest = content_of(resumed.content)
    assert events[-1].data == "[DONE]"
    stored = Message.objects.get(pk=meta["assistant_message_id"])
    assert stored.status == "complete"
    assert received + rest == stored.content
    assert len(stored.content.split()) == 80
    # From the start too (a second tab), and after the end: the stored answer.
    again = browser_session.get(f"/chat/generations/{meta['generation_id']}/?after=0")
    assert content_of(again.content) == stored.content
    assert sim.stats()["streams_started"] == 1


def test_stop_cancels_the_upstream_and_keeps_the_partial_answer(slot, sim, browser_session):
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    with browser_session.stream("POST", "/chat/stream/", json={"content": "long"}) as response:
        meta, received, _ = read_until(response, 5)
        stop_at = time.monotonic()
        stopped = browser_session.post(f"/chat/generations/{meta['generation_id']}/stop/")
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped"
    stats = sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=2)
    assert stats["cancel_times"][0] - stop_at < 1.0
    message = Message.objects.get(pk=meta["assistant_message_id"])
    assert message.status == "stopped"
    assert message.content.startswith(received)
    assert len(message.content.split()) < 400


def test_another_users_answer_cannot_be_resumed_or_stopped(slot, sim, browser_session, server):
    from django.contrib.auth import get_user_model

    sim.configure(ttft_ms=0, tokens_per_s=20, length=100)
    with browser_session.stream("POST", "/chat/stream/", json={"content": "mine"}) as response:
        meta, _, _ = read_until(response, 2)
        mallory = get_user_model().objects.create_user("mallory", password="another pass 9")
        with closing(session_client(server, mallory)) as other:
            generation = meta["generation_id"]
            assert other.get(f"/chat/generations/{generation}/").status_code == 404
            assert other.post(f"/chat/generations/{generation}/stop/").status_code == 404
            assert other.get(f"/c/{meta['conversation_id']}/").status_code == 404
        browser_session.post(f"/chat/generations/{generation}/stop/")
    assert sim.stats()["cancelled"] == 1


def wait_for_status(message_id: int, status: str) -> None:
    deadline = time.monotonic() + 5
    while Message.objects.get(pk=message_id).status != status:
        assert time.monotonic() < deadline, Message.objects.get(pk=message_id).status
        time.sleep(0.02)


def content_of(raw: bytes) -> str:
    decoder = SSEDecoder()
    return "".join(
        json.loads(e.data)["choices"][0]["delta"].get("content") or ""
        for e in decoder.feed(raw) + decoder.flush()
        if e.event == "message" and e.data != "[DONE]" and json.loads(e.data).get("choices")
    )


def test_upstream_refusing_ends_in_an_error_event(transactional_db, sim, browser_session):
    from tests.conftest import make_slot
    from tests.support.llama_server import free_port

    make_slot(f"http://127.0.0.1:{free_port()}")
    answer = post_message(browser_session, "Anyone?")
    last = json.loads(answer.events[-1].data)
    assert last["error"]["code"] == "upstream_refused"
    message = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert message.status == "error"
    assert message.error is not None
    assert message.error["error"]["code"] == "upstream_refused"


def test_mid_stream_error_keeps_partial_content(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=50, error_after=10)
    answer = post_message(browser_session, "fail midway")
    assert "error" in json.loads(answer.events[-1].data)
    message = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert message.status == "error"
    assert message.content == answer.content
    assert len(message.content.split()) == 10


@pytest.mark.parametrize(
    ("body", "status"),
    [({"content": ""}, 400), ({"content": "   "}, 400), ({"nope": 1}, 400), ([1, 2], 400)],
)
def test_bad_input_gets_an_openai_envelope(slot, browser_session, body, status) -> None:
    response = browser_session.post("/chat/stream/", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]


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
