"""``chat.relay.responses``: the Responses API's tool vocabulary on a chat-completions backend
(function, custom and namespace tools, hosted tools left out or refused), without a server.
Every event and final response is checked against OpenAI's own schemas
(``tests/fixtures/openapi/openai-responses.yaml``), as Codex CLI, the Agents SDK and the Vercel
AI SDK read them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.relay.responses import (
    OMIT,
    REFUSE,
    CustomInput,
    ResponseEvents,
    ToolNames,
    ToolTranslation,
    TranslationError,
    chat_request,
    input_items,
    items_to_messages,
    render,
    response_as_chunk,
    skeleton,
)
from tests.support.openapi import assert_valid

SHELL: dict[str, Any] = {
    "type": "function",
    "name": "exec_command",
    "description": "Runs a command.",
    "strict": False,
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
}
# Codex CLI's namespace tool (its shape as Codex 0.171 sends it, cut to two tools).
AGENTS: dict[str, Any] = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "close_agent",
            "description": "Close an agent.",
            "strict": False,
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
        {"type": "custom", "name": "spawn", "description": "Spawn an agent from a brief."},
    ],
}
PATCH: dict[str, Any] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Apply a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch"'},
}
WEB_SEARCH: dict[str, Any] = {"type": "web_search", "external_web_access": True}
CREATED_AT = 1700000000


def body_with(*tools: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "input": "x", "tools": list(tools), **fields}


def translated(body: dict[str, Any], *, policy: str = OMIT) -> tuple[dict[str, Any], list[str]]:
    tools = ToolTranslation(body.get("tools") or (), policy=policy)
    items = input_items(body["input"], response_id="resp_abc")
    return chat_request(body, history=[], items=items, tools=tools), tools.omitted


def chat_names(request: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools") or ()]


def call_chunks(name: str, *fragments: str, call_id: str = "call_1") -> list[dict[str, Any]]:
    """A chat stream of one tool call: the name with the first fragment, then the rest."""
    chunks = []
    for i, fragment in enumerate(fragments):
        call: dict[str, Any] = {"index": 0, "function": {"arguments": fragment}}
        if i == 0:
            call.update(id=call_id, type="function")
            call["function"]["name"] = name
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return chunks


def streamed(
    body: dict[str, Any], chunks: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every event and the final response, each checked against OpenAI's schemas."""
    initial = skeleton(body, response_id="resp_abc", model="slot", created_at=CREATED_AT)
    events, response = render(initial, chunks, completed_at=CREATED_AT + 1)
    for event in events:
        assert_valid(event, "ResponseStreamEvent")
    assert_valid(response, "Response")
    return events, response


# ------------------------------------------------------------------------------------------------
# Hosted tools: omit or refuse
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hosted",
    [
        WEB_SEARCH,
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "image_generation"},
        {"type": "computer_use_preview", "display_width": 1024, "display_height": 768,
         "environment": "browser"},
        {"type": "local_shell"},
        {"type": "tool_search"},
        {"type": "mcp", "server_label": "docs", "server_url": "https://example.com/mcp"},
        {"type": "a_tool_from_next_year", "anything": 1},
    ],
)  # fmt: skip
def test_hosted_tools_are_left_out_and_named_under_omit(hosted: dict[str, Any]) -> None:
    """The default policy serves the rest of the request: the function tool reaches the
    backend, the hosted tool does not, and it is named once (for the response header)."""
    request, omitted = translated(body_with(SHELL, hosted, dict(hosted)))
    assert chat_names(request) == ["exec_command"]
    assert omitted == [hosted["type"]]
    assert hosted["type"] not in json.dumps(request)


def test_hosted_tools_are_refused_by_index_under_refuse() -> None:
    with pytest.raises(TranslationError) as caught:
        translated(body_with(SHELL, AGENTS, WEB_SEARCH), policy=REFUSE)
    assert caught.value.param == "tools[2].type"
    assert "'web_search'" in str(caught.value)


def test_a_request_of_hosted_tools_only_offers_no_tools() -> None:
    """Nothing left to offer: no empty ``tools`` list (some servers refuse one)."""
    request, omitted = translated(body_with(WEB_SEARCH, tool_choice="auto"))
    assert "tools" not in request
    assert omitted == ["web_search"]


