"""Organising conversations (issue 17): pin on top, folders, archive out of the list; none of
it moves a conversation's place by date, and nobody can organise another user's."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from chat.models import Conversation, Folder

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada() -> Any:
    return get_user_model().objects.create_user("ada", password="a" * 20)


@pytest.fixture
def client(ada: Any) -> Client:
    client = Client()
    client.force_login(ada)
    return client


def headings(html: str) -> list[tuple[str, list[str]]]:
    """The sidebar as (heading, [titles under it])."""
    found = []
    for part in html.split('<h2 class="conversation-group">')[1:]:
        heading = re.match(r"\s*([^<]+)", part)
        assert heading
        titles = re.findall(r'<span class="title">([^<]+)</span>', part)
        found.append((heading.group(1).strip(), titles))
    return found


def organise(client: Client, conversation: Conversation, **data: str) -> Any:
    return client.post(f"/c/{conversation.pk}/organise/", data, HTTP_HX_REQUEST="true")


def test_pin_folder_and_archive(client: Client, ada: Any) -> None:
    first = Conversation.objects.create(user=ada, title="First")
    second = Conversation.objects.create(user=ada, title="Second")
    third = Conversation.objects.create(user=ada, title="Third")
    updated = {c.pk: c.updated_at for c in Conversation.objects.all()}
    assert headings(client.get("/sidebar/").content.decode()) == [
        ("Today", ["Third", "Second", "First"])
    ]

    sidebar = organise(client, first, action="pin")
    assert headings(sidebar.content.decode()) == [
        ("Pinned", ["First"]),
        ("Today", ["Third", "Second"]),
    ]
    sidebar = organise(client, second, action="move", new_folder="  Work   notes ")
    folder = Folder.objects.get(user=ada)
    assert folder.name == "Work notes"
    assert headings(sidebar.content.decode()) == [
        ("Pinned", ["First"]),
        ("Work notes", ["Second"]),
        ("Today", ["Third"]),
    ]
    sidebar = organise(client, third, action="archive")
    assert headings(sidebar.content.decode()) == [("Pinned", ["First"]), ("Work notes", ["Second"])]
    archived = client.get("/sidebar/?archived=1").content.decode()
    assert headings(archived) == [("Archived", ["Third"])]
    assert client.get(f"/c/{third.pk}/").status_code == 200  # archived, still there

    organise(client, third, action="unarchive")
    organise(client, second, action="move", folder="")
    organise(client, first, action="unpin")
    assert headings(client.get("/sidebar/").content.decode()) == [
        ("Work notes", []),
        ("Today", ["Third", "Second", "First"]),  # by last activity, as before
    ]
    assert {c.pk: c.updated_at for c in Conversation.objects.all()} == updated

    client.post(f"/folders/{folder.pk}/delete/")
    assert not Folder.objects.exists()


def test_nobody_organises_another_users_conversations(client: Client, ada: Any) -> None:
    eve = get_user_model().objects.create_user("eve", password="e" * 20)
    theirs = Conversation.objects.create(user=eve, title="Theirs")
    their_folder = Folder.objects.create(user=eve, name="Private")
    mine = Conversation.objects.create(user=ada, title="Mine")
    assert organise(client, theirs, action="pin").status_code == 404
    moved = organise(client, mine, action="move", folder=str(their_folder.pk))
    assert moved.status_code == 400
    assert moved.json()["error"]["param"] == "folder"
    assert client.post(f"/folders/{their_folder.pk}/delete/").status_code == 404
    assert organise(client, mine, action="explode").status_code == 400
    theirs.refresh_from_db()
    mine.refresh_from_db()
    assert (theirs.pinned, mine.folder) == (False, None)
    assert Folder.objects.filter(user=eve).exists()
