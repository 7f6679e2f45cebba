"""The OpenAI Agents SDK (``openai-agents``), unmodified, running an agent with one function tool
against Slipstream's ``/v1/responses``: on the simulator through both upstream paths, and on the
real llama.cpp server (which has no Responses API: ``auto`` translates), where the Python and
Node SDKs stream a response too. The tool round trip must complete; the llama.cpp model is
random weights, so its tests assert structure, not words."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    RunHooks,
    Runner,
    WebSearchTool,
    function_tool,
    set_tracing_disabled,
)
from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem
from openai import AsyncOpenAI, DefaultAsyncHttpxClient, OpenAI
from pydantic import Field

from chat import readcache
from chat.models import ApiCall, Backend, StoredResponse
from tests.conftest import make_slot
from tests.integration.test_api_node import run_node_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_tracing() -> None:
    """The SDK would export traces to OpenAI's servers: nothing leaves the machine."""
    set_tracing_disabled(True)


# A city as the simulator writes one (two words cut to 8 characters), and as the llama.cpp test
# asks for one: lowercase letters only, so its JSON can never hold the slot's stop characters.
City = Annotated[str, Field(max_length=8)]
LowercaseCity = Annotated[str, Field(pattern="^[a-z]{1,8}$")]


def weather_agent(
    client: AsyncOpenAI, calls: list[str], *, lowercase: bool = False, **settings: Any
) -> Agent:
    """An agent on Slipstream's ``primary`` slot with one tool that records its calls."""

    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return "sunny"

    get_weather.__annotations__["city"] = LowercaseCity if lowercase else City
    return Agent(
        name="weather",
        instructions="Answer weather questions with the get_weather tool.",
        model=OpenAIResponsesModel(model="primary", openai_client=client),
        model_settings=ModelSettings(**settings),
        tools=[function_tool(get_weather)],
    )


def run_agent(server: Any, api_key: str, calls: list[str], **settings: Any) -> Any:
    """``Runner.run`` of the weather agent on "Weather in Oslo?", its client closed after."""

    async def run() -> Any:
        async with AsyncOpenAI(
            base_url=server.base_url + "/v1", api_key=api_key, max_retries=0
        ) as client:
            return await Runner.run(weather_agent(client, calls, **settings), "Weather in Oslo?")

    return asyncio.run(run())


def assert_round_trip(result: Any, calls: list[str]) -> None:
    """One tool call, its output given back, then a message: the agent's whole loop."""
    kinds = [type(item) for item in result.new_items]
    assert kinds == [ToolCallItem, ToolCallOutputItem, MessageOutputItem], kinds
    assert len(calls) == 1
    assert isinstance(calls[0], str)
    assert result.new_items[1].output == "sunny"
    assert isinstance(result.final_output, str)
    assert result.final_output


@pytest.mark.parametrize("mode", ["native", "translate"])
def test_agent_completes_a_tool_round_trip_on_the_simulator(server, api_key, sim, mode) -> None:
    slot = make_slot(sim.base_url)
    Backend.objects.filter(pk=slot.backend_id).update(responses_api=mode)
    readcache.invalidate()
    sim.configure(ttft_ms=0, tokens_per_s=0, length=6)
    calls: list[str] = []
    result = run_agent(server, api_key, calls)
    assert_round_trip(result, calls)
    assert len(result.final_output.split()) == 6
    # The second turn continued the first by previous_response_id or by replaying items:
    # either way the backend saw the tool's output.
    sent = sim.stats()["last_request"]
    assert "sunny" in str(sent.get("input") or sent.get("messages"))
    assert ApiCall.objects.filter(endpoint="responses", outcome="complete").count() == 2


def test_streamed_agent_run_on_the_simulator(server, api_key, sim) -> None:
    make_slot(sim.base_url)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    calls: list[str] = []

    async def run() -> Any:
        async with AsyncOpenAI(
            base_url=server.base_url + "/v1", api_key=api_key, max_retries=0
        ) as client:
            streamed = Runner.run_streamed(weather_agent(client, calls), "Weather in Oslo?")
            kinds = [event.type async for event in streamed.stream_events()]
        assert "raw_response_event" in kinds
        return streamed

    streamed = asyncio.run(run())
    assert_round_trip(streamed, calls)
    assert StoredResponse.objects.filter(status="completed").count() == 2


OMITTED = "Slipstream-Omitted-Tools"