def test_a_hosted_tool_choice_is_left_out_under_omit() -> None:
    """``tool_choice: {"type": "web_search"}`` cannot be honoured: the choice goes (the
    backend's default, auto) and the tool is named."""
    request, omitted = translated(body_with(SHELL, WEB_SEARCH, tool_choice={"type": "web_search"}))
    assert "tool_choice" not in request
    assert omitted == ["web_search"]


def test_hosted_tool_items_sent_back_are_left_out() -> None:
    """A client that keeps its own history (``store: false``) sends a hosted call's item back
    from an earlier turn (OpenAI's, say): left out with its tool, the rest translated."""
    tools = ToolTranslation(())
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": "find it"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed",
         "action": {"type": "search", "query": "q"}},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                              "text": "found"}]},
    ]  # fmt: skip
    assert items_to_messages(items, tools=tools) == [
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": "found"},
    ]
    assert tools.omitted == ["web_search_call"]


# ------------------------------------------------------------------------------------------------
# Namespace tools
# ------------------------------------------------------------------------------------------------
def test_namespace_tools_are_offered_under_names_that_carry_the_namespace() -> None:
    request, omitted = translated(body_with(SHELL, AGENTS))
    assert chat_names(request) == [
        "exec_command",
        "multi_agent_v1__close_agent",
        "multi_agent_v1__spawn",
    ]
    close = request["tools"][1]["function"]
    assert close["parameters"] == AGENTS["tools"][0]["parameters"]
    # The namespace's description goes with each of its tools: the model sees no namespace.
    assert close["description"].startswith("Tools for spawning and managing sub-agents.")
    assert close["description"].endswith("Close an agent.")
    assert omitted == []


def test_chat_names_fit_the_chat_rule_and_never_clash() -> None:
    """``[a-zA-Z0-9_-]{1,64}`` (OpenAI's chat completions rule), unique, and the same names
    again from the same list (a replay must name calls as the live stream did)."""
    space: str = "a.very/long namespace " * 4
    long_space = {**AGENTS, "name": space}
    clash = {"type": "function", "name": "multi_agent_v1__close_agent", "parameters": {}}
    tools = [clash, AGENTS, long_space]
    names = ToolNames(tools)
    chat = [
        names.chat_name("multi_agent_v1__close_agent"),
        names.chat_name("close_agent", "multi_agent_v1"),
        names.chat_name("close_agent", space),
        names.chat_name("spawn", space),
    ]
    assert len(set(chat)) == 4
    for name in chat:
        assert 1 <= len(name) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in name), name
    assert chat == [ToolNames(tools).chat_name(*args) for args in [
        ("multi_agent_v1__close_agent",), ("close_agent", "multi_agent_v1"),
        ("close_agent", space), ("spawn", space),
    ]]  # fmt: skip
    assert names.offered(chat[1]).namespace == "multi_agent_v1"
    assert names.offered(chat[0]).namespace is None


def test_a_namespaced_call_comes_back_with_its_name_and_namespace() -> None:
    """As OpenAI emits it: ``function_call`` with ``name`` and ``namespace``."""
    body = body_with(SHELL, AGENTS)
    events, response = streamed(body, call_chunks("multi_agent_v1__close_agent", '{"id":', '"a1"}'))
    (item,) = response["output"]
    assert (item["type"], item["name"], item["namespace"]) == (
        "function_call",
        "close_agent",
        "multi_agent_v1",
    )
    assert item["arguments"] == '{"id":"a1"}'
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["name"] == "close_agent"


def test_a_namespaced_call_and_its_output_find_their_way_back() -> None:
    """Next turn (``store: false``): the client sends the call and its output back; the
    backend sees its own name for the call, and the output answers that call."""
    body = body_with(SHELL, AGENTS)
    tools = ToolTranslation(body["tools"])
    messages = items_to_messages(
        [
            {"type": "function_call", "call_id": "call_1", "name": "close_agent",
             "namespace": "multi_agent_v1", "arguments": '{"id":"a1"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "closed"},
        ],
        tools=tools,
    )  # fmt: skip
    assert messages == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "multi_agent_v1__close_agent", "arguments": '{"id":"a1"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "closed"},
    ]


# ------------------------------------------------------------------------------------------------
# Custom tools
# ------------------------------------------------------------------------------------------------
def test_a_custom_tool_is_offered_as_a_function_of_one_string() -> None:
    request, _ = translated(body_with(PATCH))
    (tool,) = request["tools"]
    assert tool["function"]["name"] == "apply_patch"
    assert tool["function"]["description"] == "Apply a patch."
    parameters = tool["function"]["parameters"]
    assert parameters["required"] == ["input"]
    assert parameters["properties"]["input"]["type"] == "string"
    # The grammar cannot bind a chat argument: the model is told it.
    assert "lark" in parameters["properties"]["input"]["description"]
    assert "*** Begin Patch" in parameters["properties"]["input"]["description"]


