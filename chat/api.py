"""The ``/v1`` API: OpenAI's wire format, so the official SDKs work by changing ``base_url``.
An HTTP adapter: authenticate, read and check, resolve the slot, then the relay
(``dispatch``), ``answers`` (recording) and ``streaming`` (the SSE).

Rules follow the OpenAI API reference (Chat Completions, Completions, Models, "Error codes"):
errors are ``{"error": {"message", "type", "param", "code"}}``; streams are SSE ``data:``
events of ``chat.completion.chunk`` (or ``text_completion``) objects ending in ``data: [DONE]``;
a failure after the stream began is one final ``data: {"error": …}`` event, which the SDKs raise
as ``APIError`` during iteration.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat import answers, jsonbody, readcache, selectors, services, streaming
from chat.http import Refusal, error_response, invalid, sse_response
from chat.models import ApiKey, Slot
from chat.relay import dispatch
from chat.relay.errors import EnvelopeError
from chat.relay.generation import Status
from chat.slotconfig import slot_config
from chat.streaming import ChunkRewriter

logger = logging.getLogger(__name__)


async def authenticate(request: HttpRequest, lookups: readcache.Lookups) -> ApiKey:
    """The API key of ``Authorization: Bearer <key>`` (``lookups``: the request's cached
    lookups). Raises ``Refusal`` 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise invalid(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            status=401,
            code="invalid_api_key",
        )
    key = await selectors.api_key_aget_active(raw=raw.strip(), lookups=lookups)
    if key is None:
        shown = raw.strip()[:12]
        raise invalid(
            f"Incorrect API key provided: {shown}…. Create one on your Slipstream API keys page.",
            status=401,
            code="invalid_api_key",
        )
    return key


# OpenAI's bounds (API reference, Chat Completions and Completions): ``n`` from 1 to 128.
MAX_N = 128
# OpenAI takes up to 4 stop strings; local servers take more, so a few more are let through
# (the relay enforces them itself). Each is matched against every chunk of every choice, so an
# unbounded list is CPU the event loop spends on one request while every other one waits.
MAX_STOPS = 16


