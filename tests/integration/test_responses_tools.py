"""``/v1/responses`` with the whole tool vocabulary, through the official ``openai`` SDK and a
real daphne server: hosted tools left out (named in ``Slipstream-Omitted-Tools``) or refused by
the slot's policy on a translated backend and passed as sent to a native one; namespace and
custom tools across the translation and back; the request fields agent clients send. What the
backend received is the simulator's ``last_request``."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from chat import readcache
from chat.models import Backend, Slot
from tests.conftest import make_slot
from tests.integration.test_responses_api import raw_events, resumed_events, wait_for_row
from tests.support.openapi import assert_valid

pytestmark = pytest.mark.django_db(transaction=True)

SHELL = {
    "type": "function",
    "name": "exec_command",
    "description": "Runs a command.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"cmd": {"type": "string"}},
        "required": ["cmd"],
    },
}
AGENTS = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for sub-agents.",
    "tools": [
        {"type": "function", "name": "close_agent", "parameters": {"type": "object"}},
        {"type": "custom", "name": "spawn", "description": "Spawn from a brief."},
    ],
}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch."}
WEB_SEARCH = {"type": "web_search", "external_web_access": True}
OMITTED = "Slipstream-Omitted-Tools"


def on_backend(sim: Any, mode: str, **fields: Any) -> Slot:
    made = make_slot(sim.base_url, **fields)
    Backend.objects.filter(pk=made.backend_id).update(responses_api=mode)
    readcache.invalidate()  # .update() sends no signal
    return made


@pytest.fixture
def slot(transactional_db, sim) -> Slot:
    """The simulator's slot on a backend that translates Responses to chat completions."""
    return on_backend(sim, "translate")


def offered_names(sim: Any) -> list[str]:
    return [tool["function"]["name"] for tool in sim.stats()["last_request"].get("tools") or ()]


@pytest.mark.parametrize("stream", [False, True])
def test_hosted_tools_are_left_out_and_named_in_a_header(openai_client, slot, sim, stream) -> None:
    """Codex CLI's tool list: function, namespace, web_search. The backend gets the function
    tools (the namespace's under names that carry it), never web_search; the client gets its
    answer and a header naming what was left out."""
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    raw = openai_client.responses.with_raw_response.create(
        model="primary",
        input="hi",
        tools=[SHELL, AGENTS, WEB_SEARCH],
        tool_choice="none",
        stream=stream,
    )
    assert raw.status_code == 200
    assert raw.headers[OMITTED] == "web_search"
    response = raw.parse()
    if stream:
        events = list(response)
        response = events[-1].response
        assert events[-1].type == "response.completed"
    assert response.status == "completed"
    assert len(response.output_text.split()) == 3
    assert [tool.type for tool in response.tools] == ["function", "namespace", "web_search"]
    assert offered_names(sim) == [
        "exec_command",
        "multi_agent_v1__close_agent",
        "multi_agent_v1__spawn",
    ]
    assert "web_search" not in json.dumps(sim.stats()["last_request"])


def test_a_request_without_hosted_tools_has_no_header(openai_client, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=2)
    raw = openai_client.responses.with_raw_response.create(
        model="primary", input="hi", tools=[SHELL], tool_choice="none"
    )
    assert raw.status_code == 200
    assert OMITTED not in raw.headers


@pytest.mark.parametrize("stream", [False, True])
def test_a_slot_that_refuses_hosted_tools_answers_400_naming_the_tool(
    openai_client, sim, transactional_db, stream
) -> None:
    on_backend(sim, "translate", hosted_tools="refuse")
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.create(
            model="primary", input="hi", tools=[SHELL, WEB_SEARCH], stream=stream
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert_valid({"error": body}, "ErrorResponse")
    assert body["param"] == "tools[1].type"
    assert "'web_search'" in body["message"]
    assert sim.stats()["requests"] == 0


def test_a_native_backend_gets_hosted_tools_as_sent(openai_client, sim, transactional_db) -> None:
    """Its own Responses API may run them: nothing is left out, nothing is named."""
    on_backend(sim, "native")
    sim.configure(ttft_ms=0, tokens_per_s=0, length=2)
    raw = openai_client.responses.with_raw_response.create(
        model="primary", input="hi", tools=[SHELL, AGENTS, WEB_SEARCH], tool_choice="none"
    )
    assert raw.status_code == 200
    assert OMITTED not in raw.headers
    assert sim.stats()["last_request"]["tools"] == [SHELL, AGENTS, WEB_SEARCH]


def test_a_namespaced_call_round_trips(openai_client, slot, sim) -> None:
    """The model calls a namespace's tool: the client sees ``name`` and ``namespace``, sends
    its output back without server-side state, and the backend sees its own name again."""
    sim.configure(
        ttft_ms=0,
        tokens_per_s=0,
        length=2,
        tool_name="multi_agent_v1__close_agent",
        tool_arguments='{"id":"a1"}',
    )
    first = openai_client.responses.create(
        model="primary", input="close a1", tools=[SHELL, AGENTS], store=False
    )
    (call,) = first.output
    assert (call.type, call.name, call.namespace, call.arguments) == (
        "function_call",
        "close_agent",
        "multi_agent_v1",
        '{"id":"a1"}',
    )
    assert_valid(first.model_dump(mode="json", exclude_unset=True), "Response")
    second = openai_client.responses.create(
        model="primary",
        tools=[SHELL, AGENTS],
        store=False,
        input=[
            {"role": "user", "content": "close a1"},
            call.model_dump(mode="json", exclude_unset=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "closed"},
        ],
    )
    assert second.output[0].type == "message"
    sent = sim.stats()["last_request"]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__close_agent"
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "closed"}