def test_a_custom_call_streams_its_decoded_input() -> None:
    """``custom_tool_call`` item, ``response.custom_tool_call_input.delta`` events whose
    deltas add up to the ``.done`` event's input, the input decoded from the JSON string."""
    patch = '*** Begin Patch\n"quoted" \\ é 😀\n*** End Patch'
    arguments = json.dumps({"input": patch})
    # Cut inside escapes (\n, \", \\, \u00e9) and between the halves of a surrogate pair.
    fragments = [arguments[i : i + 3] for i in range(0, len(arguments), 3)]
    events, response = streamed(body_with(PATCH), call_chunks("apply_patch", *fragments))
    (item,) = response["output"]
    assert item["type"] == "custom_tool_call"
    assert (item["name"], item["call_id"], item["input"]) == ("apply_patch", "call_1", patch)
    assert item["id"].startswith("ctc_")
    deltas = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert len(deltas) > 3
    assert "".join(deltas) == patch
    (done,) = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    assert done["input"] == patch
    assert not [e for e in events if "function_call" in e["type"]]


def test_a_custom_call_of_a_namespace_carries_it() -> None:
    _, response = streamed(
        body_with(AGENTS), call_chunks("multi_agent_v1__spawn", '{"input":"go"}')
    )
    (item,) = response["output"]
    assert (item["type"], item["name"], item["namespace"], item["input"]) == (
        "custom_tool_call",
        "spawn",
        "multi_agent_v1",
        "go",
    )


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"input": "ls -la"}', "ls -la"),
        ('{ "input" : "a\\tb" }', "a\tb"),
        ('{"text": "only string"}', "only string"),  # another key, one string: that string
        ("ls -la", "ls -la"),  # a model that wrote the raw input, not JSON
        ('{"input": 5}', '{"input": 5}'),  # not a string: the arguments as they came
    ],
)
def test_custom_input_at_every_split(arguments: str, expected: str) -> None:
    """Whatever the fragments, the streamed text never contradicts the whole input, and the
    whole input is the same."""
    for cut in range(len(arguments) + 1):
        decoder = CustomInput()
        given = decoder.feed(arguments[:cut]) + decoder.feed(arguments[cut:])
        whole = decoder.whole()
        assert whole == expected
        assert whole.startswith(given)


def test_custom_calls_and_outputs_sent_back_become_tool_messages() -> None:
    tools = ToolTranslation([PATCH])
    messages = items_to_messages(
        [
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "P"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"},
        ],
        tools=tools,
    )
    call = messages[0]["tool_calls"][0]
    assert call["function"] == {"name": "apply_patch", "arguments": '{"input": "P"}'}
    assert messages[1] == {"role": "tool", "tool_call_id": "c1", "content": "Done!"}


def test_custom_input_items_get_openai_id_prefixes() -> None:
    items = input_items(
        [
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "P"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "ok"},
        ],
        response_id="resp_abc",
    )
    assert [item["id"][:5] for item in items] == ["ctc_a", "ctco_"]


def test_a_native_whole_response_with_custom_calls_renders_the_same_items() -> None:
    """A backend's own non-streamed response, asked for as a stream later, re-renders its
    custom and namespaced calls as they were."""
    body = body_with(PATCH, AGENTS)
    native = skeleton(body, response_id="resp_abc", model="slot", created_at=CREATED_AT)
    native["output"] = [
        {"type": "custom_tool_call", "id": "ctc_1", "call_id": "c1", "name": "apply_patch",
         "input": "P\n", "status": "completed"},
        {"type": "function_call", "id": "fc_1", "call_id": "c2", "name": "close_agent",
         "namespace": "multi_agent_v1", "arguments": "{}", "status": "completed"},
    ]  # fmt: skip
    _, response = streamed(body, [response_as_chunk(native)])
    assert [(i["type"], i["name"], i.get("namespace")) for i in response["output"]] == [
        ("custom_tool_call", "apply_patch", None),
        ("function_call", "close_agent", "multi_agent_v1"),
    ]
    assert response["output"][0]["input"] == "P\n"


