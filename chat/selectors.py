"""Reads. Every function takes the user it reads for, so ownership is checked in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar
from uuid import UUID

from django.contrib.auth.models import User
from django.db.models import Count, Model, Q, QuerySet, Sum
from django.utils import timezone

from chat import readcache
from chat.charts import UsagePeriod, hour_label
from chat.models import (
    API_KEY_PREFIX,
    TOKENS_PER_S_BUCKETS,
    TTFT_BUCKETS_MS,
    ApiKey,
    Attachment,
    Conversation,
    Folder,
    Message,
    Prompt,
    Quota,
    QuotaReservation,
    Slot,
    StoredResponse,
    UsageDay,
    UsageHour,
    Widget,
    api_key_digest,
    bucket_fields,
)


def conversation_list(
    *, user: User, query: str = "", archived: bool = False
) -> QuerySet[Conversation]:
    """The user's conversations (the archived ones, or the others), most recently active
    first; with ``query``, those whose title or any message contains it (case-insensitive)."""
    conversations = Conversation.objects.filter(user=user, archived_at__isnull=not archived)
    query = query.strip()
    if query:
        matching = Message.objects.filter(content__icontains=query).values("conversation_id")
        conversations = conversations.filter(Q(title__icontains=query) | Q(pk__in=matching))
    return conversations.select_related("folder").order_by("-updated_at")


DATE_GROUPS = ("Today", "Yesterday", "Previous 7 days", "Previous 30 days", "Older")


@dataclass(frozen=True)
class SidebarGroup:
    """One heading of the sidebar and its conversations: ``folder`` is set for a folder's."""

    label: str
    items: list[Conversation]
    folder: Folder | None = None


def conversation_groups(
    conversations: Iterable[Conversation], *, today: date, folders: Iterable[Folder] = ()
) -> list[SidebarGroup]:
    """The sidebar's headings: "Pinned", then each of ``folders`` (empty ones too, so that they
    can be seen and deleted), then the rest under date headings (by last activity, in local
    time; empty date headings left out). Order within each is kept."""
    pinned: list[Conversation] = []
    in_folder: dict[int, list[Conversation]] = {folder.pk: [] for folder in folders}
    by_date: dict[str, list[Conversation]] = {label: [] for label in DATE_GROUPS}
    for conversation in conversations:
        if conversation.pinned:
            pinned.append(conversation)
        elif conversation.folder_id in in_folder:
            in_folder[conversation.folder_id].append(conversation)
        else:
            by_date[_age_label(today, conversation)].append(conversation)
    groups = [SidebarGroup("Pinned", pinned)] if pinned else []
    groups += [SidebarGroup(f.name, in_folder[f.pk], f) for f in folders]
    groups += [SidebarGroup(label, items) for label, items in by_date.items() if items]
    return groups


def _age_label(today: date, conversation: Conversation) -> str:
    age = (today - timezone.localtime(conversation.updated_at).date()).days
    if age <= 0:
        return "Today"
    if age == 1:
        return "Yesterday"
    if age <= 7:
        return "Previous 7 days"
    return "Previous 30 days" if age <= 30 else "Older"


def prompt_list(*, user: User) -> QuerySet[Prompt]:
    """The prompts ``user`` may use: their own and those shared with one of their groups, by
    title."""
    return (
        Prompt.objects.filter(Q(owner=user) | Q(group__in=user.groups.all()))
        .select_related("owner", "group")
        .distinct()
    )


def prompt_get_own(*, user: User, prompt_id: Any) -> Prompt | None:
    """The prompt with that id if ``user`` owns it, else None (also for a prompt only shared
    with them: only its owner changes it)."""
    return Prompt.objects.filter(owner=user, pk=prompt_id).select_related("group").first()


def folder_list(*, user: User) -> list[Folder]:
    """The user's folders, by name."""
    return list(Folder.objects.filter(user=user))


def folder_get(*, user: User, folder_id: Any) -> Folder | None:
    """The user's folder with that id, or None (also for someone else's id)."""
    return Folder.objects.filter(user=user, pk=folder_id).first()


def conversation_get(*, user: User, conversation_id: Any) -> Conversation | None:
    """The user's conversation with that id, or None (also for someone else's id)."""
    return Conversation.objects.filter(user=user, pk=conversation_id).select_related("slot").first()


def conversation_get_shared(*, share_id: Any) -> Conversation | None:
    """A conversation its owner shares (read-only for other signed-in members), or None."""
    return Conversation.objects.filter(share_id=share_id).select_related("user", "slot").first()


