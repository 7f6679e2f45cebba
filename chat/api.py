"""The ``/v1`` API: OpenAI's wire format, so the official SDKs work by changing ``base_url``.
An HTTP adapter: authenticate, read and check, resolve the slot, then the relay
(``dispatch``), ``answers`` (recording) and ``streaming`` (the SSE).

Rules follow the OpenAI API reference (Chat Completions, Completions, Responses, Embeddings,
Models, "Error codes"):
errors are ``{"error": {"message", "type", "param", "code"}}``; streams are SSE ``data:``
events of ``chat.completion.chunk`` (or ``text_completion``) objects ending in ``data: [DONE]``;
a failure after the stream began is one final ``data: {"error": …}`` event, which the SDKs raise
as ``APIError`` during iteration. ``/v1/responses`` streams typed events instead and ends in
its terminal event (``chat.relay.responses``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat import (
    answers,
    jsonbody,
    media_urls,
    quotas,
    readcache,
    selectors,
    services,
    streaming,
)
from chat.http import Refusal, error_response, invalid, sse_response
from chat.models import ApiKey, Backend, Slot, StoredResponse
from chat.relay import dispatch, responses, tokenize
from chat.relay.errors import EnvelopeError, RelayError
from chat.relay.generation import Generation, Status
from chat.relay.responses import NativeEvents, ResponseEvents
from chat.relay.types import SlotConfig
from chat.streaming import ChunkRewriter

logger = logging.getLogger(__name__)


async def authenticate(request: HttpRequest, lookups: readcache.Lookups) -> ApiKey:
    """The API key of ``Authorization: Bearer <key>`` (``lookups``: the request's cached
    lookups). Raises ``Refusal`` 401."""
    return await authenticate_header(request.headers.get("Authorization", ""), lookups)


async def authenticate_header(header: str, lookups: readcache.Lookups) -> ApiKey:
    """The API key of an ``Authorization`` header's value ``Bearer <key>``. Raises
    ``Refusal`` 401."""
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


def _require_object(value: Any, at: str) -> None:
    """A 400 ``invalid_type`` naming ``at`` unless ``value`` is a JSON object."""
    if not isinstance(value, dict):
        raise invalid(
            f"Invalid type for '{at}': expected an object, but got {_json_type(value)}.",
            param=at,
            code="invalid_type",
        )


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
    media: list[tuple[str, dict[str, Any]]] = []  # (param, part) of parts other than text
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
            _require_object(part, part_at)
            for name in ("type", "text"):
                _check(
                    part, name, lambda v: isinstance(v, str), "a string", at=part_at, nullable=False
                )
            if part.get("type") != "text":
                media.append((part_at, part))
        for name in ("name", "tool_call_id"):
            _check(message, name, lambda v: isinstance(v, str), "a string", at=at)
        _check(message, "tool_calls", lambda v: isinstance(v, list), "an array", at=at)
    _check_media(media)


def _check_media(media: list[tuple[str, dict[str, Any]]]) -> None:
    """Content parts other than text pass through unchanged (a remote ``image_url`` is only
    forwarded, never fetched here), within ``SLIPSTREAM_API_MAX_PARTS`` per request (400) and
    ``SLIPSTREAM_API_MAX_PART_BYTES`` each (413), counted on the inline data as sent."""
    if len(media) > settings.SLIPSTREAM_API_MAX_PARTS:
        raise invalid(
            f"Too many content parts other than text: {len(media)}; at most "
            f"{settings.SLIPSTREAM_API_MAX_PARTS} per request.",
            param=media[settings.SLIPSTREAM_API_MAX_PARTS][0],
            code="too_many_parts",
        )
    for param, part in media:
        size = _part_bytes(part)
        if size > settings.SLIPSTREAM_API_MAX_PART_BYTES:
            raise invalid(
                f"Content part '{param}' is {size:,} bytes; at most "
                f"{settings.SLIPSTREAM_API_MAX_PART_BYTES:,} bytes each.",
                param=param,
                code="part_too_large",
                status=413,
            )


def _part_bytes(part: dict[str, Any]) -> int:
    """The bytes of a content part's inline data: chat's ``image_url.url``, ``input_audio.data``
    and ``file.file_data`` (``ChatCompletionRequestMessageContentPart*``); the Responses API's
    ``image_url`` of an ``input_image`` and ``file_data`` of an ``input_file``
    (``InputContent``)."""
    nested = part.get(str(part.get("type")))
    if isinstance(nested, str):
        return len(nested)
    fields = nested if isinstance(nested, dict) else part
    data = (fields.get("url") or fields.get("image_url") or fields.get("data")) or fields.get(
        "file_data"
    )
    return len(data) if isinstance(data, str) else 0


# Content parts that are images, in chat completions and in the Responses API.
_IMAGE_PARTS = ("image_url", "input_image")


def has_images(body: dict[str, Any]) -> bool:
    """Whether a request's ``messages`` (chat) or ``input`` items (Responses) carry an image
    part."""
    items = body.get("messages") or body.get("input")
    return any(
        isinstance(part, dict) and part.get("type") in _IMAGE_PARTS
        for item in (items if isinstance(items, list) else ())
        if isinstance(item, dict) and isinstance(item.get("content"), list)
        for part in item["content"]
    )


def _refuse_images(slot: Slot, body: dict[str, Any], *, param: str) -> None:
    """``Refusal`` 400 ``images_not_supported`` when ``body`` has an image and ``slot`` does not
    accept images (its admin checkbox), before any call upstream."""
    if not slot.accepts_images and has_images(body):
        raise invalid(
            f"The model '{slot.name}' does not accept images.",
            param=param,
            code="images_not_supported",
        )


# A content part's fields that hold a URL: chat's ``image_url.url`` (and vLLM's ``video_url``
# and ``audio_url`` parts), the Responses API's ``image_url`` and ``file_url``; and those that
# hold inline data, checked only when their value is a URL (chat's ``file.file_data`` and
# ``input_audio.data``, the Responses API's ``file_data``).
_URL_FIELDS = ("url", "image_url", "file_url")
_DATA_FIELDS = ("file_data", "data")


async def _refuse_media_urls(slot: Slot, body: dict[str, Any]) -> None:
    """``Refusal`` 400 for the first URL in ``body``'s content parts that ``slot``'s
    ``media_urls`` policy keeps from the upstream (``chat.media_urls``), naming the field:
    ``invalid_image_url``, ``invalid_file_url`` or ``invalid_url``."""
    allow_hosts = settings.SLIPSTREAM_MEDIA_URL_ALLOW_HOSTS
    for at, part in _media_parts(body):
        for param, url in _part_urls(at, part):
            reason = await media_urls.refusal(url, policy=slot.media_urls, allow_hosts=allow_hosts)
            if reason is None:
                continue
            kind = part.get("type")
            code = "invalid_url"
            if kind in _IMAGE_PARTS:
                code = "invalid_image_url"
            elif kind in ("file", "input_file"):
                code = "invalid_file_url"
            raise invalid(f"Invalid '{param}': {reason}.", param=param, code=code)


def _media_parts(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(param, part)`` of the content parts other than text in chat's ``messages`` or the
    Responses API's ``input`` items: their ``content``, and a tool output's ``output`` (an
    array of input parts, or a ``computer_screenshot``)."""
    key = "messages" if "messages" in body else "input"
    items = body.get(key)
    found: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(items if isinstance(items, list) else ()):
        for name in ("content", "output") if isinstance(item, dict) else ():
            value = item.get(name)
            if isinstance(value, dict):
                found.append((f"{key}[{i}].{name}", value))
            for j, part in enumerate(value if isinstance(value, list) else ()):
                if isinstance(part, dict) and part.get("type") not in ("text", *_TEXT_PARTS):
                    found.append((f"{key}[{i}].{name}[{j}]", part))
    return found


