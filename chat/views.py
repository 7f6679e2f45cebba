"""Chat pages, htmx partials and the browser's stream endpoint. Thin: reads go through
``selectors``, writes through ``services``, streaming through ``chat.relay``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from chat import selectors, services
from chat.http import error_response, invalid, sse_response
from chat.models import Conversation
from chat.relay import dispatch
from chat.relay.generation import Generation, Phase
from chat.relay.sse import DONE_EVENT, KEEPALIVE_COMMENT, encode_event
from chat.relay.upstream import Chunk

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 100_000


def signed_in(user: User | AnonymousUser) -> User:
    """The signed-in user behind ``login_required`` (which has already turned others away)."""
    if not isinstance(user, User):
        raise PermissionDenied
    return user


def _page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    slots = list(selectors.slot_list_enabled())
    return render(
        request,
        "chat/chat.html",
        {
            "conversation": conversation,
            "chat_messages": selectors.message_list(conversation=conversation)
            if conversation
            else [],
            "conversations": selectors.conversation_list(user=signed_in(request.user))[:200],
            "slots": slots,
            "current_slot": conversation.slot if conversation and conversation.slot else None,
            # The slot the picker shows first: the conversation's, else the default (first).
            "picked_slot": (conversation.slot if conversation and conversation.slot else None)
            or (slots[0] if slots else None),
        },
    )


@require_GET
@login_required
def index(request: HttpRequest) -> HttpResponse:
    """A new, empty chat."""
    return _page(request, None)


@require_GET
@login_required
def conversation_detail(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    conversation = (
        selectors.conversation_list(user=signed_in(request.user))
        .select_related("slot")
        .filter(pk=conversation_id)
        .first()
    )
    if conversation is None:
        raise Http404("No such conversation")
    return _page(request, conversation)


@require_GET
@login_required
def sidebar(request: HttpRequest) -> HttpResponse:
    """The conversation list, an htmx partial refreshed when a conversation changes."""
    current = request.GET.get("current", "")
    return render(
        request,
        "chat/_sidebar.html",
        {
            "conversations": selectors.conversation_list(user=signed_in(request.user))[:200],
            "current_id": current,
        },
    )


@require_GET
@login_required
async def slot_states(request: HttpRequest) -> JsonResponse:
    """``{"slots": [{"name", "label", "state", "last_error", "changed_at"}]}`` for the enabled
    slots, read by the chat's slot picker and the admin's slot list to show state live. Asking
    is also the on-demand probe: a slot this process has not seen ready is probed now."""
    slots = [slot async for slot in selectors.slot_list_enabled()]
    for slot in slots:
        runtime = services.slot_config(slot).runtime()
        if runtime.state != "ready":
            runtime.probe_soon()
    return JsonResponse(
        {
            "slots": [
                {
                    "name": slot.name,
                    "label": slot.label,
                    "state": slot.state,
                    "last_error": slot.last_error,
                    "changed_at": slot.state_changed_at.isoformat()
                    if slot.state_changed_at
                    else None,
                }
                for slot in slots
            ]
        }
    )


def _bad_request(message: str, *, param: str | None = None, status: int = 400) -> JsonResponse:
    return error_response(invalid(message, param=param, status=status))


@require_POST
@login_required
async def stream(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Send a user message and stream the answer back as SSE.

    Body: JSON ``{"content": str, "conversation": uuid | null, "slot": str | null}``.
    Response: ``text/event-stream`` (WHATWG SSE) carrying, in order, a named
    ``slipstream.message`` event (``conversation_id``, ``conversation_url``, ``title``,
    ``user_message_id``, ``assistant_message_id``, ``generation_id``, ``slot``), the upstream's
    ``chat.completion.chunk`` objects as unnamed ``data:`` events exactly as they came, a named
    ``slipstream.done`` event (``status``, ``finish_reason``, ``ttft_ms``, ``tokens_per_s``,
    ``usage``), then ``data: [DONE]`` — or, when the upstream fails, a final
    ``data: {"error": {...}}`` (OpenAI's envelope) instead of ``[DONE]``.
    Bad input answers 400 with OpenAI's error envelope before any stream starts; another user's
    conversation answers 404.
    """
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return _bad_request("Request body is not valid JSON.")
    if not isinstance(payload, dict):
        return _bad_request("Request body must be a JSON object.")
    content = payload.get("content")
    if not isinstance(content, str) or not content.strip():
        return _bad_request("Message is empty.", param="content")
    if len(content) > MAX_MESSAGE_CHARS:
        return _bad_request(f"Message is over {MAX_MESSAGE_CHARS} characters.", param="content")

    user = signed_in(await request.auser())
    conversation: Conversation | None = None
    if payload.get("conversation"):
        try:
            conversation_id = UUID(str(payload["conversation"]))
        except ValueError:
            return _bad_request("Unknown conversation.", param="conversation", status=404)
        conversation = await selectors.conversation_aget(user=user, conversation_id=conversation_id)
        if conversation is None:
            return _bad_request("Unknown conversation.", param="conversation", status=404)

    slot_name = payload.get("slot") or (
        conversation.slot.name if conversation and conversation.slot else None
    )
    slot = await selectors.slot_aget(name=slot_name if isinstance(slot_name, str) else None)
    if slot is None:
        return _bad_request("No model is available.", param="slot", status=404)

    if conversation is None:
        conversation = await services.conversation_acreate(
            user=user, slot=slot, first_message=content
        )
    user_message = await services.message_acreate_user(conversation=conversation, content=content)
    history = await selectors.history_for_upstream(conversation=conversation)
    assistant = await services.message_acreate_assistant(
        conversation=conversation, slot_name=slot.name
    )
    generation, _ = dispatch.submit(
        services.slot_config(slot), "chat/completions", {"messages": history}
    )
    conversation_id = conversation.pk

    async def store(finished: Generation) -> None:
        await services.message_afinalise(
            message_id=assistant.pk, conversation_id=conversation_id, generation=finished
        )

    generation.add_finish_callback(store)
    meta = {
        "conversation_id": str(conversation.pk),
        "conversation_url": reverse("chat:conversation", args=[conversation.pk]),
        "title": conversation.title,
        "user_message_id": user_message.pk,
        "assistant_message_id": assistant.pk,
        "slot": slot.name,
        "generation_id": generation.id,
    }
    return sse_response(_answer_events(generation, meta))


