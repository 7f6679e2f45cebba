"""``/v1`` request bodies checked before anything else is done with them, by OpenAI's rules (its
OpenAPI document, ``CreateChatCompletionRequest``, ``CreateCompletionRequest``,
``CreateResponse``): a ``Refusal`` 400 naming the param, never a 500. Pure but for
``refuse_media_urls`` (which resolves host names)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chat.api.media import TEXT_PARTS, check_media
from chat.http import Refusal, invalid

# OpenAI's bounds (API reference, Chat Completions and Completions): ``n`` from 1 to 128.
MAX_N = 128


# OpenAI takes up to 4 stop strings; local servers take more, so a few more are let through
# (the relay enforces them itself). Each is matched against every chunk of every choice, so an
# unbounded list is CPU the event loop spends on one request while every other one waits.
MAX_STOPS = 16


def check_field(
    obj: dict[str, Any],
    name: str,
    ok: Callable[[Any], bool],
    expected: str,
    *,
    at: str = "",
    nullable: bool = True,
) -> None:
    """``obj[name]``, when present (and not null, unless ``nullable`` is False: OpenAI's schema
    has fields that may be absent but never null), passes ``ok``; else a 400 naming it (``at``:
    the path of ``obj`` in the body, for nested fields)."""
    value = obj.get(name)
    if (value is not None or (not nullable and name in obj)) and not ok(value):
        param = f"{at}.{name}" if at else name
        raise invalid(
            f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)}.",
            param=param,
            code="invalid_type",
        )


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as OpenAI's messages say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _require_object(value: Any, at: str) -> None:
    """A 400 ``invalid_type`` naming ``at`` unless ``value`` is a JSON object."""
    if not isinstance(value, dict):
        raise invalid(
            f"Invalid type for '{at}': expected an object, but got {_json_type(value)}.",
            param=at,
            code="invalid_type",
        )


def out_of_range(param: str, bound: str) -> Refusal:
    return invalid(f"Invalid '{param}': {bound}.", param=param, code="invalid_value")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_prompt(value: Any) -> bool:
    """A string, an array of strings, of token ids, or of arrays of token ids (OpenAI's
    ``prompt``)."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list):
        return False
    return (
        all(isinstance(item, str) for item in value)
        or all(is_int(item) for item in value)
        or all(isinstance(item, list) and all(is_int(t) for t in item) for item in value)
    )


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array of message objects.", param="messages")
    media: list[tuple[str, dict[str, Any]]] = []  # (param, part) of parts other than text
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid(
                f"Invalid value for '{at}': a message is an object with a 'role'.", param=at
            )
        content = message.get("content")
        check_field(
            message, "content", lambda v: isinstance(v, str | list), "a string or an array", at=at
        )
        for j, part in enumerate(content if isinstance(content, list) else ()):
            part_at = f"{at}.content[{j}]"
            _require_object(part, part_at)
            for name in ("type", "text"):
                check_field(
                    part, name, lambda v: isinstance(v, str), "a string", at=part_at, nullable=False
                )
            if part.get("type") != "text":
                media.append((part_at, part))
        for name in ("name", "tool_call_id"):
            check_field(message, name, lambda v: isinstance(v, str), "a string", at=at)
        check_field(message, "tool_calls", lambda v: isinstance(v, list), "an array", at=at)
    check_media(media)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _required(
    obj: dict[str, Any], name: str, ok: Callable[[Any], bool], expected: str, at: str
) -> Any:
    """``obj[name]``, which OpenAI's schema requires (``at``: the path of ``obj``): 400
    ``missing_required_parameter`` when absent or null, ``invalid_type`` when not ``ok``."""
    if obj.get(name) is None:
        raise invalid(
            f"Missing required parameter: '{at}.{name}'.",
            param=f"{at}.{name}",
            code="missing_required_parameter",
        )
    check_field(obj, name, ok, expected, at=at)
    return obj[name]