def _part_urls(at: str, part: dict[str, Any]) -> list[tuple[str, str]]:
    """``(param, url)`` of the URLs in a content part (``at``: its param), in its object named
    after its type (chat's ``{"type": "image_url", "image_url": {"url": …}}``) or in itself."""
    nested = part.get(str(part.get("type")))
    fields, where = (nested, f"{at}.{part['type']}") if isinstance(nested, dict) else (part, at)
    return [
        (f"{where}.{name}", value)
        for name in (*_URL_FIELDS, *_DATA_FIELDS)
        if isinstance(value := fields.get(name), str)
        and (name in _URL_FIELDS or media_urls.is_url(value))
    ]


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
    _check(obj, name, ok, expected, at=at)
    return obj[name]


def _validate_tools(body: dict[str, Any]) -> None:
    """``tools`` and ``tool_choice`` after OpenAI's schema (``ChatCompletionTool``,
    ``CustomToolChatCompletions``, ``ChatCompletionToolChoiceOption``): a ``function`` object
    for a function tool (a tool without ``type`` is one, as local servers read it), a
    ``custom`` object for a custom tool; other types pass unchecked, for the backend to judge."""
    _check(body, "tools", lambda v: isinstance(v, list), "an array")
    for i, tool in enumerate(body.get("tools") or ()):
        at = f"tools[{i}]"
        _require_object(tool, at)
        _check(tool, "type", _is_str, "a string", at=at, nullable=False)
        kind = tool.get("type", "function")
        if kind == "function":
            function = _required(tool, "function", _is_object, "an object", at)
            _required(function, "name", _is_str, "a string", f"{at}.function")
            _check(
                function, "parameters", _is_object, "an object", at=f"{at}.function", nullable=False
            )
        elif kind == "custom":
            custom = _required(tool, "custom", _is_object, "an object", at)
            _required(custom, "name", _is_str, "a string", f"{at}.custom")
            for name, ok, expected in (
                ("description", _is_str, "a string"),
                ("format", _is_object, "an object"),
            ):
                _check(custom, name, ok, expected, at=f"{at}.custom", nullable=False)
    _check(body, "tool_choice", lambda v: isinstance(v, str | dict), "a string or an object")
    if isinstance(body.get("tool_choice"), dict):
        _validate_tool_choice(body["tool_choice"])


def _validate_tool_choice(choice: dict[str, Any]) -> None:
    """An object ``tool_choice``: ``ChatCompletionNamedToolChoice`` (also without ``type``),
    ``ChatCompletionNamedToolChoiceCustom`` or ``ChatCompletionAllowedToolsChoice``."""
    at = "tool_choice"
    _check(choice, "type", _is_str, "a string", at=at, nullable=False)
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
            _check(holder, name, ok, expected, at=at)


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


