"""Writes. Persistence never writes per token: an answer costs one insert when it starts and
one update when it ends (DESIGN.md, "Persistence")."""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth.models import Group, User
from django.core.files.storage import default_storage
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Model
from django.utils import timezone

from chat import quotas, readcache, records
from chat.models import (
    API_KEY_PREFIX,
    TOKENS_PER_S_BUCKETS,
    TTFT_BUCKETS_MS,
    USAGE_HOURS_KEPT,
    ApiKey,
    Attachment,
    Backend,
    Conversation,
    Folder,
    Message,
    Prompt,
    Slot,
    StoredResponse,
    UsageHour,
    Widget,
    api_key_digest,
    bucket_field,
)
from chat.relay import capabilities, chunkcheck, drain
from chat.relay.accumulate import MessageAccumulator
from chat.relay.errors import EnvelopeError, RelayError
from chat.relay.generation import Generation
from chat.relay.slots import StateChange

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


# ------------------------------------------------------------------------------------------------
# API keys and calls
# ------------------------------------------------------------------------------------------------
# last_used_at is for humans ("used 3 minutes ago"): one write a minute per key is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_last_used_written: dict[int, datetime] = {}


def api_key_create(
    *, user: User, name: str, store_conversations: bool = False, audit: str = ""
) -> tuple[ApiKey, str]:
    """A new key for ``user``. Returns the row and the raw key, which is never stored: show it
    once. Raw keys are ``sk-slip-`` plus 43 URL-safe characters (256 random bits). ``audit``:
    the audit log's message for a key made outside the admin (the admin logs its own)."""
    raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        user=user,
        name=name.strip() or "API key",
        prefix=raw[: len(API_KEY_PREFIX) + 4],
        digest=api_key_digest(raw),
        store_conversations=store_conversations,
    )
    if audit:
        audit_log(user=user, obj=key, action=ADDITION, message=audit)
    return key, raw


def api_key_revoke(*, user: User, key_id: int) -> bool:
    """Revoke one of ``user``'s keys at once (and say so in the audit log). Returns False
    when it is not theirs, or revoked already."""
    updated = ApiKey.objects.filter(user=user, pk=key_id, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    readcache.invalidate()  # .update() sends no signal
    if updated:
        audit_log(user=user, obj=ApiKey.objects.get(pk=key_id), action=CHANGE, message="Revoked")
    return updated == 1


def slot_detect_images(*, slot: Slot) -> tuple[bool | None, str]:
    """Ask ``slot``'s server whether its model reads images (``relay.capabilities``) and store
    the answer in ``slot.accepts_images`` when there is one. Returns ``(said, where)``;
    ``(None, "")`` leaves the slot as it is (the server does not say)."""
    backend = slot.config().backend
    said, where = async_to_sync(capabilities.reads_images)(backend, slot.upstream_model)
    if said is not None and said != slot.accepts_images:
        slot.accepts_images = said
        slot.save(update_fields=["accepts_images"])
    return said, where


def audit_log(*, user: User, obj: Model, action: int, message: str) -> None:
    """One entry of the audit log for a change made outside the admin (the admin logs its own):
    Django admin's ``LogEntry``, shown to staff as the admin's "Audit log". ``action``:
    ``ADDITION``, ``CHANGE`` or ``DELETION`` (``django.contrib.admin.models``)."""
    LogEntry.objects.log_actions(
        user_id=user.pk, queryset=[obj], action_flag=action, change_message=message
    )


async def api_call_arecord(
    *,
    api_key: ApiKey,
    endpoint: str,
    slot_name: str,
    stream: bool,
    http_status: int,
    outcome: str,
    started_at: float,
    generation: Generation | None = None,
    usage: dict[str, Any] | None = None,
    error: EnvelopeError | None = None,
    admitted: bool = True,
    reservation: int | None = None,
) -> None:
    """Record one finished ``/v1`` call (one INSERT; the key's last-used time at most once a
    minute) and count its usage in place of its quota ``reservation`` (``chat.quotas``);
    ``admitted``: it passed the quotas (else it counts no request against them).
    ``started_at`` is ``time.monotonic()`` at the call's start. Upstream usage is cleaned first
    (``chunkcheck.clean_usage``); a failed INSERT is logged, never raised."""
    usage = chunkcheck.clean_usage(generation.accumulator.usage if generation else usage) or {}
    completion_tokens = (
        generation.accumulator.completion_tokens() if generation else usage.get("completion_tokens")
    )
    ttft_ms = generation.ttft_ms if generation else None
    now = timezone.now()
    # The key may be a cached copy (readcache) whose last_used_at never moves: remember here
    # when this process last wrote it.
    last = _last_used_written.get(api_key.pk) or api_key.last_used_at
    key_used = None
    if last is None or now - last > LAST_USED_RESOLUTION:
        _last_used_written[api_key.pk] = now
        key_used = (api_key.pk, now)
    await records.write(
        records.Record(
            usage=usage_today(
                slot_name=slot_name,
                ok=outcome == "complete",
                admitted=admitted,
                user_id=api_key.user_id,
                api_key_id=api_key.pk,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=completion_tokens,
                ttft_ms=ttft_ms,
                tokens_per_s=generation.tokens_per_s if generation else None,
            ),
            call={
                "api_key_id": api_key.pk,
                "endpoint": endpoint[:40],
                "slot_name": slot_name[:100],
                "stream": stream,
                "http_status": http_status,
                "outcome": outcome,
                "error_code": ((error.code or error.type) if error else "")[:64],
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": completion_tokens,
                "ttft_ms": ttft_ms,
                "duration_ms": (time.monotonic() - started_at) * 1000,
            },
            key_used=key_used,
            settles=reservation,
        )
    )
    quotas.forget(reservation)


async def api_conversation_astore(
    *, api_key: ApiKey, slot: Slot, messages: list[Any], answer: dict[str, Any]
) -> None:
    """Keep an API call as a conversation of the key's owner (the key's opt-in option): the
    request's last user message and the answer (its message's fields: ``generation_fields``
    of a stream, ``whole_answer_fields`` of a whole answer)."""
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), {}
    )
    text = last_user.get("content")
    if not isinstance(text, str):
        text = json.dumps(text) if text else ""

    def store() -> None:
        conversation = Conversation.objects.create(
            user_id=api_key.user_id, slot_id=slot.pk, title=title_from(f"API: {text}")
        )
        message_new_user(conversation=conversation, content=chunkcheck.without_nul(text)).save(
            force_insert=True
        )
        Message.objects.create(conversation=conversation, role=Message.Role.ASSISTANT, **answer)

    # In the process's next batch of records: kept through a database outage like the call's
    # own record (chat.records).
    await records.write(records.Record(write=store, label=f"a /v1 call of key {api_key.pk} kept"))


