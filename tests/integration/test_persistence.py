"""Persistence never writes per token (DESIGN.md): an answer costs a bounded number of writes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpResponseBase, StreamingHttpResponse
from django.test import AsyncClient

from chat.models import Message
from chat.relay.background import cancel_all
from chat.relay.upstream import aclose_clients

WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE")


async def read_streaming(response: HttpResponseBase) -> bytes:
    """The whole body of an async view's streaming response."""
    assert isinstance(response, StreamingHttpResponse)
    assert response.is_async
    content = cast("AsyncIterator[bytes]", response.streaming_content)
    return b"".join([part async for part in content])


def is_checkpoint(sql: str) -> bool:
    """``services.message_acheckpoint``'s UPDATE: only while the message is still streaming."""
    head, _, where = sql.partition(" WHERE ")
    return head.lstrip().upper().startswith('UPDATE "CHAT_MESSAGE"') and '"status"' in where


class WriteCounter:
    """A Django execute wrapper counting the write statements of one connection."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        if sql.lstrip().upper().startswith(WRITE_VERBS):
            self.statements.append(sql)
        return execute(sql, params, many, context)


@pytest.mark.django_db(transaction=True)
async def test_a_2000_token_answer_costs_7_writes_and_a_checkpoint_a_second(
    slot, sim, user
) -> None:
    # Paced over about 2 s, so checkpoints (about one a second while streaming) happen: at
    # tokens_per_s=0 the answer ended before the first one was due and the bound held vacuously.
    sim.configure(ttft_ms=0, tokens_per_s=1000, length=2000)
    client = AsyncClient()
    await client.aforce_login(user)
    # A first answer warms the slot: its cold -> ready change is one write per state change,
    # not per answer, and is not counted below.
    warm = await client.post("/chat/stream/", {"content": "hi"}, content_type="application/json")
    assert b"[DONE]" in await read_streaming(warm)
    await Message.objects.all().adelete()
    counter = WriteCounter()
    # The async ORM runs every query on one thread (sync_to_async, thread_sensitive): wrap the
    # connection that thread uses.
    await sync_to_async(lambda: connection.execute_wrappers.append(counter))()
    started = time.monotonic()
    try:
        response = await client.post(
            "/chat/stream/", {"content": "a long one"}, content_type="application/json"
        )
        body = await read_streaming(response)
    finally:
        elapsed = time.monotonic() - started
        await sync_to_async(lambda: connection.execute_wrappers.remove(counter))()
    assert body.endswith(b"data: [DONE]\n\n")
    message = await Message.objects.aget(role="assistant")
    assert message.status == "complete"
    assert len(message.content.split()) == 2000
    checkpoints = [sql for sql in counter.statements if is_checkpoint(sql)]
    assert checkpoints, counter.statements  # the answer was checkpointed while it streamed
    # Seven for the answer (conversation, user message, assistant message, the final UPDATE,
    # the conversation's bump, the day's and the hour's usage) and at most one checkpoint a
    # second: not one per token.
    for table in ("chat_usageday", "chat_usagehour"):
        usage = [sql for sql in counter.statements if table in sql]
        assert len(usage) == 1, counter.statements  # one UPDATE: the warm-up made the rows
    assert len(counter.statements) - len(checkpoints) <= 7, [sql[:60] for sql in counter.statements]
    assert len(checkpoints) <= elapsed + 1, (len(checkpoints), elapsed)
    assert (
        json.loads(body.split(b"event: slipstream.done\ndata: ")[1].split(b"\n")[0])["status"]
        == "complete"
    )
    await cancel_all()  # the slot's probe and state writes, before this test's loop closes
    await aclose_clients()


@pytest.mark.django_db(transaction=True)
async def test_the_sweeper_marks_orphaned_answers_interrupted(user) -> None:
    """A streaming answer that no generation of this process (or, with Redis, of any process)
    runs any more becomes ``interrupted`` with its checkpointed text; a running one is left."""
    from datetime import timedelta

    from django.utils import timezone

    from chat.models import Conversation
    from chat.relay.generation import Generation
    from chat.sweep import sweep_interrupted

    conversation = await Conversation.objects.acreate(user=user, title="t")
    running = Generation(slot="primary")
    orphan = await Message.objects.acreate(
        conversation=conversation,
        role="assistant",
        status="streaming",
        content="so far",
        generation_id="0" * 32,
    )
    alive = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", generation_id=running.id
    )
    fresh = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", generation_id="1" * 32
    )
    old = timezone.now() - timedelta(seconds=30)
    await Message.objects.filter(pk__in=[orphan.pk, alive.pk]).aupdate(updated_at=old)
    assert await sweep_interrupted() == 1
    statuses = {m.pk: (m.status, m.content) async for m in Message.objects.all()}
    assert statuses[orphan.pk] == ("interrupted", "so far")
    assert statuses[alive.pk][0] == statuses[fresh.pk][0] == "streaming"
    await cancel_all()
    await aclose_clients()
