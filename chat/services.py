"""Writes. Persistence never writes per token: an answer costs one insert when it starts and
one update when it ends (DESIGN.md, "Persistence")."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone

from chat.models import Conversation, Message, Slot
from chat.relay.dispatch import SlotConfig
from chat.relay.generation import Generation

TITLE_LENGTH = 60


def slot_config(slot: Slot) -> SlotConfig:
    """The relay's ORM-free view of a slot (needs ``slot.backend`` loaded)."""
    return SlotConfig(
        name=slot.name,
        upstream_model=slot.upstream_model,
        backend=slot.backend.config(),
        system_prompt=slot.system_prompt,
        defaults=slot.defaults(),
    )


def title_from(text: str) -> str:
    """A conversation title from its first message: the first line, cut at a word."""
    line = " ".join(text.strip().split())
    if len(line) <= TITLE_LENGTH:
        return line or "New chat"
    return line[:TITLE_LENGTH].rsplit(" ", 1)[0] + "…"


async def conversation_acreate(
    *, user: User, slot: Slot, first_message: str
) -> Conversation:
    return await Conversation.objects.acreate(
        user=user, slot=slot, title=title_from(first_message)
    )


async def message_acreate_user(*, conversation: Conversation, content: str) -> Message:
    return await Message.objects.acreate(
        conversation=conversation, role=Message.Role.USER, content=content
    )


async def message_acreate_assistant(*, conversation: Conversation, slot_name: str) -> Message:
    """The assistant's row, created as ``streaming`` when the generation starts."""
    return await Message.objects.acreate(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        slot_name=slot_name,
    )


def generation_fields(generation: Generation) -> dict[str, Any]:
    """What a finished generation stores on its message."""
    acc = generation.accumulator
    content = acc.content() or acc.refusal()
    return {
        "content": content,
        "reasoning": acc.reasoning(),
        "tool_calls": acc.tool_calls(),
        "status": generation.status,
        "finish_reason": acc.finish_reason() or "",
        "usage": acc.usage,
        "error": generation.error.envelope() if generation.error else None,
        "ttft_ms": generation.ttft_ms,
        "tokens_per_s": generation.tokens_per_s,
    }


async def message_afinalise(
    *, message_id: int, conversation_id: Any, generation: Generation
) -> None:
    """Store the finished answer in one UPDATE, and bump its conversation in the sidebar."""
    now = timezone.now()
    await Message.objects.filter(pk=message_id).aupdate(
        **generation_fields(generation), updated_at=now
    )
    await Conversation.objects.filter(pk=conversation_id).aupdate(updated_at=now)
