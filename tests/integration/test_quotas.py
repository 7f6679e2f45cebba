"""Quotas (issue 19): token and request budgets per day or month for users, groups and API
keys, checked before the upstream call from the per-day usage; a request over budget gets 429
in OpenAI's envelope, saying which budget and when it resets, with ``Retry-After``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from chat.models import ApiKey, Message, Quota
from chat.services import api_key_create
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)

HELLO: Any = [{"role": "user", "content": "Hello there"}]


def sdk(server: Any, raw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=raw, max_retries=0)


def seconds_to_midnight_utc() -> float:
    now = datetime.now(UTC)
    return (
        now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1) - now
    ).total_seconds()


def test_a_key_over_its_daily_requests_gets_429_until_midnight(server, slot, sim, api_key):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    key = ApiKey.objects.get()
    Quota.objects.create(api_key=key, period="day", max_requests=2)
    with sdk(server, api_key) as client:
        for _ in range(2):
            client.chat.completions.create(model="primary", messages=HELLO)
        before = sim.stats()["requests"]
        # Taken before the call: the server's Retry-After counts from a moment after this.
        to_midnight = seconds_to_midnight_utc()
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="primary", messages=HELLO)
        # Refused before the upstream call: the model server never saw it.
        assert sim.stats()["requests"] == before
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="primary", input="Hi")
        with pytest.raises(openai.RateLimitError):
            client.embeddings.create(model="primary", input="Hi")
    error = caught.value
    assert error.status_code == 429
    assert error.code == "quota_exceeded"
    assert error.type == "insufficient_quota"
    assert "daily request budget of API key tests" in error.message
    assert "(2 requests) is used up (2 used)" in error.message
    retry_after = int(error.response.headers["retry-after"])
    assert 0 < retry_after <= to_midnight + 1  # whole seconds, rounded up


def test_a_user_token_budget_counts_chat_and_api_together(
    server, slot, sim, user, api_key, browser_session
):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=8)
    Quota.objects.create(user=user, period="month", max_tokens=20)
    answer = post_message(browser_session, "Hello there")  # 2 prompt + 8 completion tokens
    assert answer.status_code == 200
    with sdk(server, api_key) as client:
        client.chat.completions.create(model="primary", messages=HELLO)  # 10 more: 20 in all
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="primary", messages=HELLO)
    assert f"monthly token budget of user {user.get_username()} (20 tokens)" in (
        caught.value.message
    )
    refused = browser_session.post("/chat/stream/", json={"content": "once more"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "retry-after" in refused.headers


def test_a_group_budget_is_shared_by_its_members(server, slot, sim, user, api_key):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    team = Group.objects.create(name="team")
    other = get_user_model().objects.create_user("other", password="o" * 20)
    team.user_set.add(user, other)
    _, other_raw = api_key_create(user=other, name="theirs")
    with sdk(server, api_key) as mine:
        mine.chat.completions.create(model="primary", messages=HELLO)
    # The quota comes after the first call: it holds from the next request on.
    Quota.objects.create(group=team, period="day", max_requests=1)
    with sdk(server, other_raw) as theirs, pytest.raises(openai.RateLimitError) as caught:
        theirs.chat.completions.create(model="primary", messages=HELLO)
    assert "daily request budget of group team" in caught.value.message


def test_a_quota_needs_one_target_and_a_budget() -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        Quota(period="day", max_tokens=5).clean()
    with pytest.raises(ValidationError):
        Quota(group=Group(pk=1, name="g"), period="day").clean()


def test_no_quota_no_refusal(server, slot, sim, api_key) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    with sdk(server, api_key) as client:
        for _ in range(3):
            assert client.chat.completions.create(model="primary", messages=HELLO).choices


def test_a_stream_is_cut_at_the_token_budget(server, slot, sim, user, api_key):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=60)
    Quota.objects.create(user=user, period="day", max_tokens=25)
    with sdk(server, api_key) as client:
        stream = client.chat.completions.create(
            model="primary", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        # The upstream was asked for no more than the budget left, and stopped there itself.
        assert sim.stats()["last_request"]["max_tokens"] == 25
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert [f for f in finishes if f] == ["length"]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 25
        # 2 prompt + 25 completion: past the budget by the prompt, so the next call is refused.
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="primary", messages=HELLO, stream=True)


def test_a_smaller_limit_of_the_request_or_the_slot_stays(server, slot, sim, user, api_key):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=60)
    Quota.objects.create(user=user, period="day", max_tokens=1000)
    with sdk(server, api_key) as client:
        client.chat.completions.create(model="primary", messages=HELLO, max_completion_tokens=7)
        assert sim.stats()["last_request"]["max_completion_tokens"] == 7
        assert "max_tokens" not in sim.stats()["last_request"]
        slot.max_tokens = 9
        slot.save()
        client.chat.completions.create(model="primary", messages=HELLO)
        assert sim.stats()["last_request"]["max_tokens"] == 9


def test_a_response_is_incomplete_at_the_token_budget(server, slot, sim, api_key):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=60)
    Quota.objects.create(api_key=ApiKey.objects.get(), period="month", max_tokens=20)
    with sdk(server, api_key) as client:
        response = client.responses.create(model="primary", input="Hi", max_output_tokens=500)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 20


def test_the_chat_cuts_at_the_budget_and_says_so_when_it_is_low(
    server, slot, sim, user, browser_session
):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=8)
    assert browser_session.get("/chat/budget/").text.strip() == ""  # no quota, no notice
    Quota.objects.create(user=user, period="day", max_tokens=60)
    assert post_message(browser_session, "Hello there").status_code == 200  # 2 + 8 tokens
    # 50 of 60 left: more than a fifth, so no notice yet.
    assert browser_session.get("/chat/budget/").text.strip() == ""
    sim.configure(ttft_ms=0, tokens_per_s=0, length=45)
    assert post_message(browser_session, "Hello there").status_code == 200  # 2 + 45: 57 used
    notice = " ".join(browser_session.get("/chat/budget/").text.split())
    assert f"3 of 60 tokens left in the daily token budget of user {user.get_username()}" in notice
    sim.configure(ttft_ms=0, tokens_per_s=0, length=60)
    assert post_message(browser_session, "Hello there").status_code == 200
    cut = Message.objects.filter(role="assistant").latest("created_at")
    assert cut.usage is not None
    assert cut.finish_reason == "length"
    assert cut.usage["completion_tokens"] == 3
    notice = " ".join(browser_session.get("/chat/budget/").text.split())
    assert "The daily token budget of user" in notice
    assert "(60 tokens) is used up: answers stopped at it" in notice