def cached_slot_config(slot: Slot, lookups: readcache.Lookups) -> SlotConfig:
    """``slot.config()`` for a slot from ``resolve_slot``, made once per ``readcache``
    version (``Lookups.derived``), not per call."""
    return lookups.derived(f"slot_config:{slot.pk}", slot.config)


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
    """What is known of one call so far, for its record when it is refused: ``admitted`` once
    past the quotas (it then counts against request budgets, whatever becomes of it), with
    the quota ``reservation`` (``chat.quotas``) that its record settles."""

    endpoint: str
    started_at: float = field(default_factory=time.monotonic)
    key: ApiKey | None = None
    slot_name: str = ""
    stream: bool = False
    admitted: bool = False
    reservation: int | None = None

    async def admit(
        self,
        lookups: readcache.Lookups,
        body: dict[str, Any] | None,
        slot: Slot,
        fields: list[str],
        prompt: Callable[[], tokenize.Prompt] | None = None,
    ) -> None:
        """Admit the call under its key's quotas (``quotas.admit``: 429 when one is used up;
        ``body``'s output limit, its ``fields``, capped at the tokens left after the prompt;
        None: no output). ``prompt()``: what the call sends as its prompt, counted on the
        slot's backend only when a token budget applies (``tokenize.count``)."""
        assert self.key is not None
        counter = None
        if prompt is not None:
            cfg = cached_slot_config(slot, lookups)
            counter = tokenize.counter(cfg.backend, cfg.upstream_model, prompt)
        self.reservation = await quotas.admit(
            user=self.key.user,
            api_key=self.key,
            lookups=lookups,
            request=body,
            default=slot.max_tokens,
            fields=fields,
            prompt=counter,
        )
        self.admitted = True


async def _create_completion(
    request: HttpRequest, *, endpoint: str
) -> HttpResponse | StreamingHttpResponse:
    """Django's adapter of ``create_completion``: the body read from ``request``."""
    if request.method != "POST":
        return method_not_allowed(request, allowed="POST")
    answer = await create_completion(
        endpoint=endpoint,
        authorization=request.headers.get("Authorization", ""),
        read_body=lambda: jsonbody.read_object(
            request, max_bytes=settings.SLIPSTREAM_API_MAX_BODY_BYTES
        ),
    )
    return answer if isinstance(answer, HttpResponse) else sse_response(answer)


async def create_completion(
    *, endpoint: str, authorization: str, read_body: Callable[[], dict[str, Any]]
) -> JsonResponse | AsyncGenerator[bytes, None]:
    """One ``POST /v1/chat/completions`` (``endpoint`` ``CHAT``) or ``/v1/completions``
    (``TEXT``), for any HTTP adapter (this module's views, ``chat.api_asgi``): authenticate
    ``authorization`` (the header's value), read the body (``read_body()``: the JSON object,
    or raises an ``EnvelopeError``: 400, 413), check it, resolve the slot, then answer whole
    (``_whole_completion``: a ``JsonResponse``) or stream (``_streamed_completion``: the SSE
    events' bytes, for a ``text/event-stream`` body). A refusal or a failure before the first
    chunk is a ``JsonResponse`` with OpenAI's error envelope and the error's status, recorded
    when the key is known."""
    call = _Call(endpoint)
    lookups = readcache.Lookups()
    try:
        call.key = await authenticate_header(authorization, lookups)
        body = read_body()
        validate(body, chat=endpoint == CHAT)
        call.slot_name, call.stream = body["model"], bool(body.get("stream"))
        slot = await resolve_slot(call.slot_name, call.key, lookups)
        if endpoint == CHAT:
            _refuse_images(slot, body, param="messages")
            await _refuse_media_urls(slot, body)
        fields = quotas.CHAT_OUTPUT_LIMITS if endpoint == CHAT else ["max_tokens"]
        cfg = cached_slot_config(slot, lookups)
        await call.admit(lookups, body, slot, fields, _prompt_of(cfg, body, chat=endpoint == CHAT))
        if not call.stream:
            return await _whole_completion(call, call.key, slot, cfg, body)
        return await _streamed_completion(call, call.key, slot, cfg, body)
    except EnvelopeError as exc:
        return await _refused(call, exc)
    except BaseException:
        quotas.release_soon(call.reservation)  # cancelled (the client left), or a bug
        raise


def _prompt_of(
    cfg: SlotConfig, body: dict[str, Any], *, chat: bool
) -> Callable[[], tokenize.Prompt]:
    """The prompt a completion sends upstream (the slot's system prompt and defaults
    applied), made when it is counted."""

    def prompt() -> tokenize.Prompt:
        if chat:
            sent = dispatch.request_body(cfg, body, chat=True, stream=False)
            return tokenize.chat_prompt(sent["messages"])
        return tokenize.completion_prompt(body.get("prompt"))

    return prompt


async def _whole_completion(
    call: _Call, key: ApiKey, slot: Slot, cfg: SlotConfig, body: dict[str, Any]
) -> JsonResponse:
    """A non-streaming call on ``slot`` (``cfg``: its config), the upstream's answer passed
    through with ``id`` and ``model`` made ours. Raises ``RelayError``."""
    result = await dispatch.complete_whole(cfg, call.endpoint, body)
    result["model"] = slot.name
    result["id"] = _id_prefix(call.endpoint == CHAT) + uuid.uuid4().hex
    chat = call.endpoint == CHAT
    return await _answered(
        call,
        key,
        slot,
        result,
        result.get("usage"),
        messages=body.get("messages"),
        chunk=responses.whole_as_chunk(result) if chat else None,
    )


