"""The embeddable widget: a chat-only page for an iframe, the script that embeds it, and the
visitor API behind it.

Security model:

- Framing: the page's ``Content-Security-Policy`` is the site's (``settings``) with
  ``frame-ancestors`` listing the widget's allowed origins (none listed: ``'none'``), so browsers
  refuse to show it anywhere else (CSP Level 3, ``frame-ancestors``).
- Requests: the API refuses a request whose ``Origin`` is neither the app's own (the iframe's
  fetches are same-origin) nor an allowed one; a POST without ``Origin`` is refused too, since
  browsers always send it there (WHATWG Fetch, "append a request Origin header").
- Visitors: anonymous; a visitor is a random id the server signs (``django.core.signing``) and
  the widget keeps in its (partitioned) localStorage and sends as ``X-Widget-Visitor``. No cookie
  is involved, so third-party cookie blocking does not matter. A visitor only ever reaches their
  own conversations on that widget, and only that widget's slot. A token lasts the widget's
  ``visitor_days`` (the signature's timestamp, ``max_age``); an older one is a 401 and the page
  starts a new visitor.
- Limits (django-ratelimit over Django's cache, so shared by processes with ``REDIS_URL``), each
  a 429 with ``Retry-After``: new visitors per client IP and per widget per hour; messages per
  visitor, per client IP (per minute and per day) and per widget (a daily cap that protects the
  slot); a 503 with ``Retry-After`` while the cache (Redis) cannot count them. Anyone can mint
  visitors, so the visitor's own limits only hold beside the IP and widget ones. The client IP
  is ``REMOTE_ADDR``; behind the proxy (``DJANGO_BEHIND_PROXY``) the last ``X-Forwarded-For``
  hop, the one the proxy appended: the earlier ones are the client's to write.
- Switched off: a disabled widget refuses at once (it is read on every request), and its answers
  in flight are stopped within ``answers.WIDGET_WATCH_S`` (``answers.start_widget_answer``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from csp.constants import HEADER, NONE
from csp.utils import build_policy
from django.core import signing
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from django_ratelimit.core import is_ratelimited

from chat import answers, attachments, jsonbody, selectors, streaming
from chat.http import Refusal, client_ip, error_response, invalid, sse_response
from chat.models import ORIGIN_RE, Widget, normalise_origin
from chat.relay.cluster import UNREACHABLE, SharedUnavailable, shared
from chat.relay.errors import EnvelopeError

VISITOR_HEADER = "X-Widget-Visitor"
VISITOR_SALT = "slipstream.widget.visitor"


def frame_ancestors(widget: Widget) -> list[str]:
    """The CSP ``frame-ancestors`` sources that let only the widget's allowed origins frame its
    page. Only well-formed origins: a stray ``;`` would start a directive of its own."""
    origins = [origin for origin in widget.origins() if ORIGIN_RE.fullmatch(origin)]
    return origins or [NONE]


def own_origin(request: HttpRequest) -> str:
    return normalise_origin(f"{request.scheme}://{request.get_host()}")


def origin_allowed(request: HttpRequest, widget: Widget) -> bool:
    """Whether a request may use the widget's API: see the module's security model."""
    origin = request.headers.get("Origin")
    if origin is None:
        return request.method == "GET"  # browsers omit Origin on same-origin GETs
    origin = normalise_origin(origin)
    return origin == own_origin(request) or origin in widget.origins()


def visitor_token(widget: Widget, visitor_id: uuid.UUID) -> str:
    return signing.dumps({"w": widget.pk, "v": str(visitor_id)}, salt=VISITOR_SALT)


def visitor_of(request: HttpRequest, widget: Widget) -> uuid.UUID | None:
    """The visitor id the request's signed token names, for this widget; None when missing,
    tampered with, another widget's, or older than the widget's ``visitor_days``."""
    token = request.headers.get(VISITOR_HEADER, "")
    try:
        claims = signing.loads(
            token, salt=VISITOR_SALT, max_age=timedelta(days=widget.visitor_days)
        )
        if claims.get("w") != widget.pk:
            return None
        return uuid.UUID(claims["v"])
    except (signing.BadSignature, KeyError, ValueError, AttributeError, TypeError):
        return None


def refused(
    message: str, *, status: int, code: str, retry_after: float | None = None
) -> JsonResponse:
    error = Refusal(
        message,
        status=status,
        type="invalid_request_error" if status < 429 else "rate_limit_error",
        code=code,
        retry_after=retry_after,
    )
    response = error_response(error)
    response["Cache-Control"] = "no-store"
    return response


async def _awidget(key: str) -> Widget:
    widget = await selectors.widget_aget(public_key=key)
    if widget is None:
        raise Http404("No such widget")
    return widget


# ------------------------------------------------------------------------------------------------
# The page and the embed script
# ------------------------------------------------------------------------------------------------
@require_GET
@xframe_options_exempt  # framing is governed by the CSP below, per widget
def page(request: HttpRequest, key: str) -> HttpResponse:
    """The chat-only page that runs in the iframe (or on its own, for a quick look)."""
    widget = selectors.widget_get(public_key=key)
    if widget is None:
        raise Http404("No such widget")
    response = render(request, "widget/widget.html", {"widget": widget})
    # The site's policy with this widget's frame-ancestors; django-csp's middleware leaves a
    # header it finds alone.
    response[HEADER] = build_policy(replace={"frame-ancestors": frame_ancestors(widget)})
    return response


@require_GET
def embed_js(request: HttpRequest, key: str) -> HttpResponse:
    """``<script src=".../embed.js" async></script>`` on the host page adds a launcher button
    that opens and closes the widget's iframe panel. Closing the panel removes the iframe, which
    cancels an answer in progress."""
    widget = selectors.widget_get(public_key=key)
    if widget is None:
        raise Http404("No such widget")
    config = {
        "src": request.build_absolute_uri(reverse("widget:page", args=[widget.public_key])),
        "title": widget.title,
        "accent": widget.accent_color,
    }
    response = render(
        request,
        "widget/embed.js",
        {"config": json.dumps(config)},
        content_type="text/javascript; charset=utf-8",
    )
    response["Cache-Control"] = "max-age=300"
    return response


# ------------------------------------------------------------------------------------------------
# The visitor API
# ------------------------------------------------------------------------------------------------
async def _guard(request: HttpRequest, key: str) -> Widget | JsonResponse:
    """The widget, or the refusal to answer with (origin, disabled)."""
    widget = await _awidget(key)
    if not origin_allowed(request, widget):
        return refused(
            "This site may not use this chat widget.", status=403, code="origin_not_allowed"
        )
    if not widget.enabled:
        return refused("This chat is switched off.", status=403, code="widget_disabled")
    return widget


async def _guard_visitor(request: HttpRequest, key: str) -> tuple[Widget, uuid.UUID] | JsonResponse:
    """``_guard``, then the request's visitor (401 without a valid token)."""
    widget = await _guard(request, key)
    if isinstance(widget, JsonResponse):
        return widget
    visitor_id = visitor_of(request, widget)
    if visitor_id is None:
        return refused("Unknown visitor: reload the chat.", status=401, code="invalid_visitor")
    return widget, visitor_id


