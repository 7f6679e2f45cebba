"""A Responses API request translated to a chat completion: input items to messages, the tool
vocabulary (function, custom and namespace tools as chat functions, hosted tools left out or
refused), ``text.format``; the response's skeleton, usage and errors in the Responses API's
words. No ORM, no HTTP."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from chat.relay.chunkcheck import clean_usage
from chat.relay.errors import RelayError

# Response.error.code is an enum in OpenAI's schema; the relay's own code goes in the message.
_RATE_LIMITED, _SERVER_ERROR = "rate_limit_exceeded", "server_error"


# The Responses API's own request fields (OpenAPI ``CreateResponse``): translated or dropped,
# never sent upstream as they are. Any other field (``seed``, ``top_k``, ``min_p``: what an SDK's
# ``extra_body`` adds for a local server) passes through to the chat request unchanged.
RESPONSES_FIELDS = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens",
        "temperature", "top_p", "text", "stream", "stream_options", "metadata", "store",
        "previous_response_id", "reasoning", "parallel_tool_calls", "user", "top_logprobs",
        "include", "truncation", "background", "prompt", "prompt_cache_key",
        "prompt_cache_retention", "safety_identifier", "service_tier", "conversation",
        "max_tool_calls", "context_management", "client_metadata",
    }
)  # fmt: skip


# What a translated slot does with a hosted tool (one the backend would run: web search, file
# search, MCP, …), chat completions having only function tools: ``omit`` leaves it out of the
# upstream request and serves the rest, ``refuse`` answers 400 naming it (``Slot.hosted_tools``).
OMIT, REFUSE = "omit", "refuse"


# Tool types the client runs itself, said to a chat backend as function tools; every other type
# (``web_search``, ``mcp``, ``tool_search``, types not known yet) is hosted.
_CLIENT_TOOLS = frozenset({"function", "custom", "namespace"})


# Input items that only a hosted tool makes (OpenAI's ``InputItem``): left out with their tool.
_HOSTED_ITEMS = frozenset(
    {
        "web_search_call", "file_search_call", "code_interpreter_call", "image_generation_call",
        "computer_call", "computer_call_output", "local_shell_call", "local_shell_call_output",
        "shell_call", "shell_call_output", "apply_patch_call", "apply_patch_call_output",
        "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "mcp_call",
        "tool_search_call", "tool_search_output", "compaction",
    }
)  # fmt: skip


# The chat API's rule for a function name (OpenAI API reference, "Create chat completion":
# a-z, A-Z, 0-9, underscores and dashes, at most 64 characters).
_CHAT_NAME_LIMIT = 64


_NOT_IN_CHAT_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class TranslationError(ValueError):
    """A Responses request that cannot be said in chat completions: ``param`` names the field
    (OpenAI's dotted path), the message says why. The API answers it with a 400."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Offered:
    """A client-run tool as the Responses API names it: ``kind`` ``function`` or ``custom``,
    its ``name``, and the ``namespace`` it was declared in (None at the top level)."""

    kind: str
    name: str
    namespace: str | None = None


class ToolNames:
    """The names a chat backend knows a request's client-run tools by, both ways.

    ``tools`` is a Responses ``tools`` list (OpenAPI ``Tool``). Top-level function and custom
    tools keep their names; a ``namespace`` tool's function and custom tools (OpenAPI
    ``NamespaceToolParam``) become ``<namespace>__<name>``, made to fit the chat API's name rule
    (characters outside ``[a-zA-Z0-9_-]`` as ``_``, at most 64 characters: a longer one is cut
    and ends in 8 hex digits of its hash) and unique (``_2``, ``_3``, … on a clash). Built the
    same from the same list, so the ``tools`` a stored response echoes give the same names."""

    def __init__(self, tools: list[Any] | tuple[Any, ...]) -> None:
        self._by_chat: dict[str, Offered] = {}
        self._chat_of: dict[tuple[str | None, str], str] = {}
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            if tool.get("type") in ("function", "custom") and isinstance(tool.get("name"), str):
                self._add(Offered(tool["type"], tool["name"]), tool["name"])
            elif tool.get("type") == "namespace" and isinstance(tool.get("name"), str):
                for inner in tool.get("tools") or ():
                    if isinstance(inner, dict) and isinstance(inner.get("name"), str):
                        offered = Offered(str(inner.get("type")), inner["name"], tool["name"])
                        self._add(offered, _joined(tool["name"], inner["name"]))

    def _add(self, offered: Offered, wanted: str) -> None:
        chat_name, n = wanted, 1
        while chat_name in self._by_chat:
            n += 1
            chat_name = _fitted(f"{wanted}_{n}")
        self._by_chat[chat_name] = offered
        self._chat_of.setdefault((offered.namespace, offered.name), chat_name)

    def chat_name(self, name: str, namespace: str | None = None) -> str:
        """The chat function name of a tool (one not in the list: composed the same way)."""
        known = self._chat_of.get((namespace, name))
        if known is not None:
            return known
        return _joined(namespace, name) if namespace else name

    def offered(self, chat_name: str) -> Offered:
        """The tool a chat function name stands for (an unknown name: a function of that
        name, as a model that invents a tool is answered by OpenAI too)."""
        return self._by_chat.get(chat_name) or Offered("function", chat_name)


def _joined(namespace: str, name: str) -> str:
    return _fitted(f"{_NOT_IN_CHAT_NAME.sub('_', namespace)}__{name}")


def _fitted(name: str) -> str:
    if len(name) <= _CHAT_NAME_LIMIT:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return f"{name[: _CHAT_NAME_LIMIT - 9]}_{digest}"


class ToolTranslation:
    """What one translated request does with tools: the ``names`` its client-run tools go by
    (``ToolNames`` of the request's ``tools``), and the hosted tools and items it leaves out
    (``omitted``: their types, in order, once each) under the slot's ``policy`` (``OMIT`` or
    ``REFUSE``: then ``leave_out`` raises ``TranslationError`` naming the field)."""

    def __init__(self, tools: list[Any] | tuple[Any, ...] = (), *, policy: str = OMIT) -> None:
        self.names = ToolNames(tools)
        self.policy = policy
        self.omitted: list[str] = []

    def leave_out(
        self, kind: str, *, param: str, what: str = "Tools", message: str | None = None
    ) -> None:
        """Note a hosted tool (or one of its items) as left out, or refuse it."""
        if self.policy == REFUSE:
            raise TranslationError(
                message
                or f"{what} of type '{kind}' are not supported by this model's backend; only "
                "function, custom and namespace tools are.",
                param=param,
            )
        if kind not in self.omitted:
            self.omitted.append(kind)


# The id prefixes OpenAI gives items (``msg_…``, ``fc_…``, ``ctc_…``); others get ``item_…``.
_ITEM_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
}


