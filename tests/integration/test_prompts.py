"""The prompt library (issue 17): a user's prompts and those shared with their groups, never
another's; shared only with the owner's own groups; deleted only by the owner."""

from __future__ import annotations

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
