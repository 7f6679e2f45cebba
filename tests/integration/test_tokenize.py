"""A prompt's tokens before the call (``chat.relay.tokenize``): counted by the server where it
can (vLLM's and llama.cpp's ``/tokenize``, llama-cpp-python's ``/extras/tokenize/count``: the
simulator speaks the first two, the real llama-cpp-python server the third), else estimated;
a server without any remembered; a slow one not waited for."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from chat.models import ApiKey, Quota
from chat.relay import tokenize
from chat.relay.types import BackendConfig
from chat.simulator import SimConfig, Simulator
from tests.conftest import make_slot

MESSAGES = [
    {"role": "system", "content": "You are terse"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Hello there"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    },
]


@pytest.fixture
async def loop_sim() -> AsyncIterator[Simulator]:
    """A simulator on the test's loop, and nothing remembered of any server before."""
    tokenize.forget_absent()
    made = Simulator(config=SimConfig(ttft_ms=0, tokens_per_s=0, length=2))
    await made.start()
    yield made
    await made.stop()
    tokenize.forget_absent()


def backend_of(made: Simulator) -> BackendConfig:
    return BackendConfig(base_url=made.base_url + "/v1")


# ------------------------------------------------------------------------------------------------
# The prompt and the estimate
# ------------------------------------------------------------------------------------------------
def test_the_estimate_is_utf8_bytes_over_4_plus_messages_and_images() -> None:
    prompt = tokenize.chat_prompt(MESSAGES)
    assert [m["role"] for m in prompt.messages] == ["system", "user"]
    assert prompt.images == 1
    # "You are terse\nHello there": 25 bytes -> 7, 2 messages x 4, one image.
    assert tokenize.estimate(prompt) == 7 + 8 + tokenize.IMAGE_TOKENS
    # Bytes, not characters: "é" is two.
    assert tokenize.estimate(tokenize.completion_prompt("é" * 8)) == 4


def test_prompts_of_every_endpoint() -> None:
    calls = tokenize.chat_prompt(
        [
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "42"},
        ]
    )
    assert calls.joined() == "f\n{}\n42"
    ids = tokenize.completion_prompt([[1, 2, 3], 4, "four words of text"])
    assert (ids.token_ids, ids.text) == (4, "four words of text")
    assert tokenize.estimate(ids) == 4 + 5
    response = tokenize.responses_prompt(
        {
            "instructions": "Be brief",
            "input": [
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]},
            ],
        },
        history=[
            {"type": "message", "role": "user", "content": "Weather?", "id": "m", "status": "x"}
        ],
    )
    assert response.joined() == "Be brief\nWeather?\nsunny\n"
    assert response.images == 1


# ------------------------------------------------------------------------------------------------
# Asking the server
# ------------------------------------------------------------------------------------------------
async def test_vllm_counts_the_messages_whole(loop_sim: Simulator) -> None:
    counted = await tokenize.count(backend_of(loop_sim), "sim", tokenize.chat_prompt(MESSAGES))
    # 5 words, the template's tokens included in vLLM's count; the image apart.
    assert counted == (5 + tokenize.IMAGE_TOKENS, "tokenize")
    assert loop_sim.stats["last_request"] is None  # /tokenize is not a generation


async def test_llama_cpp_counts_the_text_and_the_messages_are_added(loop_sim: Simulator) -> None:
    loop_sim.configure(tokenize_as="llama.cpp")
    counted = await tokenize.count(backend_of(loop_sim), "sim", tokenize.chat_prompt(MESSAGES))
    assert counted == (5 + 2 * tokenize.MESSAGE_TOKENS + tokenize.IMAGE_TOKENS, "tokenize")


async def test_a_server_without_tokenize_is_estimated_and_not_asked_again(
    loop_sim: Simulator,
) -> None:
    loop_sim.configure(tokenize=False)
    prompt = tokenize.chat_prompt(MESSAGES)
    for _ in range(3):
        assert await tokenize.count(backend_of(loop_sim), "sim", prompt) == (
            tokenize.estimate(prompt),
            "estimate",
        )
    assert loop_sim.stats["tokenize"] == 1


async def test_a_slow_tokenizer_is_not_waited_for(loop_sim: Simulator) -> None:
    loop_sim.configure(tokenize_delay_ms=3000)
    prompt = tokenize.chat_prompt(MESSAGES)
    started = time.monotonic()
    counted = await tokenize.count(backend_of(loop_sim), "sim", prompt, timeout_s=0.2)
    assert time.monotonic() - started < 1.5
    assert counted == (tokenize.estimate(prompt), "estimate")
    loop_sim.configure(tokenize_delay_ms=0)  # slow is not absent: asked again
    assert (await tokenize.count(backend_of(loop_sim), "sim", prompt))[1] == "tokenize"


async def test_an_unreachable_server_is_estimated(loop_sim: Simulator) -> None:
    prompt = tokenize.completion_prompt("Hello there")
    backend = BackendConfig(base_url="http://127.0.0.1:9/v1")  # discard: nobody listens
    assert await tokenize.count(backend, "sim", prompt) == (3, "estimate")


# ------------------------------------------------------------------------------------------------
# A real server: llama-cpp-python's, its tokenizer at /extras/tokenize/count
# ------------------------------------------------------------------------------------------------
LONG = " ".join(["tokens"] * 40)


@pytest.mark.django_db(transaction=True)
def test_a_real_servers_tokenizer_decides_admission(llama_server, server, api_key) -> None:
    make_slot(llama_server.base_url, model=llama_server.model_id, max_tokens=8)
    Quota.objects.create(api_key=ApiKey.objects.get(), period="day", max_tokens=20)
    counted = httpx.post(
        llama_server.base_url + "/extras/tokenize/count", json={"input": LONG}, timeout=30
    ).json()["count"]
    estimated = tokenize.estimate(tokenize.chat_prompt([{"role": "user", "content": LONG}]))
    assert counted + tokenize.MESSAGE_TOKENS != estimated  # so the figure says who counted
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0)
    with client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": LONG}]
        )
    assert caught.value.code == "quota_exceeded"
    # The server's count, plus the chat template's tokens it does not count.
    assert f"prompt is about {counted + tokenize.MESSAGE_TOKENS} tokens" in caught.value.message
