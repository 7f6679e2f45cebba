"""Chat pages, htmx partials and the browser's stream endpoint. Thin: reads go through
``selectors``, writes through ``services``, streaming through ``chat.relay``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
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
from chat.conversation_views import sidebar_context
from chat.forms import ConversationSettingsForm
from chat.http import error_response, invalid, signed_in, sse_response
from chat.models import Conversation, Message
from chat.relay import dispatch
from chat.relay.generation import Generation, Phase, find
from chat.relay.shared import shared
from chat.relay.sse import DONE_EVENT, KEEPALIVE_COMMENT, encode_event
from chat.relay.upstream import Chunk

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 100_000


def _page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    slots = list(selectors.slot_list_enabled(user=signed_in(request.user)))
    return render(
        request,
        "chat/chat.html",
        {
            "conversation": conversation,
            "chat_messages": selectors.message_list(conversation=conversation)
            if conversation
            else [],
            **sidebar_context(request, current_id=str(conversation.pk) if conversation else ""),
            "settings_form": ConversationSettingsForm(instance=conversation)
            if conversation
            else None,
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
async def slot_states(request: HttpRequest) -> JsonResponse:
    """``{"slots": [{"name", "label", "state", "last_error", "changed_at"}]}`` for the enabled
    slots, read by the chat's slot picker and the admin's slot list to show state live. Asking
    is also the on-demand probe: a slot this process has not seen ready is probed now."""
    user = signed_in(await request.auser())
    slots = [slot async for slot in selectors.slot_list_enabled(user=user)]
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
    """Send a user message (or regenerate an answer) and stream the answer back as SSE.

    Body: JSON ``{"content": str, "conversation": uuid | null, "slot": str | null,
    "parent": int | null, "regenerate": int}``. ``parent`` (optional) is the message the new
    one follows: another message's parent makes an edit, a sibling branch; absent, the new
    message follows the conversation's shown thread. ``regenerate`` (a user message id, no
    ``content``) answers that message again, as a sibling of its earlier answers.

    Response: ``text/event-stream`` (WHATWG SSE) carrying, in order, a named
    ``slipstream.message`` event (``conversation_id``, ``conversation_url``, ``title``,
    ``user_message_id``, ``assistant_message_id``, ``parent_id``, ``generation_id``, ``slot``),
    ``slipstream.status`` events while the answer waits (``state``: queued with ``position``,
    warming, retrying, streaming), the upstream's ``chat.completion.chunk`` objects as unnamed
    ``data:`` events exactly as they came, each with ``id:`` its sequence number (1, 2, …; a
    reconnect resumes after the last one seen), a named ``slipstream.done`` event (``status``,
    ``slot``, ``finish_reason``, ``ttft_ms``, ``tokens_per_s``, ``usage``), then
    ``data: [DONE]``, or, when the upstream fails, a final ``data: {"error": {...}}`` (OpenAI's
    envelope) instead of ``[DONE]``. Closing the stream does not stop the answer: it keeps
    generating for a resume (``generation_events``) until it ends or is stopped
    (``generation_stop``).
    Bad input answers 400 with OpenAI's error envelope before any stream starts; another user's
    conversation or message answers 404.
    """
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return _bad_request("Request body is not valid JSON.")
    if not isinstance(payload, dict):
        return _bad_request("Request body must be a JSON object.")
    regenerate = payload.get("regenerate")
    content = payload.get("content")
    if regenerate is None:
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
    slot = await selectors.slot_aget(
        name=slot_name if isinstance(slot_name, str) else None, user=user
    )
    if slot is None:
        return _bad_request("No model is available.", param="slot", status=404)

    thread = await selectors.message_alist(conversation=conversation) if conversation else []
    by_id = {m.pk: m for m in thread}
    new_leaf = False  # the new messages are not under the shown leaf: move it
    if regenerate is not None:
        if conversation is None:
            return _bad_request("Regenerate needs its conversation.", param="conversation")
        asked = await _own_message(user, conversation, regenerate)
        if asked is None or asked.role != Message.Role.USER:
            return _bad_request("Unknown message to regenerate.", param="regenerate", status=404)
        user_message = asked
        history_thread = await _thread_to(conversation, asked)
        new_leaf = True
    else:
        assert isinstance(content, str)
        parent: Message | None = thread[-1] if thread else None
        if "parent" in payload:
            if payload["parent"] is None:
                parent = None
            else:
                parent = by_id.get(payload["parent"]) or await _own_message(
                    user, conversation, payload["parent"]
                )
                if parent is None:
                    return _bad_request("Unknown parent message.", param="parent", status=404)
            new_leaf = bool(thread) and (parent is None or parent.pk != thread[-1].pk)
        if conversation is None:
            conversation = await services.conversation_acreate(
                user=user, slot=slot, first_message=content
            )
        user_message = await services.message_acreate_user(
            conversation=conversation, content=content, parent=parent
        )
        history_thread = [*(await _thread_to(conversation, parent) if parent else []), user_message]

    generation, _ = await dispatch.submit(
        services.slot_config(slot),
        "chat/completions",
        services.chat_request(conversation, selectors.history_for_upstream(history_thread)),
        keep_running=True,
    )
    try:
        assistant = await services.message_acreate_assistant(
            conversation=conversation,
            slot_name=slot.name,
            parent=user_message,
            generation_id=generation.id,
        )
        if new_leaf:
            await services.conversation_aset_leaf(conversation=conversation, leaf=user_message)
    except BaseException:
        generation.detach()
        raise
    await keep_answer(generation, message=assistant, conversation_id=conversation.pk)
    meta = {
        "conversation_id": str(conversation.pk),
        "conversation_url": reverse("chat:conversation", args=[conversation.pk]),
        "title": conversation.title,
        "user_message_id": user_message.pk,
        "assistant_message_id": assistant.pk,
        "parent_id": user_message.parent_id,
        "slot": slot.name,
        "generation_id": generation.id,
    }
    return sse_response(answer_events(generation, meta))


async def keep_answer(generation: Generation, *, message: Message, conversation_id: Any) -> None:
    """Store ``message`` from ``generation``: its text about once a second while it streams,
    and once when it ends, unless it was stopped on its own meanwhile (a shared single-flight
    answer that this person stopped: ``generation_stop`` stored it then)."""
    generation.owners.add(message.pk)

    async def store(finished: Generation) -> None:
        if message.pk in finished.owners:
            await services.message_afinalise(
                message_id=message.pk, conversation_id=conversation_id, generation=finished
            )

    async def checkpoint(running: Generation) -> None:
        if message.pk in running.owners:
            await services.message_acheckpoint(message_id=message.pk, generation=running)

    generation.add_checkpoint_callback(checkpoint)
    if not generation.add_finish_callback(store):
        await store(generation)  # it ended while the message was being created


async def _own_message(
    user: User, conversation: Conversation | None, message_id: Any
) -> Message | None:
    if conversation is None or not isinstance(message_id, int) or isinstance(message_id, bool):
        return None
    message = await selectors.message_aget(user=user, message_id=message_id)
    return message if message and message.conversation_id == conversation.pk else None


async def _thread_to(conversation: Conversation, message: Message) -> list[Message]:
    """The path from the root to ``message``, inclusive."""
    messages = [m async for m in conversation.messages.order_by("created_at", "id")]
    by_id = {m.pk: m for m in messages}
    path = [by_id.get(message.pk, message)]
    while path[0].parent_id is not None and path[0].parent_id in by_id:
        path.insert(0, by_id[path[0].parent_id])
    return path


@require_GET
@login_required
async def generation_events(
    request: HttpRequest, generation_id: str
) -> HttpResponse | StreamingHttpResponse:
    """Resume an answer: ``GET /chat/generations/<id>/?after=N`` streams, as ``stream`` does,
    every chunk after sequence number N, then the live ones, then the end. A reloaded page or a
    second tab reattaches this way. When the generation is no longer running here, 410 with the
    stored message as JSON (``status``, ``content``, ``reasoning``, ``tool_calls``, …) so the page
    can show it whole. Another user's generation: 404."""
    user = signed_in(await request.auser())
    message = await selectors.message_aget_by_generation(user=user, generation_id=generation_id)
    if message is None:
        raise Http404("No such answer")
    try:
        after = max(0, int(request.GET.get("after", "0")))
    except ValueError:
        return _bad_request("after must be an integer.", param="after")
    generation = find(generation_id)
    store = shared()
    running_elsewhere = (
        generation is None
        and store is not None
        and message.status == Message.Status.STREAMING
        and await store.exists(generation_id)
    )
    if running_elsewhere and store is not None:  # follow its buffer from its process
        generation = store.mirror(generation_id, slot=message.slot_name, keep_running=False)
    if generation is None:
        return JsonResponse(_message_json(message), status=410)
    generation.attach()
    meta = {
        "conversation_id": str(message.conversation_id),
        "assistant_message_id": message.pk,
        "generation_id": generation.id,
        "slot": generation.slot,
        "resumed_after": after,
    }
    return sse_response(answer_events(generation, meta, after=after))


