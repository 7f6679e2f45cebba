"""The simulated answer: decided up front as a plan, then rendered to the exact bytes of an
OpenAI response (streamed chunks or one JSON body). Pure: no I/O, no clock but ``created``.

Protocol sources:
- OpenAI API reference, "Chat Completions" (the ``chat.completion`` object and the streamed
  ``chat.completion.chunk`` objects) and the legacy "Completions" (``text_completion``); the
  shapes are checked against the recordings in ``tests/fixtures/sse/``.
- WHATWG HTML, "Server-sent events": ``data:`` lines, a blank line ends an event.

Answers are deterministic: the words come from a fixed list, chosen by an RNG seeded from the
request's messages (or prompt) and ``seed``, so identical requests give identical answers and a
request with ``max_tokens=k`` gets the first k words of the uncapped answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import string
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chat.relay import responses
from chat.simulator.config import SimConfig
from chat.simulator.http import RequestError, dumps

# --- Deterministic text ---------------------------------------------------------------------

_WORD_TEXT = """stream token relay river lamp window harbor signal quiet bright garden paper morning
    winter copper violet meadow lantern orbit pixel canvas ember falcon glacier horizon island
    jasmine kernel ladder marble nebula ocean pebble quartz ribbon saddle thunder umbrella valley
    willow yarrow zephyr anchor beacon cedar delta echo fable granite hollow ivory juniper kettle
    lunar maple nectar opal prairie quiver raven summit tundra velvet walnut"""
_WORDS = tuple(_WORD_TEXT.split())
# Content tokens are these strings (first token bare, then with a leading space); their JSON
# string literals are encoded once here so that streaming a token allocates only its chunk.
_FIRST = _WORDS
_NEXT = tuple(" " + w for w in _WORDS)
_LITERALS = {w: json.dumps(w).encode() for w in _FIRST + _NEXT}
_ID_CHARS = string.ascii_letters + string.digits
_ids = random.Random()


def _literal(text: str) -> bytes:
    lit = _LITERALS.get(text)
    return lit if lit is not None else json.dumps(text, ensure_ascii=False).encode()


def _new_id(prefix: str) -> str:
    return prefix + "".join(_ids.choices(_ID_CHARS, k=24))


_HOLE = "\x00"
HOLE_JSON = b'"\\u0000"'  # how json.dumps writes _HOLE, whatever ensure_ascii says


def _template(obj: Any) -> tuple[bytes, bytes]:
    """Split one SSE event around the ``_HOLE`` string in ``obj``: event = pre + literal + post.

    Rendering the whole object once keeps the wire shape exactly json.dumps' without
    hand-written braces, and leaves one concatenation per token.
    """
    pre, post = dumps(obj).split(HOLE_JSON)
    return b"data: " + pre, post + b"\n\n"


def event(obj: Any) -> bytes:
    """One SSE event, ``data: <compact JSON>`` and a blank line."""
    return b"data: " + dumps(obj) + b"\n\n"


def _words(text: str) -> int:
    return len(text.split())


def prompt_words(body: Mapping[str, Any]) -> int:
    """Prompt tokens: the words of the messages' text, or of a legacy ``prompt``
    (``_prompt_tokens``)."""
    if "messages" not in body:
        return _prompt_tokens(body.get("prompt"))
    count = 0
    for message in body["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += _words(content)
        elif isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            count += sum(_words(t) for t in texts if isinstance(t, str))
    return count


_PROMPT_SHAPES = (
    "prompt must be a string, an array of strings, an array of token ids or an array of "
    "token-id arrays"
)


def _prompt_tokens(prompt: Any) -> int:
    """A legacy completion's ``prompt`` in tokens: words of text, one per token id. OpenAI's
    ``CreateCompletionRequest.prompt``: a string, an array of strings, an array of token ids
    or an array of token-id arrays; null (absent) is none. ``RequestError`` (400) for
    anything else."""
    if prompt is None:
        return 0
    if isinstance(prompt, str):
        return _words(prompt)
    if not isinstance(prompt, list):
        raise RequestError(_PROMPT_SHAPES, "prompt")
    count = 0
    for item in prompt:
        if isinstance(item, str):
            count += _words(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            count += 1
        elif isinstance(item, list) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in item
        ):
            count += len(item)
        else:
            raise RequestError(_PROMPT_SHAPES, "prompt")
    return count


def _cut_at_stop(tokens: list[str], stops: Sequence[str]) -> list[str] | None:
    """Tokens up to (not including) the earliest stop string, or None when none occurs."""
    text = "".join(tokens)
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    if not hits:
        return None
    cut, kept, pos = min(hits), [], 0
    for tok in tokens:
        if pos + len(tok) > cut:
            if cut > pos:
                kept.append(tok[: cut - pos])
            break
        kept.append(tok)
        pos += len(tok)
    return kept


def _offered_functions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ``function`` objects of the request's function tools, only the one ``tool_choice``
    names when it names one of them, none when it names a custom tool. Other tool types
    (``custom``: free-text input, not JSON arguments) are never called, as a model server
    ignores a tool type it does not serve."""
    offered = body.get("tools")
    tools = [
        t["function"]
        for t in (offered if isinstance(offered, list) else [])
        if isinstance(t, dict)
        and t.get("type", "function") == "function"
        and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "custom":
        return []
    named = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(named, dict):
        tools = [t for t in tools if t.get("name") == named.get("name")] or tools
    return tools


def _tool_arguments(tool: Mapping[str, Any], rng: random.Random) -> str:
    """A JSON arguments string that fits the tool's parameter schema, as far as its top-level
    ``properties`` go (``_value_for``). A schema without properties it can read (none, not an
    object, ``properties`` not an object) gets one string argument, ``query``: as a model
    answers a schema it cannot follow, with some object rather than an error."""
    parameters = tool.get("parameters")
    props = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(props, dict) or not props:
        props = {"query": {"type": "string"}}
    args = {key: _value_for(schema, rng) for key, schema in props.items()}
    return json.dumps(args, separators=(",", ":"))


# Nested anyOf/oneOf followed at most this deep (a schema may nest them without end).
_SCHEMA_DEPTH = 8


def _value_for(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A value for one property's JSON Schema (draft 2020-12): its ``const`` or first ``enum``
    value, else the first ``anyOf``/``oneOf`` branch that is not ``null``, else a value of its
    ``type`` (the first that is not ``"null"`` when it lists several); a string, its
    ``maxLength`` kept, for a schema that says no type (``true``, ``{}``, or not a schema)."""
    if not isinstance(schema, dict):
        return _text(rng, None)
    enum = schema.get("enum")
    if "const" in schema:
        return schema["const"]
    if isinstance(enum, list) and enum:
        return enum[0]
    branches = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(branches, list) and branches and depth < _SCHEMA_DEPTH:
        usable = [b for b in branches if isinstance(b, dict) and _schema_type(b) != "null"]
        return _value_for((usable or branches)[0], rng, depth + 1)
    return _value_of_type(_schema_type(schema), schema, rng)


def _schema_type(schema: Mapping[str, Any]) -> Any:
    """A schema's ``type``; of a list (``["string", "null"]``), the first that is not null."""
    kind = schema.get("type")
    if isinstance(kind, list):
        return next((k for k in kind if k != "null"), "null" if kind else None)
    return kind


def _value_of_type(kind: Any, schema: Mapping[str, Any], rng: random.Random) -> Any:
    if kind in ("integer", "number"):
        return rng.randint(1, 100)
    if kind == "boolean":
        return True
    if kind == "array":
        return [rng.choice(_WORDS)]
    if kind == "object":
        return {}
    if kind == "null":
        return None
    return _text(rng, schema.get("maxLength"))


def _text(rng: random.Random, limit: Any) -> str:
    """Two words, cut to ``limit`` characters when that is a positive integer."""
    text = " ".join(rng.choices(_WORDS, k=2))
    return text[:limit] if isinstance(limit, int) and limit > 0 else text


@dataclass
class _Choice:
    reasoning: list[str]
    content: list[str]
    finish_reason: str
    tool: tuple[str, str, list[str]] | None = None  # (call id, name, argument fragments)

    @property
    def tokens(self) -> int:
        # Steps as streamed: the tool call's opening delta rides on its first argument fragment.
        extra = len(self.tool[2]) if self.tool else 0
        return len(self.reasoning) + len(self.content) + extra


@dataclass
class Plan:
    """The whole answer to one request, decided before the first byte: one ``_Choice`` per
    ``n``, plus what every chunk repeats (id, created in Unix seconds, model)."""

    chat: bool  # chat.completion(.chunk), else legacy text_completion
    model: str
    choices: list[_Choice]
    prompt_tokens: int
    include_usage: bool
    id: str
    created: int
    usage_json: str | None = None

    def usage(self) -> dict[str, Any]:
        completion = sum(c.tokens for c in self.choices)
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        if reasoning := sum(len(c.reasoning) for c in self.choices):
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage


def plan_answer(body: Mapping[str, Any], cfg: SimConfig, *, chat: bool, model: str) -> Plan:
    """Decide the whole answer up front (it is cheap), so streaming only renders and paces.

    ``RequestError`` (400) for a bad ``n`` or ``max_tokens``; ``chat`` picks chat.completion
    over the legacy text_completion."""
    n = body.get("n") or 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise RequestError("n must be an integer from 1 to 128", "n")
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if cap is not None and (not isinstance(cap, int) or cap < 0):
        raise RequestError("max_tokens must be a non-negative integer", "max_tokens")
    length = cfg.length if cfg.length is not None else cfg.max_tokens_default
    finish = "stop"
    if cap is not None and cap <= length:
        length, finish = cap, "length"
    stops = [] if cfg.ignore_stop else _stops(body.get("stop"))
    tools = _offered_functions(body)
    choice = body.get("tool_choice")
    messages = body.get("messages") if chat else None
    last = messages[-1] if isinstance(messages, list) and messages else None
    # A model answers a tool's result in words; calling the tool again would loop forever.
    answered_tool = isinstance(last, dict) and last.get("role") == "tool"
    use_tool = chat and (cfg.tool_call or bool(tools)) and choice != "none" and not answered_tool

    source = body.get("messages") if chat else body.get("prompt")
    digest = hashlib.blake2b(
        json.dumps([source, body.get("seed")], sort_keys=True, default=str).encode(), digest_size=8
    ).digest()
    base_seed = int.from_bytes(digest, "big")
    choices = []
    for index in range(n):
        rng = random.Random(base_seed + index)
        reasoning = _pick(rng, cfg.reasoning_tokens) if chat else []
        if use_tool:
            choices.append(_Choice(reasoning, [], "tool_calls", _tool_call(tools, cfg, rng)))
            continue
        content = _pick(rng, length)
        cut = _cut_at_stop(content, stops) if stops else None
        choices.append(
            _Choice(
                reasoning, content if cut is None else cut, "stop" if cut is not None else finish
            )
        )
    options = body.get("stream_options")
    return Plan(
        chat=chat,
        model=model,
        choices=choices,
        prompt_tokens=prompt_words(body),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        id=_new_id("chatcmpl-" if chat else "cmpl-"),
        created=int(time.time()),
        usage_json=cfg.usage_json,
    )


def _stops(stop: Any) -> list[str]:
    """The request's stop strings: OpenAI's ``stop`` is null, a string or an array of strings.
    ``RequestError`` (400) for anything else."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise RequestError("stop must be a string or an array of strings", "stop")


def _tool_call(
    tools: Sequence[Mapping[str, Any]], cfg: SimConfig, rng: random.Random
) -> tuple[str, str, list[str]]:
    """The one call of a tool call answer: (call id, name, argument fragments). The function is
    the offered one named ``cfg.tool_name``, else the first offered (``sim_tool`` when none is);
    the arguments are ``cfg.tool_arguments`` verbatim, else made up to fit its schema."""
    named = [t for t in tools if cfg.tool_name is not None and t.get("name") == cfg.tool_name]
    tool = (named or list(tools) or [{"name": "sim_tool"}])[0]
    arguments = cfg.tool_arguments
    if arguments is None:
        arguments = _tool_arguments(tool, rng)
    # One fragment at least: the call's opening delta rides on the first one.
    fragments = re.findall(r"\w+|\W+", arguments) or [""]
    return _new_id("call_"), str(tool.get("name", "sim_tool")), fragments


def _pick(rng: random.Random, count: int) -> list[str]:
    picks = rng.choices(range(len(_WORDS)), k=count)
    return [_FIRST[p] if i == 0 else _NEXT[p] for i, p in enumerate(picks)]


# --- Rendering ------------------------------------------------------------------------------


def _chat_chunk(plan: Plan, index: int, delta: dict[str, Any], finish: str | None = None) -> Any:
    return {
        "id": plan.id,
        "object": "chat.completion.chunk",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": "fp_sim",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _text_chunk(plan: Plan, index: int, text: str, finish: str | None = None) -> Any:
    # Field order as recorded from api.openai.com (openai-completions-include-usage.sse):
    # choices before model, and "usage": null on every chunk when usage was asked for.
    chunk: dict[str, Any] = {
        "id": plan.id,
        "object": "text_completion",
        "created": plan.created,
        "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
        "model": plan.model,
    }
    if plan.include_usage:
        chunk["usage"] = None
    return chunk


Segment = tuple[bytes, tuple[bytes, bytes], list[str]]  # (head, (pre, post), tokens)


def _steps(
    segments: list[Segment], finish: bytes, last: tuple[bytes, bytes] | None
) -> Iterator[bytes]:
    """One bytes per token: a segment's head rides on its first token and ``finish`` on the very
    last one (the finish chunk follows the last token at once, as OpenAI sends it); ``last``
    replaces the template of the last token (legacy completions put finish_reason there)."""
    total = sum(len(tokens) for _, _, tokens in segments)
    carry, k = b"", 0
    for head, (pre, post), tokens in segments:
        carry += head
        for tok in tokens:
            k += 1
            if k < total:
                yield b"".join((carry, pre, _literal(tok), post))
            else:
                pre, post = last or (pre, post)
                yield b"".join((carry, pre, _literal(tok), post, finish))
            carry = b""
    if total == 0:
        yield carry + (last[0] + b'""' + last[1] if last else b"") + finish


def _choice_steps(plan: Plan, i: int) -> Iterator[bytes]:
    c = plan.choices[i]
    if not plan.chat:
        text = _template(_text_chunk(plan, i, _HOLE))
        return _steps(
            [(b"", text, c.content)], b"", _template(_text_chunk(plan, i, _HOLE, c.finish_reason))
        )
    role = event(_chat_chunk(plan, i, {"role": "assistant", "content": ""}))
    reasoning = _template(_chat_chunk(plan, i, {"reasoning_content": _HOLE}))
    finish = event(_chat_chunk(plan, i, {}, c.finish_reason))
    if c.tool is None:
        content = _template(_chat_chunk(plan, i, {"content": _HOLE}))
        return _steps([(role, reasoning, c.reasoning), (b"", content, c.content)], finish, None)
    # A tool call streams as OpenAI's: the first delta carries index, id, type, name and
    # arguments "", later deltas only argument fragments (openai-chat-tool-calls.sse).
    call_id, name, fragments = c.tool
    call = {
        "index": 0,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    start: dict[str, Any] = {"tool_calls": [call]}
    if not c.reasoning:
        start = {"role": "assistant", "content": None, **start}
    args = _template(
        _chat_chunk(plan, i, {"tool_calls": [{"index": 0, "function": {"arguments": _HOLE}}]})
    )
    segments = [
        (role if c.reasoning else b"", reasoning, c.reasoning),
        (event(_chat_chunk(plan, i, start)), args, fragments),
    ]
    return _steps(segments, finish, None)


def _interleave(streams: list[Iterator[bytes]]) -> Iterator[bytes]:
    """n > 1: one step carries the next chunk of every unfinished choice, index order."""
    while streams:
        parts = [part for s in streams if (part := next(s, None)) is not None]
        if not parts:
            return
        yield b"".join(parts)


def _with_usage(plan: Plan, obj: Any) -> bytes:
    """One SSE event of ``obj`` with its ``_HOLE`` usage filled: the plan's usage, or the
    configured ``usage_json`` text verbatim."""
    pre, post = _template(obj)
    return pre + (plan.usage_json.encode() if plan.usage_json else dumps(plan.usage())) + post


def stream_body(plan: Plan) -> tuple[Iterator[bytes], bytes]:
    """The streamed answer as (steps, tail): one bytes of SSE events per paced step, then the
    usage event (when asked for) and ``data: [DONE]``."""
    streams = [_choice_steps(plan, i) for i in range(len(plan.choices))]
    tail = b""
    if plan.include_usage:
        head: dict[str, Any] = {
            "id": plan.id,
            "object": "chat.completion.chunk" if plan.chat else "text_completion",
            "created": plan.created,
            "model": plan.model,
        }
        if plan.chat:
            tail = _with_usage(
                plan, {**head, "system_fingerprint": "fp_sim", "choices": [], "usage": _HOLE}
            )
        else:
            tail = _with_usage(plan, {**head, "usage": _HOLE, "choices": []})
    return (streams[0] if len(streams) == 1 else _interleave(streams)), tail + b"data: [DONE]\n\n"


def complete_body(plan: Plan) -> dict[str, Any]:
    """The non-streamed answer object; its usage is the ``_HOLE`` string when the plan has a
    ``usage_json`` to put in its place (``HOLE_JSON`` in the dumped bytes)."""
    choices: list[dict[str, Any]] = []
    for i, c in enumerate(plan.choices):
        if not plan.chat:
            text = "".join(c.content)
            choices.append(
                {"text": text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
            )
            continue
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if c.tool else "".join(c.content),
            "refusal": None,
        }
        if c.reasoning:
            message["reasoning_content"] = "".join(c.reasoning)
        if c.tool:
            function = {"name": c.tool[1], "arguments": "".join(c.tool[2])}
            message["tool_calls"] = [{"id": c.tool[0], "type": "function", "function": function}]
        choices.append(
            {"index": i, "message": message, "logprobs": None, "finish_reason": c.finish_reason}
        )
    body = {
        "id": plan.id,
        "object": "chat.completion" if plan.chat else "text_completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": _HOLE if plan.usage_json else plan.usage(),
    }
    return body | {"system_fingerprint": "fp_sim"} if plan.chat else body


# Dimensions of a simulated embedding unless the request asks for ``dimensions``.
EMBEDDING_DIMENSIONS = 8


def embeddings_body(body: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI ``/v1/embeddings`` answer: one unit vector per input, derived from a hash
    of the input (the same input, the same vector), ``dimensions`` long (default
    ``EMBEDDING_DIMENSIONS``); usage counts words. ``RequestError`` for a missing or
    malformed ``input``."""
    value = body.get("input")
    inputs = (
        [value]
        if isinstance(value, str)
        or (isinstance(value, list) and value and all(isinstance(t, int) for t in value))
        else value
    )
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'input' must be a string or a non-empty array", "input")
    size = body.get("dimensions") or EMBEDDING_DIMENSIONS
    if not isinstance(size, int) or not 1 <= size <= 4096:
        raise RequestError("dimensions must be an integer from 1 to 4096", "dimensions")
    data, words = [], 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else json.dumps(item)
        words += _words(text)
        rng = random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())
        vector = [rng.uniform(-1.0, 1.0) for _ in range(size)]
        norm = sum(v * v for v in vector) ** 0.5 or 1.0
        data.append(
            {"object": "embedding", "index": index, "embedding": [v / norm for v in vector]}
        )
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": words, "total_tokens": words},
    }


