"""Writes. Persistence never writes per token: an answer costs one insert when it starts and
one update when it ends (DESIGN.md, "Persistence")."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import DatabaseError
from django.utils import timezone

from chat import readcache
from chat.models import ApiCall, ApiKey, Conversation, Message, Slot
from chat.relay import checks
from chat.relay.dispatch import SlotConfig
from chat.relay.errors import RelayError
from chat.relay.generation import Generation, find
from chat.relay.shared import shared
from chat.relay.slots import StateChange

logger = logging.getLogger(__name__)

TITLE_LENGTH = 60
# How many fallbacks deep a slot's chain is loaded (selectors.SLOT_RELATED matches it).
FALLBACK_DEPTH = 2


def slot_config(slot: Slot, *, depth: int = 0) -> SlotConfig:
    """The relay's ORM-free view of a slot and its fallbacks (needs ``slot.backend`` and the
    fallback chain loaded, as ``selectors.slot_aget`` does: two fallbacks deep)."""
    fallback = None
    if depth < FALLBACK_DEPTH and slot.fallback_id is not None:
        candidate = slot.fallback
        if candidate is not None and candidate.enabled:
            fallback = slot_config(candidate, depth=depth + 1)
    return SlotConfig(
        id=slot.pk,
        name=slot.name,
        upstream_model=slot.upstream_model,
        backend=slot.backend.config(),
        system_prompt=slot.system_prompt,
        defaults=slot.defaults(),
        stop=slot.stop_strings(),
        health_path=slot.backend.health_path,
        single_flight=slot.single_flight,
        max_concurrency=max(1, slot.max_concurrency),
        queue_timeout_s=slot.queue_timeout_s,
        cold_boot_timeout_s=slot.cold_boot_timeout_s,
        max_retries=slot.max_retries,
        fallback=fallback,
    )


async def slot_astore_state(change: StateChange) -> None:
    """Persist a slot's state change (the admin's slot list and other processes read it)."""
    await Slot.objects.filter(pk=change.slot_id, name=change.name).aupdate(
        state=change.state,
        last_error=change.last_error[:2000],
        state_changed_at=datetime.fromtimestamp(change.at, tz=UTC),
    )


def title_from(text: str) -> str:
    """A conversation title from its first message: the first line, cut at a word."""
    line = " ".join(text.strip().split())
    if len(line) <= TITLE_LENGTH:
        return line or "New chat"
    return line[:TITLE_LENGTH].rsplit(" ", 1)[0] + "…"


async def conversation_acreate(*, user: User, slot: Slot, first_message: str) -> Conversation:
    return await Conversation.objects.acreate(user=user, slot=slot, title=title_from(first_message))


async def message_acreate_user(
    *, conversation: Conversation, content: str, parent: Message | None = None
) -> Message:
    return await Message.objects.acreate(
        conversation=conversation, role=Message.Role.USER, content=content, parent=parent
    )


async def message_acreate_assistant(
    *,
    conversation: Conversation,
    slot_name: str,
    parent: Message | None = None,
    generation_id: str = "",
) -> Message:
    """The assistant's row, created as ``streaming`` when the generation starts."""
    return await Message.objects.acreate(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        slot_name=slot_name,
        parent=parent,
        generation_id=generation_id,
    )


async def conversation_aset_leaf(*, conversation: Conversation, leaf: Message) -> None:
    """Show the branch through ``leaf`` (after an edit, a regenerate, or a branch switch)."""
    conversation.current_leaf = leaf
    await Conversation.objects.filter(pk=conversation.pk).aupdate(current_leaf=leaf)


def chat_request(conversation: Conversation, history: list[dict[str, str]]) -> dict[str, Any]:
    """The OpenAI request for the next answer in ``conversation``: its history, and its own
    settings over the slot's (a system prompt of its own replaces the slot's)."""
    messages: list[dict[str, str]] = list(history)
    if conversation.system_prompt.strip():
        messages.insert(0, {"role": "system", "content": conversation.system_prompt})
    request: dict[str, Any] = {"messages": messages}
    if conversation.temperature is not None:
        request["temperature"] = conversation.temperature
    if conversation.max_tokens is not None:
        request["max_tokens"] = conversation.max_tokens
    return request


def generation_fields(generation: Generation, *, status: str | None = None) -> dict[str, Any]:
    """What a generation stores on its message: its answer so far, with its own status unless
    ``status`` says otherwise (a client that left a shared generation stopped watching it).
    Upstream values are made storable (``checks``): no NUL characters, a ``finish_reason``
    within its column, only well-formed usage counts."""
    acc = generation.accumulator
    return {
        **_text_fields(generation),
        "slot_name": generation.slot[:100],
        "status": status or generation.status,
        "finish_reason": (acc.finish_reason() or "")[:FINISH_REASON_LENGTH],
        "usage": checks.clean_usage(acc.usage),
        "error": checks.without_nul(generation.error.envelope()) if generation.error else None,
        "ttft_ms": generation.ttft_ms,
        "tokens_per_s": generation.tokens_per_s,
    }


