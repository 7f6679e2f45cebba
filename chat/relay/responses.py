"""OpenAI's Responses API served by a chat-completions upstream: requests translated to chat
completions, the upstream's chunks turned into Responses events. No ORM, no HTTP.

Rules from the OpenAI API reference ("Responses", "Streaming events") and its OpenAPI document
(``Response``, ``ResponseStreamEvent``, ``InputItem``):

- A stream is typed SSE events (``event: <type>`` and ``data: {"type": <type>, …,
  "sequence_number": n}``), n from 0, and no ``[DONE]``: ``response.created``,
  ``response.in_progress``, then per output item ``response.output_item.added``, its parts
  (``response.content_part.added`` … ``.done``) and deltas (``response.output_text.delta``,
  ``response.reasoning_text.delta``, ``response.refusal.delta``,
  ``response.function_call_arguments.delta``) with their ``.done`` events, then
  ``response.output_item.done``; last ``response.completed``, ``response.incomplete``
  (``incomplete_details.reason``: ``max_output_tokens``, ``content_filter``) or
  ``response.failed`` (``error``), each carrying the whole response object.
- Output items: ``reasoning`` (``content`` of ``reasoning_text`` parts), ``message`` (role
  ``assistant``, ``output_text`` or ``refusal`` parts) and ``function_call`` (``call_id``,
  ``name``, ``arguments`` as a JSON string).
- Usage is ``input_tokens`` / ``output_tokens`` / ``total_tokens`` with
  ``input_tokens_details.cached_tokens`` and ``output_tokens_details.reasoning_tokens``.

Everything is deterministic given the response skeleton and the chunks: replaying the stored
chunks of a response re-renders the exact same events, which is how a stream is resumed by
``starting_after`` (``ResponseEvents``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from chat.relay.chunkcheck import clean_usage
from chat.relay.errors import RelayError
from chat.relay.sse import encode_event
from chat.relay.types import TERMINAL_EVENTS

# Which incomplete_details.reason a chat finish_reason becomes (others complete the response).
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
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


# ------------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------------
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
            _add_call(messages, _chat_call(item, tools.names))
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


def _chat_call(item: dict[str, Any], names: ToolNames) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------------------
# Events
# ------------------------------------------------------------------------------------------------
class ResponseEvents:
    """Turns chat chunks (choice 0) into Responses events, numbered from 0.

    ``start()`` gives ``response.created`` and ``response.in_progress``; ``feed(chunk)`` the
    events one chunk makes (reasoning, text, refusal and tool-call deltas, opening and closing
    output items as the kind of output changes); ``finish(...)`` closes the open item and gives
    the terminal event. Each method returns a list of event objects (``{"type", …,
    "sequence_number"}``); ``encode`` makes one SSE event of one. ``response`` is the response
    object as it stands (output items as finished so far). A ``<think>`` block in content
    (a model served without a reasoning parser) stays in the text, as the upstream sent it.
    """

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = {**response, "output": []}
        self.sequence = 0
        self._base = response["id"].removeprefix("resp_")
        self._open: dict[str, Any] | None = None  # the message or reasoning item streaming
        self._part_kind = ""  # its open content part: output_text, refusal, reasoning_text
        self._text: list[str] = []  # the open part's text so far
        # Function calls stream side by side (a chat delta may interleave their fragments), so
        # all of them stay open until text comes or the answer ends.
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index → its open item
        self._calls_seen: set[int] = set()
        self._index_of: dict[str, int] = {}  # item id → output index
        self._generated_call_ids: set[str] = set()
        self._last_added: dict[str, Any] = {}
        # What the chat names of the request's tools stand for (``Response.tools`` echoes
        # them, so a replay of stored chunks names its calls the same way).
        self._names = ToolNames(response.get("tools") or ())
        self._inputs: dict[str, CustomInput] = {}  # custom call item id → its input so far
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None

    # -- the public steps ------------------------------------------------------------------------
    def start(self) -> list[dict[str, Any]]:
        snapshot = self._snapshot()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self.chat_usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the Responses API has one output; n is not part of it
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events += self._text_delta("reasoning", "reasoning_text", reasoning)
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._text_delta("message", "output_text", delta["content"])
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                events += self._text_delta("message", "refusal", delta["refusal"])
            for fragment in delta.get("tool_calls") or ():
                if isinstance(fragment, dict):
                    events += self._call_delta(fragment)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(
        self,
        *,
        cancelled: bool = False,
        error: dict[str, Any] | None = None,
        completed_at: int | None = None,
    ) -> list[dict[str, Any]]:
        """Close what is open and end: ``response.failed`` with ``error`` (a ``Response.error``
        object, ``error_of``); status ``cancelled`` (stopped before its end) as
        ``response.failed`` too, since OpenAI's stream has no cancelled event;
        ``response.incomplete`` for a length or content-filter finish; else
        ``response.completed`` (at ``completed_at``, Unix s)."""
        reason = _INCOMPLETE_REASONS.get(self.finish_reason or "")
        item_status = "incomplete" if (reason or cancelled or error) else "completed"
        events = self._close(item_status)
        response = self.response
        usage = usage_of(self.chat_usage)
        if usage is not None:
            response["usage"] = usage
        if error is not None:
            response["status"], response["error"] = "failed", error
            kind = "response.failed"
        elif cancelled:
            response["status"], kind = "cancelled", "response.failed"
        elif reason:
            response["status"], kind = "incomplete", "response.incomplete"
            response["incomplete_details"] = {"reason": reason}
        else:
            response["status"], kind = "completed", "response.completed"
            response["completed_at"] = completed_at
        events.append(self._event(kind, response=self._snapshot()))
        return events

    @staticmethod
    def encode(event: dict[str, Any]) -> bytes:
        """One event as SSE bytes: ``event: <type>`` and its JSON on one ``data:`` line."""
        return encode_event(
            json.dumps(event, separators=(",", ":"), ensure_ascii=False), event=event["type"]
        )

    # -- items -----------------------------------------------------------------------------------
    def _text_delta(self, item_kind: str, part_kind: str, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self._close_calls("completed")
        if self._open is None or self._open["type"] != item_kind:
            events += self._close_text("completed")
            events += self._add_item(item_kind)
        if self._part_kind != part_kind:
            events += self._close_part()
            events += self._add_part(part_kind)
        self._text.append(text)
        item = self._open
        assert item is not None
        where = {
            "item_id": item["id"],
            "output_index": self._index_of[item["id"]],
            "content_index": len(item["content"]),
        }
        if part_kind == "output_text":
            events.append(
                self._event("response.output_text.delta", **where, delta=text, logprobs=[])
            )
        elif part_kind == "refusal":
            events.append(self._event("response.refusal.delta", **where, delta=text))
        else:
            events.append(self._event("response.reasoning_text.delta", **where, delta=text))
        return events

    def _call_delta(self, fragment: dict[str, Any]) -> list[dict[str, Any]]:
        """One tool-call fragment (keyed by its ``index``; without one, a new call, as
        ``MessageAccumulator`` counts them). A fragment of a call closed already (text came
        between) has nothing to add to and is dropped. A call of a custom tool is a
        ``custom_tool_call`` item whose ``input`` streams as the decoded ``input`` argument;
        a call of a namespace's tool carries its ``namespace``."""
        events: list[dict[str, Any]] = []
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = len(self._calls_seen)
        function = fragment.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            if index in self._calls_seen:
                return events
            self._calls_seen.add(index)
            events += self._close_text("completed")
            call_id = fragment.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"call_{self._base}{self._next_index:02d}"
                self._generated_call_ids.add(call_id)
            offered = self._names.offered(str(function.get("name") or ""))
            kind = "custom_tool_call" if offered.kind == "custom" else "function_call"
            events += self._add_item(kind, call_id=call_id, offered=offered)
            item = self._calls[index] = self._last_added
        # Some servers send the id or the name after the first fragment.
        if fragment.get("id") and item["call_id"] in self._generated_call_ids:
            item["call_id"] = fragment["id"]
        if function.get("name") and not item["name"]:
            _name(item, self._names.offered(function["name"]))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events += self._arguments(item, arguments)
        return events

    def _arguments(self, item: dict[str, Any], arguments: str) -> list[dict[str, Any]]:
        where = {"item_id": item["id"], "output_index": self._index_of[item["id"]]}
        if item["type"] == "function_call":
            item["arguments"] += arguments
            return [self._event("response.function_call_arguments.delta", **where, delta=arguments)]
        text = self._inputs[item["id"]].feed(arguments)
        if not text:
            return []
        item["input"] += text
        return [self._event("response.custom_tool_call_input.delta", **where, delta=text)]

    @property
    def _next_index(self) -> int:
        return len(self._index_of)

    def _add_item(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}.get(kind, "ctc")
        index = self._next_index
        item: dict[str, Any] = {
            "id": f"{prefix}_{self._base}{index:02d}",
            "type": kind,
            "status": "in_progress",
        }
        self._index_of[item["id"]] = index
        if kind == "message":
            item.update(role="assistant", content=[])
        elif kind == "reasoning":
            item.update(summary=[], content=[])
        else:
            item["call_id"] = fields["call_id"]
            _name(item, fields["offered"])
            if kind == "function_call":
                item["arguments"] = ""
            else:
                item["input"] = ""
                self._inputs[item["id"]] = CustomInput()
        if kind in ("message", "reasoning"):
            self._open = item
        self._last_added = item
        return [self._event("response.output_item.added", output_index=index, item=_copy(item))]

    def _add_part(self, kind: str) -> list[dict[str, Any]]:
        self._part_kind, self._text = kind, []
        item = self._open
        assert item is not None
        return [
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self._index_of[item["id"]],
                content_index=len(item["content"]),
                part=_part(kind, ""),
            )
        ]

    def _close_part(self) -> list[dict[str, Any]]:
        item = self._open
        if item is None or not self._part_kind:
            return []
        kind, text = self._part_kind, "".join(self._text)
        self._part_kind, self._text = "", []
        where = {
            "item_id": item["id"],
            "output_index": self._index_of[item["id"]],
            "content_index": len(item["content"]),
        }
        events = []
        if kind == "output_text":
            events.append(self._event("response.output_text.done", **where, text=text, logprobs=[]))
        elif kind == "refusal":
            events.append(self._event("response.refusal.done", **where, refusal=text))
        else:
            events.append(self._event("response.reasoning_text.done", **where, text=text))
        events.append(self._event("response.content_part.done", **where, part=_part(kind, text)))
        item["content"].append(_part(kind, text))
        return events

    def _close(self, status: str) -> list[dict[str, Any]]:
        """Close whatever is open (text, or calls: never both)."""
        return self._close_text(status) + self._close_calls(status)

    def _close_text(self, status: str) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        events = self._close_part()
        events += self._done(item, status)
        self._open = None
        return events

    def _close_calls(self, status: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for item in sorted(self._calls.values(), key=lambda i: self._index_of[i["id"]]):
            where = {"item_id": item["id"], "output_index": self._index_of[item["id"]]}
            if item["type"] == "function_call":
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        **where,
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                )
            else:
                whole = self._inputs.pop(item["id"]).whole()
                if whole.startswith(item["input"]) and len(whole) > len(item["input"]):
                    rest = whole[len(item["input"]) :]
                    events.append(
                        self._event("response.custom_tool_call_input.delta", **where, delta=rest)
                    )
                item["input"] = whole
                events.append(
                    self._event("response.custom_tool_call_input.done", **where, input=whole)
                )
            events += self._done(item, status)
        self._calls.clear()
        return events

    def _done(self, item: dict[str, Any], status: str) -> list[dict[str, Any]]:
        item["status"] = status
        self.response["output"].append(item)
        return [
            self._event(
                "response.output_item.done",
                output_index=self._index_of[item["id"]],
                item=_copy(item),
            )
        ]

    # -- helpers ---------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return _copy(self.response)