async def _answer_events(
    generation: Generation, meta: dict[str, Any]
) -> AsyncGenerator[bytes, None]:
    """The SSE byte stream of one answer. The generation stores the answer when it ends,
    however it ends; a client that goes away detaches, and as the last subscriber that stops
    the generation (stored as ``stopped``)."""
    try:
        yield encode_event(json.dumps(meta), event="slipstream.message")
        async with aclosing(
            generation.subscribe(keepalive_s=settings.SLIPSTREAM_KEEPALIVE_S)
        ) as events:
            async for item in events:
                if isinstance(item, Chunk):
                    yield b"data: " + item.data.encode() + b"\n\n"
                elif isinstance(item, Phase):
                    yield encode_event(json.dumps(item.as_dict()), event="slipstream.status")
                else:
                    yield KEEPALIVE_COMMENT
    finally:
        generation.detach()
    done = {
        "status": generation.status,
        "slot": generation.slot,
        "finish_reason": generation.accumulator.finish_reason(),
        "ttft_ms": generation.ttft_ms,
        "tokens_per_s": generation.tokens_per_s,
        "usage": generation.accumulator.usage,
    }
    yield encode_event(json.dumps(done), event="slipstream.done")
    if generation.error is not None:
        yield encode_event(json.dumps(generation.error.envelope()))
    else:
        yield DONE_EVENT


@login_required
def api_keys(request: HttpRequest) -> HttpResponse:
    """The user's API keys; POST creates one and shows it this once."""
    user = signed_in(request.user)
    created = None
    if request.method == "POST":
        _, created = services.api_key_create(
            user=user,
            name=request.POST.get("name", "")[:100],
            store_conversations=request.POST.get("store_conversations") == "on",
        )
    return render(
        request,
        "chat/api_keys.html",
        {
            "keys": selectors.api_key_list(user=user),
            "created_key": created,
            "api_base_url": request.build_absolute_uri("/v1"),
        },
    )


@require_POST
@login_required
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    if not services.api_key_revoke(user=signed_in(request.user), key_id=key_id):
        raise Http404("No such key")
    return redirect("chat:api-keys")