# --- The Responses API -------------------------------------------------------------------------


def as_chat_request(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Responses request as (its initial response object, the chat request whose plan
    answers it): the simulator answers in Responses events by rendering its chat answer
    through ``chat.relay.responses``. ``RequestError`` for what that cannot translate."""
    response_id = _new_id("resp_")
    try:
        items = responses.input_items(body.get("input") or "", response_id=response_id)
        chat = responses.chat_request(body, history=[], items=items)
    except (responses.TranslationError, AttributeError, TypeError) as e:
        raise RequestError(f"Invalid Responses request: {e}", "input") from None
    model = str(body.get("model") or "sim")
    initial = responses.skeleton(
        body, response_id=response_id, model=model, created_at=int(time.time())
    )
    # A Responses stream always ends with its usage, so the chat plan is asked for it.
    options = {"include_usage": True}
    return initial, {**chat, "stream": bool(body.get("stream")), "stream_options": options}


def responses_steps(
    steps: Iterator[bytes], tail: bytes, initial: dict[str, Any]
) -> tuple[Iterator[bytes], bytes]:
    """A planned chat stream's steps and tail as Responses events: the same pacing, one step
    per token, ``response.created`` riding on the first and the terminal event in the tail."""
    events = responses.ResponseEvents(initial)
    head = b"".join(map(responses.ResponseEvents.encode, events.start()))

    def convert(raw: bytes) -> bytes:
        out = []
        for line in raw.split(b"\n"):
            if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                out += events.feed(json.loads(line[6:]))
        return b"".join(map(responses.ResponseEvents.encode, out))

    converted = [convert(step) for step in steps]  # in order: the events carry state
    if converted:
        converted[0] = head + converted[0]
    else:
        tail = head + tail
    end = convert(tail) + b"".join(
        map(responses.ResponseEvents.encode, events.finish(completed_at=int(time.time())))
    )
    return iter(converted), end


def response_body(plan: Plan, initial: dict[str, Any]) -> dict[str, Any]:
    """A planned answer as one Responses API response object."""
    chunk = responses.whole_as_chunk(complete_body(plan))
    _, response = responses.render(initial, [chunk], completed_at=int(time.time()))
    return response


def content_parts(body: Any) -> list[dict[str, Any]]:
    """What a request's ``messages`` (chat) or ``input`` items (Responses) carried, for tests to
    check that exact bytes reached the upstream: per message ``{"message": index, "type":
    "text", "chars": n}`` for string content, and per content part its ``type`` with, for text,
    ``chars``; for an image (``image_url``, ``input_image``) with a ``data:`` URL (and
    ``input_audio`` / ``file`` data), ``media_type``, ``bytes`` (decoded) and ``sha256`` (hex, of
    the decoded bytes); for a remote image, its ``url``. Responses parts are named as chat's."""
    if not isinstance(body, dict):
        return []
    messages = body.get("messages") or body.get("input")
    parts: list[dict[str, Any]] = []
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append({"message": index, "type": "text", "chars": len(content)})
            continue
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict):
                parts.append({"message": index, **_part_summary(part)})
    return parts


def _part_summary(part: dict[str, Any]) -> dict[str, Any]:
    kind = {"input_text": "text", "input_image": "image_url"}.get(str(part.get("type")))
    kind = kind or str(part.get("type"))
    if kind == "text":
        return {"type": kind, "chars": len(str(part.get("text", "")))}
    if kind == "image_url":
        image = part.get("image_url")
        url = str(image.get("url", "") if isinstance(image, dict) else image)
        if not url.startswith("data:"):
            return {"type": kind, "url": url}
        header, _, data = url.partition(",")
        return {"type": kind, "media_type": header[5:].split(";")[0], **_decoded(data)}
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        return {"type": kind, "media_type": audio.get("format"), **_decoded(audio.get("data"))}
    if kind == "file":
        file = part.get("file") or {}
        return {"type": kind, "filename": file.get("filename"), **_decoded(file.get("file_data"))}
    return {"type": kind}


def _decoded(data: Any) -> dict[str, Any]:
    text = str(data or "")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return {"bytes": None, "sha256": None}
    return {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