async def conversation_aget(*, user: User, conversation_id: Any) -> Conversation | None:
    """The user's conversation with that id, or None (also for someone else's id)."""
    return (
        await Conversation.objects.filter(user=user, pk=conversation_id)
        .select_related("slot")
        .afirst()
    )


@dataclass(frozen=True, slots=True)
class ThreadItem:
    """One message of the shown thread with its versions, for the "< 1/2 >" pager:
    ``version_ids`` (its siblings' ids, itself included, oldest first), ``version`` (its
    1-based place among them), ``versions`` (how many) and the message's ``attachments``."""

    message: Message
    version_ids: list[int]
    version: int
    versions: int
    attachments: list[Attachment] = field(default_factory=list)


async def conversation_aget_for_visitor(
    *, widget: Widget, visitor_id: UUID, conversation_id: str | None
) -> Conversation | None:
    """The widget visitor's conversation with that id, or None (no id, a malformed one, or
    someone else's)."""
    if not conversation_id:
        return None
    try:
        pk = UUID(conversation_id)
    except ValueError:
        return None
    return await Conversation.objects.filter(pk=pk, widget=widget, visitor_id=visitor_id).afirst()


async def conversation_alatest_for_visitor(
    *, widget: Widget, visitor_id: UUID
) -> Conversation | None:
    """The widget visitor's most recently active conversation, or None."""
    return (
        await Conversation.objects.filter(widget=widget, visitor_id=visitor_id)
        .order_by("-updated_at")
        .afirst()
    )


def message_list(*, conversation: Conversation) -> list[ThreadItem]:
    """The messages shown for ``conversation``: its current branch, root first, each with its
    versions."""
    messages = list(conversation.messages.order_by("created_at", "id"))
    items = with_versions(messages, thread_of(messages, conversation.current_leaf_id))
    if any(item.message.attachment_ids for item in items):
        found = {str(a.pk): a for a in conversation.attachments.all()}
        for item in items:
            item.attachments.extend(found[i] for i in item.message.attachment_ids if i in found)
    return items


def message_thread(*, conversation: Conversation) -> list[Message]:
    """The messages shown for ``conversation``: its current branch, root first."""
    messages = list(conversation.messages.order_by("created_at", "id"))
    return thread_of(messages, conversation.current_leaf_id)


async def message_alist(*, conversation: Conversation) -> list[Message]:
    """``message_thread``, async."""
    messages = [m async for m in conversation.messages.order_by("created_at", "id")]
    return thread_of(messages, conversation.current_leaf_id)


async def message_apath_to(*, message: Message) -> list[Message]:
    """The path from the root of ``message``'s conversation to ``message``, inclusive."""
    messages = [
        m
        async for m in Message.objects.filter(conversation_id=message.conversation_id).order_by(
            "created_at", "id"
        )
    ]
    return _path_to({m.pk: m for m in messages}, message)


async def message_alist_streaming(*, updated_before: datetime) -> list[tuple[int, str]]:
    """``(id, generation_id)`` of every answer still ``streaming`` and not written since
    ``updated_before`` (the sweeper's candidates)."""
    return [
        (pk, generation_id)
        async for pk, generation_id in Message.objects.filter(
            status=Message.Status.STREAMING, updated_at__lt=updated_before
        ).values_list("pk", "generation_id")
    ]


async def message_alist_switched_off(*, message_ids: Iterable[int]) -> list[Message]:
    """Of the widget answers ``message_ids``, those still ``streaming`` whose widget is now
    disabled (one query; ``answers`` polls it while widget answers run)."""
    return [
        message
        async for message in Message.objects.filter(
            pk__in=list(message_ids),
            status=Message.Status.STREAMING,
            conversation__widget__enabled=False,
        )
    ]


def thread_of(messages: list[Message], leaf_id: int | None) -> list[Message]:
    """The branch shown: the path from the root to ``leaf_id``, continued down through the
    newest child at each step (so an answer added under the leaf shows without moving it).
    With no leaf, it starts from the newest root. ``messages`` are oldest first."""
    by_id = {m.pk: m for m in messages}
    children = _children(messages)
    leaf = by_id.get(leaf_id) if leaf_id is not None else None
    if leaf is None:
        roots = children.get(None)
        if not roots:
            return []
        leaf = roots[-1]
    path = _path_to(by_id, leaf)
    while children.get(path[-1].pk):
        path.append(children[path[-1].pk][-1])
    return path