@csrf_exempt
@require_POST
async def visitor(request: HttpRequest, key: str) -> JsonResponse:
    """A new anonymous visitor: ``{"token": str}``, kept by the widget and sent back as
    ``X-Widget-Visitor``; 429 past the new-visitor limits (per client IP, per widget)."""
    widget = await _guard(request, key)
    if isinstance(widget, JsonResponse):
        return widget
    refusal = await _exceeded(request, _visitor_limits(request, widget))
    if refusal is not None:
        return refusal
    return JsonResponse({"token": visitor_token(widget, uuid.uuid4())})


@require_GET
async def conversation(request: HttpRequest, key: str) -> JsonResponse:
    """The visitor's latest conversation on this widget: ``{"conversation": uuid | null,
    "messages": [{"role", "content", "reasoning", "tool_calls", "status", "attachments"}]}``
    (``attachments``: the images a message carried, each with a short-lived signed ``url``,
    ``attachments.for_visitor``)."""
    widget = await _guard(request, key)
    if isinstance(widget, JsonResponse):
        return widget
    visitor_id = visitor_of(request, widget)
    if visitor_id is None:
        if request.headers.get(VISITOR_HEADER):
            return refused("Unknown visitor.", status=401, code="invalid_visitor")
        return JsonResponse({"conversation": None, "messages": []})
    latest = await selectors.conversation_alatest_for_visitor(widget=widget, visitor_id=visitor_id)
    if latest is None:
        return JsonResponse({"conversation": None, "messages": []})
    thread = await selectors.message_alist(conversation=latest)
    images = await attachments.for_visitor(thread, slot=widget.slot)
    return JsonResponse(
        {
            "conversation": str(latest.pk),
            "messages": [
                {
                    "role": m.role,
                    "content": m.content,
                    "reasoning": m.reasoning,
                    "tool_calls": m.tool_calls,
                    "status": m.status,
                    "attachments": images.get(m.pk, []),
                }
                for m in thread
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class Limit:
    """One django-ratelimit counter: ``rate`` requests per ``period`` (minute, hour, day) for
    ``key`` within ``group``; ``message`` is the 429's."""

    group: str
    key: str
    rate: int
    period: str
    message: str

    @property
    def retry_after(self) -> int:
        """Seconds for the 429's ``Retry-After``. django-ratelimit staggers its windows per key,
        so the end of this one is not known here: a minute, or an hour for longer periods."""
        return 60 if self.period == "minute" else 3600


async def _exceeded(request: HttpRequest, limits: list[Limit]) -> JsonResponse | None:
    """Count the request against ``limits`` in order, up to the first one it exceeds: its 429
    (later ones are not counted); None when it is within all of them.

    A 503 with ``Retry-After`` while the counters cannot be reached (Django's cache, Redis
    with REDIS_URL): the limits are the widget's promise to its owner, the only brake on an
    anonymous page and the daily cap that protects the slot, so no message goes uncounted.
    django-ratelimit would raise Redis's error (a 500), or with ``RATELIMIT_FAIL_OPEN`` let
    everything through. While Redis is known down the cache is not asked at all."""
    store = shared()
    if store is not None and not store.health.up:
        return _uncountable()

    def check() -> Limit | Exception | None:
        try:
            for limit in limits:
                if is_ratelimited(
                    request,
                    group=limit.group,
                    key=lambda group, request, value=limit.key: value,
                    rate=f"{limit.rate}/{limit.period[0]}",
                    increment=True,
                ):
                    return limit
        except UNREACHABLE as exc:
            return exc
        return None

    outcome = await sync_to_async(check)()
    if isinstance(outcome, Exception):
        if store is not None:
            store.report_unavailable(outcome)
        return _uncountable()
    return None if outcome is None else _too_many(outcome)


def _uncountable() -> JsonResponse:
    """503 with ``Retry-After``: the limits cannot be counted (Redis is down)."""
    response = error_response(SharedUnavailable())
    response["Cache-Control"] = "no-store"
    return response


def _visitor_limits(request: HttpRequest, widget: Widget) -> list[Limit]:
    """New visitors per client IP, then for the whole widget, per hour."""
    group, ip = f"widget:{widget.public_key}:new", client_ip(request)
    busy = "Too many new chats were started {}. Please try again later."
    return [
        Limit(f"{group}:ip", ip, widget.ip_visitors_per_hour, "hour", busy.format("from here")),
        Limit(f"{group}:all", "all", widget.visitors_per_hour, "hour", busy.format("just now")),
    ]


def _message_limits(request: HttpRequest, widget: Widget, visitor_id: uuid.UUID) -> list[Limit]:
    """Messages per visitor, per client IP (per minute and per day), then per widget per day."""
    group, ip, visitor = f"widget:{widget.public_key}", client_ip(request), str(visitor_id)
    mine = "You have sent too many messages this {}. Please wait a little and try again."
    here = "Too many messages were sent from here this {}. Please wait a little and try again."
    full = "This chat has answered all it can for today. Please try again later."
    return [
        Limit(f"{group}:visitor", visitor, widget.rate_per_minute, "minute", mine.format("minute")),
        Limit(f"{group}:visitor", visitor, widget.rate_per_day, "day", mine.format("day")),
        Limit(f"{group}:ip", ip, widget.ip_rate_per_minute, "minute", here.format("minute")),
        Limit(f"{group}:ip", ip, widget.ip_rate_per_day, "day", here.format("day")),
        Limit(f"{group}:all", "all", widget.daily_cap, "day", full),
    ]


def _too_many(limit: Limit) -> JsonResponse:
    return refused(limit.message, status=429, code="rate_limited", retry_after=limit.retry_after)


@csrf_exempt
@require_POST
async def stream(request: HttpRequest, key: str) -> HttpResponse | StreamingHttpResponse:
    """Send the visitor's message and stream the answer, in the chat's SSE format
    (``views.stream``). Body: JSON ``{"content": str, "conversation": uuid | null,
    "attachments": [id, …]}`` (images uploaded by ``attachment_upload``). The answer
    is cancelled when the visitor goes away (closes the panel or the page)."""
    guarded = await _guard_visitor(request, key)
    if isinstance(guarded, JsonResponse):
        return guarded
    widget, visitor_id = guarded
    try:
        payload = jsonbody.read_object(request)
        content = answers.check_message(payload.get("content"))
        conversation_id = _conversation_id(payload)
        attachment_ids = _attachment_ids(payload)
    except EnvelopeError as exc:
        return error_response(exc)
    refusal = await _exceeded(request, _message_limits(request, widget, visitor_id))
    if refusal is not None:
        return refusal
    slot = await selectors.slot_aget(name=widget.slot.name)  # enabled, with its fallbacks
    if slot is None:
        return refused("This chat has no model right now.", status=503, code="no_model")
    try:
        started = await answers.start_widget_answer(
            widget=widget,
            visitor_id=visitor_id,
            slot=slot,
            content=content,
            conversation_id=conversation_id,
            attachment_ids=attachment_ids,
        )
    except EnvelopeError as exc:
        return error_response(exc)
    meta: dict[str, Any] = {
        "conversation_id": str(started.conversation.pk),
        "user_message_id": started.user_message.pk,
        "assistant_message_id": started.assistant.pk,
        "generation_id": started.generation.id,
        "slot": slot.name,
    }
    return sse_response(streaming.answer_sse(started.generation, meta, stop=started.reader))


@csrf_exempt
@require_POST
async def attachment_upload(request: HttpRequest, key: str) -> JsonResponse:
    """``POST /widget/<key>/attachments/``: a visitor's image (multipart ``file``), when the
    widget takes images: 201 with the attachment (``attachments.describe``), 403 when it does
    not, 413 over the widget's image limit, 415 for anything but an image. Each upload counts
    against the visitor's message limits (429), so that an anonymous visitor cannot fill the
    disk."""
    guarded = await _guard_visitor(request, key)
    if isinstance(guarded, JsonResponse):
        return guarded
    widget, visitor_id = guarded
    if not widget.accepts_images:
        return refused("This chat does not take images.", status=403, code="images_not_allowed")
    refusal = await _exceeded(request, _message_limits(request, widget, visitor_id))
    if refusal is not None:
        return refusal
    upload = request.FILES.get("file")
    if upload is None:
        return refused("Attach one image, as the form field 'file'.", status=400, code="no_file")
    try:
        attachment = await sync_to_async(attachments.attachment_create)(
            upload=upload, slot=widget.slot, widget=widget, visitor_id=visitor_id
        )
    except EnvelopeError as exc:
        return error_response(exc)
    return JsonResponse(attachments.describe(attachment), status=201)


def _attachment_ids(payload: dict[str, Any]) -> list[str]:
    """The body's ``attachments``: absent, or an array of id strings (``Refusal`` 400)."""
    ids = payload.get("attachments") or []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise invalid("'attachments' must be an array of attachment ids.", param="attachments")
    return ids


def _conversation_id(payload: dict[str, Any]) -> str | None:
    """The body's ``conversation``: None or a string. Raises ``Refusal`` 400 otherwise."""
    conversation_id = payload.get("conversation")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise invalid(
            "Invalid type for 'conversation': expected a string (a conversation id).",
            param="conversation",
            code="invalid_type",
        )
    return conversation_id
