"""Checks on what an upstream sends, before it is relayed or stored. Upstreams are untrusted.

Shapes from the OpenAI API reference ("The chat completion chunk object", "The completion
object", "The chat completion object"): ``choices`` is an array of objects with an integer
``index``, a ``finish_reason`` string or null, and either a ``delta`` object (chat chunks), a
``message`` object (chat, non-streaming) or a ``text`` string (legacy completions); a delta's or
message's ``content``, ``reasoning_content``/``reasoning``, ``refusal`` and ``role`` are strings
or null, and its ``tool_calls`` an array of objects whose ``function`` holds ``name`` and
``arguments`` strings. ``usage`` holds non-negative integer token counts.

A chunk that breaks these rules is malformed: the relay ends the answer there with an error
rather than pass on (and store) something the client and the database would read differently.
A bad ``usage`` (not an object, negative or text counts) only costs the usage: ``clean_usage``
keeps what is valid, and the chunk passes.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar, cast

_T = TypeVar("_T")

# OpenAI allows n ≤ 128 choices; a larger index is not a choice but garbage.
MAX_CHOICE_INDEX = 1024
# Token counts are stored in PostgreSQL integer columns (Django's PositiveIntegerField).
MAX_TOKENS_VALUE = 2**31 - 1
_DELTA_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal", "role")


class BadUpstreamJSON(ValueError):
    """JSON the relay refuses from an upstream: ``NaN``/``Infinity`` literals (not JSON, RFC 8259
    §6, though Python's parser takes them) cannot be stored in PostgreSQL's ``jsonb`` nor
    parsed by browsers."""


def _reject_constant(name: str) -> Any:
    raise BadUpstreamJSON(f"{name} is not a JSON number")


# One decoder for every chunk: ``json.loads`` with any keyword builds a new ``JSONDecoder`` per
# call, a measurable share of the relay's CPU per chunk (bench/profile_relay.py).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(data: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``. Raises
    ``ValueError`` (``json.JSONDecodeError`` or ``BadUpstreamJSON``; bytes that are not UTF-8
    raise ``UnicodeDecodeError``, also a ``ValueError``)."""
    if isinstance(data, bytes | bytearray):
        return json.loads(data, parse_constant=_reject_constant)  # detects UTF-16/32 as well
    return _DECODER.decode(data)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_CHOICE_INDEX


def _str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _tool_calls_problem(calls: Any) -> str | None:
    if calls is None:
        return None
    if not isinstance(calls, list):
        return "tool_calls is not an array"
    for call in calls:
        if not isinstance(call, dict):
            return "a tool call is not an object"
        if "index" in call and not _is_index(call["index"]):
            return "a tool call's index is not a small non-negative integer"
        if not (_str_or_none(call.get("id")) and _str_or_none(call.get("type"))):
            return "a tool call's id or type is not a string"
        function = call.get("function")
        if function is None:
            continue
        if not isinstance(function, dict):
            return "a tool call's function is not an object"
        if not (_str_or_none(function.get("name")) and _str_or_none(function.get("arguments"))):
            return "a tool call's name or arguments is not a string"
    return None


def _message_problem(delta: Any, what: str) -> str | None:
    if delta is None:
        return None
    if not isinstance(delta, dict):
        return f"{what} is not an object"
    for name in _DELTA_TEXT_FIELDS:
        if not _str_or_none(delta.get(name)):
            return f"{what}.{name} is not a string"
    return _tool_calls_problem(delta.get("tool_calls"))


def chunk_problem(obj: dict[str, Any]) -> str | None:
    """What is wrong with one streamed chunk object (chat or legacy completions), or None.
    Costs a few dict lookups per choice: it runs on every relayed chunk."""
    choices = obj.get("choices")
    if choices is None:
        return None
    if not isinstance(choices, list):
        return "choices is not an array"
    for choice in choices:
        if not isinstance(choice, dict):
            return "a choice is not an object"
        if "index" in choice and not _is_index(choice["index"]):
            return "a choice's index is not a small non-negative integer"
        if not _str_or_none(choice.get("finish_reason")):
            return "finish_reason is not a string"
        if not _str_or_none(choice.get("text")):
            return "text is not a string"
        problem = _message_problem(choice.get("delta"), "delta")
        if problem is not None:
            return problem
    return None


def completion_problem(obj: dict[str, Any], *, chat: bool) -> str | None:
    """What is wrong with a non-streaming answer (``chat.completion`` or ``text_completion``),
    or None. Every choice must be whole: a ``finish_reason`` says the upstream finished it."""
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return "choices is not a non-empty array"
    for choice in choices:
        if not isinstance(choice, dict):
            return "a choice is not an object"
        if "index" in choice and not _is_index(choice["index"]):
            return "a choice's index is not a small non-negative integer"
        if not isinstance(choice.get("finish_reason"), str) or not choice["finish_reason"]:
            return "a choice has no finish_reason: the answer may be cut off"
        if chat:
            problem = _message_problem(choice.get("message"), "message")
        else:
            problem = None if isinstance(choice.get("text"), str) else "text is not a string"
        if problem is not None:
            return problem
    return None


def clean_usage(usage: Any) -> dict[str, Any] | None:
    """The valid part of an upstream's ``usage``: token counts (``*_tokens``) that are integers
    in ``[0, MAX_TOKENS_VALUE]``, other figures (OpenRouter's ``cost``) that are finite
    non-negative numbers, at the top level and in ``*_details`` objects; everything else
    (negative, fractional or text counts, nested objects, NaN) is dropped. None when nothing is
    left."""
    if not isinstance(usage, dict):
        return None
    clean: dict[str, Any] = {}
    for name, value in usage.items():
        if _is_figure(name, value):
            clean[name] = value
        elif isinstance(name, str) and name.endswith("_details") and isinstance(value, dict):
            details = {k: v for k, v in value.items() if _is_figure(k, v)}
            if details:
                clean[name] = details
    return clean or None


def _is_figure(name: Any, value: Any) -> bool:
    if not isinstance(name, str) or isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= MAX_TOKENS_VALUE
    if isinstance(value, float) and not name.endswith("tokens"):
        return math.isfinite(value) and value >= 0
    return False


def has_nul(data: str) -> bool:
    """Whether JSON text may hold a NUL character (JSON must escape it as ``\\u0000``)."""
    return "\\u0000" in data


def without_nul(value: _T) -> _T:
    """``value`` with every NUL character in its strings (keys included) replaced by U+FFFD:
    PostgreSQL's text and ``jsonb`` cannot store NUL, and the stored answer must equal the
    relayed one, so both get the replacement."""
    return cast(_T, _without_nul(value))


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