def _validate_tools(body: dict[str, Any]) -> None:
    """``tools`` and ``tool_choice`` after OpenAI's schema (``ChatCompletionTool``,
    ``CustomToolChatCompletions``, ``ChatCompletionToolChoiceOption``): a ``function`` object
    for a function tool (a tool without ``type`` is one, as local servers read it), a
    ``custom`` object for a custom tool; other types pass unchecked, for the backend to judge."""
    check_field(body, "tools", lambda v: isinstance(v, list), "an array")
    for i, tool in enumerate(body.get("tools") or ()):
        at = f"tools[{i}]"
        _require_object(tool, at)
        check_field(tool, "type", _is_str, "a string", at=at, nullable=False)
        kind = tool.get("type", "function")
        if kind == "function":
            function = _required(tool, "function", _is_object, "an object", at)
            _required(function, "name", _is_str, "a string", f"{at}.function")
            check_field(
                function, "parameters", _is_object, "an object", at=f"{at}.function", nullable=False
            )
        elif kind == "custom":
            custom = _required(tool, "custom", _is_object, "an object", at)
            _required(custom, "name", _is_str, "a string", f"{at}.custom")
            for name, ok, expected in (
                ("description", _is_str, "a string"),
                ("format", _is_object, "an object"),
            ):
                check_field(custom, name, ok, expected, at=f"{at}.custom", nullable=False)
    check_field(body, "tool_choice", lambda v: isinstance(v, str | dict), "a string or an object")
    if isinstance(body.get("tool_choice"), dict):
        _validate_tool_choice(body["tool_choice"])


def _validate_tool_choice(choice: dict[str, Any]) -> None:
    """An object ``tool_choice``: ``ChatCompletionNamedToolChoice`` (also without ``type``),
    ``ChatCompletionNamedToolChoiceCustom`` or ``ChatCompletionAllowedToolsChoice``."""
    at = "tool_choice"
    check_field(choice, "type", _is_str, "a string", at=at, nullable=False)
    kind = choice.get("type", "function")
    if kind in ("function", "custom"):
        named = _required(choice, kind, _is_object, "an object", at)
        _required(named, "name", _is_str, "a string", f"{at}.{kind}")
    elif kind == "allowed_tools":
        allowed = _required(choice, "allowed_tools", _is_object, "an object", at)
        at = f"{at}.allowed_tools"
        _required(allowed, "mode", _is_str, "a string", at)
        tools = _required(allowed, "tools", lambda v: isinstance(v, list), "an array", at)
        for i, tool in enumerate(tools):
            _require_object(tool, f"{at}.tools[{i}]")


def _is_strs(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_voice(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("id"), str))


# Chat completions' newer output options (``CreateChatCompletionRequest`` and
# ``CreateModelResponseProperties``): (path of the object holding the field, field, check,
# expected). Only their types are checked, never their enums (OpenAI adds values, e.g. a voice or
# an audio format, and a backend's own values are its to judge); they pass to the backend as
# sent, which serves, ignores or refuses them.
_OUTPUT_OPTIONS: tuple[tuple[str, str, Callable[[Any], bool], str], ...] = (
    ("", "modalities", _is_strs, "an array of strings"),
    ("", "audio", _is_object, "an object"),
    ("audio", "voice", _is_voice, "a string or an object with an 'id'"),
    ("audio", "format", _is_str, "a string"),
    ("", "prediction", _is_object, "an object"),
    ("prediction", "type", _is_str, "a string"),
    ("prediction", "content", lambda v: isinstance(v, str | list), "a string or an array"),
    ("", "web_search_options", _is_object, "an object"),
    ("web_search_options", "user_location", _is_object, "an object"),
    ("web_search_options", "search_context_size", _is_str, "a string"),
    ("web_search_options.user_location", "type", _is_str, "a string"),
    ("web_search_options.user_location", "approximate", _is_object, "an object"),
    ("", "store", lambda v: isinstance(v, bool), "a boolean"),
    ("", "metadata", _is_str_map, "an object mapping keys to strings"),
    ("", "verbosity", _is_str, "a string"),
)


