"""What a ``/v1`` call leaves when it ends: its ``ApiCall`` record (its usage settling its quota
reservation, ``chat.quotas``) and, when the key keeps calls as conversations, the conversation
(chat completions and responses)."""

from __future__ import annotations

import logging
from typing import Any

from chat import services
from chat.models import (
    ApiKey,
    Slot,
)
from chat.relay.generation import Generation

logger = logging.getLogger(__name__)


# The endpoints whose calls a key marked "keep calls as conversations" keeps (embeddings and
# legacy completions have no conversation to show).
KEPT_ENDPOINTS = ("chat/completions", "responses")


async def record_api_call(
    *,
    key: ApiKey,
    slot: Slot,
    endpoint: str,
    messages: list[Any],
    generation: Generation,
    outcome: str,
    reservation: int | None = None,
) -> None:
    """Record a finished streamed ``/v1`` call (one ``ApiCall`` row; its usage settles its
    quota ``reservation``), and keep it as a conversation of the key's owner when the key says
    so (chat completions and responses)."""
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
        reservation=reservation,
    )
    if key.store_conversations and endpoint in KEPT_ENDPOINTS:
        await services.api_conversation_astore(
            api_key=key,
            slot=slot,
            messages=messages,
            answer=services.generation_fields(generation, status=outcome),
        )


async def record_whole_api_call(
    *,
    key: ApiKey,
    slot: Slot,
    endpoint: str,
    started_at: float,
    usage: dict[str, Any] | None,
    messages: list[Any] | None = None,
    chunk: dict[str, Any] | None = None,
    reservation: int | None = None,
) -> None:
    """Record a whole (non-streamed) ``/v1`` call as complete (one ``ApiCall`` row, ``usage``
    in chat completions' words, which settles its quota ``reservation``), and keep it as a
    conversation of the key's owner as ``record_api_call`` keeps a stream: ``messages`` the
    chat request's, ``chunk`` the one chat chunk that says what it answered
    (``responses.whole_as_chunk``)."""
    await services.api_call_arecord(
        api_key=key,
        endpoint=endpoint,
        slot_name=slot.name,
        stream=False,
        http_status=200,
        outcome="complete",
        started_at=started_at,
        usage=usage,
        reservation=reservation,
    )
    if key.store_conversations and endpoint in KEPT_ENDPOINTS and chunk is not None:
        await services.api_conversation_astore(
            api_key=key,
            slot=slot,
            messages=messages or [],
            answer=services.whole_answer_fields(chunk, slot_name=slot.name),
        )
