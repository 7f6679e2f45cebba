"""Chat pages, htmx partials and the browser's stream endpoints: HTTP adapters that parse,
authorise and call one function (reads in ``selectors``, writes in ``services``, answers in
``answers``, their SSE in ``streaming``)."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chat import answers, attachments, charts, jsonbody, quotas, selectors, services, streaming
from chat.conversation_views import sidebar_context
from chat.forms import ConversationSettingsForm
from chat.http import error_response, invalid, signed_in, sse_response
from chat.models import Conversation, Message, Prompt
from chat.relay.errors import EnvelopeError
from chat.relay.slots import slot_runtime

logger = logging.getLogger(__name__)


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
            "attachment_limits": attachments.limits(),
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
    conversation = selectors.conversation_get(
        user=signed_in(request.user), conversation_id=conversation_id
    )
    if conversation is None:
        raise Http404("No such conversation")
    return _page(request, conversation)


@require_GET
@login_required
async def slot_states(request: HttpRequest) -> JsonResponse:
    """``{"slots": [{"name", "label", "state", "last_error", "changed_at", "in_flight",
    "queued", "requests_today", "errors_today", "ttft_p50_ms", "tokens_per_s_p50"}]}`` for
    the enabled slots, read by the chat's slot picker, the admin's slot list and its front page
    to show them live. ``in_flight`` and ``queued`` are this process's requests on the slot
    (answering, waiting for a place); the rest is today's (UTC): requests, errors, and the
    median time to first token (ms) and speed (tokens/s), None before any. Asking is also
    the on-demand probe: a slot this process has not seen ready is probed now."""
    user = signed_in(await request.auser())
    slots = [slot async for slot in selectors.slot_list_enabled(user=user)]
    runtimes = {}
    for slot in slots:
        runtime = runtimes[slot.name] = slot_runtime(slot.config())
        if not runtime.ready:
            runtime.probe_soon()
    today = await selectors.slot_today([slot.name for slot in slots])
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
                    "in_flight": runtimes[slot.name].in_flight,
                    "queued": len(runtimes[slot.name].waiters),
                    **today[slot.name],
                }
                for slot in slots
            ]
        }
    )


def _bad_request(message: str, *, param: str | None = None, status: int = 400) -> JsonResponse:
    return error_response(invalid(message, param=param, status=status))


# The stream endpoint's fields and their JSON types (null is always allowed: absent).
_STREAM_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("content", str, "a string"),
    ("conversation", str, "a string (a conversation id)"),
    ("slot", str, "a string (a model name)"),
    ("parent", int, "an integer (a message id)"),
    ("regenerate", int, "an integer (a message id)"),
    ("attachments", list, "an array of attachment ids"),
)


def _check_type(payload: dict[str, Any], name: str, kind: type, expected: str) -> None:
    """Raises ``Refusal`` 400 naming ``name`` when its value is not null nor of ``kind``
    (a bool is not an integer here, though Python says it is)."""
    value = payload.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise invalid(
            f"Invalid type for '{name}': expected {expected}.", param=name, code="invalid_type"
        )


@require_POST
@login_required
async def stream(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Send a user message (or regenerate an answer) and stream the answer back as SSE.

    Body: JSON ``{"content": str, "conversation": uuid | null, "slot": str | null,
    "parent": int | null, "regenerate": int, "attachments": [attachment id, …]}``
    (``attachments``: uploaded first, ``attachment_views.attachment_upload``). ``parent``
    (optional) is the message the new one follows: another message's parent makes an edit, a
    sibling branch; absent, the new message follows the conversation's shown thread.
    ``regenerate`` (a user message id, no ``content``) answers that message again, as a sibling
    of its earlier answers.

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
        turn = _chat_turn(jsonbody.read_object(request))
        started = await answers.start_chat_answer(user=signed_in(await request.auser()), turn=turn)
    except EnvelopeError as exc:
        return error_response(exc)
    conversation, user_message = started.conversation, started.user_message
    meta = {
        "conversation_id": str(conversation.pk),
        "conversation_url": reverse("chat:conversation", args=[conversation.pk]),
        "title": conversation.title,
        "user_message_id": user_message.pk,
        "assistant_message_id": started.assistant.pk,
        "parent_id": user_message.parent_id,
        "slot": started.slot.name,
        "generation_id": started.generation.id,
    }
    return sse_response(streaming.answer_sse(started.generation, meta))


def _chat_turn(payload: dict[str, Any]) -> answers.ChatTurn:
    """The stream endpoint's body as a ``ChatTurn``. Raises ``Refusal`` 400 for a field of the
    wrong type, 404 for a conversation id that is no id."""
    for name, kind, expected in _STREAM_FIELDS:
        _check_type(payload, name, kind, expected)
    conversation_id = None
    if payload.get("conversation"):
        try:
            conversation_id = UUID(payload["conversation"])
        except ValueError:
            raise invalid("Unknown conversation.", param="conversation", status=404) from None
    return answers.ChatTurn(
        content=payload.get("content"),
        conversation_id=conversation_id,
        slot_name=payload.get("slot") or None,
        parent_given="parent" in payload,
        parent_id=payload.get("parent"),
        regenerate_id=payload.get("regenerate"),
        attachment_ids=_attachment_ids(payload.get("attachments")),
    )


def _attachment_ids(value: list[Any] | None) -> tuple[str, ...]:
    if value and not all(isinstance(i, str) for i in value):
        raise invalid("'attachments' must be an array of attachment ids.", param="attachments")
    return tuple(value or ())


@require_GET
@login_required
async def generation_events(
    request: HttpRequest, generation_id: str
) -> HttpResponse | StreamingHttpResponse:
    """Resume an answer: ``GET /chat/generations/<id>/?after=N`` streams, as ``stream`` does,
    every chunk after sequence number N, then the live ones, then the end. A reloaded page or a
    second tab reattaches this way. When the generation is no longer running, 410 with the
    stored message as JSON (``status``, ``content``, ``reasoning``, ``tool_calls``, …) so the page
    can show it whole. An N past this process's buffer is read from chunk 1 (``resumed_after``
    says 0). Another user's generation: 404."""
    user = signed_in(await request.auser())
    message = await selectors.message_aget_by_generation(user=user, generation_id=generation_id)
    if message is None:
        raise Http404("No such answer")
    try:
        after = max(0, int(request.GET.get("after", "0")))
    except ValueError:
        return _bad_request("after must be an integer.", param="after")
    generation = await answers.resume(message=message)
    if generation is None:
        return JsonResponse(_message_json(message), status=410)
    if after > len(generation.chunks) and not generation.is_mirror:
        # No chunk of this buffer (a mirror may still be catching up: its numbers are the
        # same): read it from the first; ``resumed_after`` tells the page to start over.
        after = 0
    meta = {
        "conversation_id": str(message.conversation_id),
        "assistant_message_id": message.pk,
        "generation_id": generation.id,
        "slot": generation.slot,
        "resumed_after": after,
    }
    return sse_response(streaming.answer_sse(generation, meta, after=after))