FINISH_REASON_LENGTH = Message._meta.get_field("finish_reason").max_length or 32


def _text_fields(generation: Generation) -> dict[str, Any]:
    """The answer's text: what must be stored whatever else fails."""
    acc = generation.accumulator
    return {
        "content": checks.without_nul(acc.content() or acc.refusal()),
        "reasoning": checks.without_nul(acc.reasoning()),
        "tool_calls": checks.without_nul(acc.tool_calls()),
    }


async def message_acheckpoint(*, message_id: int, generation: Generation) -> None:
    """Store the text so far of an answer still streaming (one UPDATE, about once a second),
    so a process that dies mid-answer loses at most the last second of it. A failure is
    logged, never raised: the next checkpoint or the final write tries again."""
    try:
        await Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).aupdate(
            **_text_fields(generation), updated_at=timezone.now()
        )
    except DatabaseError:
        logger.exception(
            "message %s: checkpoint of generation %s failed", message_id, generation.id
        )


async def sweep_interrupted(*, older_than_s: float = 3.0) -> int:
    """Mark ``interrupted`` every streaming answer whose generation no process runs any more
    (its process died or restarted), keeping its checkpointed text. A generation counts as
    running when this process has it, or (with ``REDIS_URL``) its liveness key exists. Returns
    how many were marked."""
    store = shared()
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    candidates = [
        (pk, generation_id)
        async for pk, generation_id in Message.objects.filter(
            status=Message.Status.STREAMING, updated_at__lt=cutoff
        ).values_list("pk", "generation_id")
    ]
    lost = []
    for pk, generation_id in candidates:
        running = find(generation_id) if generation_id else None
        if running is not None and not running.ended and not running.is_mirror:
            continue
        if store is not None and generation_id and await store.is_live(generation_id):
            continue
        lost.append(pk)
    if not lost:
        return 0
    return await Message.objects.filter(pk__in=lost, status=Message.Status.STREAMING).aupdate(
        status=Message.Status.INTERRUPTED, finish_reason="", updated_at=timezone.now()
    )


async def sweep_forever(*, every_s: float = 2.0) -> None:
    """Run ``sweep_interrupted`` every ``every_s`` for the life of the process."""
    while True:
        try:
            swept = await sweep_interrupted()
            if swept:
                logger.warning("marked %d answers interrupted (their process is gone)", swept)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("sweep of interrupted answers failed")
        await asyncio.sleep(every_s)


async def message_afinalise(
    *, message_id: int, conversation_id: Any, generation: Generation, status: str | None = None
) -> None:
    """Store the finished answer in one UPDATE, and bump its conversation in the sidebar.
    ``status`` overrides the generation's (an answer stopped while its generation goes on).

    Never raises: when the full row cannot be stored (a value the database refuses), the
    failure is logged once with the message id and the answer's text and status are stored
    without the rest, so an error in storing usage costs the usage, never the answer."""
    now = timezone.now()
    fields = generation_fields(generation, status=status)
    try:
        await Message.objects.filter(pk=message_id).aupdate(**fields, updated_at=now)
    except DatabaseError:
        logger.exception(
            "message %s: storing generation %s failed; storing its text and status only",
            message_id,
            generation.id,
        )
        try:
            await Message.objects.filter(pk=message_id).aupdate(
                **_text_fields(generation), status=fields["status"], updated_at=now
            )
        except DatabaseError:
            logger.exception("message %s: storing its text failed too", message_id)
    try:
        await Conversation.objects.filter(pk=conversation_id).aupdate(updated_at=now)
    except DatabaseError:
        logger.exception("conversation %s: bumping updated_at failed", conversation_id)


# ------------------------------------------------------------------------------------------------
# API keys and calls
# ------------------------------------------------------------------------------------------------
API_KEY_PREFIX = "sk-slip-"
# last_used_at is for humans ("used 3 minutes ago"): one write a minute per key is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_last_used_written: dict[int, datetime] = {}


def api_key_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_create(
    *, user: User, name: str, store_conversations: bool = False
) -> tuple[ApiKey, str]:
    """A new key for ``user``. Returns the row and the raw key, which is never stored: show it
    once. Raw keys are ``sk-slip-`` plus 43 URL-safe characters (256 random bits)."""
    raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        user=user,
        name=name.strip() or "API key",
        prefix=raw[: len(API_KEY_PREFIX) + 4],
        digest=api_key_digest(raw),
        store_conversations=store_conversations,
    )
    return key, raw


