"""The ``/v1`` API: OpenAI's wire format, so the official SDKs work by changing ``base_url``.

Rules follow the OpenAI API reference (Chat Completions, Completions, Models, "Error codes"):
errors are ``{"error": {"message", "type", "param", "code"}}``; streams are SSE ``data:``
events of ``chat.completion.chunk`` (or ``text_completion``) objects ending in ``data: [DONE]``;
a failure after the stream began is one final ``data: {"error": …}`` event, which the SDKs raise
as ``APIError`` during iteration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat import selectors, services
from chat.http import error_response, invalid, sse_response
from chat.models import ApiKey, Slot
from chat.relay import dispatch
from chat.relay.errors import RelayError
from chat.relay.generation import KEEPALIVE, Generation
from chat.relay.sse import DONE_EVENT, KEEPALIVE_COMMENT
from chat.relay.upstream import Chunk

logger = logging.getLogger(__name__)


async def authenticate(request: HttpRequest) -> ApiKey:
    """The API key of ``Authorization: Bearer <key>``. Raises ``RelayError`` 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise invalid(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            status=401,
            code="invalid_api_key",
        )
    key = await services.api_key_aauthenticate(raw=raw.strip())
    if key is None:
        shown = raw.strip()[:12]
        raise invalid(
            f"Incorrect API key provided: {shown}…. Create one on your Slipstream API keys page.",
            status=401,
            code="invalid_api_key",
        )
    return key