# ------------------------------------------------------------------------------------------------
# Conversations: rename, delete, settings, sharing, export
# ------------------------------------------------------------------------------------------------
def conversation_rename(*, conversation: Conversation, title: str) -> None:
    title = " ".join(title.split())[:200]
    conversation.title = title or conversation.title
    conversation.save(update_fields=["title"])


def conversation_organise(
    *,
    conversation: Conversation,
    pinned: bool | None = None,
    archived: bool | None = None,
    folder: Folder | Literal["keep"] | None = "keep",
) -> None:
    """Pin or unpin, archive or bring back, move into a folder (``None``: out of any) what is
    given; the conversation's last activity (its place by date) is left as it was."""
    fields = []
    if pinned is not None:
        conversation.pinned = pinned
        fields.append("pinned")
    if archived is not None:
        conversation.archived_at = timezone.now() if archived else None
        fields.append("archived_at")
    if folder != "keep":
        conversation.folder = folder
        fields.append("folder")
    if fields:
        conversation.save(update_fields=fields)


# The longest prompt title, prompt text and folder name, characters (the models' max_length).
PROMPT_TITLE_MAX, PROMPT_TEXT_MAX, FOLDER_NAME_MAX = 100, 20_000, 100


def _prompt_fields(title: str, text: str) -> tuple[str, str]:
    """A prompt's title (spaces collapsed) and text (stripped, CRLF as LF: a form sends a
    textarea's line breaks as CRLF, HTML's "constructing the entry list"), as stored. Raises
    ``ValueError`` for an empty one or one over its limit (never cut: a cut prompt would say
    something else)."""
    title, text = " ".join(title.split()), text.replace("\r\n", "\n").strip()
    if not title or not text:
        raise ValueError("A prompt needs a title and a text.")
    if len(title) > PROMPT_TITLE_MAX:
        raise ValueError(f"A prompt's title is at most {PROMPT_TITLE_MAX} characters.")
    if len(text) > PROMPT_TEXT_MAX:
        raise ValueError(f"A prompt's text is at most {PROMPT_TEXT_MAX:,} characters.")
    return title, text


def prompt_create(*, owner: User, title: str, text: str, group: Group | None = None) -> Prompt:
    """A new prompt of ``owner``'s library, shared with ``group`` (one of theirs) when given.
    Raises ``ValueError`` for an empty or too long title or text, or a group the owner is not
    in."""
    title, text = _prompt_fields(title, text)
    if group is not None and not owner.groups.filter(pk=group.pk).exists():
        raise ValueError("Prompts are shared only with your own groups.")
    return Prompt.objects.create(owner=owner, title=title, text=text, group=group)