def _check(
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


def _out_of_range(param: str, bound: str) -> Refusal:
    return invalid(f"Invalid '{param}': {bound}.", param=param, code="invalid_value")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_prompt(value: Any) -> bool:
    """A string, an array of strings, of token ids, or of arrays of token ids (OpenAI's
    ``prompt``)."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list):
        return False
    return (
        all(isinstance(item, str) for item in value)
        or all(_is_int(item) for item in value)
        or all(isinstance(item, list) and all(_is_int(t) for t in item) for item in value)
    )


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array of message objects.", param="messages")
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid(
                f"Invalid value for '{at}': a message is an object with a 'role'.", param=at
            )
        content = message.get("content")
        _check(
            message, "content", lambda v: isinstance(v, str | list), "a string or an array", at=at
        )
        for j, part in enumerate(content if isinstance(content, list) else ()):
            part_at = f"{at}.content[{j}]"
            if not isinstance(part, dict):
                raise invalid(
                    f"Invalid type for '{part_at}': expected an object, but got "
                    f"{_json_type(part)}.",
                    param=part_at,
                    code="invalid_type",
                )
            for name in ("type", "text"):
                _check(
                    part, name, lambda v: isinstance(v, str), "a string", at=part_at, nullable=False
                )
        for name in ("name", "tool_call_id"):
            _check(message, name, lambda v: isinstance(v, str), "a string", at=at)
        _check(message, "tool_calls", lambda v: isinstance(v, list), "an array", at=at)


def _validate_tools(body: dict[str, Any]) -> None:
    _check(body, "tools", lambda v: isinstance(v, list), "an array")
    for i, tool in enumerate(body.get("tools") or ()):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid(
                f"Invalid type for '{at}': expected an object, but got {_json_type(tool)}.",
                param=at,
                code="invalid_type",
            )
        _check(tool, "function", lambda v: isinstance(v, dict), "an object", at=at, nullable=False)
        function = tool.get("function") or {}
        for name, ok, expected in (
            ("name", lambda v: isinstance(v, str), "a string"),
            ("parameters", lambda v: isinstance(v, dict), "an object"),
        ):
            _check(function, name, ok, expected, at=f"{at}.function", nullable=False)
    _check(body, "tool_choice", lambda v: isinstance(v, str | dict), "a string or an object")
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        _check(
            choice,
            "function",
            lambda v: isinstance(v, dict),
            "an object",
            at="tool_choice",
            nullable=False,
        )


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
    else:
        if body.get("prompt") is None:
            raise invalid("you must provide a prompt parameter", param="prompt")
        _check(
            body,
            "prompt",
            _is_prompt,
            "a string, an array of strings, an array of tokens or an array of token arrays",
        )
    _check(body, "stream", lambda v: isinstance(v, bool), "a boolean")
    _check(body, "stream_options", lambda v: isinstance(v, dict), "an object")
    _check(
        body.get("stream_options") or {},
        "include_usage",
        lambda v: isinstance(v, bool),
        "a boolean",
        at="stream_options",
    )
    for name in ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs"):
        _check(body, name, _is_int, "an integer")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _check(body, name, _is_number, "a number")
    _check(body, "user", lambda v: isinstance(v, str), "a string")
    _check(
        body,
        "logit_bias",
        lambda v: isinstance(v, dict) and all(_is_number(bias) for bias in v.values()),
        "an object mapping token ids to numbers",
    )
    _check(
        body,
        "stop",
        lambda v: (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
        ),
        "a string or an array of strings",
    )
    if isinstance(body.get("stop"), list) and len(body["stop"]) > MAX_STOPS:
        raise _out_of_range("stop", f"at most {MAX_STOPS} stop strings")
    if _is_int(body.get("n")) and not 1 <= body["n"] <= MAX_N:
        raise _out_of_range("n", f"must be from 1 to {MAX_N}")
    for name in ("max_tokens", "max_completion_tokens"):
        if _is_int(body.get(name)) and body[name] < 0:
            raise _out_of_range(name, "must be at least 0")


async def resolve_slot(name: str, key: ApiKey, lookups: readcache.Lookups) -> Slot:
    """The enabled slot called ``name`` that the key's user may use. Raises ``Refusal`` 404
    ``model_not_found`` (also for a slot limited to groups the user is not in)."""
    slot = (
        await selectors.slot_aget_cached(name=name, user=key.user, lookups=lookups)
        if name
        else None
    )
    if slot is None:
        raise invalid(
            f"The model `{name}` does not exist or you do not have access to it.",
            status=404,
            code="model_not_found",
        )
    return slot


def method_not_allowed(request: HttpRequest, *, allowed: str) -> JsonResponse:
    """405 in OpenAI's envelope and wording, with the ``Allow`` header RFC 9110 §15.5.6 asks
    for."""
    response = error_response(
        invalid(
            f"Invalid method for URL ({request.method} {request.path}).",
            status=405,
            code="method_not_allowed",
        )
    )
    response["Allow"] = allowed
    return response


@csrf_exempt
async def unknown_url(request: HttpRequest) -> JsonResponse:
    """Any other path under ``/v1``: 404 in OpenAI's envelope and wording, never Django's HTML
    page (an SDK reports the message as it is)."""
    return error_response(
        invalid(f"Invalid URL ({request.method} {request.path})", status=404, code="unknown_url")
    )


def _id_prefix(chat: bool) -> str:
    """OpenAI's id prefixes: ``chatcmpl-`` for chat completions, ``cmpl-`` for completions."""
    return "chatcmpl-" if chat else "cmpl-"


def model_object(slot: Slot) -> dict[str, Any]:
    return {
        "id": slot.name,
        "object": "model",
        "created": int(slot.created_at.timestamp()),
        "owned_by": "slipstream",
    }


@csrf_exempt
async def models(request: HttpRequest, model: str | None = None) -> HttpResponse:
    """``GET /v1/models`` (the slots a key may use) and ``GET /v1/models/{model}``."""
    if request.method != "GET":
        return method_not_allowed(request, allowed="GET")
    try:
        lookups = readcache.Lookups()
        key = await authenticate(request, lookups)
        if model is not None:
            return JsonResponse(model_object(await resolve_slot(model, key, lookups)))
        slots = [model_object(slot) async for slot in selectors.slot_list_enabled(user=key.user)]
        return JsonResponse({"object": "list", "data": slots})
    except EnvelopeError as exc:
        return error_response(exc)


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """``POST /v1/chat/completions``, streaming or not."""
    return await _create_completion(request, endpoint=CHAT)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """``POST /v1/completions`` (legacy text completions), streaming or not."""
    return await _create_completion(request, endpoint=TEXT)


CHAT, TEXT = "chat/completions", "completions"


@dataclass(slots=True)
class _Call:
    """What is known of one call so far, for its record when it is refused."""

    endpoint: str
    started_at: float = field(default_factory=time.monotonic)
    key: ApiKey | None = None
    slot_name: str = ""
    stream: bool = False


async def _create_completion(
    request: HttpRequest, *, endpoint: str
) -> HttpResponse | StreamingHttpResponse:
    """Authenticate, read and check the body, resolve the slot, then answer whole
    (``_whole_completion``) or stream (``_streamed_completion``). A refusal or a failure before
    the first chunk is an HTTP error in OpenAI's envelope, recorded when the key is known."""
    if request.method != "POST":
        return method_not_allowed(request, allowed="POST")
    call = _Call(endpoint)
    lookups = readcache.Lookups()
    try:
        call.key = await authenticate(request, lookups)
        body = jsonbody.read_object(request, max_bytes=settings.SLIPSTREAM_API_MAX_BODY_BYTES)
        validate(body, chat=endpoint == CHAT)
        call.slot_name, call.stream = body["model"], bool(body.get("stream"))
        slot = await resolve_slot(call.slot_name, call.key, lookups)
        if not call.stream:
            return await _whole_completion(call, call.key, slot, body)
        return await _streamed_completion(call, call.key, slot, body)
    except EnvelopeError as exc:
        if call.key is not None:
            await services.api_call_arecord(
                api_key=call.key,
                endpoint=endpoint,
                slot_name=call.slot_name,
                stream=call.stream,
                http_status=exc.status,
                outcome="error",
                started_at=call.started_at,
                error=exc,
            )
        return error_response(exc)


async def _whole_completion(
    call: _Call, key: ApiKey, slot: Slot, body: dict[str, Any]
) -> JsonResponse:
    """A non-streaming call, the upstream's answer passed through with ``id`` and ``model``
    made ours. Raises ``RelayError``."""
    result = await dispatch.complete_whole(slot_config(slot), call.endpoint, body)
    result["model"] = slot.name
    result["id"] = _id_prefix(call.endpoint == CHAT) + uuid.uuid4().hex
    await services.api_call_arecord(
        api_key=key,
        endpoint=call.endpoint,
        slot_name=slot.name,
        stream=False,
        http_status=200,
        outcome="complete",
        started_at=call.started_at,
        usage=result.get("usage"),
    )
    return JsonResponse(result)


async def _streamed_completion(
    call: _Call, key: ApiKey, slot: Slot, body: dict[str, Any]
) -> StreamingHttpResponse:
    """A streaming call. The HTTP status is held until the first chunk (or the first
    keep-alive is due), so a failure before it, after the dispatcher's retries, is a real
    4xx/5xx answer: raises its ``RelayError``."""
    generation, _ = await dispatch.submit(
        slot_config(slot), call.endpoint, body, started_at=call.started_at
    )
    try:
        await generation.wait_started(settings.SLIPSTREAM_KEEPALIVE_S)
    except BaseException:
        generation.detach()
        raise
    if generation.ended and not generation.chunks and generation.error is not None:
        generation.detach()
        raise generation.error
    rewriter = ChunkRewriter(
        # Per request, even when single-flight shares the generation: OpenAI never gives two
        # requests one id.
        completion_id=_id_prefix(call.endpoint == CHAT) + uuid.uuid4().hex,
        model=slot.name,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        chat=call.endpoint == CHAT,
    )

    async def record(read_to_end: bool) -> None:
        await answers.record_api_call(
            key=key,
            slot=slot,
            endpoint=call.endpoint,
            messages=body.get("messages") or [],
            generation=generation,
            outcome=generation.status if read_to_end else Status.STOPPED,
        )

    return sse_response(streaming.api_sse(generation, rewriter, on_leave=record))