async def _answered(
    call: _Call,
    key: ApiKey,
    slot: Slot,
    body: dict[str, Any],
    usage: dict[str, Any] | None,
    *,
    messages: list[Any] | None = None,
    chunk: dict[str, Any] | None = None,
) -> JsonResponse:
    """A whole (non-streamed) answer, its call recorded as complete with ``usage`` (chat
    completions' words: prompt and completion tokens) and kept as a conversation when the key
    says so (``messages``: the chat request's; ``chunk``: the answer as one chat chunk)."""
    await answers.record_whole_api_call(
        key=key,
        slot=slot,
        endpoint=call.endpoint,
        started_at=call.started_at,
        usage=usage,
        messages=messages,
        chunk=chunk,
        reservation=call.reservation,
    )
    return JsonResponse(body)


async def _streamed_completion(
    call: _Call, key: ApiKey, slot: Slot, cfg: SlotConfig, body: dict[str, Any]
) -> AsyncGenerator[bytes, None]:
    """A streaming call on ``slot`` (``cfg``: its config): its SSE events' bytes. The HTTP
    status is held until the first chunk (or the first keep-alive is due), so a failure before
    it, after the dispatcher's retries, is a real 4xx/5xx answer: raises its ``RelayError``."""
    generation = await _first_chunk(
        await dispatch.submit(cfg, call.endpoint, body, started_at=call.started_at)
    )
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
            reservation=call.reservation,
        )

    return streaming.api_sse(generation, rewriter, on_leave=record)


# ------------------------------------------------------------------------------------------------
# /v1/responses
# ------------------------------------------------------------------------------------------------
RESPONSES = "responses"
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
    _check_media(media)


def _validate_item(item: Any, at: str) -> list[tuple[str, dict[str, Any]]]:
    """Checks the input items Slipstream reads (OpenAPI ``InputItem``: messages, function and
    custom tool calls and their outputs); returns a message's parts other than text."""
    _require_object(item, at)
    _check(item, "type", _is_str, "a string", at=at, nullable=False)
    kind = item.get("type", "message")
    if kind == "message":
        return _validate_message_item(item, at)
    if kind in ("function_call", "custom_tool_call"):
        value = "arguments" if kind == "function_call" else "input"
        for name in ("call_id", "name", value):
            _require(item, name, _is_str, "a string", at)
        _check(item, "namespace", _is_str, "a string", at=at)
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
            _check(part, "text", _is_str, "a string", at=f"{at}.output[{j}]", nullable=False)
    return []


# Content parts of the Responses API that are text (the rest count against the media limits).
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal")


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
        _check(part, "text", _is_str, "a string", at=f"{at}.content[{j}]", nullable=False)
    parts = item["content"] if isinstance(item["content"], list) else []
    return [
        (f"{at}.content[{j}]", part)
        for j, part in enumerate(parts)
        if part["type"] not in _TEXT_PARTS
    ]


def _validate_response_tools(body: dict[str, Any]) -> None:
    """The tools Slipstream reads (function, custom, namespace: OpenAPI ``FunctionToolParam``,
    ``CustomToolParam``, ``NamespaceToolParam``); a hosted tool needs only its ``type``."""
    _check(body, "tools", lambda v: isinstance(v, list), "an array")
    for i, tool in enumerate(body.get("tools") or ()):
        at = f"tools[{i}]"
        _validate_response_tool(tool, at)
        if tool["type"] == "namespace":
            _check(tool, "description", _is_str, "a string", at=at)
            inner = tool.get("tools")
            if not isinstance(inner, list) or not inner:
                raise invalid(
                    f"Missing or invalid '{at}.tools': expected a non-empty array of function "
                    "and custom tools.",
                    param=f"{at}.tools",
                )
            for j, member in enumerate(inner):
                _validate_response_tool(member, f"{at}.tools[{j}]", within=("function", "custom"))
    _check(body, "tool_choice", lambda v: isinstance(v, str | dict), "a string or an object")
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
    _check(tool, "name", _is_str, "a string", at=at, nullable=False)
    if not tool.get("name"):
        raise invalid(f"Missing required parameter: '{at}.name'.", param=f"{at}.name")
    _check(tool, "description", _is_str, "a string", at=at)
    if tool["type"] == "function":
        _check(tool, "parameters", lambda v: isinstance(v, dict), "an object", at=at)
        _check(tool, "strict", lambda v: isinstance(v, bool), "a boolean", at=at)
    elif tool["type"] == "custom":
        _check(tool, "format", lambda v: isinstance(v, dict), "an object", at=at)


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
        _check(body, name, _is_str, "a string")
    for name in ("stream", "store", "parallel_tool_calls", "background"):
        _check(body, name, lambda v: isinstance(v, bool), "a boolean")
    for name in ("max_output_tokens", "top_logprobs"):
        _check(body, name, _is_int, "an integer")
    for name in ("temperature", "top_p"):
        _check(body, name, _is_number, "a number")
    for name in ("text", "reasoning", "metadata"):
        _check(body, name, lambda v: isinstance(v, dict), "an object")
    _check(body.get("text") or {}, "format", lambda v: isinstance(v, dict), "an object", at="text")
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
    if _is_int(body.get("max_output_tokens")) and body["max_output_tokens"] < 1:
        raise _out_of_range("max_output_tokens", "must be at least 1")
    if _is_number(body.get("temperature")) and not 0 <= body["temperature"] <= 2:
        raise _out_of_range("temperature", "must be from 0 to 2")
    if _is_number(body.get("top_p")) and not 0 <= body["top_p"] <= 1:
        raise _out_of_range("top_p", "must be from 0 to 1")
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


def _new_response_id() -> str:
    return "resp_" + uuid.uuid4().hex


def _response_not_found(response_id: str, *, param: str | None = None) -> Refusal:
    """OpenAI's wording for an unknown (or another user's) response id."""
    return invalid(
        f"Response with id '{response_id}' not found.", status=404, param=param, code=None
    )


