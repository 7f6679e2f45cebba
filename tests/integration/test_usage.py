"""Usage per day (issue 19): after answers by two users, through the chat and through their
API keys, the per-day rows, each user's usage page and the admin's CSV export say exactly what
was streamed, and one user never sees another's."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from chat.models import UsageDay
from chat.services import api_key_create
from tests.conftest import session_client
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)

HELLO: Any = [{"role": "user", "content": "Hello there"}]


def stream(server: Any, raw_key: str, length: int) -> None:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=raw_key, max_retries=0) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="primary", messages=HELLO, stream=True, extra_body={"sim": {"length": length}}
            )
        )
    assert chunks


def test_usage_per_day_equals_what_was_streamed(server, slot, sim, user, browser_session):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)  # the chat's answer; /v1 says its own
    key, raw = api_key_create(user=user, name="script")
    stream(server, raw, 5)
    stream(server, raw, 7)
    answer = post_message(browser_session, "Hello there")
    assert answer.status_code == 200
    other = get_user_model().objects.create_user("other", password="o" * 20)
    other_key, other_raw = api_key_create(user=other, name="theirs")
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=other_raw, max_retries=0) as sdk:
        sdk.chat.completions.create(
            model="primary", messages=HELLO, extra_body={"sim": {"length": 3}}
        )
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="nope", messages=HELLO)

    rows = {(r.user_id, r.api_key_id, r.slot_name): r for r in UsageDay.objects.all()}
    by_key = rows[(user.pk, key.pk, "primary")]
    assert (by_key.requests, by_key.errors, by_key.completion_tokens) == (2, 0, 12)
    assert by_key.prompt_tokens == 2 * 2  # the simulator counts the prompt's words
    assert by_key.ttft_count == 2
    in_chat = rows[(user.pk, None, "primary")]
    assert (in_chat.requests, in_chat.completion_tokens) == (1, 4)
    theirs = rows[(other.pk, other_key.pk, "primary")]
    assert (theirs.requests, theirs.errors, theirs.completion_tokens) == (1, 0, 3)
    refused = rows[(other.pk, other_key.pk, "nope")]
    assert (refused.requests, refused.errors, refused.completion_tokens) == (1, 1, 0)

    page = browser_session.get("/settings/usage/")
    assert page.status_code == 200
    assert "<td>3</td><td>0</td>" in page.text  # 3 requests, 0 errors: theirs are not here
    assert "<td>16</td>" in page.text  # 5 + 7 + 4 completion tokens
    them = session_client(server, other)
    try:
        theirs_page = them.get("/settings/usage/")
    finally:
        them.close()
    assert "<td>2</td><td>1</td>" in theirs_page.text


def test_admin_exports_usage_as_csv(server, slot, sim, user, api_key):
    sim.configure(ttft_ms=0, tokens_per_s=0)
    stream(server, api_key, 6)
    root = get_user_model().objects.create_superuser(username="root", password="r" * 20)
    admin = session_client(server, root)
    try:
        listing = admin.get("/admin/chat/usageday/")
        assert listing.status_code == 200
        exported = admin.post(
            "/admin/chat/usageday/",
            data={
                "action": "export_csv",
                "_selected_action": [
                    str(pk) for pk in UsageDay.objects.values_list("pk", flat=True)
                ],
                "index": "0",
            },
        )
    finally:
        admin.close()
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(table) == 1
    assert table[0]["user"] == user.get_username()
    assert table[0]["slot_name"] == "primary"
    assert (table[0]["requests"], table[0]["completion_tokens"]) == ("1", "6")
    assert float(table[0]["mean_ttft_ms"]) >= 0


def test_usage_page_needs_a_login(server) -> None:
    response = httpx.get(server.base_url + "/settings/usage/")
    assert response.status_code == 302
    assert "/login/" in response.headers["location"]


def test_the_admin_dashboard_sums_what_two_users_streamed(server, slot, sim, user, browser_session):
    sim.configure(ttft_ms=300, tokens_per_s=0, length=4)  # the chat's answer; /v1 says its own
    _, raw = api_key_create(user=user, name="script")
    stream(server, raw, 5)
    stream(server, raw, 7)
    assert post_message(browser_session, "Hello there").status_code == 200
    other = get_user_model().objects.create_user("other", password="o" * 20)
    other.groups.add(Group.objects.create(name="team"))
    _, other_raw = api_key_create(user=other, name="theirs")
    stream(server, other_raw, 3)
    with (
        openai.OpenAI(base_url=server.base_url + "/v1", api_key=other_raw, max_retries=0) as sdk,
        pytest.raises(openai.NotFoundError),
    ):
        sdk.chat.completions.create(model="nope", messages=HELLO)

    root = get_user_model().objects.create_superuser(username="root", password="r" * 20)
    admin = session_client(server, root)
    try:
        page = admin.get("/admin/chat/usageday/dashboard/?days=7")
        listing = admin.get("/admin/chat/usageday/")
    finally:
        admin.close()
    assert page.status_code == 200
    assert "/admin/chat/usageday/dashboard/" in listing.text  # linked from the rows' list
    text = " ".join(page.text.split())
    # Users: ada 3 answers (2 prompt tokens each; 5 + 7 + 4 completion), other 1 + 1 refused.
    assert '<th scope="row">ada</th> <td>3</td><td>0</td><td>6</td><td>16</td>' in text
    assert '<th scope="row">other</th> <td>2</td><td>1</td><td>2</td><td>3</td>' in text
    assert '<th scope="row">script · ada</th> <td>2</td><td>0</td><td>4</td><td>12</td>' in text
    assert '<th scope="row">team</th> <td>2</td><td>1</td><td>2</td><td>3</td>' in text
    assert '<th scope="row">nope</th> <td>1</td><td>1</td><td>0</td><td>0</td>' in text
    assert '<dd id="total-requests">5</dd>' in text
    today = UsageDay.objects.values_list("day", flat=True).first()
    assert f"<title>{today:%Y-%m-%d}: 27</title>" in text  # today's bar: 6 + 16 + 2 + 3 tokens
    # Every answer's first token took the simulator's 300 ms and a little more: in the
    # (250, 500] ms bucket, so the p50 and p95 lie in it.
    row = re.search(
        r'<th scope="row">ada</th>(?:\s*<td>[^<]*</td>){4}\s*<td>(\d+) ms / (\d+) ms', page.text
    )
    assert row, page.text
    assert all(250 < int(ms) <= 500 for ms in row.groups())