@require_POST
@login_required
async def generation_stop(request: HttpRequest, generation_id: str) -> JsonResponse:
    """Stop an answer (the Stop button, Esc): cancels the upstream call; the answer is kept as
    ``stopped``. Answers 200 with the stored message once it is stored; another user's: 404."""
    user = signed_in(await request.auser())
    message = await selectors.message_aget_by_generation(user=user, generation_id=generation_id)
    if message is None:
        raise Http404("No such answer")
    return JsonResponse(_message_json(await answers.stop(message=message)))


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


@login_required
def api_keys(request: HttpRequest) -> HttpResponse:
    """The user's API keys. POST creates one and redirects here (so that a reload cannot
    create another); the GET that follows shows the new key this once, from the server-side
    session, which forgets it as it is shown."""
    user = signed_in(request.user)
    if request.method == "POST":
        _, raw = services.api_key_create(
            user=user,
            name=request.POST.get("name", "")[:100],
            store_conversations=request.POST.get("store_conversations") == "on",
            audit="Created on the API keys page",
        )
        request.session[NEW_API_KEY] = raw
        return redirect("chat:api-keys")
    return render(
        request,
        "chat/api_keys.html",
        {
            "keys": selectors.api_key_list(user=user),
            "created_key": request.session.pop(NEW_API_KEY, None),
            "api_base_url": request.build_absolute_uri("/v1"),
        },
    )


# The session key holding a new API key until the page shows it (never the cookie: sessions
# are stored server-side, django.contrib.sessions' database backend).
NEW_API_KEY = "slipstream_new_api_key"


@require_POST
@login_required
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    if not services.api_key_revoke(user=signed_in(request.user), key_id=key_id):
        raise Http404("No such key")
    return redirect("chat:api-keys")