@csrf_exempt
async def create_response(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """``POST /v1/responses``, streaming or not, on the slot's dispatcher: passed to the
    backend's own ``/responses`` (``Backend.responses_api``: native, or ``auto`` until a 404
    says it has none) or translated to chat completions (``chat.relay.responses``); stored
    unless ``store`` is false. A backend set to native that answers 404, 405 or 501 there is
    translated for too (``_native_missing``): the client asked for a model that exists."""
    if request.method != "POST":
        return method_not_allowed(request, allowed="POST")
    call = _Call(RESPONSES)
    try:
        turn = await _read_turn(call, request)
        cfg = turn.slot.config()
        if _goes_native(cfg):
            try:
                if not call.stream:
                    return await _whole_native_response(call, turn, cfg)
                return await _streamed_native_response(call, turn, cfg)
            except RelayError as exc:
                if not await _without_responses_api(cfg, exc):
                    raise
        if not call.stream:
            return await _whole_response(call, turn)
        return await _streamed_response(call, turn)
    except responses.TranslationError as exc:
        return await _refused(call, invalid(str(exc), param=exc.param))
    except EnvelopeError as exc:
        return await _refused(call, exc)
    except BaseException:
        quotas.release_soon(call.reservation)  # cancelled (the client left), or a bug
        raise


async def _read_turn(call: _Call, request: HttpRequest) -> _ResponseTurn:
    """Authenticate, read and check a ``POST /v1/responses``, resolve its slot and its
    ``previous_response_id`` chain, then admit it under its quotas. Raises ``Refusal``."""
    lookups = readcache.Lookups()
    call.key = await authenticate(request, lookups)
    body = jsonbody.read_object(request, max_bytes=settings.SLIPSTREAM_API_MAX_BODY_BYTES)
    validate_response_request(body)
    call.slot_name, call.stream = body["model"], bool(body.get("stream"))
    slot = await resolve_slot(call.slot_name, call.key, lookups)
    _refuse_images(slot, body, param="input")
    await _refuse_media_urls(slot, body)
    previous_id = body.get("previous_response_id")
    history_items: list[dict[str, Any]] = []
    if previous_id:
        chain = await selectors.response_achain(user=call.key.user, response_id=previous_id)
        if chain is None:
            raise _response_not_found(previous_id, param="previous_response_id")
        for earlier in chain:
            history_items += earlier.input_items
            history_items += [
                o for o in earlier.response.get("output") or () if o.get("type") != "reasoning"
            ]
    # Last: a 404 above counts not.
    await call.admit(
        lookups,
        body,
        slot,
        ["max_output_tokens"],
        lambda: tokenize.responses_prompt(body, history=history_items),
    )
    response_id = _new_response_id()
    return _ResponseTurn(
        call.key,
        slot,
        body,
        responses.skeleton(
            body, response_id=response_id, model=slot.name, created_at=int(time.time())
        ),
        responses.input_items(body["input"], response_id=response_id),
        previous_id,
        history_items,
    )


async def _refused(call: _Call, exc: EnvelopeError) -> JsonResponse:
    """A call refused or failed before its answer began: recorded when the key is known,
    counted against request budgets only once admitted (its reservation settled: one request,
    no tokens)."""
    if call.key is not None:
        await services.api_call_arecord(
            api_key=call.key,
            endpoint=call.endpoint,
            slot_name=call.slot_name,
            stream=call.stream,
            http_status=exc.status,
            outcome="error",
            started_at=call.started_at,
            error=exc,
            admitted=call.admitted,
            reservation=call.reservation,
        )
    return error_response(exc)


@dataclass(slots=True)
class _ResponseTurn:
    """One ``POST /v1/responses`` once read: the request ``body``, the ``initial`` response
    object, this request's input ``items``, the items of its ``previous_response_id`` chain.
    ``chat_body()`` is the chat completions request it is translated to, made when a
    translated backend is to answer: a backend with its own Responses API gets the request as
    the client sent it, hosted tools and all."""

    key: ApiKey
    slot: Slot
    body: dict[str, Any]
    initial: dict[str, Any]
    items: list[dict[str, Any]]
    previous_id: str | None
    history_items: list[dict[str, Any]]
    _chat: dict[str, Any] | None = None
    omitted: list[str] = field(default_factory=list)  # hosted tool types left out

    @property
    def store(self) -> bool:
        return self.body.get("store", True) is not False

    def chat_body(self) -> dict[str, Any]:
        """The translated request under the slot's hosted-tool policy (``Slot.hosted_tools``).
        Raises ``TranslationError``."""
        if self._chat is None:
            self._chat, self.omitted = self._translated(self.slot.hosted_tools)
            if self.omitted:
                logger.info(
                    "response %s on slot %s: hosted tools left out (the slot's policy): %s",
                    self.initial["id"],
                    self.slot.name,
                    ", ".join(self.omitted),
                )
        return self._chat

    def messages(self) -> list[dict[str, Any]]:
        """The turn's chat messages, as a key that keeps conversations keeps them: the
        translated request's, or for a native backend the same said leniently (hosted tools
        left out; nothing when the input has what chat cannot say)."""
        if self._chat is not None:
            return list(self._chat["messages"])
        try:
            messages: list[dict[str, Any]] = self._translated(responses.OMIT)[0]["messages"]
        except responses.TranslationError:
            return []
        return messages

    def _translated(self, policy: str) -> tuple[dict[str, Any], list[str]]:
        tools = responses.ToolTranslation(self.body.get("tools") or (), policy=policy)
        history = responses.items_to_messages(
            self.history_items, at="previous_response", tools=tools
        )
        chat = responses.chat_request(self.body, history=history, items=self.items, tools=tools)
        return chat, tools.omitted

    def noted(self, response: HttpResponse | StreamingHttpResponse) -> None:
        """``response`` with the hosted tools left out named in ``Slipstream-Omitted-Tools``
        (a comma-separated list of tool and item types), once per response."""
        if self.omitted:
            response["Slipstream-Omitted-Tools"] = ", ".join(self.omitted)

    def native_body(self) -> dict[str, Any]:
        """The request for a backend's own ``/responses``: the client's, with a
        ``previous_response_id`` chain spelled out as input items (the backend never saw our
        ids), without our ids and statuses on them."""
        body = {k: v for k, v in self.body.items() if k != "previous_response_id"}
        if self.history_items:
            given = body["input"]
            now = [{"role": "user", "content": given}] if isinstance(given, str) else given
            body["input"] = [_as_sent(item) for item in self.history_items] + now
        return body


def _as_sent(item: dict[str, Any]) -> dict[str, Any]:
    """A stored item as input for a backend: message items lose the id and status we gave
    them; the backend's own items (function calls) keep theirs."""
    if item.get("type", "message") != "message":
        return item
    return {k: v for k, v in item.items() if k not in ("id", "status")}


# A backend without the Responses API answers its path so (vLLM and llama-server: 404).
_NO_RESPONSES_API = frozenset({404, 405, 501})


# Backends set to native (``Backend.responses_api``) found without /responses, in this process:
# backend id -> when found (time.monotonic() s). The operator's setting stays as they made it;
# the backend is asked again after ``NATIVE_RECHECK_S`` (an upgrade, a model server swapped).
_missing_native: dict[int, float] = {}
# Backends already warned of, in this process: one warning each, not one per request.
_warned_native: set[int] = set()
NATIVE_RECHECK_S = 600.0


async def _without_responses_api(cfg: SlotConfig, exc: RelayError) -> bool:
    """Whether ``exc``, a native call's failure, says that the backend has no ``/responses``
    (404, 405, 501), so that the request is to be translated; what is learnt is kept: ``auto``
    stored as translate, ``native`` remembered in this process (``_native_missing``)."""
    # The slot whose call failed: a fallback's backend may lack what the primary's has, and
    # what is learnt belongs to the backend that answered.
    failed = cfg.in_chain(exc.slot)
    if exc.upstream_status not in _NO_RESPONSES_API or failed.responses_native is False:
        return False
    if failed.responses_native is None:
        await services.backend_anote_responses_api(backend_id=failed.backend_id, native=False)
    else:
        await _native_missing(failed, exc.upstream_status)
    return True


async def _native_missing(failed: SlotConfig, status: int | None) -> None:
    """``failed``'s backend is set to native but answered ``status`` (404, 405, 501) on its
    ``/responses``: translate for it in this process for ``NATIVE_RECHECK_S``, and say so
    once per backend (a WARNING naming the backend and the setting to change)."""
    _missing_native[failed.backend_id] = time.monotonic()
    if failed.backend_id in _warned_native:
        return
    _warned_native.add(failed.backend_id)
    name = (
        await Backend.objects.filter(pk=failed.backend_id).values_list("name", flat=True).afirst()
    )
    logger.warning(
        'backend "%s" (id %s, %s) is set to Responses API "native" but answered HTTP %s on '
        "/responses: its Responses requests are translated to chat completions in this "
        'process. Set its Responses API to "auto" or "translate" in the admin.',
        name,
        failed.backend_id,
        failed.backend.base_url,
        status,
    )


def _native_for(slot: SlotConfig) -> bool:
    """Whether ``slot``'s backend may have its own ``/responses`` (native, or not known yet),
    unless this process found a native one without it within ``NATIVE_RECHECK_S``."""
    if slot.responses_native is False:
        return False
    found = _missing_native.get(slot.backend_id)
    if found is None:
        return True
    if time.monotonic() - found < NATIVE_RECHECK_S:
        return False
    _missing_native.pop(slot.backend_id, None)
    return True


def _goes_native(cfg: SlotConfig) -> bool:
    """Whether a Responses request goes to the backend's own ``/responses``: when every slot
    of the fallback chain may have one (``_native_for``) and none has stop strings (the relay
    cuts those from chat deltas only)."""
    return all(_native_for(c) and not c.stop for c in cfg.chain())


async def _noted_native(answered: SlotConfig) -> None:
    """The slot that ``answered`` (the primary, or a fallback) has an ``auto`` backend that
    answered on its own ``/responses``: remember it."""
    if answered.responses_native is None:
        await services.backend_anote_responses_api(backend_id=answered.backend_id, native=True)


async def _whole_native_response(call: _Call, turn: _ResponseTurn, cfg: SlotConfig) -> JsonResponse:
    """A non-streaming response from the backend's own ``/responses``: its response object
    with our id, model, ``store`` and ``previous_response_id``. Raises ``RelayError``."""
    result, answered = await dispatch.call_whole(cfg, RESPONSES, turn.native_body())
    if result.get("object") != "response" or not isinstance(result.get("output"), list):
        raise RelayError(
            "upstream answered /responses with a body that is not a response object",
            code="upstream_malformed_body",
        )
    await _noted_native(answered)
    ours = {name: turn.initial[name] for name in ("id", "model", "store", "previous_response_id")}
    response = {**result, **ours}
    usage: dict[str, Any] = result.get("usage") or {}
    chat_usage = {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
    }
    return await _whole_ended(call, turn, response, responses.response_as_chunk(result), chat_usage)


async def _whole_ended(
    call: _Call,
    turn: _ResponseTurn,
    response: dict[str, Any],
    chunk: dict[str, Any],
    usage: dict[str, Any] | None,
) -> JsonResponse:
    """A non-streamed response's end: stored (unless ``store`` is false) with the one chat
    chunk a resumed stream of it is rendered from, its call recorded (``usage`` in chat
    completions' words) and kept as a conversation when the key says so, and answered."""
    if turn.store:
        await _store_whole(turn, response, chunk)
    return await _answered(
        call,
        turn.key,
        turn.slot,
        response,
        usage,
        messages=turn.messages(),
        chunk=chunk,
    )


async def _store_whole(
    turn: _ResponseTurn, response: dict[str, Any], chunk: dict[str, Any]
) -> None:
    """One INSERT (``services.response_acreate``: kept through a database outage); a refusal
    is logged, never raised: the client gets its answer."""
    await services.response_acreate(
        response_id=response["id"],
        user=turn.key.user,
        api_key=turn.key,
        previous_id=turn.previous_id,
        slot_name=turn.slot.name,
        response=response,
        input_items=turn.items,
        chunks=[json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)],
    )