def api_key_revoke(*, user: User, key_id: int) -> bool:
    """Revoke one of ``user``'s keys at once. Returns False when it is not theirs."""
    updated = ApiKey.objects.filter(user=user, pk=key_id, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    readcache.invalidate()  # .update() sends no signal
    return updated == 1


async def api_key_aauthenticate(*, raw: str) -> ApiKey | None:
    """The active key whose digest matches ``raw``, with its user, or None."""
    if not raw.startswith(API_KEY_PREFIX):
        return None
    digest = api_key_digest(raw)

    async def load() -> ApiKey | None:
        return (
            await ApiKey.objects.select_related("user")
            .filter(digest=digest, revoked_at__isnull=True, user__is_active=True)
            .afirst()
        )

    return await readcache.aget_or_load(f"key:{digest}", load)


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
    error: RelayError | None = None,
) -> None:
    """Record one finished ``/v1`` call (one INSERT; the key's last-used time at most once a
    minute). ``started_at`` is ``time.monotonic()`` at the call's start. Upstream usage is
    cleaned first (``checks.clean_usage``); a failed INSERT is logged, never raised."""
    usage = checks.clean_usage(generation.accumulator.usage if generation else usage) or {}
    try:
        await ApiCall.objects.acreate(
            api_key=api_key,
            endpoint=endpoint[:40],
            slot_name=slot_name[:100],
            stream=stream,
            http_status=http_status,
            outcome=outcome,
            error_code=((error.code or error.type) if error else "")[:64],
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=generation.accumulator.completion_tokens()
            if generation
            else usage.get("completion_tokens"),
            ttft_ms=generation.ttft_ms if generation else None,
            duration_ms=(time.monotonic() - started_at) * 1000,
        )
        now = timezone.now()
        # The key may be a cached copy (readcache) whose last_used_at never moves: remember
        # here when this process last wrote it.
        last = _last_used_written.get(api_key.pk) or api_key.last_used_at
        if last is None or now - last > LAST_USED_RESOLUTION:
            _last_used_written[api_key.pk] = now
            await ApiKey.objects.filter(pk=api_key.pk).aupdate(last_used_at=now)
    except DatabaseError:
        # The call was answered; a record that cannot be stored must not hold its end.
        logger.exception("API call of key %s to %s: recording failed", api_key.pk, slot_name)


async def api_conversation_astore(
    *,
    api_key: ApiKey,
    slot: Slot,
    messages: list[Any],
    generation: Generation,
    status: str | None = None,
) -> None:
    """Keep an API call as a conversation of the key's owner (the key's opt-in option): the
    request's last user message and the answer."""
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), {}
    )
    text = last_user.get("content")
    if not isinstance(text, str):
        text = json.dumps(text) if text else ""
    try:
        conversation = await Conversation.objects.acreate(
            user=api_key.user, slot=slot, title=title_from(f"API: {text}")
        )
        await message_acreate_user(conversation=conversation, content=checks.without_nul(text))
        await Message.objects.acreate(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            **generation_fields(generation, status=status),
        )
    except DatabaseError:
        logger.exception("API call of key %s: keeping it as a conversation failed", api_key.pk)


# ------------------------------------------------------------------------------------------------
# Conversations: rename, delete, settings, sharing, export
# ------------------------------------------------------------------------------------------------
def conversation_rename(*, conversation: Conversation, title: str) -> None:
    title = " ".join(title.split())[:200]
    conversation.title = title or conversation.title
    conversation.save(update_fields=["title"])


def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()


def conversation_share(*, conversation: Conversation, shared: bool) -> None:
    """Share read-only with signed-in members (a new unguessable link each time), or stop."""
    conversation.share_id = uuid.uuid4() if shared else None
    conversation.save(update_fields=["share_id"])


def export_json(conversation: Conversation, thread: list[Message]) -> dict[str, Any]:
    """The shown thread as JSON: title, timestamps, and each message with its role, content,
    reasoning, tool calls, status, slot, usage and timing."""
    return {
        "id": str(conversation.pk),
        "title": str(conversation),
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "reasoning": m.reasoning,
                "tool_calls": m.tool_calls,
                "status": m.status,
                "slot": m.slot_name,
                "finish_reason": m.finish_reason,
                "usage": m.usage,
                "ttft_ms": m.ttft_ms,
                "tokens_per_s": m.tokens_per_s,
                "created_at": m.created_at.isoformat(),
            }
            for m in thread
        ],
    }


def export_markdown(conversation: Conversation, thread: list[Message]) -> str:
    """The shown thread as Markdown: a heading per turn, reasoning as a quote, tool calls as
    JSON blocks."""
    lines = [f"# {conversation}", ""]
    for m in thread:
        who = "You" if m.role == Message.Role.USER else (m.slot_name or m.role.title())
        lines += [f"## {who}", ""]
        if m.reasoning:
            quoted = [f"> {line}" for line in m.reasoning.splitlines()]
            lines += ["> **Thinking**", ">", *quoted, ""]
        if m.content:
            lines += [m.content, ""]
        for call in m.tool_calls or ():
            function = call.get("function", {}) if isinstance(call, dict) else {}
            lines += [f"Tool call `{function.get('name', '?')}`:", "", "```json"]
            lines += [str(function.get("arguments", "")), "```", ""]
        if m.status not in (Message.Status.COMPLETE, Message.Status.STREAMING):
            lines += [f"*({m.status})*", ""]
    return "\n".join(lines).rstrip() + "\n"
