"""Writes of answers and their turns: a conversation and its messages created, an answer's
checkpoints while it streams and its end (one UPDATE each, through ``chat.records``), answers
recovered or marked interrupted, a slot's state. Never a write per token (DESIGN.md,
"Persistence")."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import DatabaseError, transaction
from django.utils import timezone

from chat import quotas, records
from chat.models import (
    Attachment,
    Conversation,
    Message,
    Slot,
    Widget,
)
from chat.relay import chunkcheck, drain
from chat.relay.accumulate import MessageAccumulator
from chat.relay.errors import RelayError
from chat.relay.generation import Generation
from chat.relay.slots import StateChange
from chat.services.usage import usage_today

logger = logging.getLogger(__name__)


TITLE_LENGTH = 60


async def slot_astore_state(change: StateChange) -> None:
    """Persist a slot's state change (the admin's slot list and other processes read it), in
    the process's next batch of records (``chat.records``), so through a database outage too,
    in the order the changes happened."""

    def store() -> None:
        Slot.objects.filter(pk=change.slot_id, name=change.name).update(
            state=change.state,
            last_error=change.last_error[:2000],
            state_changed_at=datetime.fromtimestamp(change.at, tz=UTC),
        )

    await records.write(records.Record(write=store, label=f"slot {change.name}'s state"))


def title_from(text: str) -> str:
    """A conversation title from its first message: the first line, cut at a word."""
    line = " ".join(text.strip().split())
    if len(line) <= TITLE_LENGTH:
        return line or "New chat"
    return line[:TITLE_LENGTH].rsplit(" ", 1)[0] + "…"


def conversation_new(*, user: User, slot: Slot, first_message: str) -> Conversation:
    """A user's new conversation, not saved yet: ``turn_acreate`` stores it with its first turn."""
    return Conversation(user=user, slot=slot, title=title_from(first_message))


def conversation_new_for_visitor(
    *, widget: Widget, visitor_id: UUID, slot: Slot, first_message: str
) -> Conversation:
    """A widget visitor's new conversation, with the widget's system prompt, not saved yet
    (``turn_acreate`` stores it)."""
    return Conversation(
        widget=widget,
        visitor_id=visitor_id,
        slot=slot,
        title=title_from(first_message),
        system_prompt=widget.system_prompt,
    )


def message_new_user(
    *,
    conversation: Conversation,
    content: str,
    parent: Message | None = None,
    attachment_ids: list[str] | None = None,
) -> Message:
    """A user message, not saved yet (``turn_acreate`` or ``message_acreate_user`` stores it)."""
    return Message(
        conversation=conversation,
        role=Message.Role.USER,
        content=content,
        parent=parent,
        attachment_ids=attachment_ids or [],
    )


async def message_acreate_user(
    *,
    conversation: Conversation,
    content: str,
    parent: Message | None = None,
    attachment_ids: list[str] | None = None,
) -> Message:
    message = message_new_user(
        conversation=conversation, content=content, parent=parent, attachment_ids=attachment_ids
    )
    await message.asave(force_insert=True)
    return message


def turn_create(
    *,
    conversation: Conversation,
    user_message: Message,
    attachment_ids: list[str],
    slot_name: str,
    generation_id: str,
    move_leaf: bool,
) -> Message:
    """Store one turn of a conversation, in one transaction: ``conversation`` and
    ``user_message`` when they are not saved yet, the attachments ``attachment_ids`` (sent with
    it, not yet in a conversation) as the conversation's, the assistant's row (``streaming``,
    answering ``user_message``, streamed by ``generation_id`` on ``slot_name``), and, with
    ``move_leaf``, ``user_message`` as the shown leaf. Returns the assistant's row. Raises
    ``DatabaseError``; then nothing of the turn is stored."""
    with transaction.atomic():
        if conversation._state.adding:
            conversation.save(force_insert=True)
        if attachment_ids:
            Attachment.objects.filter(pk__in=attachment_ids, conversation=None).update(
                conversation=conversation
            )
        if user_message._state.adding:
            user_message.save(force_insert=True)
        assistant = Message.objects.create(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            slot_name=slot_name,
            parent=user_message,
            generation_id=generation_id,
        )
        if move_leaf:
            conversation.current_leaf = user_message
            Conversation.objects.filter(pk=conversation.pk).update(current_leaf=user_message)
    return assistant


# turn_create in the request's thread: one hop and one commit for the whole turn.
turn_acreate = sync_to_async(turn_create, thread_sensitive=True)


def conversation_set_leaf(*, conversation: Conversation, leaf: Message) -> None:
    """Show the branch through ``leaf`` (the "< 1/2 >" pager)."""
    conversation.current_leaf = leaf
    conversation.save(update_fields=["current_leaf"])