def test_a_custom_call_streams_as_openai_streams_one(openai_client, slot, sim) -> None:
    """``custom_tool_call`` and ``response.custom_tool_call_input.*`` events through the SDK's
    typed stream; its output goes back as ``custom_tool_call_output``."""
    patch = '*** Begin Patch\n+print("hi")\n*** End Patch'
    sim.configure(
        ttft_ms=0,
        tokens_per_s=0,
        tool_name="apply_patch",
        tool_arguments=json.dumps({"input": patch}),
    )
    with openai_client.responses.stream(
        model="primary", input="patch it", tools=[SHELL, PATCH]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    (done,) = [e for e in events if e.type == "response.custom_tool_call_input.done"]
    (call,) = final.output
    assert call.type == "custom_tool_call"
    assert deltas == done.input == call.input == patch
    assert sim.stats()["last_request"]["tools"][1]["function"]["name"] == "apply_patch"

    sim.configure(tool_name=None, tool_arguments=None, length=2)
    answer = openai_client.responses.create(
        model="primary",
        previous_response_id=final.id,
        tools=[SHELL, PATCH],
        input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"}],
    )
    assert answer.output[0].type == "message"
    sent = sim.stats()["last_request"]["messages"]
    assert json.loads(sent[-2]["tool_calls"][0]["function"]["arguments"]) == {"input": patch}
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "Done!"}


def test_codex_fields_are_served(openai_client, slot, sim) -> None:
    """The fields Codex CLI sends with every turn: served, none reaches the chat backend."""
    sim.configure(ttft_ms=0, tokens_per_s=0, length=2)
    response = openai_client.responses.create(
        model="primary",
        input=[
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB"},
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "hi"},
        ],
        include=["reasoning.encrypted_content"],
        store=False,
        prompt_cache_key="session-1",
        safety_identifier="u-1",
        service_tier="auto",
        truncation="auto",
        max_tool_calls=4,
        parallel_tool_calls=True,
        reasoning={"summary": "auto"},
        extra_body={"client_metadata": {"session_id": "s-1"}},
    )
    assert response.status == "completed"
    assert response.max_tool_calls == 4
    sent = sim.stats()["last_request"]
    assert sent["messages"] == [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": "hi"},
    ]
    for name in ("include", "prompt_cache_key", "client_metadata", "safety_identifier",
                 "service_tier", "truncation", "max_tool_calls", "reasoning"):  # fmt: skip
        assert name not in sent, name


@pytest.mark.parametrize(
    ("field", "value"),
    [("conversation", "conv_123"), ("prompt", {"id": "pmpt_123"})],
)
def test_objects_of_apis_slipstream_lacks_are_refused_by_name(
    openai_client, slot, sim, field, value
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.create(model="primary", input="hi", **{field: value})
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["param"], body["code"]) == (field, "unsupported_parameter")
    assert sim.stats()["requests"] == 0


def test_a_stored_stream_of_custom_and_namespaced_calls_resumes_exactly(
    server, api_key, slot, sim
) -> None:
    """Resume by ``starting_after`` re-renders the stored chunks with the stored response's
    tools: the same custom call events, numbers included, as the live stream sent."""
    sim.configure(
        ttft_ms=0,
        tokens_per_s=0,
        tool_name="multi_agent_v1__spawn",
        tool_arguments=json.dumps({"input": "brief: tidy \u00e9"}),
    )
    body = {"model": "primary", "input": "go", "tools": [SHELL, AGENTS, WEB_SEARCH]}
    events = raw_events(server, api_key, body)
    assert [e["type"] for e in events].count("response.custom_tool_call_input.delta") > 1
    item = events[-1]["response"]["output"][0]
    assert (item["type"], item["name"], item["namespace"], item["input"]) == (
        "custom_tool_call",
        "spawn",
        "multi_agent_v1",
        "brief: tidy \u00e9",
    )
    response_id = events[0]["response"]["id"]
    wait_for_row(response_id, "completed")
    for after in (-1, 3):
        assert resumed_events(server, api_key, response_id, after) == events[after + 1 :]