async def _streamed_native_response(
    call: _Call, turn: _ResponseTurn, cfg: SlotConfig
) -> StreamingHttpResponse:
    """A streamed response from the backend's own ``/responses``, relayed event by event
    (``NativeEvents``). Raises ``RelayError`` before the first event."""
    generation = await _first_chunk(
        await dispatch.submit(cfg, RESPONSES, turn.native_body(), started_at=call.started_at)
    )
    if generation.chunks:
        # Its first event came from the slot that answered; held only until the first
        # keep-alive, the call may not have reached one yet: the next call finds out then.
        await _noted_native(cfg.in_chain(generation.slot))
    return _stream_response(call, turn, generation, native=True)


async def _whole_response(call: _Call, turn: _ResponseTurn) -> JsonResponse:
    """A non-streaming response: one chat completion, rendered as the response object.
    Raises ``RelayError``."""
    result = await dispatch.complete_whole(turn.slot.config(), CHAT, turn.chat_body())
    chunk = responses.whole_as_chunk(result)
    _, response = responses.render(
        turn.initial,
        [chunk],
        completed_at=turn.initial["created_at"] + round(time.monotonic() - call.started_at),
    )
    answered = await _whole_ended(call, turn, response, chunk, result.get("usage"))
    turn.noted(answered)
    return answered


