"""Sanity tests for the real llama.cpp test server and the tiny random model.

These talk to ``llama_cpp.server`` directly (httpx and the official ``openai``
SDK), not through Slipstream. They pin down what relay tests may rely on:

* a streamed chat completion yields ``data: {json}\\n\\n`` events ending with
  ``data: [DONE]``; the content is printable ASCII "token soup";
* every completion stops at ``max_tokens`` with ``finish_reason == "length"``;
* two concurrent streams both complete (``--interrupt_requests False``).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.llama_server import LlamaServer, llama_cpp_available

pytestmark = [
    pytest.mark.llama,
    pytest.mark.skipif(
        not llama_cpp_available(),
        reason="llama-cpp-python[server] is not installed (pip install 'llama-cpp-python[server]')",
    ),
]

MAX_TOKENS = 24
LONG_MAX_TOKENS = 300  # prompt + 300 stays inside n_ctx=512
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a test model."},
    {"role": "user", "content": "Say something, anything at all."},
]


def assert_soup(text: str) -> None:
    """The tiny model only emits printable ASCII characters and spaces."""
    assert text, "empty completion"
    assert text.isascii(), repr(text)
    assert all(ch.isprintable() for ch in text), repr(text)


def parse_sse(body: str) -> list[str]:
    """Split an SSE body into the ``data:`` payloads, skipping ``:`` comments."""
    assert body.endswith("\n\n"), repr(body[-40:])
    payloads = []
    for event in body.split("\n\n")[:-1]:
        lines = [line for line in event.split("\n") if not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 1, repr(event)
        assert lines[0].startswith("data: "), repr(event)
        payloads.append(lines[0].removeprefix("data: "))
    return payloads


def test_models_endpoint(llama_server: LlamaServer) -> None:
    response = httpx.get(llama_server.base_url + "/v1/models", timeout=10)
    assert response.status_code == 200
    ids = [model["id"] for model in response.json()["data"]]
    assert ids == [llama_server.model_id]
    assert llama_server.model_id.endswith("tiny.gguf")


def test_raw_stream_structure(llama_server: LlamaServer) -> None:
    """Raw wire format: data events separated by a blank line, ending with [DONE]."""
    request = {
        "model": llama_server.model_id,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", llama_server.openai_base_url + "/chat/completions", json=request, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()

    payloads = parse_sse(body)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert len(chunks) >= 3
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"

    content = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert_soup(content)
    content_chunks = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) == MAX_TOKENS  # one chunk per token, none empty

    finish = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finish[-1] == "length"
    assert all(reason is None for reason in finish[:-1])
    # llama-cpp-python sends no usage chunk, even when asked for one.
    assert all(not chunk.get("usage") for chunk in chunks)


def test_openai_sdk_stream(llama_server: LlamaServer) -> None:
    client = openai.OpenAI(base_url=llama_server.openai_base_url, api_key="unused")
    try:
        stream = client.chat.completions.create(
            model=llama_server.model_id,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        parts: list[str] = []
        finish_reasons: list[str | None] = []
        for chunk in stream:
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish_reasons.append(choice.finish_reason)
    finally:
        client.close()
    assert_soup("".join(parts))
    assert finish_reasons[-1] == "length"


def test_openai_sdk_non_stream(llama_server: LlamaServer) -> None:
    client = openai.OpenAI(base_url=llama_server.openai_base_url, api_key="unused")
    try:
        completion = client.chat.completions.create(
            model=llama_server.model_id,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
        )
    finally:
        client.close()
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert_soup(choice.message.content or "")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == MAX_TOKENS
    assert completion.usage.prompt_tokens > 0


async def test_two_concurrent_streams_both_complete(llama_server: LlamaServer) -> None:
    """With --interrupt_requests False a second stream does not cut off the first.

    The second request is sent once the first stream has delivered a chunk. With
    the server's default (interrupt_requests=True) the first stream would then
    stop without a finish_reason.
    """
    client = openai.AsyncOpenAI(base_url=llama_server.openai_base_url, api_key="unused")
    first_started = asyncio.Event()

    async def one_stream(max_tokens: int, *, wait: bool) -> tuple[str, str | None, int]:
        if wait:
            await first_started.wait()
        stream = await client.chat.completions.create(
            model=llama_server.model_id,
            messages=MESSAGES,
            max_tokens=max_tokens,
            stream=True,
        )
        text, finish, n_content = "", None, 0
        async for chunk in stream:
            first_started.set()
            delta = chunk.choices[0].delta.content
            if delta:
                text += delta
                n_content += 1
            finish = chunk.choices[0].finish_reason or finish
        return text, finish, n_content

    try:
        first, second = await asyncio.wait_for(
            asyncio.gather(
                one_stream(LONG_MAX_TOKENS, wait=False), one_stream(MAX_TOKENS, wait=True)
            ),
            timeout=60,
        )
    finally:
        await client.close()
    for text, finish, _ in (first, second):
        assert_soup(text)
        assert finish == "length"
    assert first[2] == LONG_MAX_TOKENS
    assert second[2] == MAX_TOKENS
