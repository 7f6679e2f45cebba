"""Quotas (issue 19): token and request budgets per day or month for users, groups and API
keys, checked before the upstream call from the per-day usage; a request over budget gets 429
in OpenAI's envelope, saying which budget and when it resets, with ``Retry-After``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from chat import quotas
from chat.models import ApiKey, Message, Quota, QuotaReservation, UsageDay
from chat.services import api_key_create
from chat.simulator import SimulatorThread
from chat.simulator.config import SimConfig
from tests.conftest import server_env
from tests.support.daphne_server import DaphneServer
from tests.support.polling import wait_until
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
    assert sim.stats()["tokenize"] == 0  # no token budget: the prompt is never counted


def test_a_stream_is_cut_at_the_token_budget(server, slot, sim, user, api_key):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=60)
    Quota.objects.create(user=user, period="day", max_tokens=25)
    with sdk(server, api_key) as client:
        stream = client.chat.completions.create(
            model="primary", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        # The upstream was asked for no more than the budget left after the prompt (2 tokens,
        # counted by its /tokenize), and stopped there itself.
        assert sim.stats()["last_request"]["max_tokens"] == 23
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert [f for f in finishes if f] == ["length"]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 23
        assert tokens_used(api_key=ApiKey.objects.get()) == 25  # the budget, not past it
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
    assert response.usage.output_tokens == 19  # 20 less the prompt's 1


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
    assert cut.usage["completion_tokens"] == 1  # the 3 left less the prompt's 2
    notice = " ".join(browser_session.get("/chat/budget/").text.split())
    assert "The daily token budget of user" in notice
    assert "(60 tokens) is used up: answers stopped at it" in notice


# ------------------------------------------------------------------------------------------------
# Requests at once (issue 33, finding 2): each admitted request holds its share of the budget
# ------------------------------------------------------------------------------------------------
# How long the simulator holds each answer's first token (ms): every request of a burst is
# admitted or refused well before the first answer ends (``burst`` checks that it was).
HELD_TTFT_MS = 1500

# A refusal's figure of the budget used: what was used and what running answers held then.
USED = re.compile(r"is used up \(([\d,]+) used")


def used_in(refused: openai.RateLimitError) -> int:
    found = USED.search(refused.message)
    assert found, refused.message
    return int(found[1].replace(",", ""))


def tokens_used(**scope: Any) -> int:
    """Prompt and completion tokens counted today in the ``UsageDay`` rows of ``scope``."""
    rows = UsageDay.objects.filter(**scope)
    return sum(row.prompt_tokens + row.completion_tokens for row in rows)


def stream_once(client: openai.OpenAI, *, messages: Any = HELLO, **fields: Any) -> Any:
    """One streamed chat completion read to its end: its usage (``include_usage``), or the
    ``RateLimitError`` that refused it."""
    try:
        stream = client.chat.completions.create(
            model="primary",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **fields,
        )
        return list(stream)[-1].usage
    except openai.RateLimitError as refused:
        return refused


def burst(
    sim: Any, clients: list[openai.OpenAI], n: int, *, prompt: str = "Hello there", **fields: Any
) -> tuple[list[Any], list[Any]]:
    """``n`` streams at once, spread over ``clients`` (each of a server process), each answer's
    first token held ``HELD_TTFT_MS`` by the simulator: (the usage of each answer, each 429).
    Checks that they overlapped: every request had been refused or had reached the simulator
    before any answer ended."""
    sim.configure(ttft_ms=HELD_TTFT_MS, tokens_per_s=0)
    before = sim.stats()
    started = before["streams_started"]
    with ThreadPoolExecutor(n) as pool:
        # Each its own question: single-flight may join identical ones into one upstream call.
        futures = [
            pool.submit(
                stream_once,
                clients[i % len(clients)],
                messages=[{"role": "user", "content": f"{prompt} {i}"}],
                **fields,
            )
            for i in range(n)
        ]

        def decided() -> bool:
            refused = [f for f in futures if f.done() and isinstance(f.result(), Exception)]
            return len(refused) + sim.stats()["streams_started"] - started == n

        wait_until(decided, what="every request of the burst admitted or refused")
        assert sim.stats()["completed"] == before["completed"]
        results = [future.result() for future in futures]
    refusals = [r for r in results if isinstance(r, openai.RateLimitError)]
    return [r for r in results if r not in refusals], refusals


def test_a_burst_of_streams_passes_a_token_budget_by_at_most_their_prompts(
    server, slot, sim, api_key
):
    """The finding: 10 streams at once on a key with 98 of 1,000 tokens left took it to 1,902.
    Each admitted answer now holds its prompt (counted by the backend's /tokenize) and output
    limit until it ends: the budget is reached, not passed."""
    key = ApiKey.objects.get()
    Quota.objects.create(api_key=key, period="day", max_tokens=1000)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=900)
    with sdk(server, api_key) as client:
        client.chat.completions.create(model="primary", messages=HELLO)  # 2 + 900: 902 used
        sim.configure(length=60)
        answers, refusals = burst(sim, [client], 10, max_tokens=20)
    assert tokens_used(api_key=key) == 1000
    # 98 left: four answers of 3 + 20 tokens and one of 3 + the last 3, each cut upstream.
    assert sorted(usage.completion_tokens for usage in answers) == [3, 20, 20, 20, 20]
    assert len(refusals) == 5
    # The true usage then: 902 used and 98 held by the answers still running.
    true_usage = "(1,000 tokens) is used up (1,000 used, 98 of them held for answers in progress)"
    for refused in refusals:
        assert refused.code == "quota_exceeded"
        assert true_usage in refused.message
    assert not QuotaReservation.objects.exists()  # each settled by its answer's record


# ------------------------------------------------------------------------------------------------
# The prompt counted at admission (issue 33, "what users would still miss", 1)
# ------------------------------------------------------------------------------------------------
# A prompt of 59 words, 60 with a burst's number: as many tokens to the simulator (its /tokenize
# and its usage).
LONG = " ".join(["word"] * 59)


def test_a_burst_of_long_prompts_stays_within_the_budget(server, slot, sim, api_key):
    """The overshoot: 98 of 1,000 tokens left, 10 streams at once of 60-token prompts. Before,
    each admitted one held its output limit only: five were admitted (4 x 20 + 18) and their
    prompts (5 x 60) took the budget to 1,300. Each now holds its prompt too: one fits."""
    key = ApiKey.objects.get()
    Quota.objects.create(api_key=key, period="day", max_tokens=1000)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=900)
    with sdk(server, api_key) as client:
        client.chat.completions.create(model="primary", messages=HELLO)  # 2 + 900: 902 used
        sim.configure(length=60)
        answers, refusals = burst(sim, [client], 10, prompt=LONG, max_tokens=20)
    used = tokens_used(api_key=key)
    print(f"overshoot: {used - 1000} tokens past the budget ({used} of 1000)")
    assert used <= 1000, used
    assert [(u.prompt_tokens, u.completion_tokens) for u in answers] == [(60, 20)]
    assert len(refusals) == 9
    for refused in refusals:
        assert refused.code == "quota_exceeded"
        # The true usage: 902 used, 80 held by the answer running; 18 left, too few.
        assert "(1,000 tokens) has 18 left (982 used, 80 of them held" in refused.message
        assert "prompt is about 60 tokens" in refused.message
    assert not QuotaReservation.objects.exists()


def test_a_prompt_that_does_not_fit_is_refused_before_the_call(server, slot, sim, api_key):
    Quota.objects.create(api_key=ApiKey.objects.get(), period="day", max_tokens=50)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    with sdk(server, api_key) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": LONG}]
        )
    assert sim.stats()["requests"] == 0  # the model server never saw it
    assert sim.stats()["tokenize"] == 1
    assert caught.value.code == "quota_exceeded"
    assert "daily token budget of API key tests" in caught.value.message
    assert "(50 tokens) has 50 left (0 used)." in caught.value.message
    assert "This request's prompt is about 59 tokens" in caught.value.message
    assert int(caught.value.response.headers["retry-after"]) > 0


def test_the_slots_system_prompt_is_counted(server, sim, api_key, transactional_db):
    """What the backend is sent, not only what the client sent: the slot's system prompt."""
    from tests.conftest import make_slot

    make_slot(sim.base_url, system_prompt="You answer in one short word only")  # 7 words
    Quota.objects.create(api_key=ApiKey.objects.get(), period="day", max_tokens=100)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    with sdk(server, api_key) as client:
        client.chat.completions.create(model="primary", messages=HELLO)
    assert sim.stats()["last_request"]["max_tokens"] == 100 - 9


@pytest.fixture
def own_sim() -> Iterator[SimulatorThread]:
    """A simulator of its own: what a server process remembers of it (a /tokenize it lacks)
    does not reach the shared one's later tests."""
    with SimulatorThread(config=SimConfig(ttft_ms=0, tokens_per_s=0, length=3)) as made:
        yield made


def test_a_backend_without_tokenize_gets_the_estimate_and_is_not_asked_again(
    server, own_sim, api_key, transactional_db
):
    from tests.conftest import make_slot

    make_slot(own_sim.base_url)
    own_sim.configure(tokenize=False)  # 404 there, as OpenAI's and Ollama's servers answer
    Quota.objects.create(api_key=ApiKey.objects.get(), period="day", max_tokens=1000)
    with sdk(server, api_key) as client:
        client.chat.completions.create(model="primary", messages=HELLO)
        # "Hello there": 11 UTF-8 bytes / 4, rounded up, + 4 for the message: 7.
        assert own_sim.stats()["last_request"]["max_tokens"] == 1000 - 7
        client.chat.completions.create(model="primary", messages=HELLO)
    assert own_sim.stats()["tokenize"] == 1  # the 404 was remembered


def test_a_slow_tokenize_gets_the_estimate(server, slot, sim, api_key):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3, tokenize_delay_ms=5000)
    Quota.objects.create(api_key=ApiKey.objects.get(), period="day", max_tokens=1000)
    started = time.monotonic()
    with sdk(server, api_key) as client:
        client.chat.completions.create(model="primary", messages=HELLO)
    assert time.monotonic() - started < 4  # not held by the tokenizer's 5 s
    assert sim.stats()["last_request"]["max_tokens"] == 1000 - 7
    assert sim.stats()["tokenize"] == 1
    # Slow is not absent: the next request asks again (and gets the exact count).
    sim.configure(tokenize_delay_ms=0)
    with sdk(server, api_key) as client:
        client.chat.completions.create(model="primary", messages=HELLO)
    assert sim.stats()["tokenize"] == 2
    assert sim.stats()["last_request"]["max_tokens"] == 1000 - 5 - 2


