"""Chat completions' newer request fields (issue 30): custom tools, the newer ``tool_choice``
shapes, ``web_search_options``, ``prediction``, ``modalities``, ``audio``, ``store``,
``metadata`` and ``verbosity``, sent by the official openai SDK to Slipstream under daphne with
the simulator as its backend. Their values and types are OpenAI's (``CreateChatCompletionRequest``
in ../shared/openai-openapi/openapi.yaml): each is type-checked, then passed to the backend as
sent."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from chat.models import ApiCall

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
# CustomToolChatCompletions: a free-text tool, here with a Lark grammar as its input format.
PATCH = {
    "type": "custom",
    "custom": {
        "name": "apply_patch",
        "description": "Apply a patch to the working tree.",
        "format": {
            "type": "grammar",
            "grammar": {"syntax": "lark", "definition": 'start: "*** Begin Patch" /(.|\\n)*/'},
        },
    },
}
SHELL = {"type": "custom", "custom": {"name": "shell", "format": {"type": "text"}}}

# (id, the fields as the SDK takes them, whether the answer calls a tool: the simulator calls
# function tools only, as a model server ignores a tool type it does not serve)
FIELDS: list[tuple[str, dict[str, Any], bool]] = [
    ("custom_tool", {"tools": [PATCH]}, False),
    (
        "custom_tool_choice",
        {"tools": [SHELL, WEATHER], "tool_choice": {"type": "custom", "custom": {"name": "shell"}}},
        False,
    ),
    (
        "allowed_tools_choice",
        {
            "tools": [WEATHER, PATCH],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
        },
        True,
    ),
    (
        "web_search_options",
        {
            "web_search_options": {
                "search_context_size": "low",
                "user_location": {
                    "type": "approximate",
                    "approximate": {"country": "GB", "city": "London", "timezone": "Europe/London"},
                },
            }
        },
        False,
    ),
    (
        "prediction",
        {"prediction": {"type": "content", "content": "def hello():\n    pass\n"}},
        False,
    ),
    (
        "prediction_parts",
        {"prediction": {"type": "content", "content": [{"type": "text", "text": "x = 1"}]}},
        False,
    ),
    (
        "modalities_audio",
        {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
        False,
    ),
    ("audio_custom_voice", {"audio": {"voice": {"id": "voice_1234"}, "format": "mp3"}}, False),
    ("store_metadata", {"store": True, "metadata": {"project": "slipstream", "run": "7"}}, False),
    ("verbosity", {"verbosity": "low"}, False),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("fields", "calls_tool"), [f[1:] for f in FIELDS], ids=[f[0] for f in FIELDS]
)
def test_newer_fields_reach_the_backend_unchanged(
    openai_client, slot, sim, fields, calls_tool, stream
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    answer = openai_client.chat.completions.create(
        model="primary", messages=HELLO, stream=stream, **fields
    )
    if stream:
        chunks = list(answer)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices]
        finish_reason = next(f for f in finish if f)
    else:
        finish_reason = answer.choices[0].finish_reason
    assert finish_reason == ("tool_calls" if calls_tool else "stop")
    sent = sim.stats()["last_request"]
    assert {name: sent.get(name) for name in fields} == fields
    assert ApiCall.objects.get().outcome == "complete"


def _tool(**custom: Any) -> dict[str, Any]:
    return {"tools": [{"type": "custom", "custom": custom}]}


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tools": [{"type": "custom"}]}, "tools[0].custom", "missing_required_parameter"),
        (_tool(description="no name"), "tools[0].custom.name", "missing_required_parameter"),
        (_tool(name=7), "tools[0].custom.name", "invalid_type"),
        (_tool(name="t", format="text"), "tools[0].custom.format", "invalid_type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
        ({"tools": [{"type": 1}]}, "tools[0].type", "invalid_type"),
        (
            {"tools": [SHELL], "tool_choice": {"type": "custom", "custom": "shell"}},
            "tool_choice.custom",
            "invalid_type",
        ),
        (
            {"tools": [SHELL], "tool_choice": {"type": "custom", "custom": {}}},
            "tool_choice.custom.name",
            "missing_required_parameter",
        ),
        (
            {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
            "tool_choice.allowed_tools.tools",
            "missing_required_parameter",
        ),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "auto", "tools": ["get_weather"]},
                }
            },
            "tool_choice.allowed_tools.tools[0]",
            "invalid_type",
        ),
        ({"web_search_options": "on"}, "web_search_options", "invalid_type"),
        (
            {"web_search_options": {"user_location": {"approximate": "London"}}},
            "web_search_options.user_location.approximate",
            "invalid_type",
        ),
        ({"prediction": "def hello(): pass"}, "prediction", "invalid_type"),
        ({"prediction": {"type": "content", "content": 5}}, "prediction.content", "invalid_type"),
        ({"modalities": "audio"}, "modalities", "invalid_type"),
        ({"audio": {"voice": 3, "format": "wav"}}, "audio.voice", "invalid_type"),
        ({"store": "yes"}, "store", "invalid_type"),
        ({"metadata": {"run": 7}}, "metadata", "invalid_type"),
        ({"verbosity": 2}, "verbosity", "invalid_type"),
    ],
)
def test_wrong_types_are_refused_before_the_backend(
    openai_client, slot, sim, fields, param, code
) -> None:
    body = {"model": "primary", "messages": HELLO, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.post("/chat/completions", body=body, cast_to=httpx.Response)
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert param in error["message"]
    assert sim.stats()["last_request"] is None
