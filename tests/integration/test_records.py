"""Records of answers and calls (chat.records): written in batches that form while one is being
written, each record back to its caller once committed, a bad record losing only itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async

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
