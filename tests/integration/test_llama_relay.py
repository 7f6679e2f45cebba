"""End to end against a real inference server: llama.cpp (llama-cpp-python) on the tiny
random-weight model. Its output is token soup, so these assert structure, lengths and relay
fidelity, not words."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from chat.models import Message
from tests.conftest import make_slot
from tests.support.sse_client import post_message

pytestmark = [pytest.mark.llama, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def llama_slot(transactional_db, llama_server):
    return make_slot(llama_server.base_url, model=llama_server.model_id, max_tokens=24)


def test_browser_stream_relays_llama_cpp_and_stores_it(llama_slot, llama_server, browser_session):
    answer = post_message(browser_session, "Hello, tiny model")
    assert answer.events[-1].data == "[DONE]"
    assert len(answer.chunks) >= 24
    content_chunks = [
        c for c in answer.chunks if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    assert len(content_chunks) == 24
    assert answer.content.isascii()
    assert answer.content.isprintable()

    # The relay passed llama.cpp's chunks through unchanged: same id, llama.cpp's key order.
    assert len({c["id"] for c in answer.chunks}) == 1
    assert list(answer.chunks[0]) == ["id", "model", "created", "object", "choices"]

    message = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert (message.status, message.finish_reason) == ("complete", "length")
    assert message.content == answer.content
    assert message.ttft_ms is not None
    assert message.ttft_ms > 0
    # llama-cpp-python sends no usage chunk: tokens/s comes from counted chunks.
    assert message.usage is None
    assert message.tokens_per_s
    assert message.tokens_per_s > 0


def test_openai_sdk_streams_through_slipstream_from_llama_cpp(llama_slot, openai_client):
    stream = openai_client.chat.completions.create(
        model="primary", messages=[{"role": "user", "content": "Hi"}], max_tokens=16, stream=True
    )
    chunks = list(stream)
    assert {c.model for c in chunks} == {"primary"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert text.isascii()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 16


def test_api_disconnect_stops_llama_cpp(llama_slot, llama_server, server, api_key):
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        json={
            "model": "primary",
            "messages": [{"role": "user", "content": "Go"}],
            "max_tokens": 400,
            "stream": True,
        },
        headers={"Authorization": f"Bearer {api_key}"},
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
    # llama.cpp saw the client go away and stopped generating...
    deadline = time.monotonic() + 2
    while "Disconnected from client" not in llama_server.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Disconnected from client" in llama_server.log_tail()
    # ...and serves the next request normally.
    after = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": "primary",
            "messages": [{"role": "user", "content": "Again"}],
            "max_tokens": 8,
        },
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    assert after.status_code == 200
    assert after.json()["choices"][0]["finish_reason"] == "length"


def test_llama_cpp_context_overflow_is_an_error_not_an_empty_answer(
    llama_slot, llama_server, browser_session
):
    answer = post_message(browser_session, "word " * 2000)
    last = json.loads(answer.events[-1].data)
    assert "error" in last
    message = Message.objects.get(pk=answer.meta("slipstream.message")["assistant_message_id"])
    assert message.status == "error"
