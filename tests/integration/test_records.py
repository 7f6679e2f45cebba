"""Records of answers and calls (chat.records): written in batches that form while one is being
written, each record back to its caller once committed, a bad record losing only itself."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError
from django.utils import timezone

from chat import records, services
from chat.models import ApiCall, ApiKey, UsageDay

pytestmark = pytest.mark.django_db(transaction=True)


async def call(key: ApiKey, *, tokens: int) -> None:
    await services.api_call_arecord(
        api_key=key,
        endpoint="chat/completions",
        slot_name="primary",
        stream=True,
        http_status=200,
        outcome="complete",
        started_at=time.monotonic(),
        usage={"prompt_tokens": 2, "completion_tokens": tokens},
    )


@pytest.fixture
def key(user: Any) -> ApiKey:
    return services.api_key_create(user=user, name="script")[0]


async def test_calls_ending_together_are_one_batch_and_add_up(key) -> None:
    writer = records.writer()
    before = writer.batches
    await asyncio.gather(*(call(key, tokens=n) for n in range(1, 21)))
    assert writer.batches == before + 1
    assert await ApiCall.objects.acount() == 20
    row = await UsageDay.objects.aget(api_key_id=key.pk)
    assert (row.requests, row.errors, row.prompt_tokens) == (20, 0, 40)
    assert row.completion_tokens == sum(range(1, 21))
    assert (await ApiKey.objects.aget(pk=key.pk)).last_used_at is not None


async def test_one_alone_is_written_before_it_returns(key) -> None:
    writer = records.writer()
    for n in range(3):
        before = writer.batches
        await call(key, tokens=1)
        assert writer.batches == before + 1
        assert await ApiCall.objects.acount() == n + 1
    assert (await UsageDay.objects.aget(api_key_id=key.pk)).requests == 3


async def test_a_bad_record_loses_only_itself(key, caplog) -> None:
    bad = records.Record(
        call={
            "api_key_id": key.pk + 1000,  # no such key: the foreign key fails the batch
            "endpoint": "chat/completions",
            "http_status": 200,
            "outcome": "complete",
            "duration_ms": 1.0,
        }
    )
    await asyncio.gather(call(key, tokens=1), records.write(bad), call(key, tokens=2))
    assert await ApiCall.objects.acount() == 2
    assert (await UsageDay.objects.aget(api_key_id=key.pk)).completion_tokens == 3
    assert any("recording" in r.getMessage() for r in caplog.records)


async def test_a_write_that_raises_anything_else_loses_only_itself(key, caplog) -> None:
    def broken() -> None:
        raise ValueError("not a database error")

    written = await asyncio.gather(
        records.write(records.Record(write=broken, label="a broken write")), call(key, tokens=4)
    )
    assert written[0] is False  # its caller told, not left waiting
    assert await ApiCall.objects.acount() == 1
    assert "recording a broken write failed" in caplog.text


async def test_the_first_of_the_day_inserts_then_updates(key) -> None:
    usage = services.usage_today(slot_name="other", ok=False, api_key_id=key.pk, ttft_ms=120.0)
    await records.write(records.Record(usage=usage))
    row = await UsageDay.objects.aget(scope=usage.scope)
    assert (row.requests, row.errors, row.ttft_count, row.ttft_le_250) == (1, 1, 1, 1)
    await sync_to_async(records.write_batch)([records.Record(usage=usage)])
    await row.arefresh_from_db()
    assert (row.requests, row.errors, row.ttft_le_250) == (2, 2, 2)


async def test_checkpoints_store_streaming_answers_only(user) -> None:
    from chat.models import Conversation, Message

    conversation = await Conversation.objects.acreate(user=user, title="t")
    streaming, ended = [
        await Message.objects.acreate(
            conversation=conversation, role=Message.Role.ASSISTANT, status=status, content="old"
        )
        for status in (Message.Status.STREAMING, Message.Status.COMPLETE)
    ]
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    text = {"content": "so far", "reasoning": "hm", "tool_calls": calls}
    await asyncio.gather(
        *(records.write(records.Record(checkpoint=(m.pk, text))) for m in (streaming, ended))
    )
    await streaming.arefresh_from_db()
    await ended.arefresh_from_db()
    assert (streaming.content, streaming.reasoning, streaming.tool_calls) == ("so far", "hm", calls)
    assert streaming.updated_at > streaming.created_at
    assert ended.content == "old"


# ------------------------------------------------------------------------------------------------
# Through a database outage (issue 29): PostgreSQL only, whose connections a test can cut.
# ------------------------------------------------------------------------------------------------
postgres_only = pytest.mark.skipif(
    "postgres" not in os.environ.get("DATABASE_URL", ""),
    reason="needs DATABASE_URL=postgres://… (the test command's second pass)",
)


@postgres_only
async def test_a_cut_connection_is_replaced_before_the_next_write(key, outage) -> None:
    await call(key, tokens=1)  # the writer's thread has a connection now
    outage.start()
    outage.end()  # every connection but the test's was cut; new ones are welcome again
    # A read outside a transaction meets the cut connection (the sweeper's, every 2 s): it
    # left that thread's connection closed for good, and every later write failed with it.
    with pytest.raises(DatabaseError):
        await ApiCall.objects.acount()
    writer = records.writer()
    before = writer.batches
    await call(key, tokens=2)
    assert writer.batches == before + 1
    assert await ApiCall.objects.acount() == 2
    assert (await UsageDay.objects.aget(api_key_id=key.pk)).completion_tokens == 3


@postgres_only
async def test_records_wait_out_an_outage_in_order_and_are_all_stored(key, outage, caplog) -> None:
    from chat.models import Conversation, Message

    conversation = await Conversation.objects.acreate(user=key.user, title="t")
    answer = await Message.objects.acreate(
        conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
    )
    writer = records.writer()
    outage.start()
    checkpoint = records.Record(
        checkpoint=(answer.pk, {"content": "so", "reasoning": "", "tool_calls": None})
    )
    final = records.Record(
        final=records.Final(
            message_id=answer.pk,
            conversation_id=conversation.pk,
            fields={"content": "so far, whole", "status": Message.Status.COMPLETE},
            text={"content": "so far, whole"},
            at=timezone.now(),
        )
    )
    started = time.monotonic()
    # Each caller is let go once the outage is known, its record kept: a reader's end of
    # stream is not held by the store of its answer.
    kept = await asyncio.gather(
        records.write(checkpoint), call(key, tokens=5), records.write(final)
    )
    assert kept[0] is True
    assert kept[2] is True
    assert time.monotonic() - started < records.KEEP_WAIT_S + records.RETRY_CAP_S + 5
    assert writer.unavailable_since is not None
    assert f"message {answer.pk}: not stored yet" in caplog.text
    outage.end()
    writer.retry_now()
    deadline = time.monotonic() + 30
    while writer.unavailable_since is not None:
        assert time.monotonic() < deadline, "the records were never stored"
        await asyncio.sleep(0.05)
    await answer.arefresh_from_db()
    assert (answer.status, answer.content) == (Message.Status.COMPLETE, "so far, whole")
    assert await ApiCall.objects.acount() == 1
    assert (await UsageDay.objects.aget(api_key_id=key.pk)).completion_tokens == 5
    assert "the database is back" in caplog.text


@postgres_only
async def test_a_connection_cut_while_idle_is_checked_before_it_is_used(key, outage, caplog):
    from asgiref.sync import SyncToAsync

    from chat import database

    await call(key, tokens=1)
    outage.start()
    outage.end()  # the writer's connection was cut while it had nothing to write
    thread = SyncToAsync.single_thread_executor
    assert isinstance(thread, database.CheckedThread)
    thread._last_call -= database.IDLE_CHECK_S  # as after that long without a call
    await call(key, tokens=2)
    assert await ApiCall.objects.acount() == 2
    # Checked and replaced before the batch ran: not one failed try.
    assert "the database is unavailable" not in caplog.text