def _name(item: dict[str, Any], offered: Offered) -> None:
    """A call item's ``name`` (and ``namespace``, when its tool is in one), as the client
    declared them."""
    item["name"] = offered.name
    if offered.namespace is not None:
        item["namespace"] = offered.namespace


class CustomInput:
    """A custom tool's input as its chat arguments (``{"input": "…"}``, see ``_chat_tool``)
    stream in. ``feed(fragment)`` gives the input's text that the fragment completes (escapes
    decoded; an escape or a surrogate pair cut in two waits for its end); ``whole()`` the
    input once the arguments are complete: their ``input`` (or only) string, or the arguments
    themselves when a model wrote the raw input instead of JSON."""

    _OPENING = re.compile(r'\s*\{\s*"input"\s*:\s*"')
    _DECODER = json.JSONDecoder(strict=False)  # a model may write a raw newline in a string

    def __init__(self) -> None:
        self.arguments = ""
        self._start: int | None = None  # where the input string's characters begin
        self._streaming = True
        self._given = ""

    def feed(self, fragment: str) -> str:
        self.arguments += fragment
        if not self._streaming:
            return ""
        if self._start is None:
            opening = self._OPENING.match(self.arguments)
            if opening is None:
                compact = re.sub(r"\s", "", self.arguments)
                self._streaming = '{"input":"'.startswith(compact)
                return ""
            self._start = opening.end()
        text = self._decoded(self.arguments[self._start :])
        if text is None or not text.startswith(self._given):
            self._streaming = False
            return ""
        new, self._given = text[len(self._given) :], text
        return new

    def _decoded(self, raw: str) -> str | None:
        """The decoded text of the longest complete prefix of a JSON string's characters."""
        i, n = 0, len(raw)
        while i < n and raw[i] != '"':
            if raw[i] != "\\":
                i += 1
                continue
            step = 6 if raw[i + 1 : i + 2] == "u" else 2
            if i + step > n:
                break
            i += step
        try:
            text: str = self._DECODER.decode(f'"{raw[:i]}"')
        except ValueError:
            return None
        if text and "\ud800" <= text[-1] <= "\udbff":
            text = text[:-1]  # the first half of a surrogate pair: its second is still to come
        return text

    def whole(self) -> str:
        try:
            value = self._DECODER.decode(self.arguments)
        except ValueError:
            return self.arguments
        if isinstance(value, dict):
            given = value.get("input")
            if isinstance(given, str):
                return given
            strings = [v for v in value.values() if isinstance(v, str)]
            if len(strings) == 1:
                return strings[0]
        return self.arguments


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "reasoning_text", "text": text}


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON object (events must not change when the response does later)."""
    copied: dict[str, Any] = json.loads(json.dumps(obj))
    return copied


def output_text(response: dict[str, Any]) -> str:
    """The text of a response's message items (what the SDKs call ``output_text``)."""
    return "".join(
        part.get("text", "")
        for item in response.get("output") or ()
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if part.get("type") == "output_text"
    )