def _validate_output_options(body: dict[str, Any]) -> None:
    for at, name, ok, expected in _OUTPUT_OPTIONS:
        holder: Any = body
        for step in at.split(".") if at else ():
            holder = holder.get(step) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            check_field(holder, name, ok, expected, at=at)


def validate(body: dict[str, Any], *, chat: bool) -> None:
    """Type and range checks for the fields Slipstream itself reads or that upstreams commonly
    mishandle, after OpenAI's schema (``CreateChatCompletionRequest``,
    ``CreateCompletionRequest``). Raises ``Refusal`` 400 naming the ``param``. Everything
    else passes through unchecked. (``jsonbody`` has already refused numbers JSON cannot carry,
    unstorable strings and deep nesting, in every field.)"""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("you must provide a model parameter", param="model")
    if chat:
        _validate_messages(body.get("messages"))
        _validate_tools(body)
        _validate_output_options(body)
    else:
        if body.get("prompt") is None:
            raise invalid("you must provide a prompt parameter", param="prompt")
        check_field(
            body,
            "prompt",
            is_prompt,
            "a string, an array of strings, an array of tokens or an array of token arrays",
        )
    check_field(body, "stream", lambda v: isinstance(v, bool), "a boolean")
    check_field(body, "stream_options", lambda v: isinstance(v, dict), "an object")
    check_field(
        body.get("stream_options") or {},
        "include_usage",
        lambda v: isinstance(v, bool),
        "a boolean",
        at="stream_options",
    )
    for name in ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs"):
        check_field(body, name, is_int, "an integer")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        check_field(body, name, _is_number, "a number")
    check_field(body, "user", lambda v: isinstance(v, str), "a string")
    check_field(
        body,
        "logit_bias",
        lambda v: isinstance(v, dict) and all(_is_number(bias) for bias in v.values()),
        "an object mapping token ids to numbers",
    )
    check_field(
        body,
        "stop",
        lambda v: (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
        ),
        "a string or an array of strings",
    )
    if isinstance(body.get("stop"), list) and len(body["stop"]) > MAX_STOPS:
        raise out_of_range("stop", f"at most {MAX_STOPS} stop strings")
    if is_int(body.get("n")) and not 1 <= body["n"] <= MAX_N:
        raise out_of_range("n", f"must be from 1 to {MAX_N}")
    for name in ("max_tokens", "max_completion_tokens"):
        if is_int(body.get(name)) and body[name] < 0:
            raise out_of_range(name, "must be at least 0")


_ROLES = ("user", "assistant", "system", "developer")


# OpenAI's bounds (API reference, "Create a model response"): metadata holds up to 16 pairs,
# keys up to 64 characters, values up to 512.
MAX_METADATA = 16


