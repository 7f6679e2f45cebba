"""Managing conversations over real HTTP: branches (edit, regenerate, switch), the sidebar's
search and date groups, rename, delete, settings, sharing, export, slot groups, and 404s for
everything that is someone else's."""

from __future__ import annotations

import json
import re
from contextlib import closing
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from chat.models import Conversation, Message, Slot
from tests.conftest import make_slot, session_client
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)


def start(client, content: str = "Hello", **fields):
    answer = post_message(client, content, **fields)
    assert answer.events[-1].data == "[DONE]", answer.events[-1].data
    return answer.meta("slipstream.message")


def thread_ids(client, conversation_id: str) -> list[int]:
    html = client.get(f"/c/{conversation_id}/thread/").text
    return [int(i) for i in re.findall(r'data-message-id="(\d+)"', html)]


def test_regenerate_and_edit_make_branches_you_can_page_through(slot, sim, browser_session):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    first = start(browser_session, "Hello")
    conversation = first["conversation_id"]
    # Regenerate: a second answer to the same user message.
    again = post_message(
        browser_session, "", conversation=conversation, regenerate=first["user_message_id"]
    )
    regenerated = again.meta("slipstream.message")
    assert regenerated["user_message_id"] == first["user_message_id"]
    answers = Message.objects.filter(parent_id=first["user_message_id"]).order_by("id")
    assert [m.pk for m in answers] == [
        first["assistant_message_id"],
        regenerated["assistant_message_id"],
    ]
    assert thread_ids(browser_session, conversation) == [
        first["user_message_id"],
        regenerated["assistant_message_id"],
    ]
    html = browser_session.get(f"/c/{conversation}/").text
    assert '<span class="branch-count">2/2</span>' in html

    # Edit the first message: a sibling user message with its own answer.
    edited = start(browser_session, "Hello, edited", conversation=conversation, parent=None)
    assert Message.objects.get(pk=edited["user_message_id"]).parent_id is None
    assert thread_ids(browser_session, conversation) == [
        edited["user_message_id"],
        edited["assistant_message_id"],
    ]
    sent = sim.stats()["last_request"]["messages"]
    assert sent == [{"role": "user", "content": "Hello, edited"}]

    # Page back to the first version: its latest answer shows again.
    shown = browser_session.post(
        f"/c/{conversation}/branch/", data={"message": first["user_message_id"]}
    )
    assert shown.status_code == 200
    assert re.findall(r'data-message-id="(\d+)"', shown.text) == [
        str(first["user_message_id"]),
        str(regenerated["assistant_message_id"]),
    ]
    # A follow-up continues the shown branch.
    follow = start(browser_session, "More", conversation=conversation)
    history = sim.stats()["last_request"]["messages"]
    assert [m["content"] for m in history][:1] == ["Hello"]
    assert (
        Message.objects.get(pk=follow["user_message_id"]).parent_id
        == (regenerated["assistant_message_id"])
    )


def test_sidebar_groups_by_date_and_searches_messages(slot, sim, browser_session, user):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    today = start(browser_session, "Alpha topic")
    old = start(browser_session, "Beta topic")
    Conversation.objects.filter(pk=old["conversation_id"]).update(
        updated_at=timezone.now() - timedelta(days=40)
    )
    Message.objects.filter(pk=old["user_message_id"]).update(content="Beta mentions zebra")
    html = browser_session.get("/sidebar/").text
    assert html.index("Today") < html.index("Alpha topic") < html.index("Older")
    assert html.index("Older") < html.index("Beta topic")
    found = browser_session.get("/sidebar/", params={"q": "ZEBRA"}).text
    assert "Beta topic" in found
    assert "Alpha topic" not in found
    assert "No conversation matches" in browser_session.get("/sidebar/?q=nothing-here").text
    assert today


def test_rename_delete_export(slot, sim, browser_session):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    meta = start(browser_session, "Export me")
    conversation = meta["conversation_id"]
    renamed = browser_session.post(
        f"/c/{conversation}/rename/",
        data={"title": "  Shiny   name "},
        headers={"HX-Request": "true"},
    )
    assert renamed.status_code == 200
    assert "Shiny name" in renamed.text
    assert Conversation.objects.get(pk=conversation).title == "Shiny name"

    markdown = browser_session.get(f"/c/{conversation}/export.md")
    assert markdown.headers["content-disposition"] == 'attachment; filename="shiny-name.md"'
    stored = Message.objects.get(pk=meta["assistant_message_id"])
    assert markdown.text.startswith("# Shiny name\n")
    assert stored.content in markdown.text
    exported = browser_session.get(f"/c/{conversation}/export.json").json()
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][1]["content"] == stored.content
    assert browser_session.get(f"/c/{conversation}/export.txt").status_code == 404

    deleted = browser_session.post(f"/c/{conversation}/delete/", headers={"HX-Request": "true"})
    assert deleted.status_code == 204
    assert deleted.headers["HX-Redirect"] == "/"
    assert not Conversation.objects.exists()
    assert not Message.objects.exists()