async def _streamed_response(call: _Call, turn: _ResponseTurn) -> StreamingHttpResponse:
    """A streamed response, with the same held status as ``_streamed_completion``: a failure
    before the first chunk is an HTTP error. Raises ``RelayError``."""
    generation = await _first_chunk(
        await dispatch.submit(
            turn.slot.config(), CHAT, turn.chat_body(), started_at=call.started_at
        )
    )
    streamed = _stream_response(call, turn, generation, native=False)
    turn.noted(streamed)
    return streamed


def _stream_response(
    call: _Call, turn: _ResponseTurn, generation: Generation, *, native: bool
) -> StreamingHttpResponse:
    """The SSE response of a started generation: stored ``in_progress`` off the first byte's
    path (unless ``store`` is false), its end recorded (settling ``call``'s quota reservation)
    when the client leaves."""
    stored = (
        answers.store_response_start(
            key=turn.key,
            slot=turn.slot,
            initial=turn.initial,
            items=turn.items,
            previous_id=turn.previous_id,
            generation=generation,
            native=native,
        )
        if turn.store
        else None
    )

    messages = turn.messages()

    async def record(read_to_end: bool) -> None:
        await answers.record_response(
            key=turn.key,
            slot=turn.slot,
            initial=turn.initial,
            generation=generation,
            messages=messages,
            stored=stored,
            read_to_end=read_to_end,
            native=native,
            reservation=call.reservation,
        )

    if native:
        events = streaming.native_responses_sse(
            generation, NativeEvents(turn.initial), on_leave=record
        )
    else:
        events = streaming.responses_sse(generation, ResponseEvents(turn.initial), on_leave=record)
    return sse_response(events)


async def _first_chunk(submitted: tuple[Generation, bool]) -> Generation:
    """The submitted generation once its first chunk is here or the first keep-alive is due
    (the HTTP status is held until then). Raises the generation's ``RelayError`` when it
    failed before any chunk; the generation is detached then."""
    generation, _ = submitted
    try:
        await generation.wait_started(settings.SLIPSTREAM_KEEPALIVE_S)
    except BaseException:
        generation.detach()
        raise
    if generation.ended and not generation.chunks and generation.error is not None:
        generation.detach()
        raise generation.error
    return generation


async def _owned_response(request: HttpRequest, response_id: str) -> tuple[ApiKey, StoredResponse]:
    """The key and the key's user's stored response ``response_id``. Raises ``Refusal`` 401 or
    404 (also for another user's response)."""
    key = await authenticate(request, readcache.Lookups())
    stored = await selectors.response_aget(user=key.user, response_id=response_id)
    if stored is None:
        raise _response_not_found(response_id)
    return key, stored