def prompt_update(*, prompt: Prompt, title: str, text: str) -> Prompt:
    """Change a prompt's title and text (whoever it is shared with sees the new ones). The
    caller has checked that the user owns it (``selectors.prompt_get_own``). Raises
    ``ValueError`` as ``prompt_create`` does."""
    prompt.title, prompt.text = _prompt_fields(title, text)
    prompt.save(update_fields=["title", "text"])
    return prompt


def _folder_name(name: str) -> str:
    """A folder's name as stored: spaces collapsed. Raises ``ValueError`` for an empty name
    or one over ``FOLDER_NAME_MAX`` characters."""
    name = " ".join(name.split())
    if not name:
        raise ValueError("A folder needs a name.")
    if len(name) > FOLDER_NAME_MAX:
        raise ValueError(f"A folder's name is at most {FOLDER_NAME_MAX} characters.")
    return name


def folder_get_or_create(*, user: User, name: str) -> Folder:
    """The user's folder of that name (spaces collapsed), made if new. Raises ``ValueError``
    for an empty name or one over ``FOLDER_NAME_MAX`` characters."""
    return Folder.objects.get_or_create(user=user, name=_folder_name(name))[0]


def folder_rename(*, folder: Folder, name: str) -> Folder:
    """Rename one of a user's folders (its conversations stay in it). The caller has checked
    that the user owns it. Raises ``ValueError`` for an empty or too long name, or the name of
    another of the user's folders (names are unique per user: ``folder_user_name``)."""
    name = _folder_name(name)
    if name == folder.name:
        return folder
    if Folder.objects.filter(user_id=folder.user_id, name=name).exclude(pk=folder.pk).exists():
        raise ValueError(f"You already have a folder named “{name}”.")
    folder.name = name
    try:
        # A rename racing another to the same name meets the constraint instead.
        with transaction.atomic():
            folder.save(update_fields=["name"])
    except IntegrityError as exc:
        raise ValueError(f"You already have a folder named “{name}”.") from exc
    return folder


def folder_delete(*, folder: Folder) -> None:
    """Delete a folder; its conversations stay, in no folder."""
    folder.delete()


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete ``conversation``, its messages and its attachments, their files included (once
    the rows are gone for good: a rolled-back delete keeps its files)."""
    names = list(conversation.attachments.values_list("file", flat=True))
    conversation.delete()
    if names:
        transaction.on_commit(lambda: attachment_files_delete(names))


def attachment_files_delete(names: list[str]) -> None:
    """Remove stored attachment files by name; one that is already gone is skipped."""
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete attachment file %s", name, exc_info=True)


def conversation_share(*, conversation: Conversation, shared: bool) -> None:
    """Share read-only with signed-in members (a new unguessable link each time), or stop."""
    conversation.share_id = uuid.uuid4() if shared else None
    conversation.save(update_fields=["share_id"])


# ------------------------------------------------------------------------------------------------
# Stored responses (/v1/responses)
# ------------------------------------------------------------------------------------------------
def pack_chunks(chunks: list[str]) -> bytes:
    """A response's upstream chunks (JSON texts) as stored: zlib-compressed JSON lines (a
    chunk's JSON never holds a raw newline)."""
    return zlib.compress("\n".join(chunks).encode(), level=6)


def unpack_chunks(packed: bytes | memoryview) -> list[str]:
    """The inverse of ``pack_chunks``."""
    data = bytes(packed)
    return zlib.decompress(data).decode().split("\n") if data else []


async def response_acreate(
    *,
    response_id: str,
    user: User,
    api_key: ApiKey | None,
    previous_id: str | None,
    slot_name: str,
    response: dict[str, Any],
    input_items: list[dict[str, Any]],
    generation_id: str = "",
    chunks: list[str] | None = None,
    native: bool = False,
) -> bool:
    """Store a response (one INSERT): ``in_progress`` when its stream starts, or whole, in the
    process's next batch of records (``chat.records``: kept through a database outage and
    stored, in order, before its end). Returns False when the database refused it (logged)."""
    row = StoredResponse(
        id=response_id,
        user_id=user.pk,
        api_key_id=api_key.pk if api_key is not None else None,
        previous_id=previous_id,
        slot_name=slot_name[:100],
        status=response["status"],
        generation_id=generation_id,
        native=native,
        response=response,
        input_items=input_items,
        chunks=pack_chunks(chunks or []),
    )
    return await records.write(
        records.Record(write=lambda: row.save(force_insert=True), label=f"response {response_id}")
    )