@pytest.fixture(scope="module")
def second(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """A second Slipstream process on the same database, next to ``server``."""
    with django_db_blocker.unblock():
        env = server_env()
    with DaphneServer(env=env) as daphne:
        yield daphne


def test_a_burst_over_two_processes_gets_exactly_the_requests_left(
    server, second, slot, sim, api_key
):
    """The finding: a 5-request budget with 1 used answered all of 10 requests at once (11 of
    5). Requests are counted when admitted, one admission at a time across processes; the
    429s themselves do not count."""
    key = ApiKey.objects.get()
    Quota.objects.create(api_key=key, period="day", max_requests=5)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    with sdk(server, api_key) as client, sdk(second, api_key) as other:
        client.chat.completions.create(model="primary", messages=HELLO)  # 1 of 5 used
        answers, refusals = burst(sim, [client, other], 10)
        assert (len(answers), len(refusals)) == (4, 6)
        for refused in refusals:
            assert used_in(refused) == 5, refused.message
        with pytest.raises(openai.RateLimitError) as after:
            client.chat.completions.create(model="primary", messages=HELLO)
    # Once they ended: 5 used, none held, the six refusals not counted.
    assert "(5 requests) is used up (5 used). It resets" in after.value.message
    assert not QuotaReservation.objects.exists()


def test_a_user_budget_holds_for_the_chat_and_a_key_at_once(
    server, slot, sim, user, api_key, browser_session
):
    """The finding: two streams at once of one user passed a user budget by 10 %. The chat's
    answer admitted while a /v1 stream holds 60 of the 100 tokens gets the 40 left."""
    Quota.objects.create(user=user, period="day", max_tokens=100)
    sim.configure(ttft_ms=HELD_TTFT_MS, tokens_per_s=0, length=100)
    with sdk(server, api_key) as client, ThreadPoolExecutor(1) as pool:
        api_answer = pool.submit(stream_once, client, max_tokens=60)
        sim.wait_for(lambda s: s["streams_started"] == 1, timeout_s=10)  # admitted, running
        chat = post_message(browser_session, "Hello there")
        api_usage = api_answer.result()
    assert chat.status_code == 200
    assert api_usage.completion_tokens == 60
    answer = Message.objects.get(role="assistant")
    assert answer.finish_reason == "length"
    assert answer.usage is not None
    # 100 less 62 held (2 + 60) less its own prompt's 2. Before: 100, 164 tokens of 100 used.
    assert answer.usage["completion_tokens"] == 36
    assert tokens_used(user=user) == 100


def hold(key: ApiKey, tokens: int, *, expires_in_s: float) -> QuotaReservation:
    """A reservation of ``key``'s as a running request leaves it (expired when ``expires_in_s``
    is not positive: its process died that long ago)."""
    return QuotaReservation.objects.create(
        user=key.user,
        api_key=key,
        tokens=tokens,
        expires_at=timezone.now() + timedelta(seconds=expires_in_s),
    )


def test_a_dead_process_reservation_counts_until_it_expires(server, slot, sim, api_key):
    """A reservation counts while it is live (held, and said so in the 429), not once it
    expired: a process that died holding one does not keep the budget for good."""
    key = ApiKey.objects.get()
    Quota.objects.create(api_key=key, period="day", max_tokens=100, max_requests=3)
    hold(key, 90, expires_in_s=60)  # a request running in another process
    hold(key, 1000, expires_in_s=-1)  # one whose process died: no longer counted
    sim.configure(ttft_ms=0, tokens_per_s=0, length=50)
    with sdk(server, api_key) as client:
        answer = client.chat.completions.create(model="primary", messages=HELLO)
        assert sim.stats()["last_request"]["max_tokens"] == 8  # 100 - 90 held - 2 prompt
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 8
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="primary", messages=HELLO)
    # 10 used by the answer, 90 held by the running one.
    assert "(100 tokens) is used up (100 used, 90 of them held for answers in progress)" in (
        caught.value.message
    )