def input_items(value: str | list[dict[str, Any]], *, response_id: str) -> list[dict[str, Any]]:
    """The request's ``input`` as stored items, each with an ``id`` (``msg_…`` for messages,
    kept when the client gave one): a string is one user message; message items given as
    ``{"role", "content"}`` get ``"type": "message"``; a string content becomes one
    ``input_text`` (``output_text`` for the assistant) part, as OpenAI lists input items."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    items = []
    for position, item in enumerate(value):
        item = dict(item)
        kind = item.setdefault("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": content}]
            item.setdefault("status", "completed")
        prefix = _ITEM_PREFIXES.get(kind, "item")
        item.setdefault("id", f"{prefix}_{response_id.removeprefix('resp_')}i{position:03d}")
        items.append(item)
    return items


def items_to_messages(
    items: list[dict[str, Any]], *, at: str = "input", tools: ToolTranslation | None = None
) -> list[dict[str, Any]]:
    """Input or output items as chat messages: messages keep their role (parts become text, or
    ``image_url`` parts for images); consecutive ``function_call`` and ``custom_tool_call``
    items become one assistant message's ``tool_calls`` (under their chat names, ``tools.names``;
    a custom call's input as ``{"input": …}``); ``function_call_output`` and
    ``custom_tool_call_output`` become ``tool`` messages; reasoning items are dropped (chat
    completions takes no reasoning back, and an ``encrypted_content`` is OpenAI's to read);
    items only a hosted tool makes are left out with it (``ToolTranslation.leave_out``).
    Raises ``TranslationError`` for an item type chat completions cannot carry."""
    tools = tools or ToolTranslation()
    messages: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(
                {
                    "role": item.get("role", "user"),
                    "content": _chat_content(item.get("content"), at=f"{at}[{position}].content"),
                }
            )
        elif kind in ("function_call", "custom_tool_call"):
            _add_call(messages, chat_call(item, tools.names))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            if not isinstance(output, str):
                output = "" if output is None else _text_of(output)
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
            )
        elif kind == "reasoning":
            continue
        elif kind in _HOSTED_ITEMS:
            tools.leave_out(kind, param=f"{at}[{position}].type", what="Input items")
        else:
            raise TranslationError(
                f"Input items of type '{kind}' are not supported by this model's backend.",
                param=f"{at}[{position}].type",
            )
    return messages


def chat_call(item: dict[str, Any], names: ToolNames) -> dict[str, Any]:
    """A ``function_call`` or ``custom_tool_call`` item as a chat ``tool_calls`` entry."""
    name = item.get("name") or ""
    namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
    if item.get("type") == "custom_tool_call":
        arguments = json.dumps({"input": item.get("input") or ""}, ensure_ascii=False)
    else:
        arguments = item.get("arguments", "")
    return {
        "id": item.get("call_id") or item.get("id") or "",
        "type": "function",
        "function": {"name": names.chat_name(name, namespace), "arguments": arguments},
    }


def _add_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        # "" rather than null: llama-cpp-python refuses an assistant message whose content is
        # not a string; OpenAI and vLLM take either.
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _chat_content(content: Any, *, at: str) -> Any:
    """A message item's content as chat content: one string when every part is text (what
    every chat server takes), else a list of ``text`` / ``image_url`` / ``file`` parts."""
    if isinstance(content, str) or content is None:
        return content or ""
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _string(part.get("text"))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": _string(part.get("refusal"))})
        elif kind == "input_image":
            image = {"url": part.get("image_url") or ""}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            parts.append({"type": "file", "file": {k: v for k, v in part.items() if k != "type"}})
        else:
            raise TranslationError(
                f"Content parts of type '{kind}' are not supported by this model's backend.",
                param=f"{at}[{position}].type",
            )
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _text_of(output: Any) -> str:
    """A ``function_call_output``'s output given as content parts, as text."""
    if isinstance(output, list):
        return "".join(_string(part.get("text")) for part in output if isinstance(part, dict))
    return json.dumps(output)