def generation_fields(generation: Generation, *, status: str | None = None) -> dict[str, Any]:
    """What a generation stores on its message: its answer so far, with its own status unless
    ``status`` says otherwise (a client that left a shared generation stopped watching it).
    Upstream values are made storable (``checks``): no NUL characters, a ``finish_reason``
    within its column, only well-formed usage counts."""
    acc = generation.accumulator
    return {
        **_text_fields(generation),
        "slot_name": generation.slot[:100],
        "status": status or _outcome(generation),
        "finish_reason": (acc.finish_reason() or "")[:FINISH_REASON_LENGTH],
        "usage": chunkcheck.clean_usage(acc.usage),
        "error": chunkcheck.without_nul(generation.error.envelope()) if generation.error else None,
        "ttft_ms": generation.ttft_ms,
        "tokens_per_s": generation.tokens_per_s,
    }


FINISH_REASON_LENGTH = Message._meta.get_field("finish_reason").max_length or 32


def _outcome(generation: Generation) -> str:
    """A generation's status as its message stores it: an answer that a draining process's
    deadline ended (``chat.relay.drain``) is ``interrupted``, as one whose process died."""
    if generation.error is not None and generation.error.code == drain.INTERRUPTED:
        return Message.Status.INTERRUPTED
    return generation.status


def whole_answer_fields(chunk: dict[str, Any], *, slot_name: str) -> dict[str, Any]:
    """What a whole (non-streamed) answer stores on its message, as ``generation_fields`` for
    a stream: ``chunk`` is the one chat chunk that says the same as the answer
    (``responses.whole_as_chunk``, ``responses.response_as_chunk``); complete, no timings."""
    acc = MessageAccumulator()
    acc.add(chunk)
    return {
        **_accumulated_text(acc),
        "slot_name": slot_name[:100],
        "status": Message.Status.COMPLETE,
        "finish_reason": (acc.finish_reason() or "")[:FINISH_REASON_LENGTH],
        "usage": chunkcheck.clean_usage(acc.usage),
    }


def _text_fields(generation: Generation) -> dict[str, Any]:
    """The answer's text: what must be stored whatever else fails."""
    return _accumulated_text(generation.accumulator)


def _accumulated_text(acc: MessageAccumulator) -> dict[str, Any]:
    return {
        "content": chunkcheck.without_nul(acc.content() or acc.refusal()),
        "reasoning": chunkcheck.without_nul(acc.reasoning()),
        "tool_calls": chunkcheck.without_nul(acc.tool_calls()),
    }


async def message_acheckpoint(*, message_id: int, generation: Generation) -> None:
    """Store the text so far of an answer still streaming (one UPDATE, about once a second),
    so a process that dies mid-answer loses at most the last second of it, with where that
    text stands in the generation's chunks (``Message.checkpoint``, see ``resume_point``), so
    a reloaded page goes on after that chunk. A failure is logged, never raised: the next
    checkpoint or the final write tries again. Written in the process's next batch of records
    (``chat.records``): at hundreds of streams, a few statements a second instead of one per
    stream."""
    # Text and sequence number read together, with no await between: the dispatcher publishes
    # a chunk into the buffer and the accumulator in one step (Generation.publish).
    text = _text_fields(generation)
    point = resume_point(generation.accumulator, text, sequence=len(generation.chunks))
    await records.write(records.Record(checkpoint=(message_id, {**text, "checkpoint": point})))


def resume_point(acc: MessageAccumulator, text: dict[str, Any], *, sequence: int) -> dict[str, Any]:
    """``Message.checkpoint`` for ``text`` (``_accumulated_text(acc)``) made of the first
    ``sequence`` chunks of a generation (sequence numbers count chunks from 1: the SSE ``id``
    of the last one, ``Generation.subscribe(after=sequence)`` reads on from the next).

    ``{"seq": sequence}``, plus the raw state of choice 0 where the stored fields are not it, so
    a browser can fold the rest of the chunks into exactly what it would have from chunk 1
    (static/chat/delta.js): ``content`` (the content as streamed: before a leading
    ``<think>`` block was split off, or empty when the stored text is the refusal),
    ``reasoning`` (only what came in reasoning fields) and ``tool_indices`` (the tool calls'
    ``index`` values, in order, when they are not 0, 1, …; the stored list drops them). Mostly
    just the number: the text is not stored twice. ``resume_delta`` turns it back into the
    one delta that stands for those chunks."""
    choice = acc.choice()
    point: dict[str, Any] = {"seq": sequence}
    content = chunkcheck.without_nul("".join(choice.content))
    if content != text["content"]:
        point["content"] = content
    reasoning = chunkcheck.without_nul("".join(choice.reasoning))
    if reasoning != text["reasoning"]:
        point["reasoning"] = reasoning
    indices = sorted(choice.tool_calls)
    if indices != list(range(len(indices))):
        point["tool_indices"] = indices
    return point