def with_versions(messages: list[Message], thread: list[Message]) -> list[ThreadItem]:
    """``thread`` (from ``thread_of(messages, …)``) with each message's versions."""
    children = _children(messages)
    items = []
    for message in thread:
        ids = [m.pk for m in children.get(message.parent_id, [message])]
        items.append(ThreadItem(message, ids, ids.index(message.pk) + 1, len(ids)))
    return items


def _children(messages: list[Message]) -> dict[int | None, list[Message]]:
    children: dict[int | None, list[Message]] = {}
    for message in messages:
        children.setdefault(message.parent_id, []).append(message)
    return children


def _path_to(by_id: dict[int, Message], message: Message) -> list[Message]:
    path = [by_id.get(message.pk, message)]
    while path[0].parent_id is not None and path[0].parent_id in by_id:
        path.insert(0, by_id[path[0].parent_id])
    return path


def history_for_upstream(
    thread: list[Message], *, contents: Mapping[int, Any] | None = None
) -> list[dict[str, Any]]:
    """A thread as OpenAI ``messages``: user turns, and assistant turns that produced text (an
    answer that failed before any text is left out rather than sent as empty). ``contents``:
    the content to send instead of a message's text, by message id (``chat.attachments``)."""
    contents = contents or {}
    return [
        {"role": m.role, "content": contents.get(m.pk, m.content)}
        for m in thread
        if m.role != Message.Role.ASSISTANT or m.content
    ]


async def message_aget(*, user: User, message_id: Any) -> Message | None:
    """One of the user's messages (through its conversation), or None."""
    return (
        await Message.objects.filter(pk=message_id, conversation__user=user)
        .select_related("conversation")
        .afirst()
    )


async def message_aget_by_generation(*, user: User, generation_id: str) -> Message | None:
    """The user's assistant message streamed by that generation, or None."""
    if not generation_id:
        return None
    return (
        await Message.objects.filter(generation_id=generation_id, conversation__user=user)
        .select_related("conversation")
        .afirst()
    )


# A slot with its backend and two fallbacks deep (models.FALLBACK_DEPTH), in one query.
SLOT_RELATED = (
    "backend",
    "fallback__backend",
    "fallback__fallback__backend",
)


def slot_list_enabled(*, user: User | None = None) -> QuerySet[Slot]:
    """Enabled slots, and with ``user`` only those they may use: slots limited to groups are
    for those groups' members (superusers see every slot)."""
    slots = Slot.objects.filter(enabled=True).select_related(*SLOT_RELATED)
    if user is not None and not user.is_superuser:
        slots = slots.filter(Q(groups__isnull=True) | Q(groups__user=user)).distinct()
    return slots.order_by("-is_default", "name")


def slot_get(*, name: str | None, user: User | None = None) -> Slot | None:
    """``slot_aget``, sync."""
    slots = slot_list_enabled(user=user)
    return (slots.filter(name=name) if name else slots).first()


async def slot_aget(*, name: str | None, user: User | None = None) -> Slot | None:
    """The enabled slot called ``name`` (the default one when ``name`` is empty) that ``user``
    may use, or None."""
    slots = slot_list_enabled(user=user)
    if name:
        return await slots.filter(name=name).afirst()
    return await slots.afirst()


async def slot_aget_cached(
    *, name: str, user: User, lookups: readcache.Lookups | None = None
) -> Slot | None:
    """``slot_aget`` through ``readcache``: the per-call lookup of /v1 and of the chat's answers
    (an empty ``name``: the default slot; ``lookups``: the request's, so that it reads the
    cache's version once)."""
    return await (lookups or readcache.Lookups()).aget_or_load(
        f"slot:{name}:{user.pk}", lambda: slot_aget(name=name, user=user)
    )


async def api_key_aget_active(
    *, raw: str, lookups: readcache.Lookups | None = None
) -> ApiKey | None:
    """The active key (not revoked, its user active) whose digest matches the raw key ``raw``,
    with its user, through ``readcache`` (``lookups``: the request's); None for any other
    string."""
    if not raw.startswith(API_KEY_PREFIX):
        return None
    digest = api_key_digest(raw)

    async def load() -> ApiKey | None:
        return (
            await ApiKey.objects.select_related("user")
            .filter(digest=digest, revoked_at__isnull=True, user__is_active=True)
            .afirst()
        )

    return await (lookups or readcache.Lookups()).aget_or_load(f"key:{digest}", load)


def widget_get(*, public_key: str) -> Widget | None:
    """The widget with that public key (enabled or not), with its slot, or None."""
    return Widget.objects.select_related("slot").filter(public_key=public_key).first()