@require_GET
@login_required
def usage(request: HttpRequest) -> HttpResponse:
    """The user's own usage (their chat answers and their API keys' calls) per day over the
    last ``USAGE_DAYS`` days, or per hour (UTC) over the last ``USAGE_HOURS`` (``?hours=48``):
    bar charts of tokens and requests, a row per day or hour used, and the total. Two queries
    over the usage rows (``selectors.usage_within``)."""
    user, now = signed_in(request.user), timezone.now()
    period = charts.usage_period(request.GET, days=(USAGE_DAYS,), hours=(USAGE_HOURS,), now=now)
    rows = selectors.usage_within(period=period, user=user)
    summed = selectors.usage_summary(rows, by=[period.unit])
    (total,) = selectors.usage_summary(rows, by=[])
    context = {
        "period": period,
        "periods": charts.period_choices(days=(USAGE_DAYS,), hours=(USAGE_HOURS,), now=now),
        "rows": summed,
        "total": total,
        "charts": charts.usage_charts(period, summed),
    }
    return render(request, "chat/usage.html", context)


@login_required
def prompts(request: HttpRequest) -> HttpResponse:
    """The prompt library: the user's prompts and those shared with their groups. POST
    ``title``, ``text`` and optionally ``group`` (one of theirs) adds one, then redirects here;
    a refused one is shown again with the reason."""
    user = signed_in(request.user)
    error = ""
    if request.method == "POST":
        group_id = request.POST.get("group", "")
        group = user.groups.filter(pk=group_id).first() if group_id.isdigit() else None
        try:
            if group_id and group is None:
                raise ValueError("Prompts are shared only with your own groups.")
            services.prompt_create(
                owner=user,
                title=request.POST.get("title", ""),
                text=request.POST.get("text", ""),
                group=group,
            )
        except ValueError as exc:
            error = str(exc)
        else:
            return redirect("chat:prompts")
    return render(
        request,
        "chat/prompts.html",
        {
            "prompts": selectors.prompt_list(user=user),
            "groups": user.groups.all(),
            "error": error,
            "form": request.POST if error else {},
        },
        status=400 if error else 200,
    )


@require_http_methods(["GET", "POST"])
@login_required
def prompt_edit(request: HttpRequest, prompt_id: int) -> HttpResponse:
    """Change one of the user's own prompts: GET shows its title and text in a form; POST
    ``title`` and ``text`` saves them, then redirects to the library; a refused one (empty, too
    long) is shown again with the reason (400). A prompt the user does not own (shared with
    them or not) is a 404: only its owner changes it."""
    prompt = selectors.prompt_get_own(user=signed_in(request.user), prompt_id=prompt_id)
    if prompt is None:
        raise Http404("No such prompt")
    error = ""
    if request.method == "POST":
        try:
            services.prompt_update(
                prompt=prompt,
                title=request.POST.get("title", ""),
                text=request.POST.get("text", ""),
            )
        except ValueError as exc:
            error = str(exc)
        else:
            return redirect("chat:prompts")
    return render(
        request,
        "chat/prompt_edit.html",
        {
            "prompt": prompt,
            "error": error,
            "form": request.POST if error else {"title": prompt.title, "text": prompt.text},
            "title_max": services.PROMPT_TITLE_MAX,
            "text_max": services.PROMPT_TEXT_MAX,
        },
        status=400 if error else 200,
    )


@require_POST
@login_required
def prompt_delete(request: HttpRequest, prompt_id: int) -> HttpResponse:
    """Delete one of the user's own prompts (a shared one only its owner deletes)."""
    deleted, _ = Prompt.objects.filter(owner=signed_in(request.user), pk=prompt_id).delete()
    if not deleted:
        raise Http404("No such prompt")
    return redirect("chat:prompts")


@require_GET
@login_required
def prompt_choices(request: HttpRequest) -> JsonResponse:
    """``{"prompts": [{"id", "title", "text", "shared_by"}]}``: what ``/`` in the message box
    offers (prompts.js), the user's own and their groups'."""
    user = signed_in(request.user)
    return JsonResponse(
        {
            "prompts": [
                {
                    "id": p.pk,
                    "title": p.title,
                    "text": p.text,
                    "shared_by": "" if p.owner_id == user.pk else p.owner.get_username(),
                }
                for p in selectors.prompt_list(user=user)[:500]
            ]
        }
    )


@require_GET
@login_required
async def budget(request: HttpRequest) -> HttpResponse:
    """The chat's budget notice (``chat/_budget.html``), loaded with the page and after each
    answer: the user's budget with the smallest share left, when a fifth or less of it is left
    (``quotas.BudgetLeft.low``); empty otherwise."""
    user = signed_in(await request.auser())
    low = [b for b in await quotas.budgets_left(user=user) if b.low]
    lowest = min(low, key=lambda b: b.left / b.limit, default=None)
    return HttpResponse(render_to_string("chat/_budget.html", {"budget": lowest}))


# How far back the usage page looks: days, and hours in its per-hour view.
USAGE_DAYS = 30
USAGE_HOURS = 48
