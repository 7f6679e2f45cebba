"""``POST /v1/chat/completions`` and ``POST /v1/completions``, streamed or whole: validated,
admitted under the key's quotas, then the slot's dispatcher; streams are SSE ``data:`` events of
``chat.completion.chunk`` (or ``text_completion``) objects ending in ``data: [DONE]``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat import api_records, jsonbody, quotas, readcache, streaming
from chat.api.common import (
    CHAT,
    TEXT,
    Call,
    answered_whole,
    authenticate_header,
    cached_slot_config,
    first_chunk,
    method_not_allowed,
    refused,
    resolve_slot,
)
from chat.api.media import refuse_images, refuse_media_urls
from chat.api.validation import validate
from chat.http import sse_response
from chat.models import ApiKey, Slot
from chat.relay import dispatch, responses, tokenize
from chat.relay.errors import EnvelopeError
from chat.relay.generation import Status
from chat.relay.types import SlotConfig
from chat.streaming import ChunkRewriter


def _id_prefix(chat: bool) -> str:
    """OpenAI's id prefixes: ``chatcmpl-`` for chat completions, ``cmpl-`` for completions."""
    return "chatcmpl-" if chat else "cmpl-"


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """``POST /v1/chat/completions``, streaming or not."""
    return await _create_completion(request, endpoint=CHAT)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """``POST /v1/completions`` (legacy text completions), streaming or not."""
    return await _create_completion(request, endpoint=TEXT)


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
    call = Call(endpoint)
    lookups = readcache.Lookups()
    try:
        call.key = await authenticate_header(authorization, lookups)
        body = read_body()
        validate(body, chat=endpoint == CHAT)
        call.slot_name, call.stream = body["model"], bool(body.get("stream"))
        slot = await resolve_slot(call.slot_name, call.key, lookups)
        if endpoint == CHAT:
            refuse_images(slot, body, param="messages")
            await refuse_media_urls(slot, body)
        fields = quotas.CHAT_OUTPUT_LIMITS if endpoint == CHAT else ["max_tokens"]
        cfg = cached_slot_config(slot, lookups)
        await call.admit(lookups, body, slot, fields, _prompt_of(cfg, body, chat=endpoint == CHAT))
        if not call.stream:
            return await _whole_completion(call, call.key, slot, cfg, body)
        return await _streamed_completion(call, call.key, slot, cfg, body)
    except EnvelopeError as exc:
        return await refused(call, exc)
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
    call: Call, key: ApiKey, slot: Slot, cfg: SlotConfig, body: dict[str, Any]
) -> JsonResponse:
    """A non-streaming call on ``slot`` (``cfg``: its config), the upstream's answer passed
    through with ``id`` and ``model`` made ours. Raises ``RelayError``."""
    result = await dispatch.complete_whole(cfg, call.endpoint, body)
    result["model"] = slot.name
    result["id"] = _id_prefix(call.endpoint == CHAT) + uuid.uuid4().hex
    chat = call.endpoint == CHAT
    return await answered_whole(
        call,
        key,
        slot,
        result,
        result.get("usage"),
        messages=body.get("messages"),
        chunk=responses.whole_as_chunk(result) if chat else None,
    )


async def _streamed_completion(
    call: Call, key: ApiKey, slot: Slot, cfg: SlotConfig, body: dict[str, Any]
) -> AsyncGenerator[bytes, None]:
    """A streaming call on ``slot`` (``cfg``: its config): its SSE events' bytes. The HTTP
    status is held until the first chunk (or the first keep-alive is due), so a failure before
    it, after the dispatcher's retries, is a real 4xx/5xx answer: raises its ``RelayError``."""
    generation = await first_chunk(
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
        await api_records.record_api_call(
            key=key,
            slot=slot,
            endpoint=call.endpoint,
            messages=body.get("messages") or [],
            generation=generation,
            outcome=generation.status if read_to_end else Status.STOPPED,
            reservation=call.reservation,
        )

    return streaming.api_sse(generation, rewriter, on_leave=record)