@require_POST
@login_required
async def generation_stop(request: HttpRequest, generation_id: str) -> JsonResponse:
    """Stop an answer (the Stop button, Esc): cancels the upstream call; the answer is kept as
    ``stopped``. Answers 200 with the stored message once it is stored; another user's: 404."""
    user = signed_in(await request.auser())
    message = await selectors.message_aget_by_generation(user=user, generation_id=generation_id)
    if message is None:
        raise Http404("No such answer")
    generation = find(generation_id)
    if generation is not None and generation.is_mirror:
        generation = None  # a copy of one running elsewhere: ask its own process
    store = shared()
    if generation is None and store is not None and message.status == Message.Status.STREAMING:
        await store.request_stop(generation_id)
        for _ in range(100):  # its process stores it as stopped, usually within milliseconds
            await message.arefresh_from_db()
            if message.status != Message.Status.STREAMING:
                break
            await asyncio.sleep(0.05)
        return JsonResponse(_message_json(message))
    if generation is not None and not generation.ended:
        if generation.owners - {message.pk}:
            # Shared (single-flight) with someone else's answer: keep it going for them and
            # store this one as stopped where it is.
            generation.owners.discard(message.pk)
            await services.message_afinalise(
                message_id=message.pk,
                conversation_id=message.conversation_id,
                generation=generation,
                status="stopped",
            )
        else:
            generation.cancel()  # its finish callback stores the answer as stopped
            if generation.task is not None:
                await asyncio.wait((generation.task,), timeout=5)
        await message.arefresh_from_db()
    return JsonResponse(_message_json(message))


def _message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.pk,
        "status": message.status,
        "content": message.content,
        "reasoning": message.reasoning,
        "tool_calls": message.tool_calls,
        "finish_reason": message.finish_reason,
        "error": message.error,
        "ttft_ms": message.ttft_ms,
        "tokens_per_s": message.tokens_per_s,
        "usage": message.usage,
        "slot": message.slot_name,
    }


async def answer_events(
    generation: Generation, meta: dict[str, Any], *, after: int = 0
) -> AsyncGenerator[bytes, None]:
    """The SSE byte stream of one answer, from chunk ``after`` + 1. The generation stores the
    answer when it ends, however it ends; a client that goes away only detaches (the chat's
    generations keep running for a resume; Stop ends them)."""
    try:
        yield encode_event(json.dumps(meta), event="slipstream.message")
        sequence = after
        async with aclosing(
            generation.subscribe(after=after, keepalive_s=settings.SLIPSTREAM_KEEPALIVE_S)
        ) as events:
            async for item in events:
                if isinstance(item, Chunk):
                    sequence += 1
                    yield b"id: %d\ndata: %s\n\n" % (sequence, item.data.encode())
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