def test_replay_names_calls_as_the_live_stream_did() -> None:
    """The stored response echoes the request's tools; rendering its stored chunks again
    gives the same events, custom and namespaced calls included."""
    body = body_with(SHELL, PATCH, AGENTS, WEB_SEARCH)
    chunks = call_chunks("apply_patch", '{"inp', 'ut":"x"}') + call_chunks(
        "multi_agent_v1__close_agent", "{}", call_id="call_2"
    )
    first, _ = streamed(body, chunks)
    again = ResponseEvents(
        skeleton(body, response_id="resp_abc", model="slot", created_at=CREATED_AT)
    )
    replayed = again.start() + [e for c in chunks for e in again.feed(c)]
    replayed += again.finish(completed_at=CREATED_AT + 1)
    assert replayed == first


# ------------------------------------------------------------------------------------------------
# tool_choice
# ------------------------------------------------------------------------------------------------
def test_tool_choice_of_a_custom_or_namespaced_tool_names_its_chat_function() -> None:
    custom, _ = translated(body_with(PATCH, tool_choice={"type": "custom", "name": "apply_patch"}))
    assert custom["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    spaced, _ = translated(
        body_with(
            AGENTS,
            tool_choice={"type": "function", "name": "close_agent", "namespace": "multi_agent_v1"},
        )
    )
    assert spaced["tool_choice"]["function"]["name"] == "multi_agent_v1__close_agent"


def test_allowed_tools_offers_only_those_in_its_mode() -> None:
    """OpenAPI ``ToolChoiceAllowed``: the model may use only the listed tools, in ``mode``."""
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "exec_command"}, {"type": "web_search"}],
    }
    request, omitted = translated(body_with(SHELL, PATCH, WEB_SEARCH, tool_choice=choice))
    assert chat_names(request) == ["exec_command"]
    assert request["tool_choice"] == "required"
    assert omitted == ["web_search"]


# ------------------------------------------------------------------------------------------------
# The response object
# ------------------------------------------------------------------------------------------------
def test_the_response_echoes_every_tool_as_sent() -> None:
    body = body_with(SHELL, PATCH, AGENTS, WEB_SEARCH, max_tool_calls=3)
    initial = skeleton(body, response_id="resp_abc", model="slot", created_at=CREATED_AT)
    assert [tool["type"] for tool in initial["tools"]] == [
        "function",
        "custom",
        "namespace",
        "web_search",
    ]
    assert initial["tools"][1:] == [PATCH, AGENTS, WEB_SEARCH]
    assert initial["max_tool_calls"] == 3
    assert_valid(initial, "Response")


def test_codex_fields_never_reach_the_chat_backend() -> None:
    """What Codex CLI sends beside its tools: Responses-only fields, dropped by rule."""
    body = body_with(
        SHELL,
        include=["reasoning.encrypted_content"],
        store=False,
        prompt_cache_key="k",
        client_metadata={"session_id": "s"},
        safety_identifier="u1",
        service_tier="auto",
        truncation="auto",
        max_tool_calls=4,
        parallel_tool_calls=True,
        reasoning={"summary": "auto"},
    )
    request, _ = translated(body)
    for name in (
        "include", "store", "prompt_cache_key", "client_metadata", "safety_identifier",
        "service_tier", "truncation", "max_tool_calls", "reasoning",
    ):  # fmt: skip
        assert name not in request, name
    assert request["parallel_tool_calls"] is True


def test_reasoning_items_with_encrypted_content_are_dropped() -> None:
    """Chat completions takes no reasoning back; an ``encrypted_content`` is not ours to
    read."""
    items: list[dict[str, Any]] = [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"},
        {"role": "user", "content": "next"},
    ]
    assert items_to_messages(items) == [{"role": "user", "content": "next"}]


def test_text_that_is_not_text_is_empty_not_a_crash() -> None:
    """Found by schemathesis over ``/v1/responses``: a part whose ``text`` is not a string made
    the translation raise (HTTP 500) when it joined the parts."""
    messages = items_to_messages(
        [
            {"role": "user", "content": [{"type": "input_text", "text": 5},
                                         {"type": "input_text", "text": "a"}]},
            {"type": "function_call_output", "call_id": "c",
             "output": [{"type": "input_text", "text": None}, {"type": "input_text", "text": "b"}]},
        ]
    )  # fmt: skip
    assert messages == [
        {"role": "user", "content": "a"},
        {"role": "tool", "tool_call_id": "c", "content": "b"},
    ]
