"""Reads. Every function takes the user it reads for, so ownership is checked in one place."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet

from chat.models import ApiKey, Conversation, Message, Slot


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    """The user's conversations, most recently active first."""
    return Conversation.objects.filter(user=user).order_by("-updated_at")


async def conversation_aget(*, user: User, conversation_id: Any) -> Conversation | None:
    """The user's conversation with that id, or None (also for someone else's id)."""
    return (
        await Conversation.objects.filter(user=user, pk=conversation_id)
        .select_related("slot")
        .afirst()
    )


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.order_by("created_at", "id")


async def history_for_upstream(*, conversation: Conversation) -> list[dict[str, str]]:
    """The conversation as OpenAI ``messages``: user turns, and assistant turns that produced
    text (an answer that failed before any text is left out rather than sent as empty)."""
    history = []
    async for role, content in (
        Message.objects.filter(conversation=conversation)
        .order_by("created_at", "id")
        .values_list("role", "content")
    ):
        if role == Message.Role.ASSISTANT and not content:
            continue
        history.append({"role": role, "content": content})
    return history


# A slot with its backend and two fallbacks deep (services.FALLBACK_DEPTH), in one query.
SLOT_RELATED = (
    "backend",
    "fallback__backend",
    "fallback__fallback__backend",
)


def slot_list_enabled() -> QuerySet[Slot]:
    return Slot.objects.filter(enabled=True).select_related(*SLOT_RELATED)


async def slot_aget(*, name: str | None) -> Slot | None:
    """The enabled slot called ``name``, or the default one when ``name`` is empty."""
    slots = Slot.objects.filter(enabled=True).select_related(*SLOT_RELATED)
    if name:
        return await slots.filter(name=name).afirst()
    return await slots.order_by("-is_default", "name").afirst()


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("revoked_at", "-created_at")