class UpstreamAtToolStart(RunHooks[Any]):
    """Keeps the simulator's last chat request as each function tool starts: the SDK runs the
    tool between turns, so this is the first turn's request, which ``last_request`` no longer
    shows once the run is over."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.seen: list[dict[str, Any]] = []

    async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
        self.seen.append(self.sim.stats()["last_request"])


def run_beside_web_search(
    server: Any, api_key: str, sim: Any, calls: list[str], *, streamed: bool
) -> tuple[Any, list[str | None], list[dict[str, Any]]]:
    """The weather agent with the SDK's hosted ``WebSearchTool`` declared after its function
    tool, run by ``Runner.run`` or ``Runner.run_streamed`` (drained) on "Weather in Oslo?".
    Returns the run's result, the ``Slipstream-Omitted-Tools`` header of each ``/v1/responses``
    answer (None where absent), as the SDK's own HTTP client received it, and the upstream's
    request as each tool started."""
    omitted: list[str | None] = []

    # The SDK's transport (httpx2 in openai 3.x), as the hook's argument: typed loosely.
    async def record(response: Any) -> None:
        if response.request.url.path.endswith("/responses"):
            omitted.append(response.headers.get(OMITTED))

    hooks = UpstreamAtToolStart(sim)

    async def run() -> Any:
        async with (
            DefaultAsyncHttpxClient(event_hooks={"response": [record]}) as http,
            AsyncOpenAI(
                base_url=server.base_url + "/v1", api_key=api_key, max_retries=0, http_client=http
            ) as client,
        ):
            agent = weather_agent(client, calls)
            agent = agent.clone(tools=[*agent.tools, WebSearchTool()])
            if not streamed:
                return await Runner.run(agent, "Weather in Oslo?", hooks=hooks)
            running = Runner.run_streamed(agent, "Weather in Oslo?", hooks=hooks)
            kinds = [event.type async for event in running.stream_events()]
            assert "raw_response_event" in kinds
            return running

    return asyncio.run(run()), omitted, hooks.seen


@pytest.mark.parametrize("streamed", [False, True])
def test_agent_round_trip_beside_an_omitted_web_search_tool(server, api_key, sim, streamed) -> None:
    """A translated slot under its default hosted-tool policy ("omit"): the backend (chat
    completions only) never sees web_search, each answer names it in a header, and the
    function tool's round trip completes as without it."""
    made = make_slot(sim.base_url)
    Backend.objects.filter(pk=made.backend_id).update(responses_api="translate")
    readcache.invalidate()
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    calls: list[str] = []
    result, omitted, at_tool_start = run_beside_web_search(
        server, api_key, sim, calls, streamed=streamed
    )
    assert_round_trip(result, calls)
    assert len(result.final_output.split()) == 4
    assert omitted == ["web_search", "web_search"]
    (first,) = at_tool_start
    last = sim.stats()["last_request"]
    assert (first["messages"][-1]["role"], last["messages"][-1]["role"]) == ("user", "tool")
    for sent in (first, last):
        assert [(t["type"], t["function"]["name"]) for t in sent["tools"]] == [
            ("function", "get_weather")
        ]
        assert "web_search" not in json.dumps(sent)
    assert ApiCall.objects.filter(endpoint="responses", outcome="complete").count() == 2


@pytest.mark.llama
def test_agent_round_trip_on_llama_cpp_through_translation(server, api_key, llama_server) -> None:
    # The tiny model never chooses a tool, and never stops, by itself. The first turn names the
    # tool (the SDK resets tool_choice after a call); the slot's stop strings (characters its
    # token soup is full of, and a lowercase city cannot hold) end the second turn's words, as
    # the Agents SDK wants a completed response. Slots with stop strings translate.
    stops = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$]")
    make_slot(llama_server.base_url, model=llama_server.model_id, max_tokens=48, stop=stops)
    calls: list[str] = []
    result = run_agent(server, api_key, calls, lowercase=True, tool_choice="get_weather")
    assert_round_trip(result, calls)
    assert calls[0].isalpha()


@pytest.mark.llama
def test_auto_finds_llama_cpp_has_no_responses_api(openai_client, llama_server) -> None:
    """llama-cpp-python's server answers 404 on /responses: the first call is translated, and
    the backend is marked so."""
    slot = make_slot(llama_server.base_url, model=llama_server.model_id, max_tokens=8)
    response = openai_client.responses.create(model="primary", input="Hi")
    assert response.status == "incomplete"  # 8 tokens of a model that never stops
    assert response.usage.output_tokens == 8
    assert response.output_text
    assert Backend.objects.get(pk=slot.backend_id).responses_api_detected is False


@pytest.mark.llama
def test_both_sdks_stream_a_response_from_llama_cpp(server, api_key, llama_server) -> None:
    """The Python SDK's stream helper and the Node SDK's, unmodified, on the real llama.cpp
    server (translated; the slot's stop characters end its token soup with a completed
    response, as a real model's end of text would)."""
    stops = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$]")
    make_slot(llama_server.base_url, model=llama_server.model_id, max_tokens=48, stop=stops)
    with (
        OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0) as client,
        client.responses.stream(model="primary", input="Hi") as stream,
    ):
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)
    assert final.output_text.isascii()
    assert not set(final.output_text) & set(stops)

    node = run_node_client(server.base_url, api_key, "openai_responses.mjs")
    assert "error" not in node, node
    assert node["types"][-1] == "response.completed"
    assert node["final"]["outputText"] == node["deltas"]
    assert node["retrievedText"] == node["final"]["outputText"]