@csrf_exempt
async def response_detail(
    request: HttpRequest, response_id: str
) -> HttpResponse | StreamingHttpResponse:
    """``GET /v1/responses/{id}`` (``?stream=true&starting_after=N``: its stream's events
    after number N, live while it streams) and ``DELETE /v1/responses/{id}``."""
    if request.method not in ("GET", "DELETE"):
        return method_not_allowed(request, allowed="GET, DELETE")
    try:
        key, stored = await _owned_response(request, response_id)
        if request.method == "DELETE":
            await services.response_adelete(user=key.user, response_id=response_id)
            return JsonResponse({"id": response_id, "object": "response", "deleted": True})
        if request.GET.get("stream", "").lower() != "true":
            return JsonResponse(stored.response)
        after = _int_query(request, "starting_after", default=-1)
        return await _resumed_stream(stored, after)
    except EnvelopeError as exc:
        return error_response(exc)


def _int_query(request: HttpRequest, name: str, *, default: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid(
            f"Invalid '{name}': expected an integer.", param=name, code="invalid_value"
        ) from None


async def _resumed_stream(stored: StoredResponse, after: int) -> StreamingHttpResponse:
    """A stored response's stream from event ``after`` + 1: live from its generation while it
    runs (here, or mirrored from its process), else rendered again from its stored chunks."""
    if stored.status == StoredResponse.Status.IN_PROGRESS:
        generation = await answers.running(
            stored.generation_id, slot_name=stored.slot_name, streaming=True
        )
        if generation is not None and stored.native:
            return sse_response(
                streaming.native_responses_sse(
                    generation, NativeEvents(stored.response), starting_after=after
                )
            )
        if generation is not None:
            events = ResponseEvents(stored.response)
            return sse_response(streaming.responses_sse(generation, events, starting_after=after))
    chunks = services.unpack_chunks(stored.chunks)
    if stored.native:
        encoded, numbers, _ = responses.render_native(
            responses.initial_of(stored.response),
            chunks,
            cancelled=stored.status == StoredResponse.Status.CANCELLED,
            error=stored.response.get("error"),
        )
        body = b"".join(e for e, n in zip(encoded, numbers, strict=True) if n > after)
    else:
        replayed = responses.replay(stored.response, chunks)
        body = b"".join(ResponseEvents.encode(e) for e in replayed if e["sequence_number"] > after)

    async def events_once() -> AsyncGenerator[bytes, None]:
        yield body

    return sse_response(events_once())


@csrf_exempt
async def response_input_items(request: HttpRequest, response_id: str) -> HttpResponse:
    """``GET /v1/responses/{id}/input_items``: the response's input items, as a list page
    (``limit`` 1 to 100, default 20; ``order`` ``desc`` by default, or ``asc``; ``after`` an item
    id), OpenAI's ``ResponseItemList``."""
    if request.method != "GET":
        return method_not_allowed(request, allowed="GET")
    try:
        _, stored = await _owned_response(request, response_id)
        limit = _int_query(request, "limit", default=20)
        if not 1 <= limit <= 100:
            raise _out_of_range("limit", "must be from 1 to 100")
        order = request.GET.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid("Invalid 'order': expected 'asc' or 'desc'.", param="order")
        items = list(stored.input_items)
        if order == "desc":
            items.reverse()
        after = request.GET.get("after")
        if after:
            ids = [item.get("id") for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return JsonResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )
    except EnvelopeError as exc:
        return error_response(exc)


@csrf_exempt
async def cancel_response(request: HttpRequest, response_id: str) -> HttpResponse:
    """``POST /v1/responses/{id}/cancel``: stop a response in progress; returns it as it
    ended (``cancelled``)."""
    if request.method != "POST":
        return method_not_allowed(request, allowed="POST")
    try:
        _, stored = await _owned_response(request, response_id)
        return JsonResponse(await answers.cancel_response(stored))
    except EnvelopeError as exc:
        return error_response(exc)


# ------------------------------------------------------------------------------------------------
# /v1/embeddings
# ------------------------------------------------------------------------------------------------
EMBEDDINGS = "embeddings"


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    """``POST /v1/embeddings``: passed to the slot's backend through its dispatcher (queue,
    retries, fallback), ``model`` made the slot's name again in the answer."""
    if request.method != "POST":
        return method_not_allowed(request, allowed="POST")
    call = _Call(EMBEDDINGS)
    lookups = readcache.Lookups()
    try:
        call.key = await authenticate(request, lookups)
        body = jsonbody.read_object(request, max_bytes=settings.SLIPSTREAM_API_MAX_BODY_BYTES)
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise invalid("you must provide a model parameter", param="model")
        if "input" not in body:
            raise invalid("Missing required parameter: 'input'.", param="input")
        _check(
            body,
            "input",
            _is_prompt,
            "a string, an array of strings, an array of tokens or an array of token arrays",
            nullable=False,
        )
        if isinstance(body["input"], list) and not body["input"]:
            raise invalid("'input' must not be empty.", param="input")
        _check(body, "encoding_format", lambda v: v in ("float", "base64"), "'float' or 'base64'")
        _check(body, "dimensions", _is_int, "an integer")
        call.slot_name = body["model"]
        slot = await resolve_slot(call.slot_name, call.key, lookups)
        await call.admit(lookups, None, slot, [], lambda: tokenize.completion_prompt(body["input"]))
        result, _ = await dispatch.call_whole(slot.config(), EMBEDDINGS, body)
        result["model"] = slot.name
        return await _answered(call, call.key, slot, result, result.get("usage"))
    except EnvelopeError as exc:
        return await _refused(call, exc)
    except BaseException:
        quotas.release_soon(call.reservation)  # cancelled (the client left), or a bug
        raise
