"""Writes of the ``/v1`` API: keys created and revoked, a call's record, the conversation a
keeping key's call leaves; a slot's image side detected; the admin's audit log."""

from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth.models import User
from django.db.models import Model
from django.utils import timezone

from chat import quotas, readcache, records
from chat.models import (
    API_KEY_PREFIX,
    ApiKey,
    Conversation,
    Message,
    Slot,
    api_key_digest,
)
from chat.relay import capabilities, chunkcheck
from chat.relay.errors import EnvelopeError
from chat.relay.generation import Generation
from chat.services.messages import message_new_user, title_from
from chat.services.usage import usage_today

logger = logging.getLogger(__name__)


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