def _string(value: Any) -> str:
    """A text field's value, or "" when it holds anything but text."""
    return value if isinstance(value, str) else ""


def chat_request(
    body: dict[str, Any],
    *,
    history: list[dict[str, Any]],
    items: list[dict[str, Any]],
    tools: ToolTranslation | None = None,
) -> dict[str, Any]:
    """The chat completions request for a Responses ``body`` (types already checked):
    ``instructions`` as the first system message, then ``history`` (the chat messages of the
    ``previous_response_id`` chain), then ``items`` (this request's input items);
    ``max_output_tokens`` → ``max_tokens``; client-run ``tools`` (function, custom, the tools of
    a namespace) as chat function tools and ``tool_choice`` in chat's nesting, hosted tools left
    out or refused by ``tools.policy`` (``tools``: a ``ToolTranslation`` of ``body["tools"]``,
    made here when not given; its ``omitted`` says what was left out); ``text.format`` →
    ``response_format``; ``reasoning.effort`` → ``reasoning_effort``; fields the Responses API
    does not define pass through (``RESPONSES_FIELDS``). Raises ``TranslationError``."""
    tools = tools or ToolTranslation(body.get("tools") or ())
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages += history
    messages += items_to_messages(items, tools=tools)
    request: dict[str, Any] = {k: v for k, v in body.items() if k not in RESPONSES_FIELDS}
    request.update(model=body["model"], messages=messages)
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "top_logprobs"):
        if body.get(name) is not None:
            request[name] = body[name]
    if body.get("max_output_tokens") is not None:
        request["max_tokens"] = body["max_output_tokens"]
    _add_tools(request, body, tools)
    _add_format(request, body)
    return request


