"""The /v1 API through the official openai SDK (sync and async) and raw HTTP, against
Slipstream under daphne with the simulator as its upstream."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.conf import settings
from openai.types.chat import ChatCompletionMessageParam

from chat.models import ApiCall, ApiKey, Conversation, Message
from chat.relay.sse import SSEDecoder
from tests.conftest import make_slot
from tests.support.llama_server import free_port

pytestmark = pytest.mark.django_db(transaction=True)

SSE = Path(__file__).parents[1] / "fixtures" / "sse"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


def test_models_lists_slots(openai_client, slot) -> None:
    models = openai_client.models.list()
    assert [m.id for m in models.data] == ["primary"]
    assert models.data[0].object == "model"
    assert models.data[0].owned_by == "slipstream"
    assert openai_client.models.retrieve("primary").id == "primary"


def test_stream_content_finish_reason_and_usage(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=500, length=12)
    stream = openai_client.chat.completions.create(
        model="primary", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"primary"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 12
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12
    call = ApiCall.objects.get()
    assert (call.outcome, call.completion_tokens, call.stream) == ("complete", 12, True)
    assert call.ttft_ms is not None
    assert call.duration_ms >= call.ttft_ms


def test_no_usage_chunk_unless_asked(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    chunks = list(
        openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    )
    assert all(c.choices for c in chunks)
    # ...though Slipstream asked the upstream for it, to record the tokens
    assert sim.stats()["last_request"]["stream_options"] == {"include_usage": True}
    assert ApiCall.objects.get().completion_tokens == 5


def test_non_stream(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=7)
    completion = openai_client.chat.completions.create(
        model="primary", messages=HELLO, max_tokens=5, temperature=0.5, seed=3, user="u1"
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "primary"
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].message.content.split()) == 5
    assert completion.usage.completion_tokens == 5
    sent = sim.stats()["last_request"]
    assert (sent["max_tokens"], sent["temperature"], sent["seed"], sent["user"]) == (
        5,
        0.5,
        3,
        "u1",
    )
    assert sent["model"] == "sim"
    assert sent["stream"] is False


def test_request_fields_and_unknown_extras_pass_through(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    openai_client.chat.completions.create(
        model="primary",
        messages=HELLO,
        top_p=0.9,
        stop=["\n\n"],
        response_format={"type": "json_object"},
        logprobs=True,
        max_completion_tokens=9,
        extra_body={"repetition_penalty": 1.1, "chat_template_kwargs": {"thinking": False}},
    )
    sent = sim.stats()["last_request"]
    assert sent["top_p"] == 0.9
    assert sent["stop"] == ["\n\n"]
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["logprobs"] is True
    assert sent["max_completion_tokens"] == 9
    assert sent["repetition_penalty"] == 1.1
    assert sent["chat_template_kwargs"] == {"thinking": False}


def test_slot_defaults_fill_silent_fields_only(openai_client, transactional_db, sim) -> None:
    make_slot(sim.base_url, temperature=0.1, max_tokens=50, system_prompt="Slot prompt")
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    openai_client.chat.completions.create(model="primary", messages=HELLO, temperature=0.9)
    sent = sim.stats()["last_request"]
    assert (sent["temperature"], sent["max_tokens"]) == (0.9, 50)
    assert sent["messages"][0] == {"role": "system", "content": "Slot prompt"}


async def test_async_client_stream(server, slot, sim, api_key) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=8)
    async with openai.AsyncOpenAI(
        base_url=server.base_url + "/v1", api_key=api_key, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(model="primary", messages=HELLO, stream=True)
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        completion = await client.chat.completions.create(model="primary", messages=HELLO)
    assert len(text.split()) == 8
    assert completion.choices[0].message.content == text


def test_tool_call_deltas_accumulate(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    stream = openai_client.chat.completions.create(
        model="primary", messages=HELLO, tools=tools, tool_choice="auto", stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta_call.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta_call.id or ""
            call["name"] += (delta_call.function.name or "") if delta_call.function else ""
            call["arguments"] += (
                (delta_call.function.arguments or "") if delta_call.function else ""
            )
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    (call,) = calls.values()
    assert call["id"]
    assert call["name"] == "get_weather"
    assert isinstance(json.loads(call["arguments"]), dict)
    assert sim.stats()["last_request"]["tools"] == tools


def test_reasoning_deltas_pass_through(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4, reasoning_tokens=6)
    chunks = list(
        openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    )
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks
    )
    assert len(reasoning.split()) == 6


def test_n2_keeps_every_choice(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    chunks = list(
        openai_client.chat.completions.create(model="primary", messages=HELLO, n=2, stream=True)
    )
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts) == [0, 1]
    assert all(len(t.split()) == 4 for t in texts.values())
    completion = openai_client.chat.completions.create(model="primary", messages=HELLO, n=2)
    assert [c.index for c in completion.choices] == [0, 1]


def test_legacy_completions(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=6)
    chunks = list(openai_client.completions.create(model="primary", prompt="Once", stream=True))
    assert chunks[0].id.startswith("cmpl-")
    assert chunks[0].object == "text_completion"
    assert len("".join(c.choices[0].text for c in chunks if c.choices).split()) == 6
    completion = openai_client.completions.create(model="primary", prompt="Once")
    assert completion.model == "primary"
    assert completion.choices[0].text


def test_bad_key_is_authentication_error(server, slot) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="sk-slip-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="primary", messages=HELLO)
    assert caught.value.code == "invalid_api_key"
    missing = httpx.get(server.base_url + "/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"


def test_revoked_key_is_refused(openai_client, slot) -> None:
    ApiKey.objects.update(revoked_at="2026-01-01T00:00:00Z")
    with pytest.raises(openai.AuthenticationError):
        openai_client.models.list()


def test_unknown_model_is_not_found(openai_client, slot) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.chat.completions.create(model="gpt-9", messages=HELLO)
    assert caught.value.code == "model_not_found"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == (
        "The model `gpt-9` does not exist or you do not have access to it."
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "primary", "messages": "hi"}, "messages"),
        ({"model": "primary", "messages": []}, "messages"),
        ({"model": "primary", "messages": [{"content": "no role"}]}, "messages[0]"),
        ({"model": "primary", "messages": HELLO, "max_tokens": "ten"}, "max_tokens"),
        ({"model": "primary", "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": "primary", "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": "primary", "messages": HELLO, "n": 0}, "n"),
        ({"messages": HELLO}, "model"),
    ],
)
def test_bad_body_is_bad_request(openai_client, slot, body, param) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.post("/chat/completions", body=body, cast_to=httpx.Response)
    assert caught.value.param == param


def test_invalid_json_and_oversized_body(server, slot, api_key) -> None:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    url = server.base_url + "/v1/chat/completions"
    bad = httpx.post(url, content=b'{"model": ', headers=headers)
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    huge = json.dumps(
        {
            "model": "primary",
            "messages": [
                {"role": "user", "content": "x" * (settings.SLIPSTREAM_API_MAX_BODY_BYTES + 1)}
            ],
        }
    )
    too_big = httpx.post(url, content=huge, headers=headers, timeout=30)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"


def test_upstream_4xx_is_passed_on(openai_client, slot, sim) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(
            model="primary", messages=HELLO, extra_body={"sim": {"no_such_knob": 1}}
        )
    assert "no_such_knob" in caught.value.message


def test_upstream_refusing_is_502(openai_client, transactional_db) -> None:
    make_slot(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_refused"
    assert ApiCall.objects.get().outcome == "error"


def test_upstream_timeout_is_504(openai_client, transactional_db, sim) -> None:
    slot = make_slot(sim.base_url)
    slot.backend.read_timeout_s = 0.3
    slot.backend.save()
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(
            model="primary", messages=HELLO, extra_body={"sim": {"ttft_ms": 2000}}
        )
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_mid_stream_error_raises_during_iteration(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=30, error_after=5)
    stream = openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        # extend() keeps the items it took before the error.
        received.extend(chunk.choices[0].delta.content or "" for chunk in stream)
    assert len("".join(received).split()) == 5
    assert ApiCall.objects.get().outcome == "error"


def test_disconnect_cancels_upstream_within_a_second(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    stream = openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    closed_at = time.monotonic()
    while sim.stats()["cancelled"] < 1 and time.monotonic() < closed_at + 2:
        time.sleep(0.02)
    assert sim.stats()["cancelled"] == 1
    assert sim.stats()["cancel_times"][0] - closed_at < 1.0
    for _ in range(40):
        if ApiCall.objects.exists():
            break
        time.sleep(0.05)
    assert ApiCall.objects.get().outcome == "stopped"


def test_key_storage_holds_only_a_digest(client, user, slot, openai_client) -> None:
    client.force_login(user)
    made = client.post("/settings/keys/", {"name": "laptop"})
    assert made.status_code == 302  # POST, redirect, GET: a reload cannot make another key
    page = client.get(made["location"])
    raw = page.context["created_key"]
    assert raw.startswith("sk-slip-")
    assert raw in page.content.decode()
    key = ApiKey.objects.get(name="laptop")
    assert key.digest == hashlib.sha256(raw.encode()).hexdigest()
    stored = json.dumps(list(ApiKey.objects.values()), default=str)
    assert raw not in stored
    assert raw[len(key.prefix) :] not in stored
    # shown once: the page never shows it again, and the session forgot it
    assert raw not in client.get("/settings/keys/").content.decode()
    assert ApiKey.objects.filter(name="laptop").count() == 1
    from django.contrib.sessions.models import Session

    assert all(raw not in str(s.get_decoded()) for s in Session.objects.all())
    works = openai.OpenAI(base_url=openai_client.base_url, api_key=raw, max_retries=0)
    assert works.models.list().data
    client.post(f"/settings/keys/{key.pk}/revoke/")
    with pytest.raises(openai.AuthenticationError):
        works.models.list()


def test_calls_are_stored_as_conversations_only_when_the_key_says_so(
    openai_client, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    list(openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True))
    assert not Conversation.objects.exists()
    key = ApiKey.objects.get()
    key.store_conversations = True
    key.save()  # as the admin saves it: the cached lookup is invalidated (chat.readcache)
    stream = openai_client.chat.completions.create(model="primary", messages=HELLO, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    conversation = Conversation.objects.get()
    assert conversation.user == user
    assert list(Message.objects.values_list("role", "content")) == [
        ("user", "Hello"),
        ("assistant", text),
    ]


def test_whole_calls_are_stored_as_conversations_too(openai_client, slot, sim, user) -> None:
    key = ApiKey.objects.get()
    key.store_conversations = True
    key.save()
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    completion = openai_client.chat.completions.create(model="primary", messages=HELLO)
    # Kept before the answer was sent: no waiting.
    conversation = Conversation.objects.get()
    assert conversation.user == user
    assert list(Message.objects.values_list("role", "content", "status")) == [
        ("user", "Hello", "complete"),
        ("assistant", completion.choices[0].message.content, "complete"),
    ]
    assert Message.objects.get(role="assistant").finish_reason == "stop"


OPENAI_RECORDINGS = sorted(p.name for p in SSE.glob("openai-c*.sse"))


def decode(raw: bytes) -> list[tuple[str, Any]]:
    decoder = SSEDecoder()
    events = decoder.feed(raw) + decoder.flush()
    return [(e.event, e.data if e.data == "[DONE]" else json.loads(e.data)) for e in events]


@pytest.mark.parametrize("name", OPENAI_RECORDINGS)
def test_recorded_openai_stream_comes_out_with_the_same_framing(
    name, server, slot, sim, api_key
) -> None:
    sim.configure(replay=name, ttft_ms=0, tokens_per_s=0)
    chat = "completions" not in name
    body: dict[str, Any] = {"model": "primary", "stream": True}
    body.update({"messages": HELLO} if chat else {"prompt": "Once"})
    if b'"usage":{' in (SSE / name).read_bytes():
        body["stream_options"] = {"include_usage": True}
    response = httpx.post(
        server.base_url + ("/v1/chat/completions" if chat else "/v1/completions"),
        json=body,
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 200
    relayed = decode(response.content)
    recorded = decode((SSE / name).read_bytes())
    assert [event for event, _ in relayed] == [event for event, _ in recorded]
    for (_, mine), (_, theirs) in zip(relayed, recorded, strict=True):
        if mine == "[DONE]":
            assert theirs == "[DONE]"
            continue
        assert list(mine) == list(theirs)  # same keys, same order
        assert mine["model"] == "primary"
        assert mine["id"].startswith(("chatcmpl-", "cmpl-"))
        assert {**mine, "id": None, "model": None} == {**theirs, "id": None, "model": None}


def test_rewriter_swaps_id_and_model_in_the_upstream_text_or_reserialises() -> None:
    from chat.relay.types import Chunk
    from chat.streaming import ChunkRewriter

    rewrite = ChunkRewriter(
        completion_id="chatcmpl-new", model="primary", include_usage=False, chat=True
    )
    first = '{"id":"up-1","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}'
    out = rewrite(Chunk(first, json.loads(first)))
    assert out is not None
    assert json.loads(out[6:])["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "a",
    }
    # Later chunks keep the upstream's own text, key order and spacing, with id and model ours.
    later = (
        '{"id":"up-1","object":"chat.completion.chunk","model":"m",'
        '"choices":[{"index":0,"delta":{"content":"\\"id\\":\\"up-1\\""}}], "x": 1}'
    )
    out = rewrite(Chunk(later, json.loads(later)))
    assert (
        out
        == b"data: "
        + later.replace('"id":"up-1"', '"id":"chatcmpl-new"', 1)
        .replace('"model":"m"', '"model":"primary"')
        .encode()
        + b"\n\n"
    )
    # Spaced JSON (another server's style): re-serialised, still right.
    spaced = '{"id": "up-1", "model": "m", "choices": [{"index": 0, "delta": {"content": "b"}}]}'
    out = rewrite(Chunk(spaced, json.loads(spaced)))
    assert out is not None
    obj = json.loads(out[6:])
    assert (obj["id"], obj["model"], obj["choices"][0]["delta"]) == (
        "chatcmpl-new",
        "primary",
        {"content": "b"},
    )


def test_rewriter_follows_an_upstream_whose_id_changes_every_chunk() -> None:
    from chat.relay.types import Chunk
    from chat.streaming import ChunkRewriter

    rewrite = ChunkRewriter(
        completion_id="chatcmpl-new", model="primary", include_usage=False, chat=False
    )
    for n in range(30):  # more ids than the rewriter keeps: each still swapped
        text = f'{{"id":"up-{n}","model":"m{n % 3}","choices":[{{"index":0,"text":"{n}"}}]}}'
        out = rewrite(Chunk(text, json.loads(text)))
        assert out is not None
        obj = json.loads(out[6:])
        assert (obj["id"], obj["model"], obj["choices"][0]["text"]) == (
            "chatcmpl-new",
            "primary",
            str(n),
        )