def _validate_input(value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise invalid(
            "'input' must be a string or a non-empty array of input items.", param="input"
        )
    media: list[tuple[str, dict[str, Any]]] = []  # (param, part) of parts other than text
    for i, item in enumerate(value):
        media += _validate_item(item, f"input[{i}]")
    check_media(media)


def _validate_item(item: Any, at: str) -> list[tuple[str, dict[str, Any]]]:
    """Checks the input items Slipstream reads (OpenAPI ``InputItem``: messages, function and
    custom tool calls and their outputs); returns a message's parts other than text."""
    _require_object(item, at)
    check_field(item, "type", _is_str, "a string", at=at, nullable=False)
    kind = item.get("type", "message")
    if kind == "message":
        return _validate_message_item(item, at)
    if kind in ("function_call", "custom_tool_call"):
        value = "arguments" if kind == "function_call" else "input"
        for name in ("call_id", "name", value):
            _require(item, name, _is_str, "a string", at)
        check_field(item, "namespace", _is_str, "a string", at=at)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        _require(item, "call_id", _is_str, "a string", at)
        _require(item, "output", lambda v: isinstance(v, str | list), "a string or an array", at)
        for j, part in enumerate(item["output"] if isinstance(item["output"], list) else ()):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(
                    f"Invalid value for '{at}.output[{j}]': a content part is an object with a "
                    "'type'.",
                    param=f"{at}.output[{j}]",
                )
            check_field(part, "text", _is_str, "a string", at=f"{at}.output[{j}]", nullable=False)
    return []


def _require(
    item: dict[str, Any], name: str, ok: Callable[[Any], bool], expected: str, at: str
) -> None:
    if not ok(item.get(name)):
        raise invalid(
            f"Missing or invalid '{at}.{name}': expected {expected}.", param=f"{at}.{name}"
        )


def _validate_message_item(item: dict[str, Any], at: str) -> list[tuple[str, dict[str, Any]]]:
    """Checks a message input item; returns its parts other than text, with their params."""
    if item.get("role") not in _ROLES:
        raise invalid(
            f"Invalid value for '{at}.role': expected one of {', '.join(_ROLES)}.",
            param=f"{at}.role",
            code="invalid_value",
        )
    _require(item, "content", lambda v: isinstance(v, str | list), "a string or an array", at)
    for j, part in enumerate(item["content"] if isinstance(item["content"], list) else ()):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(
                f"Invalid value for '{at}.content[{j}]': a content part is an object with a "
                "'type'.",
                param=f"{at}.content[{j}]",
            )
        check_field(part, "text", _is_str, "a string", at=f"{at}.content[{j}]", nullable=False)
    parts = item["content"] if isinstance(item["content"], list) else []
    return [
        (f"{at}.content[{j}]", part)
        for j, part in enumerate(parts)
        if part["type"] not in TEXT_PARTS
    ]


def _validate_response_tools(body: dict[str, Any]) -> None:
    """The tools Slipstream reads (function, custom, namespace: OpenAPI ``FunctionToolParam``,
    ``CustomToolParam``, ``NamespaceToolParam``); a hosted tool needs only its ``type``."""
    check_field(body, "tools", lambda v: isinstance(v, list), "an array")
    for i, tool in enumerate(body.get("tools") or ()):
        at = f"tools[{i}]"
        _validate_response_tool(tool, at)
        if tool["type"] == "namespace":
            check_field(tool, "description", _is_str, "a string", at=at)
            inner = tool.get("tools")
            if not isinstance(inner, list) or not inner:
                raise invalid(
                    f"Missing or invalid '{at}.tools': expected a non-empty array of function "
                    "and custom tools.",
                    param=f"{at}.tools",
                )
            for j, member in enumerate(inner):
                _validate_response_tool(member, f"{at}.tools[{j}]", within=("function", "custom"))
    check_field(body, "tool_choice", lambda v: isinstance(v, str | dict), "a string or an object")
    if isinstance(body.get("tool_choice"), dict):
        _validate_response_tool_choice(body["tool_choice"])


def _validate_response_tool_choice(choice: dict[str, Any]) -> None:
    """An object ``tool_choice`` (OpenAPI ``ToolChoiceParam``): a ``type``; a function or
    custom tool's ``name``; ``allowed_tools``' ``mode`` and its ``tools``, each with a
    ``type``."""
    at = "tool_choice"
    _require(choice, "type", _is_str, "a string", at)
    if choice["type"] in ("function", "custom"):
        _require(choice, "name", _is_str, "a string", at)
    elif choice["type"] == "allowed_tools":
        _require(choice, "mode", _is_str, "a string", at)
        _require(choice, "tools", lambda v: isinstance(v, list), "an array", at)
        for i, tool in enumerate(choice["tools"]):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise invalid(
                    f"Invalid value for '{at}.tools[{i}]': a tool is an object with a 'type'.",
                    param=f"{at}.tools[{i}]",
                )


def _validate_response_tool(tool: Any, at: str, *, within: tuple[str, ...] = ()) -> None:
    if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
        raise invalid(f"Invalid value for '{at}': a tool is an object with a 'type'.", param=at)
    if within and tool["type"] not in within:
        raise invalid(
            f"Invalid value for '{at}.type': a namespace holds only {' and '.join(within)} tools.",
            param=f"{at}.type",
            code="invalid_value",
        )
    if tool["type"] not in ("function", "custom", "namespace"):
        return
    check_field(tool, "name", _is_str, "a string", at=at, nullable=False)
    if not tool.get("name"):
        raise invalid(f"Missing required parameter: '{at}.name'.", param=f"{at}.name")
    check_field(tool, "description", _is_str, "a string", at=at)
    if tool["type"] == "function":
        check_field(tool, "parameters", lambda v: isinstance(v, dict), "an object", at=at)
        check_field(tool, "strict", lambda v: isinstance(v, bool), "a boolean", at=at)
    elif tool["type"] == "custom":
        check_field(tool, "format", lambda v: isinstance(v, dict), "an object", at=at)


def validate_response_request(body: dict[str, Any]) -> None:
    """Type and range checks of a ``POST /v1/responses`` body after OpenAI's schema
    (``CreateResponse``), for the fields Slipstream reads or translates. Raises ``Refusal`` 400
    naming the ``param``."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("you must provide a model parameter", param="model")
    if "input" not in body:
        raise invalid("Missing required parameter: 'input'.", param="input")
    _validate_input(body["input"])
    _validate_response_tools(body)
    for name in ("instructions", "previous_response_id", "user"):
        check_field(body, name, _is_str, "a string")
    for name in ("stream", "store", "parallel_tool_calls", "background"):
        check_field(body, name, lambda v: isinstance(v, bool), "a boolean")
    for name in ("max_output_tokens", "top_logprobs"):
        check_field(body, name, is_int, "an integer")
    for name in ("temperature", "top_p"):
        check_field(body, name, _is_number, "a number")
    for name in ("text", "reasoning", "metadata"):
        check_field(body, name, lambda v: isinstance(v, dict), "an object")
    check_field(
        body.get("text") or {}, "format", lambda v: isinstance(v, dict), "an object", at="text"
    )
    _check_response_values(body)


def _check_response_values(body: dict[str, Any]) -> None:
    """The ranges and the values Slipstream does not serve, of a well-typed body."""
    if body.get("background"):
        raise invalid(
            "Background responses are not supported: send stream=true and keep the connection, "
            "or resume a stored stream with GET /v1/responses/{id}?stream=true.",
            param="background",
            code="unsupported_parameter",
        )
    for name, instead in _NOT_SERVED.items():
        if body.get(name) is not None:
            raise invalid(
                f"'{name}' is not supported by this server: {instead}",
                param=name,
                code="unsupported_parameter",
            )
    if is_int(body.get("max_output_tokens")) and body["max_output_tokens"] < 1:
        raise out_of_range("max_output_tokens", "must be at least 1")
    if _is_number(body.get("temperature")) and not 0 <= body["temperature"] <= 2:
        raise out_of_range("temperature", "must be from 0 to 2")
    if _is_number(body.get("top_p")) and not 0 <= body["top_p"] <= 1:
        raise out_of_range("top_p", "must be from 0 to 1")
    metadata = body.get("metadata") or {}
    if len(metadata) > MAX_METADATA or not all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
        for k, v in metadata.items()
    ):
        raise invalid(
            f"Invalid 'metadata': at most {MAX_METADATA} pairs of strings, keys up to 64 "
            "characters and values up to 512.",
            param="metadata",
            code="invalid_value",
        )


# Request fields that name objects of OpenAI's own APIs that Slipstream does not have (the
# Conversations API, stored prompt templates): answering without them would answer another
# question, so they are refused, saying what to use instead.
_NOT_SERVED = {
    "conversation": "it keeps no conversation objects; chain responses with "
    "previous_response_id, or send the earlier items in 'input'.",
    "prompt": "it keeps no prompt templates; send the prompt's text as 'instructions' and 'input'.",
}