def read_json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object. Raises ``RelayError`` 413 over the size limit, 400 otherwise."""
    limit = settings.SLIPSTREAM_API_MAX_BODY_BYTES
    too_big = invalid(
        f"Request body is over the limit of {limit} bytes.", status=413, code="request_too_large"
    )
    try:
        if int(request.headers.get("Content-Length") or 0) > limit:
            raise too_big
        raw = request.body
    except RequestDataTooBig as exc:
        raise too_big from exc
    except ValueError as exc:
        raise invalid("Invalid Content-Length header.") from exc
    if len(raw) > limit:
        raise too_big
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)"
        ) from exc
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    return body


def _check(body: dict[str, Any], name: str, ok: Callable[[Any], bool], expected: str) -> None:
    if name in body and body[name] is not None and not ok(body[name]):
        raise invalid(
            f"Invalid type for '{name}': expected {expected}, but got {type(body[name]).__name__}.",
            param=name,
            code="invalid_type",
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate(body: dict[str, Any], *, chat: bool) -> None:
    """Type checks for the fields Slipstream itself reads or that upstreams commonly mishandle.
    Raises ``RelayError`` 400 naming the ``param``. Everything else passes through unchecked."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("you must provide a model parameter", param="model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise invalid(
                "'messages' must be a non-empty array of message objects.", param="messages"
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise invalid(
                    f"Invalid value for 'messages[{i}]': a message is an object with a 'role'.",
                    param=f"messages[{i}]",
                )
    else:
        _check(body, "prompt", lambda v: isinstance(v, str | list), "a string or an array")
        if "prompt" not in body:
            raise invalid("you must provide a prompt parameter", param="prompt")
    _check(body, "stream", lambda v: isinstance(v, bool), "a boolean")
    _check(body, "stream_options", lambda v: isinstance(v, dict), "an object")
    for name in ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs"):
        _check(body, name, _is_int, "an integer")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _check(body, name, _is_number, "a number")
    _check(
        body,
        "stop",
        lambda v: (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
        ),
        "a string or an array of strings",
    )
    if _is_int(body.get("n")) and body["n"] < 1:
        raise invalid("Invalid 'n': must be at least 1.", param="n")


async def resolve_slot(name: str, key: ApiKey) -> Slot:
    """The enabled slot called ``name`` that the key's user may use. Raises ``RelayError`` 404
    ``model_not_found`` (also for a slot limited to groups the user is not in)."""
    slot = await selectors.slot_aget_cached(name=name, user=key.user) if name else None
    if slot is None:
        raise invalid(
            f"The model `{name}` does not exist or you do not have access to it.",
            status=404,
            code="model_not_found",
        )
    return slot


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
    try:
        if request.method != "GET":
            raise invalid("Method not allowed.", status=405)
        key = await authenticate(request)
        if model is not None:
            return JsonResponse(model_object(await resolve_slot(model, key)))
        slots = [model_object(slot) async for slot in selectors.slot_list_enabled(user=key.user)]
        return JsonResponse({"object": "list", "data": slots})
    except RelayError as exc:
        return error_response(exc)


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """``POST /v1/chat/completions``, streaming or not."""
    return await _completion(request, chat=True)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """``POST /v1/completions`` (legacy text completions), streaming or not."""
    return await _completion(request, chat=False)


async def _completion(request: HttpRequest, *, chat: bool) -> HttpResponse | StreamingHttpResponse:
    started_at = time.monotonic()
    endpoint = "chat/completions" if chat else "completions"
    key: ApiKey | None = None
    slot_name = ""
    stream = False
    try:
        if request.method != "POST":
            raise invalid("Method not allowed.", status=405)
        key = await authenticate(request)
        body = read_json_body(request)
        validate(body, chat=chat)
        slot_name = body["model"]
        slot = await resolve_slot(slot_name, key)
        config = services.slot_config(slot)
        stream = bool(body.get("stream"))
        if not stream:
            return await _complete(
                key=key,
                slot=slot,
                config=config,
                body=body,
                chat=chat,
                endpoint=endpoint,
                started_at=started_at,
            )
        generation, _ = await dispatch.submit(config, endpoint, body, started_at=started_at)
        try:
            # Hold the HTTP status until the first chunk (or the first keep-alive is due), so a
            # failure before it, after the dispatcher's retries, is a real 4xx/5xx answer.
            await generation.wait_started(settings.SLIPSTREAM_KEEPALIVE_S)
        except BaseException:
            generation.detach()
            raise
        if generation.ended and not generation.chunks and generation.error is not None:
            generation.detach()
            raise generation.error
    except RelayError as exc:
        if key is not None:
            await services.api_call_arecord(
                api_key=key,
                endpoint=endpoint,
                slot_name=slot_name,
                stream=stream,
                http_status=exc.status,
                outcome="error",
                started_at=started_at,
                error=exc,
            )
        return error_response(exc)
    client_options = body.get("stream_options") or {}
    return sse_response(
        _stream_events(
            key=key,
            slot=slot,
            messages=body.get("messages") or [],
            generation=generation,
            chat=chat,
            endpoint=endpoint,
            include_usage=bool(client_options.get("include_usage")),
        ),
    )


async def _complete(
    *,
    key: ApiKey,
    slot: Slot,
    config: dispatch.SlotConfig,
    body: dict[str, Any],
    chat: bool,
    endpoint: str,
    started_at: float,
) -> JsonResponse:
    """A non-streaming call, passed through with ``id`` and ``model`` made ours."""
    result = await dispatch.complete(config, endpoint, body)
    result["model"] = slot.name
    result["id"] = _id_prefix(chat) + uuid.uuid4().hex
    await services.api_call_arecord(
        api_key=key,
        endpoint=endpoint,
        slot_name=slot.name,
        stream=False,
        http_status=200,
        outcome="complete",
        started_at=started_at,
        usage=result.get("usage") if isinstance(result.get("usage"), dict) else None,
    )
    return JsonResponse(result)


class ChunkRewriter:
    """Makes upstream chunks OpenAI's: one ``chatcmpl-…`` (or ``cmpl-…``) id for the whole
    stream, ``model`` set to the slot name, ``role`` on each choice's first delta, and the
    usage-only chunk (``choices: []``) dropped unless the client asked for it with
    ``stream_options.include_usage`` (Slipstream always asks upstream, to record tokens)."""

    def __init__(self, *, completion_id: str, model: str, include_usage: bool, chat: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self._id_json = json.dumps(completion_id)
        self._model_json = json.dumps(model)
        self.include_usage = include_usage
        self.chat = chat
        self.seen_choices: set[int] = set()

    def __call__(self, chunk: Chunk) -> bytes | None:
        # The chunk is shared with every subscriber of the generation: copy, never mutate.
        obj = chunk.obj
        choices = obj.get("choices")
        if not choices and obj.get("usage") and not self.include_usage:
            return None
        needs_role = (
            self.chat
            and choices
            and any(
                isinstance(c, dict) and c.get("index", 0) not in self.seen_choices for c in choices
            )
        )
        if not needs_role:
            fast = self._swap_id_and_model(chunk)
            if fast is not None:
                return b"data: " + fast.encode() + b"\n\n"
        out = {**obj, "id": self.completion_id, "model": self.model}
        if needs_role and isinstance(choices, list):
            out["choices"] = [self._with_role(choice) for choice in choices]
        return (
            b"data: "
            + json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
            + b"\n\n"
        )

    def _swap_id_and_model(self, chunk: Chunk) -> str | None:
        """The chunk's own text with its ``id`` and ``model`` values replaced, when each
        appears exactly once in the compact form ``"id":"…"``; else None (then the chunk is
        re-serialised). Most chunks take this path: a text replacement instead of a JSON
        encode per chunk, and the upstream's own bytes for everything else."""
        data = chunk.data
        for field, value in (("id", self._id_json), ("model", self._model_json)):
            current = chunk.obj.get(field)
            if not isinstance(current, str):
                return None
            old = f'"{field}":{json.dumps(current)}'
            if data.count(old) != 1:
                return None
            data = data.replace(old, f'"{field}":{value}')
        return data

    def _with_role(self, choice: Any) -> Any:
        if not isinstance(choice, dict):
            return choice
        index = choice.get("index", 0)
        if index in self.seen_choices:
            return choice
        self.seen_choices.add(index)
        delta = choice.get("delta")
        if isinstance(delta, dict) and "role" not in delta:
            return {**choice, "delta": {"role": "assistant", **delta}}
        return choice


async def _stream_events(
    *,
    key: ApiKey,
    slot: Slot,
    messages: list[Any],
    generation: Generation,
    chat: bool,
    endpoint: str,
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    """The client's SSE stream. A client that disconnects detaches from the generation; as its
    last subscriber that cancels it, which closes the upstream response: the upstream stops."""
    rewrite = ChunkRewriter(
        # Per request, even when single-flight shares the generation: OpenAI never gives two
        # requests one id.
        completion_id=_id_prefix(chat) + uuid.uuid4().hex,
        model=slot.name,
        include_usage=include_usage,
        chat=chat,
    )
    read_to_end = False
    try:
        async with aclosing(
            generation.subscribe(keepalive_s=settings.SLIPSTREAM_KEEPALIVE_S)
        ) as events:
            async for item in events:
                if isinstance(item, Chunk):
                    data = rewrite(item)
                    if data is not None:
                        yield data
                elif item is KEEPALIVE:
                    yield KEEPALIVE_COMMENT
        read_to_end = True
    finally:
        generation.detach()
        await asyncio.shield(
            _finish(
                key=key,
                slot=slot,
                messages=messages,
                generation=generation,
                outcome=generation.status if read_to_end else "stopped",
                chat=chat,
                endpoint=endpoint,
            )
        )
    if generation.error is not None:
        yield b"data: " + json.dumps(generation.error.envelope()).encode() + b"\n\n"
    else:
        yield DONE_EVENT


async def _finish(
    *,
    key: ApiKey,
    slot: Slot,
    messages: list[Any],
    generation: Generation,
    outcome: str,
    chat: bool,
    endpoint: str,
) -> None:
    await services.api_call_arecord(
        api_key=key,
        endpoint=endpoint,
        slot_name=slot.name,
        stream=True,
        http_status=200,
        outcome=outcome,
        started_at=generation.started_at,
        generation=generation,
        error=generation.error,
    )
    if key.store_conversations and chat:
        await services.api_conversation_astore(
            api_key=key, slot=slot, messages=messages, generation=generation, status=outcome
        )
