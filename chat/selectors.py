"""Reads. Every function takes the user it reads for, so ownership is checked in one place."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet
from django.utils import timezone

from chat import readcache
from chat.models import ApiKey, Conversation, Message, Slot


def conversation_list(*, user: User, query: str = "") -> QuerySet[Conversation]:
    """The user's conversations, most recently active first; with ``query``, those whose title
    or any message contains it (case-insensitive)."""
    conversations = Conversation.objects.filter(user=user)
    query = query.strip()
    if query:
        matching = Message.objects.filter(content__icontains=query).values("conversation_id")
        conversations = conversations.filter(Q(title__icontains=query) | Q(pk__in=matching))
    return conversations.order_by("-updated_at")


DATE_GROUPS = ("Today", "Yesterday", "Previous 7 days", "Previous 30 days", "Older")


def conversation_groups(
    conversations: Iterable[Conversation], *, today: date
) -> list[tuple[str, list[Conversation]]]:
    """Conversations under the sidebar's date headings (by last activity, in local time),
    empty headings left out, order kept."""
    groups: dict[str, list[Conversation]] = {label: [] for label in DATE_GROUPS}
    for conversation in conversations:
        age = (today - timezone.localtime(conversation.updated_at).date()).days
        label = (
            "Today"
            if age <= 0
            else "Yesterday"
            if age == 1
            else "Previous 7 days"
            if age <= 7
            else "Previous 30 days"
            if age <= 30
            else "Older"
        )
        groups[label].append(conversation)
    return [(label, items) for label, items in groups.items() if items]


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


def message_list(*, conversation: Conversation) -> list[Message]:
    """The messages shown for ``conversation``: its current branch, root first, each with
    ``branch_index`` (1-based), ``branch_count`` and ``branch_ids`` (its siblings' ids, itself
    included, oldest first) for the "< 1/2 >" pager."""
    return thread_of(
        list(conversation.messages.order_by("created_at", "id")), conversation.current_leaf_id
    )


async def message_alist(*, conversation: Conversation) -> list[Message]:
    messages = [m async for m in conversation.messages.order_by("created_at", "id")]
    return thread_of(messages, conversation.current_leaf_id)


def thread_of(messages: list[Message], leaf_id: int | None) -> list[Message]:
    """The branch shown: the path from the root to ``leaf_id``, continued down through the
    newest child at each step (so an answer added under the leaf shows without moving it).
    With no leaf, it starts from the newest root. ``messages`` are oldest first."""
    by_id = {m.pk: m for m in messages}
    children: dict[int | None, list[Message]] = {}
    for message in messages:
        children.setdefault(message.parent_id, []).append(message)
    leaf = by_id.get(leaf_id) if leaf_id is not None else None
    if leaf is None:
        roots = children.get(None)
        if not roots:
            return []
        leaf = roots[-1]
    path = [leaf]
    while path[0].parent_id is not None and path[0].parent_id in by_id:
        path.insert(0, by_id[path[0].parent_id])
    while children.get(path[-1].pk):
        path.append(children[path[-1].pk][-1])
    for message in path:
        siblings = children.get(message.parent_id, [message])
        message.branch_ids = [m.pk for m in siblings]  # type: ignore[attr-defined]
        message.branch_index = message.branch_ids.index(message.pk) + 1  # type: ignore[attr-defined]
        message.branch_count = len(siblings)  # type: ignore[attr-defined]
    return path


def history_for_upstream(thread: list[Message]) -> list[dict[str, str]]:
    """A thread as OpenAI ``messages``: user turns, and assistant turns that produced text (an
    answer that failed before any text is left out rather than sent as empty)."""
    return [
        {"role": m.role, "content": m.content}
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


# A slot with its backend and two fallbacks deep (services.FALLBACK_DEPTH), in one query.
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


async def slot_aget(*, name: str | None, user: User | None = None) -> Slot | None:
    """The enabled slot called ``name`` (the default one when ``name`` is empty) that ``user``
    may use, or None."""
    slots = slot_list_enabled(user=user)
    if name:
        return await slots.filter(name=name).afirst()
    return await slots.afirst()


async def slot_aget_cached(*, name: str, user: User) -> Slot | None:
    """``slot_aget`` through ``readcache``: the /v1 API's per-call lookup."""
    return await readcache.aget_or_load(
        f"slot:{name}:{user.pk}", lambda: slot_aget(name=name, user=user)
    )


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("revoked_at", "-created_at")
