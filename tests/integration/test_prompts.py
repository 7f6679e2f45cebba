"""The prompt library (issue 17): a user's prompts and those shared with their groups, never
another's; shared only with the owner's own groups; edited (issue 33) and deleted only by the
owner."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from chat.models import Prompt

pytestmark = pytest.mark.django_db


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_own_and_group_prompts_only() -> None:
    users = get_user_model().objects
    ada, eve, mallory = (users.create_user(n, password=n * 12) for n in ("ada", "eve", "mallory"))
    team = Group.objects.create(name="team")
    team.user_set.add(ada, eve)
    elsewhere = Group.objects.create(name="elsewhere")
    elsewhere.user_set.add(mallory)

    ada_client, eve_client = signed_in(ada), signed_in(eve)
    made = ada_client.post("/settings/prompts/", {"title": "Summarise", "text": "Summarise:\n\n"})
    assert made.status_code == 302
    shared = ada_client.post(
        "/settings/prompts/", {"title": "Review", "text": "Review this diff.", "group": team.pk}
    )
    assert shared.status_code == 302
    refused = ada_client.post(
        "/settings/prompts/", {"title": "Leak", "text": "x", "group": elsewhere.pk}
    )
    assert refused.status_code == 400
    assert "only with your own groups" in refused.content.decode()
    assert ada_client.post("/settings/prompts/", {"title": " ", "text": "x"}).status_code == 400
    signed_in(mallory).post("/settings/prompts/", {"title": "Mine", "text": "m"})

    def titles(client: Client) -> list[tuple[str, str]]:
        prompts = client.get("/chat/prompts/").json()["prompts"]
        return [(p["title"], p["shared_by"]) for p in prompts]

    assert titles(ada_client) == [("Review", ""), ("Summarise", "")]
    assert titles(eve_client) == [("Review", "ada")]  # the group's, not ada's own
    assert titles(signed_in(mallory)) == [("Mine", "")]
    assert "Review this diff." in eve_client.get("/settings/prompts/").content.decode()

    review = Prompt.objects.get(title="Review")
    assert eve_client.post(f"/settings/prompts/{review.pk}/delete/").status_code == 404
    assert ada_client.post(f"/settings/prompts/{review.pk}/delete/").status_code == 302
    assert titles(eve_client) == []


def test_the_owner_edits_a_prompt_and_its_group_sees_the_change() -> None:
    users = get_user_model().objects
    ada, eve = (users.create_user(n, password=n * 12) for n in ("ada", "eve"))
    team = Group.objects.create(name="team")
    team.user_set.add(ada, eve)
    review = Prompt.objects.create(owner=ada, title="Review", text="Review this.", group=team)
    ada_client = signed_in(ada)

    form = ada_client.get(f"/settings/prompts/{review.pk}/edit/")
    assert form.status_code == 200
    assert 'value="Review"' in form.content.decode()
    assert "Review this.</textarea>" in form.content.decode()
    saved = ada_client.post(
        f"/settings/prompts/{review.pk}/edit/",
        # A form sends a textarea's line breaks as CRLF; the message box wants LF.
        {"title": "  Code   review ", "text": "  Review this diff:\r\n\r\nBe brief.\r\n  "},
    )
    assert saved.status_code == 302
    assert saved["Location"] == "/settings/prompts/"
    review.refresh_from_db()
    edited = "Review this diff:\n\nBe brief."
    assert (review.title, review.text, review.group) == ("Code review", edited, team)
    eve_sees = signed_in(eve).get("/chat/prompts/").json()["prompts"]
    assert [(p["title"], p["text"]) for p in eve_sees] == [("Code review", edited)]
    listed = ada_client.get("/settings/prompts/").content.decode()
    assert f'href="/settings/prompts/{review.pk}/edit/"' in listed


def test_only_the_owner_edits_a_prompt() -> None:
    users = get_user_model().objects
    ada, eve, mallory = (users.create_user(n, password=n * 12) for n in ("ada", "eve", "mallory"))
    team = Group.objects.create(name="team")
    team.user_set.add(ada, eve)
    review = Prompt.objects.create(owner=ada, title="Review", text="Review this.", group=team)
    for other in (eve, mallory):  # shared with eve, not with mallory: neither may change it
        client = signed_in(other)
        assert client.get(f"/settings/prompts/{review.pk}/edit/").status_code == 404
        changed = client.post(
            f"/settings/prompts/{review.pk}/edit/", {"title": "Mine", "text": "Mine."}
        )
        assert changed.status_code == 404
    assert f"/settings/prompts/{review.pk}/edit/" not in (
        signed_in(eve).get("/settings/prompts/").content.decode()
    )
    review.refresh_from_db()
    assert (review.title, review.text) == ("Review", "Review this.")


@pytest.mark.parametrize(
    ("title", "text", "says"),
    [
        (" ", "x", "needs a title and a text"),
        ("Title", "  \n ", "needs a title and a text"),
        ("t" * 101, "x", "title is at most 100 characters"),
        ("Title", "x" * 20_001, "text is at most 20,000 characters"),
    ],
    ids=["blank-title", "blank-text", "long-title", "long-text"],
)
def test_a_refused_edit_says_why_and_keeps_what_was_typed(title: str, text: str, says: str) -> None:
    ada = get_user_model().objects.create_user("ada", password="a" * 12)
    review = Prompt.objects.create(owner=ada, title="Review", text="Review this.")
    refused = signed_in(ada).post(
        f"/settings/prompts/{review.pk}/edit/", {"title": title, "text": text}
    )
    assert refused.status_code == 400
    page = refused.content.decode()
    assert re.search(r'<p class="error" role="alert">[^<]*' + re.escape(says), page)
    assert f'value="{title}"' in page  # the form keeps what was typed, to fix
    assert text.strip()[:50] in page
    review.refresh_from_db()
    assert (review.title, review.text) == ("Review", "Review this.")


def test_a_prompt_over_the_limits_is_refused_when_made_too() -> None:
    ada = get_user_model().objects.create_user("ada", password="a" * 12)
    refused = signed_in(ada).post("/settings/prompts/", {"title": "Long", "text": "x" * 20_001})
    assert refused.status_code == 400
    assert "at most 20,000 characters" in refused.content.decode()
    assert not Prompt.objects.exists()


def test_editing_a_prompt_needs_the_csrf_token() -> None:
    ada = get_user_model().objects.create_user("ada", password="a" * 12)
    review = Prompt.objects.create(owner=ada, title="Review", text="Review this.")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(ada)
    forged = strict.post(f"/settings/prompts/{review.pk}/edit/", {"title": "X", "text": "Y"})
    assert forged.status_code == 403
    review.refresh_from_db()
    assert review.title == "Review"