async def widget_aget(*, public_key: str) -> Widget | None:
    """``widget_get``, async."""
    return await Widget.objects.select_related("slot").filter(public_key=public_key).afirst()


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("revoked_at", "-created_at")


# ------------------------------------------------------------------------------------------------
# Stored responses (/v1/responses)
# ------------------------------------------------------------------------------------------------
# How many earlier responses a previous_response_id chain may reach back through.
RESPONSE_CHAIN_LIMIT = 256


async def response_aget(*, user: User, response_id: str) -> StoredResponse | None:
    """The stored response ``response_id`` if it is ``user``'s, else None (another user's id
    reads as unknown)."""
    return await StoredResponse.objects.filter(pk=response_id, user=user).afirst()


async def response_achain(*, user: User, response_id: str) -> list[StoredResponse] | None:
    """The response ``response_id`` and the ones it continues (``previous_response_id``),
    oldest first, at most ``RESPONSE_CHAIN_LIMIT``; None when ``response_id`` is not one of
    ``user``'s. A link to a deleted response ends the chain there."""
    chain: list[StoredResponse] = []
    next_id: str | None = response_id
    while next_id is not None and len(chain) < RESPONSE_CHAIN_LIMIT:
        stored = await response_aget(user=user, response_id=next_id)
        if stored is None:
            if not chain:
                return None
            break
        chain.append(stored)
        next_id = stored.previous_id
    chain.reverse()
    return chain


# ------------------------------------------------------------------------------------------------
# Usage
# ------------------------------------------------------------------------------------------------
_TTFT_FIELDS = bucket_fields("ttft", TTFT_BUCKETS_MS)
_TPS_FIELDS = bucket_fields("tps", TOKENS_PER_S_BUCKETS)
_USAGE_SUMS = [
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    *_TTFT_FIELDS,
    *_TPS_FIELDS,
]


def quantile(counts: list[int], bounds: tuple[int, ...], q: float) -> float | None:
    """The ``q``-quantile (0 < q < 1) of the values a histogram counted: ``counts[i]`` values
    at most ``bounds[i]`` (and above the bound before), the last count above ``bounds[-1]``.
    Interpolated linearly within the bucket that holds it, from 0 for the first, as
    Prometheus' ``histogram_quantile`` does; in the top bucket it is ``bounds[-1]`` (a lower
    bound). None for an empty histogram."""
    total = sum(counts)
    if not total:
        return None
    rank, seen, lower = q * total, 0, 0.0
    for upper, count in zip(bounds, counts, strict=False):
        if count and seen + count >= rank:
            return lower + (upper - lower) * (rank - seen) / count
        seen, lower = seen + count, float(upper)
    return float(bounds[-1])


def _with_percentiles(row: dict[str, Any]) -> dict[str, Any]:
    """A summed usage row with its percentiles added: ``ttft_p50_ms``, ``ttft_p95_ms``,
    ``tokens_per_s_p50`` and ``tokens_per_s_p5`` (the slowest twentieth), None when unmeasured;
    the histogram columns are dropped."""
    ttft = [row.pop(name) or 0 for name in _TTFT_FIELDS]
    speed = [row.pop(name) or 0 for name in _TPS_FIELDS]
    row.update(
        ttft_p50_ms=quantile(ttft, TTFT_BUCKETS_MS, 0.5),
        ttft_p95_ms=quantile(ttft, TTFT_BUCKETS_MS, 0.95),
        tokens_per_s_p50=quantile(speed, TOKENS_PER_S_BUCKETS, 0.5),
        tokens_per_s_p5=quantile(speed, TOKENS_PER_S_BUCKETS, 0.05),
    )
    return row


def usage_summary(
    rows: QuerySet[UsageDay] | QuerySet[UsageHour], *, by: list[str]
) -> list[dict[str, Any]]:
    """``rows`` (per day or per hour) summed per distinct value of the fields ``by`` (e.g.
    ``["day"]``, ``["hour"]``, ``["user__username"]``; ``[]``: one total), largest token count
    first (newest first when by day or hour): the ``by`` fields, ``label`` (their values
    joined; an hour as ``2026-12-08 14:00``, UTC), ``requests``, ``errors``, ``prompt_tokens``,
    ``completion_tokens``, ``tokens``, and the percentiles of ``_with_percentiles``. One query
    over the usage rows."""
    sums = {name: Sum(name) for name in _USAGE_SUMS}
    summed = list(rows.order_by().values(*by).annotate(**sums)) if by else [rows.aggregate(**sums)]
    result = []
    for row in summed:
        row = _with_percentiles(dict(row))
        for name in ("requests", "errors", "prompt_tokens", "completion_tokens"):
            row[name] = row[name] or 0
        row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
        row["label"] = " · ".join(str(row[name]) for name in by if row[name] is not None)
        if by == ["hour"]:
            row["label"] = hour_label(row["hour"])
        result.append(row)
    if by in (["day"], ["hour"]):
        return sorted(result, key=lambda r: r[by[0]], reverse=True)
    return sorted(result, key=lambda r: r["tokens"], reverse=True)


