"""The widget's visitor API over real HTTP: tokens, origins, ownership, limits."""

from __future__ import annotations

import pytest
from django.core import signing

from chat.models import Conversation, Widget
from chat.widget import VISITOR_SALT
from tests.support.sse_client import read_sse

pytestmark = pytest.mark.django_db(transaction=True)

HOST = "https://docs.example.com"


@pytest.fixture
def widget(slot) -> Widget:
    return Widget.objects.create(name="Docs", slot=slot, allowed_origins=f"{HOST}/\n")


def api(server, widget: Widget, path: str) -> str:
    return f"{server.base_url}/widget/{widget.public_key}/{path}"


def new_token(client, server, widget: Widget) -> str:
    response = client.post(api(server, widget, "visitor/"), headers={"Origin": HOST})
    assert response.status_code == 200
    return response.json()["token"]


def send(client, server, widget, token, content="Hello", **fields):
    with client.stream(
        "POST",
        api(server, widget, "stream/"),
        json={"content": content, **fields},
        headers={"Origin": HOST, "X-Widget-Visitor": token},
    ) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        return response, read_sse(response)


def test_a_visitor_chats_and_reads_back_only_their_conversation(server, widget, sim) -> None:
    import httpx

    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    with httpx.Client(timeout=30) as client:
        alice, bob = new_token(client, server, widget), new_token(client, server, widget)
        response, events = send(client, server, widget, alice, "Alice asks")
        assert response.status_code == 200
        assert events[-1].data == "[DONE]"
        conversation = Conversation.objects.get()
        assert conversation.widget == widget
        assert conversation.user is None
        # Bob cannot continue Alice's conversation: he gets his own.
        send(client, server, widget, bob, "Bob asks", conversation=str(conversation.pk))
        assert Conversation.objects.count() == 2
        assert conversation.messages.count() == 2
        mine = client.get(api(server, widget, "conversation/"), headers={"X-Widget-Visitor": bob})
        assert [m["content"] for m in mine.json()["messages"]][:1] == ["Bob asks"]


def test_tokens_are_per_widget_and_tamper_proof(server, widget, sim, slot) -> None:
    import httpx

    other = Widget.objects.create(name="Other", slot=slot, allowed_origins=HOST)
    with httpx.Client(timeout=30) as client:
        token = new_token(client, server, other)
        response, _ = send(client, server, widget, token)
        assert response.status_code == 401
        forged = signing.dumps({"w": widget.pk, "v": "not-a-uuid"}, salt=VISITOR_SALT)
        assert send(client, server, widget, forged)[0].status_code == 401
        assert send(client, server, widget, token[:-2] + "xx")[0].status_code == 401
        bad = client.get(api(server, widget, "conversation/"), headers={"X-Widget-Visitor": "junk"})
        assert bad.status_code == 401
    assert sim.stats()["requests"] == 0


def test_admin_shows_the_snippet_and_visitor_conversations_read_only(
    server, widget, sim, admin_client
) -> None:
    page = admin_client.get(f"/admin/chat/widget/{widget.pk}/change/").content.decode()
    assert f"/widget/{widget.public_key}/embed.js" in page
    assert "&lt;script" in page
    conversation = Conversation.objects.create(widget=widget, title="visitor chat")
    listing = admin_client.get(f"/admin/chat/conversation/?widget__id__exact={widget.pk}")
    assert "visitor chat" in listing.content.decode()
    change = admin_client.get(f"/admin/chat/conversation/{conversation.pk}/change/")
    assert change.status_code == 200
    assert 'name="_save"' not in change.content.decode()
