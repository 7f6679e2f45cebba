"""Usage per hour (issue 33): answers and /v1 calls are counted in their UTC hour's
``UsageHour`` row by the same batch that counts their day, the user's page and the admin's
dashboard show the last 48 hours, and hours older than a week are pruned."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from chat import records, services
from chat.models import (
    USAGE_HOURS_KEPT,
    ApiCall,
    ApiKey,
    Conversation,
    Message,
    UsageDay,
    UsageHour,
)
from chat.relay.generation import Generation
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)

# A quarter past two in the afternoon, UTC.
NOW = datetime(2026, 3, 14, 14, 15, tzinfo=UTC)
TWO_PM = NOW.replace(minute=0)


class Clock:
    """What ``django.utils.timezone.now`` returns while a test holds it (everything that
    stamps usage reads it there)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fixed = Clock(NOW)
    monkeypatch.setattr(timezone, "now", fixed)
    return fixed


@pytest.fixture
def key(user: Any) -> ApiKey:
    return services.api_key_create(user=user, name="script")[0]


async def v1_call(key: ApiKey, *, tokens: int) -> None:
    """A finished /v1 call of ``key``, recorded as the API records one."""
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


async def chat_answer(user: Any, *, tokens: int) -> None:
    """A chat answer of ``user`` that streamed ``tokens`` tokens, stored as the chat stores
    one when it ends (``services.message_afinalise``)."""
    conversation = await Conversation.objects.acreate(user=user, title="t")
    answer = await Message.objects.acreate(
        conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
    )
    generation = Generation(slot="primary")
    generation.accumulator.add(
        {
            "choices": [{"index": 0, "delta": {"content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": tokens},
        }
    )
    await services.message_afinalise(
        message_id=answer.pk,
        conversation_id=conversation.pk,
        generation=generation,
        status=Message.Status.COMPLETE,
        owner=(user.pk, None),
    )


def hours_of(**only: Any) -> dict[datetime, tuple[int, int]]:
    """(requests, completion tokens) per hour of the ``UsageHour`` rows matching ``only``."""
    return {
        row.hour: (row.requests, row.completion_tokens) for row in UsageHour.objects.filter(**only)
    }


async def test_answers_and_calls_land_in_the_hour_they_end(clock, user, key) -> None:
    clock.now = TWO_PM - timedelta(milliseconds=1)  # 13:59:59.999
    await v1_call(key, tokens=5)
    await chat_answer(user, tokens=7)
    clock.now = TWO_PM
    await v1_call(key, tokens=11)
    clock.now = TWO_PM + timedelta(minutes=59)
    await chat_answer(user, tokens=13)

    one_pm = TWO_PM - timedelta(hours=1)
    calls = await sync_to_async(hours_of)(api_key=key)
    answers = await sync_to_async(hours_of)(user=user, api_key=None)
    assert calls == {one_pm: (1, 5), TWO_PM: (1, 11)}
    assert answers == {one_pm: (1, 7), TWO_PM: (1, 13)}
    # The day's rows hold both hours.
    day = await UsageDay.objects.aget(api_key=key)
    assert (day.day, day.requests, day.completion_tokens) == (NOW.date(), 2, 16)
    assert (await UsageDay.objects.aget(user=user, api_key=None)).completion_tokens == 20
    hour = await UsageHour.objects.aget(api_key=key, hour=TWO_PM)
    assert (hour.user_id, hour.prompt_tokens, hour.errors, hour.slot_name) == (
        user.pk,
        2,
        0,
        "primary",
    )


def test_one_batch_across_the_hour_counts_each_in_its_own_hour(clock, key) -> None:
    """Records that end either side of the hour and are written in one batch are summed per
    hour, not per day (which would put both in the first record's hour)."""
    usage = []
    for at in (TWO_PM - timedelta(seconds=1), TWO_PM, TWO_PM + timedelta(seconds=1)):
        clock.now = at
        usage.append(
            services.usage_today(
                slot_name="primary", ok=True, user_id=key.user_id, api_key_id=key.pk, ttft_ms=90
            )
        )
    assert records.write_batch([records.Record(usage=u) for u in usage]) == []
    assert hours_of(api_key=key) == {TWO_PM - timedelta(hours=1): (1, 0), TWO_PM: (2, 0)}
    assert UsageHour.objects.get(hour=TWO_PM).ttft_le_100 == 2
    assert UsageDay.objects.get(api_key=key).requests == 3


def test_a_batch_across_midnight_counts_each_day_and_hour(clock, key) -> None:
    midnight = datetime(2026, 3, 15, tzinfo=UTC)
    usage = []
    for at in (midnight - timedelta(seconds=1), midnight):
        clock.now = at
        usage.append(services.usage_today(slot_name="primary", ok=False, api_key_id=key.pk))
    assert records.write_batch([records.Record(usage=u) for u in usage]) == []
    assert hours_of(api_key=key) == {midnight - timedelta(hours=1): (1, 0), midnight: (1, 0)}
    assert sorted(UsageDay.objects.values_list("day", "errors")) == [
        (midnight.date() - timedelta(days=1), 1),
        (midnight.date(), 1),
    ]


def record_at(clock: Clock, at: datetime, **fields: Any) -> None:
    """One answer's or call's usage (``usage_today``'s fields), as counted at ``at``."""
    clock.now = at
    async_to_sync(services.usage_arecord)(services.usage_today(slot_name="primary", **fields))
    clock.now = NOW


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_users_page_shows_the_last_48_hours(clock, user, key) -> None:
    record_at(clock, NOW, ok=True, user_id=user.pk, api_key_id=key.pk, completion_tokens=40)
    record_at(clock, NOW, ok=False, user_id=user.pk)  # a failed chat answer
    record_at(clock, NOW - timedelta(hours=47), ok=True, user_id=user.pk, completion_tokens=9)
    # 48 hours before this hour: outside the last 48 hours, inside the last 30 days.
    record_at(clock, TWO_PM - timedelta(hours=48), ok=True, user_id=user.pk, completion_tokens=1)
    other = get_user_model().objects.create_user("other")
    record_at(clock, NOW, ok=True, user_id=other.pk, completion_tokens=500)

    page = signed_in(user).get("/settings/usage/?hours=48")
    assert page.status_code == 200
    text = " ".join(page.content.decode().split())
    assert "<th>Hour (UTC)</th>" in text
    assert '<a href="?hours=48" aria-current="page">Last 48 hours</a>' in text
    assert '<a href="?days=30">Last 30 days</a>' in text
    assert "since 2026-03-12 15:00 UTC" in text
    rows = re.findall(r"<tr> <td>([^<]+)</td><td>(\d+)</td><td>(\d+)</td>", text)
    # Newest first; the hour 48 hours back and the other user's usage are not there.
    assert rows == [("2026-03-14 14:00", "2", "1"), ("2026-03-12 15:00", "1", "0")]
    assert "<title>2026-03-14 14:00 UTC: 40</title>" in text  # tokens (40 + 0)
    assert "<title>2026-03-14 14:00 UTC: 2</title>" in text  # requests
    assert "<title>2026-03-12 15:00 UTC: 9</title>" in text
    assert text.count("<rect ") == 2 * 48
    assert re.search(r"<tfoot><tr><th>Total</th><td>3</td><td>1</td><td>0</td><td>49</td>", text)

    days = " ".join(signed_in(user).get("/settings/usage/").content.decode().split())
    assert "<th>Day (UTC)</th>" in days
    assert '<a href="?days=30" aria-current="page">Last 30 days</a>' in days
    assert re.findall(r"<tr> <td>([^<]+)</td><td>(\d+)</td>", days) == [
        ("2026-03-14", "2"),
        ("2026-03-12", "2"),
    ]
    assert days.count("<rect ") == 2 * 30


def test_the_admin_dashboard_shows_the_last_48_hours(clock, user, key) -> None:
    record_at(clock, NOW, ok=True, user_id=user.pk, api_key_id=key.pk, completion_tokens=40)
    record_at(clock, NOW - timedelta(hours=3), ok=True, user_id=user.pk, completion_tokens=2)
    record_at(clock, NOW - timedelta(days=3), ok=True, user_id=user.pk, completion_tokens=700)
    root = get_user_model().objects.create_superuser("root", password="r" * 20)
    admin = signed_in(root)

    page = admin.get("/admin/chat/usageday/dashboard/?hours=48")
    assert page.status_code == 200
    text = " ".join(page.content.decode().split())
    assert "The last 48 hours (UTC, since 2026-03-12 15:00)" in text
    assert "<strong>48 hours</strong>" in text
    assert '<a href="?days=30">30 days</a>' in text
    assert '<dd id="total-requests">2</dd>' in text  # the one 3 days old is not in them
    assert "<figcaption>Tokens per hour (UTC) (highest: 40)</figcaption>" in text
    assert "<title>2026-03-14 14:00 UTC: 40</title>" in text
    assert "<title>2026-03-14 11:00 UTC: 2</title>" in text
    assert text.count("<rect ") == 2 * 48
    assert '<th scope="row">ada</th> <td>2</td><td>0</td><td>0</td><td>42</td>' in text
    assert '<th scope="row">script · ada</th> <td>1</td><td>0</td><td>0</td><td>40</td>' in text

    days = " ".join(admin.get("/admin/chat/usageday/dashboard/?hours=5").content.decode().split())
    assert "The last 30 days (UTC, since 2026-02-13)" in days  # 5 hours is not offered
    assert '<dd id="total-requests">3</dd>' in days
    assert "<title>2026-03-11: 700</title>" in days


async def test_hours_older_than_a_week_are_pruned(clock, key) -> None:
    week = timedelta(hours=USAGE_HOURS_KEPT)
    # The hour that started a week and 15 minutes before NOW goes; the next one stays.
    for at in (TWO_PM - week, TWO_PM - week + timedelta(hours=1), NOW):
        clock.now = at
        await services.usage_arecord(
            services.usage_today(slot_name="primary", ok=True, api_key_id=key.pk)
        )
    clock.now = NOW
    assert await services.usage_hour_aprune(now=NOW) == 1
    hours = UsageHour.objects.order_by("hour").values_list("hour", flat=True)
    assert [h async for h in hours] == [TWO_PM - week + timedelta(hours=1), TWO_PM]
    assert await services.usage_hour_aprune(now=NOW) == 0
    days = UsageDay.objects.filter(api_key=key).values_list("requests", flat=True)
    assert sum([d async for d in days]) == 3  # the days keep everything


def test_streams_and_answers_through_the_server_are_counted_per_hour(
    server, slot, sim, user, browser_session, api_key
) -> None:
    """Through daphne, on the real clock: every answer and call is in the hour it ended (the
    one this test started in, or the next), and the hours add up to the days."""
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    before = timezone.now().replace(minute=0, second=0, microsecond=0)
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0) as sdk:
        for length in (5, 7):
            list(
                sdk.chat.completions.create(
                    model="primary",
                    messages=[{"role": "user", "content": "Hello there"}],
                    stream=True,
                    extra_body={"sim": {"length": length}},
                )
            )
    assert post_message(browser_session, "Hello there").status_code == 200
    after = timezone.now().replace(minute=0, second=0, microsecond=0)

    assert {row.hour for row in UsageHour.objects.all()} <= {before, after}
    hourly: dict[str, tuple[int, int, int]] = {}
    daily: dict[str, tuple[int, int, int]] = {}
    for model, into in ((UsageHour, hourly), (UsageDay, daily)):
        for row in model.objects.all():
            got = into.get(row.scope, (0, 0, 0))
            into[row.scope] = (
                got[0] + row.requests,
                got[1] + row.prompt_tokens,
                got[2] + row.completion_tokens,
            )
    assert hourly == daily
    assert sorted(daily.values()) == [(1, 2, 4), (2, 4, 12)]
    assert ApiCall.objects.count() == 2

    page = " ".join(browser_session.get("/settings/usage/?hours=48").text.split())
    assert "<tfoot><tr><th>Total</th><td>3</td><td>0</td><td>6</td><td>16</td>" in page
    assert f"<td>{after:%Y-%m-%d %H}:00</td>" in page