async def response_afinalise(
    *, response_id: str, response: dict[str, Any], chunks: list[str]
) -> None:
    """Store how a streamed response ended (one UPDATE): the response object and its chunks,
    in the process's next batch of records (after its INSERT, kept through a database
    outage). A refused UPDATE is logged, never raised: the client has its answer already."""
    packed = pack_chunks(chunks)

    def store() -> None:
        StoredResponse.objects.filter(pk=response_id).update(
            status=response["status"], response=response, chunks=packed
        )

    await records.write(records.Record(write=store, label=f"response {response_id} (its end)"))


async def response_amark_cancelled(*, response_id: str) -> dict[str, Any]:
    """Store a response left ``in_progress`` by a process that died as ``cancelled`` (one
    read, one UPDATE, only while it is still in progress); returns it as stored."""
    stored = await StoredResponse.objects.aget(pk=response_id)
    if stored.status == StoredResponse.Status.IN_PROGRESS:
        stored.response = {**stored.response, "status": StoredResponse.Status.CANCELLED}
        await StoredResponse.objects.filter(
            pk=response_id, status=StoredResponse.Status.IN_PROGRESS
        ).aupdate(status=StoredResponse.Status.CANCELLED, response=stored.response)
    response: dict[str, Any] = stored.response
    return response


async def response_adelete(*, user: User, response_id: str) -> bool:
    """Delete ``user``'s stored response; False when there is none of theirs by that id."""
    deleted, _ = await StoredResponse.objects.filter(pk=response_id, user=user).adelete()
    return deleted > 0


async def backend_anote_responses_api(*, backend_id: int, native: bool) -> None:
    """Remember what the first ``/v1/responses`` call found on a backend in ``auto`` mode
    (its own Responses API, or none): one UPDATE, and the cached slot lookups renewed so
    every process reads it on its next call. A failed UPDATE is logged: the next call finds
    out again."""
    try:
        await Backend.objects.filter(pk=backend_id).aupdate(responses_api_detected=native)
        await sync_to_async(readcache.invalidate)()  # .update() sends no signal
    except DatabaseError:
        logger.exception("backend %s: noting its Responses API failed", backend_id)


# ------------------------------------------------------------------------------------------------
# Usage per day and per hour
# ------------------------------------------------------------------------------------------------
async def usage_arecord(usage: records.Usage) -> None:
    """Count one answer or call (``usage_today``'s increments) in its ``UsageDay`` and
    ``UsageHour``: one UPDATE each, or an INSERT for the scope's first of the day or hour, in
    the process's next batch of records (``chat.records``). Never raises: a failed write is
    logged, and the answer stands."""
    await records.write(records.Record(usage=usage))


async def usage_hour_aprune(*, now: datetime | None = None) -> int:
    """Delete the ``UsageHour`` rows of hours that started more than ``USAGE_HOURS_KEPT``
    hours before ``now`` (default: the current time); returns how many. One DELETE on the
    (hour, scope) index; the per-day rows are kept."""
    cutoff = (now or timezone.now()) - timedelta(hours=USAGE_HOURS_KEPT)
    deleted, _ = await UsageHour.objects.filter(hour__lt=cutoff).adelete()
    return deleted


def usage_today(
    *,
    slot_name: str,
    ok: bool,
    admitted: bool = True,
    user_id: int | None = None,
    api_key_id: int | None = None,
    widget_id: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    ttft_ms: float | None = None,
    tokens_per_s: float | None = None,
) -> records.Usage:
    """Today's (UTC) increments of one answer's or call's ``UsageDay``, and of its
    ``UsageHour`` for the current hour (its scope: user, API key, widget, slot). Tokens are
    counted as given (None: 0); ``ttft_ms`` and ``tokens_per_s`` (None: not measured) also go
    into the rows' histograms; ``admitted``: the request counts against request budgets
    (``chat.quotas``)."""
    scope = f"u{user_id or '-'}:k{api_key_id or '-'}:w{widget_id or '-'}:{slot_name}"[:200]
    counts: dict[str, int | float] = {
        "requests": 1,
        "admitted": 1 if admitted else 0,
        "errors": 0 if ok else 1,
        "prompt_tokens": prompt_tokens or 0,
        "completion_tokens": completion_tokens or 0,
        "ttft_ms_sum": ttft_ms or 0.0,
        "ttft_count": 0 if ttft_ms is None else 1,
    }
    if ttft_ms is not None:
        counts[bucket_field("ttft", TTFT_BUCKETS_MS, ttft_ms)] = 1
    if tokens_per_s is not None:
        counts[bucket_field("tps", TOKENS_PER_S_BUCKETS, tokens_per_s)] = 1
    now = timezone.now()
    return records.Usage(
        day=now.date(),
        hour=now.replace(minute=0, second=0, microsecond=0),
        scope=scope,
        slot_name=slot_name,
        counts=counts,
        user_id=user_id,
        api_key_id=api_key_id,
        widget_id=widget_id,
    )
