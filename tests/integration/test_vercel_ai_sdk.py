"""The Vercel AI SDK (``ai`` + ``@ai-sdk/openai``, pinned in tests/js/package.json), unmodified,
against Slipstream's ``/v1/responses`` on a slot that translates to chat completions: a
``streamText`` function tool round trip while OpenAI's hosted web search tool
(``openai.tools.webSearch``) is declared beside it. A chat completions backend cannot run a
hosted tool; under the slot's default policy ("omit") Slipstream leaves it out of the upstream
request, names it in ``Slipstream-Omitted-Tools`` and serves the rest."""

from __future__ import annotations

import json

import pytest

from chat import readcache
from chat.models import Backend
from tests.conftest import make_slot
from tests.integration.test_api_node import run_node_client

pytestmark = pytest.mark.django_db(transaction=True)


def test_function_tool_round_trip_beside_an_omitted_web_search(server, api_key, sim) -> None:
    """Two steps: the simulator calls the function tool (``tools[0]``), the SDK runs it and
    sends its output back, the simulator answers in words. ``vercel_ai.mjs`` prints
    ``{"toolCalls": [{toolCallId, toolName, input, providerExecuted}], "executions":
    [{toolCallId, input}], "steps": [{finishReason, text, toolCalls, toolResults,
    omittedTools, warnings}], "text": str, "errors": [...]}``."""
    made = make_slot(sim.base_url)
    Backend.objects.filter(pk=made.backend_id).update(responses_api="translate")
    readcache.invalidate()  # .update() sends no signal
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)

    result = run_node_client(server.base_url, api_key, "vercel_ai.mjs")

    assert result["errors"] == [], result
    assert [step["finishReason"] for step in result["steps"]] == ["tool-calls", "stop"], result
    (call,) = result["toolCalls"]
    assert (call["toolName"], call["providerExecuted"]) == ("get_weather", False)
    assert result["executions"] == [{"toolCallId": call["toolCallId"], "input": call["input"]}]
    assert result["steps"][0]["toolResults"] == ["sunny"]
    assert result["steps"][1]["toolCalls"] == 0
    assert len(result["text"].split()) == 5
    assert result["text"] == result["steps"][1]["text"]
    assert [step["omittedTools"] for step in result["steps"]] == ["web_search", "web_search"]

    # The second step's chat request: the function tool alone, and the simulator's own call
    # (its arguments as it wrote them) followed by the tool's output.
    stats = sim.stats()
    chat_calls = [r for r in stats["history"] if r["path"].endswith("/chat/completions")]
    assert len(chat_calls) == 2
    sent = stats["last_request"]
    assert [(t["type"], t["function"]["name"]) for t in sent["tools"]] == [
        ("function", "get_weather")
    ]
    assert "web_search" not in json.dumps(sent)
    *_, assistant, tool_output = sent["messages"]
    (upstream_call,) = assistant["tool_calls"]
    assert upstream_call["id"] == call["toolCallId"]
    assert json.loads(upstream_call["function"]["arguments"]) == call["input"]
    assert set(call["input"]) == {"city"}
    assert tool_output == {"role": "tool", "tool_call_id": call["toolCallId"], "content": "sunny"}


def test_a_slot_that_refuses_hosted_tools_fails_the_first_step(server, api_key, sim) -> None:
    """Under ``hosted_tools="refuse"`` the SDK surfaces the 400 (its ``APICallError``), names
    the hosted tool's place in its request, and runs no tool; nothing reaches the backend."""
    made = make_slot(sim.base_url, hosted_tools="refuse")
    Backend.objects.filter(pk=made.backend_id).update(responses_api="translate")
    readcache.invalidate()

    result = run_node_client(server.base_url, api_key, "vercel_ai.mjs")

    assert (result["toolCalls"], result["executions"], result["text"]) == ([], [], None)
    error = result["errors"][0]
    assert (error["name"], error["status"]) == ("APICallError", 400)
    assert json.loads(error["responseBody"])["error"]["param"] == "tools[1].type"
    assert "'web_search'" in error["message"]
    assert sim.stats()["requests"] == 0