def initial_of(response: dict[str, Any]) -> dict[str, Any]:
    """The ``in_progress`` object a stored (ended) response's stream began with."""
    response = {k: v for k, v in response.items() if k != "usage"}
    return {
        **response,
        "status": "in_progress",
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "output": [],
    }


def render(
    initial: dict[str, Any],
    chunks: list[dict[str, Any]],
    *,
    cancelled: bool = False,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every event of a response's stream and its final object, rendered from the ``initial``
    object (``response.created``'s) and its chunks (parsed): the same events, numbers included,
    as a live stream of the same chunks sends."""
    events = ResponseEvents(initial)
    out = events.start()
    for chunk in chunks:
        out += events.feed(chunk)
    out += events.finish(cancelled=cancelled, error=error, completed_at=completed_at)
    return out, events.response


def replay(response: dict[str, Any], chunks: list[str]) -> list[dict[str, Any]]:
    """Every event of a stored, ended response's stream, rendered again from its stored chunks
    (JSON texts)."""
    events, _ = render(
        initial_of(response),
        [json.loads(chunk) for chunk in chunks],
        cancelled=response["status"] == "cancelled",
        error=response.get("error"),
        completed_at=response.get("completed_at"),
    )
    return events


# ------------------------------------------------------------------------------------------------
# A backend's own Responses API (the native path)
# ------------------------------------------------------------------------------------------------
# The fields of a natively answered response that are Slipstream's, not the backend's.
_OURS = ("id", "model", "store", "previous_response_id")


class NativeEvents:
    """A backend's own Responses events, relayed as they came with the response's ``id`` and
    ``model`` made ours (``initial``: our ``in_progress`` object); everything else, item ids
    and sequence numbers included, is the backend's. A stream that ends without a terminal
    event (the backend failed or was cut off, or the client cancelled) gets a
    ``response.failed`` of our own, numbered after the last event, whose response holds the
    output items finished so far."""

    def __init__(self, initial: dict[str, Any]) -> None:
        self.initial = initial
        self.response = initial
        # What our response says whatever the backend's says: ours are stored here, it need
        # not store them, and it never saw our previous_response_id.
        self._ours = {name: initial.get(name) for name in _OURS}
        self._id_json = json.dumps(initial["id"])
        self._model_field = '"model":' + json.dumps(initial["model"])
        self._swaps: list[tuple[str, str]] = []
        self.items: dict[int, dict[str, Any]] = {}
        self.last_sequence = -1
        self.terminal = False

    def feed(self, data: str, obj: dict[str, Any]) -> tuple[bytes, int]:
        """One upstream event (its JSON text and object) as SSE bytes, and its number."""
        kind = str(obj.get("type"))
        response = obj.get("response")
        if isinstance(response, dict):
            if not self._swaps:
                self._learn(response)
            data = self._rewrite(data, obj, response)
        if kind == "response.output_item.done" and isinstance(obj.get("item"), dict):
            index = obj.get("output_index")
            self.items[index if isinstance(index, int) else len(self.items)] = obj["item"]
        if kind in TERMINAL_EVENTS:
            self.terminal = True
        sequence = obj.get("sequence_number")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            self.last_sequence = sequence
        return encode_event(data, event=kind), self.last_sequence

    def finish(
        self, *, cancelled: bool = False, error: dict[str, Any] | None = None, **_: Any
    ) -> list[dict[str, Any]]:
        """The closing event when the backend sent none (see the class), else nothing.
        Accepts ``ResponseEvents.finish``'s arguments (``completed_at`` is the backend's)."""
        if self.terminal:
            return []
        self.terminal = True
        self.response = {
            **self.response,
            "status": "cancelled" if cancelled and error is None else "failed",
            "error": error,
            "output": [self.items[i] for i in sorted(self.items)],
        }
        self.last_sequence += 1
        return [
            {
                "type": "response.failed",
                "response": self.response,
                "sequence_number": self.last_sequence,
            }
        ]

    def _learn(self, response: dict[str, Any]) -> None:
        """The backend's id and model, as text to replace in every later event."""
        if isinstance(response.get("id"), str):
            self._swaps.append((json.dumps(response["id"]), self._id_json))
        if isinstance(response.get("model"), str):
            self._swaps.append(('"model":' + json.dumps(response["model"]), self._model_field))

    def _rewrite(self, data: str, obj: dict[str, Any], response: dict[str, Any]) -> str:
        """``data`` with the response's id and model replaced as text (the backend's bytes
        otherwise), or re-encoded when its JSON is not in the compact form that allows it or
        another of our fields (``store``, ``previous_response_id``) differs."""
        ours = {**response, **self._ours}
        self.response = ours
        if all(response.get(name) == self._ours[name] for name in _OURS[2:]):
            for old, new in self._swaps:
                data = data.replace(old, new)
            if self._id_json in data and self._model_field in data:
                return data
        return json.dumps({**obj, "response": ours}, separators=(",", ":"), ensure_ascii=False)


def render_native(
    initial: dict[str, Any],
    chunks: list[str],
    *,
    cancelled: bool = False,
    error: dict[str, Any] | None = None,
) -> tuple[list[bytes], list[int], dict[str, Any]]:
    """A native response's events (SSE bytes and their numbers) and its final object, from
    the backend's event texts as they came: the same bytes the live stream sent."""
    native = NativeEvents(initial)
    encoded, numbers = [], []
    for chunk in chunks:
        data, number = native.feed(chunk, json.loads(chunk))
        encoded.append(data)
        numbers.append(number)
    for event in native.finish(cancelled=cancelled, error=error):
        encoded.append(ResponseEvents.encode(event))
        numbers.append(event["sequence_number"])
    return encoded, numbers, native.response


def response_as_chunk(response: dict[str, Any]) -> dict[str, Any]:
    """A whole response object (a backend's own, non-streaming) as the one chat chunk that
    says the same, so its stream can be rendered by ``ResponseEvents`` when asked for."""
    delta: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    names = ToolNames(response.get("tools") or ())
    for item in response.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    delta["content"] = delta.get("content", "") + part.get("text", "")
                elif part.get("type") == "refusal":
                    delta["refusal"] = delta.get("refusal", "") + part.get("refusal", "")
        elif kind == "reasoning":
            text = "".join(p.get("text", "") for p in item.get("content") or ())
            delta["reasoning_content"] = delta.get("reasoning_content", "") + text
        elif kind in ("function_call", "custom_tool_call"):
            calls.append({**_chat_call(item, names), "index": len(calls)})
    if calls:
        delta["tool_calls"] = calls
    incomplete = (response.get("incomplete_details") or {}).get("reason")
    finish = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(
        incomplete or "", "tool_calls" if calls else "stop"
    )
    usage = response.get("usage") or {}
    chat_usage = {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }
    return {
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": chat_usage if usage else None,
    }