async def slot_today(names: list[str]) -> dict[str, dict[str, Any]]:
    """Today's (UTC) figures of each slot in ``names``, from the per-day rows (one query):
    ``requests_today``, ``errors_today``, ``ttft_p50_ms`` (median time to first token, ms) and
    ``tokens_per_s_p50``; 0 and None for a slot that has not answered today."""
    today = {
        name: {
            "requests_today": 0,
            "errors_today": 0,
            "ttft_p50_ms": None,
            "tokens_per_s_p50": None,
        }
        for name in names
    }
    rows = (
        UsageDay.objects.filter(day=timezone.now().date(), slot_name__in=names)
        .order_by()
        .values("slot_name")
        .annotate(**{name: Sum(name) for name in _USAGE_SUMS})
    )
    async for summed in rows:
        row = _with_percentiles(dict(summed))
        today[row["slot_name"]] = {
            "requests_today": row["requests"] or 0,
            "errors_today": row["errors"] or 0,
            "ttft_p50_ms": row["ttft_p50_ms"],
            "tokens_per_s_p50": row["tokens_per_s_p50"],
        }
    return today


def usage_within(*, period: UsagePeriod, **only: Any) -> QuerySet[UsageDay] | QuerySet[UsageHour]:
    """The usage rows of ``period`` (``UsageHour`` rows when it is in hours, else
    ``UsageDay``'s), those matching ``only`` (``user=…``; none: everyone's), for
    ``usage_summary``."""
    if period.hourly:
        return UsageHour.objects.filter(hour__gte=period.since, **only)
    return UsageDay.objects.filter(day__gte=period.since, **only)


async def quotas_aget(
    *, user: User, api_key_id: int | None, lookups: readcache.Lookups
) -> list[Quota]:
    """The quotas that apply to ``user`` (theirs, their groups') and to the API key
    ``api_key_id`` (when the call has one), through ``readcache``: no query per call unless
    quotas change."""

    async def load() -> list[Quota]:
        applies = Q(user=user) | Q(group__in=user.groups.all())
        if api_key_id is not None:
            applies |= Q(api_key_id=api_key_id)
        return [
            q
            async for q in Quota.objects.filter(applies).select_related("user", "group", "api_key")
        ]

    return await lookups.aget_or_load(f"quotas:{user.pk}:{api_key_id}", load)


_M = TypeVar("_M", bound=Model)


def quota_used(*, quota: Quota, since: date) -> tuple[int, int]:
    """(tokens, requests) counted against ``quota`` since the day ``since`` (UTC): the usage of
    its user, of its group's members, or of its key; requests are those admitted
    (``UsageDay.admitted``). Synchronous: ``chat.quotas`` reads it in its transaction."""
    rows = _counted_against(quota, UsageDay.objects.filter(day__gte=since))
    totals = rows.aggregate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), requests=Sum("admitted")
    )
    tokens = (totals["prompt"] or 0) + (totals["completion"] or 0)
    return tokens, totals["requests"] or 0


def quota_held(*, quota: Quota, now: datetime) -> tuple[int, int]:
    """(tokens, requests) that requests admitted and still running hold of ``quota``: its
    reservations not expired at ``now`` (any period's: a request admitted before midnight and
    ending after counts its usage on the new day). Synchronous, as ``quota_used``."""
    rows = _counted_against(quota, QuotaReservation.objects.filter(expires_at__gt=now))
    totals = rows.aggregate(tokens=Sum("tokens"), requests=Count("pk"))
    return totals["tokens"] or 0, totals["requests"]


def _counted_against(quota: Quota, rows: QuerySet[_M]) -> QuerySet[_M]:
    """``rows`` (usage or reservations) of ``quota``'s user, of its group's members, or of its
    key."""
    if quota.user_id is not None:
        return rows.filter(user_id=quota.user_id)
    if quota.group_id is not None:
        return rows.filter(user__groups=quota.group_id)
    return rows.filter(api_key_id=quota.api_key_id)