def resume_delta(message: Message) -> dict[str, Any] | None:
    """The ``choices[0].delta`` that stands for the chunks ``message``'s checkpoint includes
    (``resume_point``): ``content``, ``reasoning_content`` and ``tool_calls`` fragments with
    their ``index``, as the accumulator had them, for the page to fold in before it reads on
    after ``message.checkpoint["seq"]``. None when there is none to go on from: a message not
    streaming, or checkpointed before checkpoints said where they stand (read from chunk 1)."""
    point = message.checkpoint
    if message.status != Message.Status.STREAMING or not isinstance(point, dict):
        return None
    if not isinstance(point.get("seq"), int) or point["seq"] < 1:
        return None
    calls = message.tool_calls if isinstance(message.tool_calls, list) else []
    indices = point.get("tool_indices") or list(range(len(calls)))
    return {
        "content": point.get("content", message.content),
        "reasoning_content": point.get("reasoning", message.reasoning),
        "tool_calls": [
            {"index": index, **call} for index, call in zip(indices, calls, strict=False)
        ],
    }


async def message_amark_interrupted(*, message_ids: list[int]) -> int:
    """Mark those answers ``interrupted`` (their process died), keeping their checkpointed text,
    unless they ended meanwhile. Returns how many were marked."""
    return await Message.objects.filter(
        pk__in=message_ids, status=Message.Status.STREAMING
    ).aupdate(
        status=Message.Status.INTERRUPTED,
        finish_reason="",
        checkpoint=None,  # nothing streams on from it
        updated_at=timezone.now(),
    )


async def message_arecover(
    *, message_id: int, chunks: list[str], end: dict[str, Any] | None
) -> bool:
    """Store an answer whose process is gone from what its shared buffer kept (Redis:
    ``Shared.buffered``): every chunk it relayed, not only its last checkpoint, with the
    status its end says (``complete``, ``error``, ``stopped``), or ``interrupted`` when it
    never ended or a drain's deadline ended it. One UPDATE, only while the message is still
    ``streaming`` (an end stored meanwhile wins), through the records' batch. Its usage is not
    counted: what counts it died with its process. Returns False when the database refused
    it (logged)."""
    acc = MessageAccumulator()
    for data in chunks:  # checked by the relay before they were buffered (chat.relay.chunkcheck)
        acc.add(json.loads(data))
    error = RelayError.from_dict(end["error"]) if end and end.get("error") else None
    status = end["status"] if end else Message.Status.INTERRUPTED
    if error is not None and error.code == drain.INTERRUPTED:
        status = Message.Status.INTERRUPTED
    fields = {
        **_accumulated_text(acc),
        "status": status,
        "finish_reason": (acc.finish_reason() or "")[:FINISH_REASON_LENGTH],
        "usage": chunkcheck.clean_usage(acc.usage),
        "error": chunkcheck.without_nul(error.envelope()) if error else None,
        "checkpoint": None,  # stored whole
        "updated_at": timezone.now(),
    }

    def store() -> None:
        Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(**fields)

    return await records.write(
        records.Record(write=store, label=f"message {message_id} (from its shared buffer)")
    )


async def message_afinalise(
    *,
    message_id: int,
    conversation_id: Any,
    generation: Generation,
    status: str | None = None,
    owner: tuple[int | None, int | None] | None = None,
    reservation: int | None = None,
) -> None:
    """Store the finished answer in one UPDATE, bump its conversation in the sidebar, and count
    it in its owner's usage (``owner``: the conversation's user id and widget id; read from
    the conversation when not given) in place of its quota ``reservation`` (``chat.quotas``),
    in one transaction of the process's next batch of records (``chat.records``). ``status``
    overrides the generation's (an answer stopped while its generation goes on).

    Never raises and never loses the answer: when the database refuses a value of the row, its
    text and status are stored without the rest (an error in storing usage costs the usage);
    while the database is unavailable, the answer is kept in memory and stored once it is
    back (returning after ``records.KEEP_WAIT_S``, logged with the message id)."""
    fields = generation_fields(generation, status=status)
    if owner is None:
        try:
            row = (
                await Conversation.objects.filter(pk=conversation_id)
                .values_list("user_id", "widget_id")
                .afirst()
            )
            owner = None if row is None else (row[0], row[1])
        except DatabaseError:
            logger.exception("message %s: reading whose answer it is failed", message_id)
    usage = None
    if owner is not None:
        counts = chunkcheck.clean_usage(generation.accumulator.usage) or {}
        usage = usage_today(
            slot_name=generation.slot,
            ok=fields["status"] != Message.Status.ERROR,
            user_id=owner[0],
            widget_id=owner[1],
            prompt_tokens=counts.get("prompt_tokens"),
            completion_tokens=generation.accumulator.completion_tokens(),
            ttft_ms=generation.ttft_ms,
            tokens_per_s=generation.tokens_per_s,
        )
    final = records.Final(
        message_id=message_id,
        conversation_id=conversation_id,
        fields=fields,
        text=_text_fields(generation),
        at=timezone.now(),
    )
    await records.write(records.Record(final=final, usage=usage, settles=reservation))
    quotas.forget(reservation)