def _add_tools(request: dict[str, Any], body: dict[str, Any], tools: ToolTranslation) -> None:
    """Client-run ``tools`` as chat function tools, hosted ones left out (or refused), and
    ``tool_choice`` in chat's nesting; ``allowed_tools`` (OpenAPI ``ToolChoiceAllowed``)
    becomes its ``mode`` over the tools it allows."""
    offered: list[dict[str, Any]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        kind = tool.get("type")
        if kind in ("function", "custom"):
            offered.append(_chat_tool(tool, tools.names.chat_name(tool["name"])))
        elif kind == "namespace":
            offered += [
                _chat_tool(inner, tools.names.chat_name(inner["name"], tool["name"]), tool)
                for inner in tool.get("tools") or ()
            ]
        else:
            tools.leave_out(str(kind), param=f"tools[{i}].type")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = {_choice_name(entry, tools) for entry in choice.get("tools") or ()}
        offered = [tool for tool in offered if tool["function"]["name"] in allowed]
        choice = choice.get("mode") or "auto"
    if offered:
        request["tools"] = offered
    if isinstance(choice, str):
        request["tool_choice"] = choice
    elif isinstance(choice, dict):
        name = _choice_name(choice, tools)
        if name is not None:
            request["tool_choice"] = {"type": "function", "function": {"name": name}}


def _choice_name(choice: dict[str, Any], tools: ToolTranslation) -> str | None:
    """The chat name a ``tool_choice`` (or an ``allowed_tools`` entry) of a function or custom
    tool picks; a hosted tool's is left out with it (None) or refused."""
    if choice.get("type") in ("function", "custom") and isinstance(choice.get("name"), str):
        namespace = choice.get("namespace")
        return tools.names.chat_name(
            choice["name"], namespace if isinstance(namespace, str) else None
        )
    tools.leave_out(
        str(choice.get("type")),
        param="tool_choice.type",
        message=f"tool_choice of type '{choice.get('type')}' is not supported by this model's "
        "backend.",
    )
    return None


def _add_format(request: dict[str, Any], body: dict[str, Any]) -> None:
    """``text.format`` as ``response_format``, ``reasoning.effort`` as ``reasoning_effort``."""
    text_format = (body.get("text") or {}).get("format")
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        schema = {k: v for k, v in text_format.items() if k != "type"}
        request["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
        request["response_format"] = {"type": "json_object"}
    effort = (body.get("reasoning") or {}).get("effort")
    if effort:
        request["reasoning_effort"] = effort


def _chat_tool(
    tool: dict[str, Any], chat_name: str, namespace: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A function or custom tool as a chat function tool named ``chat_name``. A custom tool
    (freeform text, OpenAPI ``CustomToolParam``) takes one string argument, ``input``, its
    grammar (``format``) said in words, since chat completions cannot constrain a function's
    argument to one; a ``namespace`` tool's description goes with each of its tools."""
    description = tool.get("description")
    if tool.get("type") == "custom":
        parameters: Any = {
            "type": "object",
            "properties": {"input": {"type": "string", "description": _custom_input(tool)}},
            "required": ["input"],
            "additionalProperties": False,
        }
    else:
        parameters = tool.get("parameters") or {}
    if namespace is not None and namespace.get("description"):
        description = f"{namespace['description']}\n\n{description or ''}".strip()
    function = {"name": chat_name, "parameters": parameters}
    if description is not None:
        function["description"] = description
    if tool.get("type") == "function" and tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _custom_input(tool: dict[str, Any]) -> str:
    """What a custom tool's one argument holds, its grammar included."""
    text_format = tool.get("format")
    if isinstance(text_format, dict) and text_format.get("type") == "grammar":
        return (
            f"Raw input that matches this {text_format.get('syntax', '')} grammar, not JSON:\n"
            f"{text_format.get('definition', '')}"
        )
    return "The tool's raw input as free text, not JSON."


def skeleton(
    body: dict[str, Any], *, response_id: str, model: str, created_at: int
) -> dict[str, Any]:
    """The response object as ``response.created`` shows it (status ``in_progress``, no
    output): the request's parameters echoed as OpenAI's ``Response`` lists them."""
    text: dict[str, Any] = body.get("text") or {}
    reasoning: dict[str, Any] = body.get("reasoning") or {}
    response = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_echoed_tool(tool) for tool in body.get("tools") or ()],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
    }
    # ``usage`` (set once the response ends) and ``user`` are an object and a string in
    # OpenAI's schema: absent until known, never null.
    if body.get("user") is not None:
        response["user"] = body["user"]
    return response


def _echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool as ``Response.tools`` lists it: a function tool with ``strict``, ``parameters``
    and ``description`` always there (null when not given), as OpenAI's ``FunctionTool`` has
    them; any other as the client gave it."""
    if tool.get("type") != "function":
        return tool
    return {
        **tool,
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def usage_of(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat completions usage as the Responses API's (None when the upstream sent none). Only
    well-formed counts are read (``chunkcheck.clean_usage``): an upstream's "many" or -5 counts
    as absent."""
    chat_usage = clean_usage(chat_usage)
    if not chat_usage:
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion),
    }


def error_of(error: RelayError) -> dict[str, Any]:
    """A relay failure as ``Response.error`` (``code`` from OpenAI's enum; the relay's own code
    and message in ``message``)."""
    code = _RATE_LIMITED if error.status == 429 else _SERVER_ERROR
    detail = f"{error.code}: " if error.code else ""
    return {"code": code, "message": f"{detail}{error.message}"}


def whole_as_chunk(completion: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming chat completion as the one chunk that says the same (its first choice),
    so a whole answer goes through the same ``ResponseEvents`` as a stream."""
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") or {}
    delta: dict[str, Any] = {}
    for name in ("content", "reasoning_content", "reasoning", "refusal"):
        if isinstance(message.get(name), str):
            delta[name] = message[name]
    calls = message.get("tool_calls") or []
    if calls:
        delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls)]
    return {
        "choices": [{"index": 0, "delta": delta, "finish_reason": choices[0].get("finish_reason")}],
        "usage": completion.get("usage"),
    }