def test_conversation_settings_reach_the_upstream(slot, sim, browser_session):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    meta = start(browser_session, "Hi")
    conversation = meta["conversation_id"]
    bad = browser_session.post(
        f"/c/{conversation}/settings/", data={"temperature": "7", "max_tokens": "0"}
    )
    assert bad.status_code == 400
    assert "errorlist" in bad.text
    saved = browser_session.post(
        f"/c/{conversation}/settings/",
        data={"system_prompt": "Talk like a pirate.", "temperature": "0.3", "max_tokens": "9"},
    )
    assert saved.status_code == 200
    assert "Saved." in saved.text
    start(browser_session, "Again", conversation=conversation)
    sent = sim.stats()["last_request"]
    assert sent["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    assert (sent["temperature"], sent["max_tokens"]) == (0.3, 9)


def test_a_shared_conversation_is_read_only_for_members(slot, sim, browser_session, server):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    meta = start(browser_session, "Look at this")
    conversation = meta["conversation_id"]
    shared = browser_session.post(f"/c/{conversation}/share/", data={"shared": "on"})
    found = re.search(r'href="(/s/[0-9a-f-]+/)"', shared.text)
    assert found is not None
    link = found.group(1)
    bob = get_user_model().objects.create_user("bob", password="bob pass 1234")
    with closing(session_client(server, bob)) as other:
        page = other.get(link)
        assert page.status_code == 200
        assert "Look at this" in page.text
        assert 'data-read-only="true"' in page.text
        assert "Shared by ada" in page.text
        # Read-only: bob cannot continue, rename, branch or export it as his own.
        assert other.get(f"/c/{conversation}/").status_code == 404
        answer = post_message(other, "Mine now", conversation=conversation)
        assert answer.status_code == 404
    browser_session.post(f"/c/{conversation}/share/")  # stop sharing
    with closing(session_client(server, bob)) as other:
        assert other.get(link).status_code == 404


def test_another_users_conversation_is_404_everywhere(slot, sim, browser_session, server):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    meta = start(browser_session, "Private")
    conversation, message = meta["conversation_id"], meta["user_message_id"]
    eve = get_user_model().objects.create_user("eve", password="eve pass 1234")
    with closing(session_client(server, eve)) as other:
        assert other.get(f"/c/{conversation}/").status_code == 404
        assert other.get(f"/c/{conversation}/thread/").status_code == 404
        assert other.get(f"/c/{conversation}/export.md").status_code == 404
        for action, data in (
            ("branch", {"message": message}),
            ("rename", {"title": "mine"}),
            ("delete", {}),
            ("settings", {"temperature": "1"}),
            ("share", {"shared": "on"}),
        ):
            assert other.post(f"/c/{conversation}/{action}/", data=data).status_code == 404
        regen = post_message(other, "", conversation=conversation, regenerate=message)
        assert regen.status_code == 404
        assert f"/c/{conversation}/" not in other.get("/sidebar/?q=Private").text
    assert Conversation.objects.get(pk=conversation).title == "Private"
    assert Conversation.objects.get(pk=conversation).share_id is None


def test_slots_limited_to_groups(sim, browser_session, user, openai_client):
    make_slot(sim.base_url, name="primary")
    secret = make_slot(sim.base_url, name="secret", model="sim-secret")
    Slot.objects.filter(pk=secret.pk).update(is_default=False)
    team = Group.objects.create(name="research")
    secret.groups.add(team)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    assert [m.id for m in openai_client.models.list().data] == ["primary"]
    assert 'value="secret"' not in browser_session.get("/").text
    refused = post_message(browser_session, "Hi", slot="secret")
    assert refused.status_code == 404
    assert json.loads(refused.events[0].data)["error"]["param"] == "slot"
    user.groups.add(team)
    assert sorted(m.id for m in openai_client.models.list().data) == ["primary", "secret"]
    assert start(browser_session, "Hi", slot="secret")["slot"] == "secret"
    assert sim.stats()["last_request"]["model"] == "sim-secret"