def test_a_failed_call_counts_its_request_and_gives_its_tokens_back(server, slot, sim, api_key):
    """An admitted call that failed upstream counts one request (the model server worked on
    it) and the tokens it was reported to use (none): its reservation is settled either way."""
    key = ApiKey.objects.get()
    Quota.objects.create(api_key=key, period="day", max_tokens=100, max_requests=2)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5, fail_requests=1, fail_status=400)
    with sdk(server, api_key) as client:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="primary", messages=HELLO, stream=True)
        assert not QuotaReservation.objects.exists()
        client.chat.completions.create(model="primary", messages=HELLO)
        assert sim.stats()["last_request"]["max_tokens"] == 98  # nothing held; 2 of prompt
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="primary", messages=HELLO)
    assert "(2 requests) is used up (2 used)." in caught.value.message


def test_a_stream_its_client_left_settles_what_it_used(server, slot, sim, api_key):
    """A client that goes away mid-stream: its reservation (the 100 tokens left) is replaced
    by what the answer had used when it was cancelled."""
    key = ApiKey.objects.get()
    Quota.objects.create(api_key=key, period="day", max_tokens=100)
    sim.configure(ttft_ms=0, tokens_per_s=50, length=100)
    with sdk(server, api_key) as client:
        stream = client.chat.completions.create(model="primary", messages=HELLO, stream=True)
        for _, _chunk in zip(range(3), stream, strict=False):
            pass
        assert QuotaReservation.objects.get().tokens == 100
        stream.close()
    sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=10)
    wait_until(lambda: not QuotaReservation.objects.exists(), what="the reservation settled")
    used = tokens_used(api_key=key)
    assert 0 < used < 100  # what was streamed before the client left, not the reservation


async def test_a_process_renews_what_it_holds_and_lets_the_rest_expire(user):
    """``renew_held``: this process's live reservations get a new expiry; one held past
    ``MAX_HOLD_S`` (its settle lost) is let expire; expired ones, any process's, are deleted."""
    key, _ = await sync_to_async(api_key_create)(user=user, name="renewed")
    mine = await sync_to_async(hold)(key, 5, expires_in_s=1)
    lost = await sync_to_async(hold)(key, 5, expires_in_s=1)
    await sync_to_async(hold)(key, 5, expires_in_s=-1)  # a dead process's, expired
    now = time.monotonic()
    quotas._held.update({mine.pk: now, lost.pk: now - quotas.MAX_HOLD_S - 1})
    quotas._renewed_at = 0.0
    try:
        assert await quotas.renew_held() == 1
        assert await quotas.renew_held() == 0  # not again before RENEW_EVERY_S
    finally:
        quotas._held.clear()
    left = {r.pk: r async for r in QuotaReservation.objects.all()}
    assert set(left) == {mine.pk, lost.pk}
    assert left[mine.pk].expires_at > timezone.now() + timedelta(seconds=quotas.HOLD_S - 5)
    assert left[lost.pk].expires_at == lost.expires_at
