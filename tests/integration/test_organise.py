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


def rename_folder(client: Client, folder: Folder, name: str, **data: str) -> Any:
    return client.post(
        f"/folders/{folder.pk}/rename/", {"name": name, **data}, HTTP_HX_REQUEST="true"
    )


def test_a_folder_is_renamed_and_keeps_its_conversations(client: Client, ada: Any) -> None:
    work = Folder.objects.create(user=ada, name="Work")
    moved = Conversation.objects.create(user=ada, title="Plan", folder=work)
    sidebar = rename_folder(client, work, "  Work   2026 ", current=str(moved.pk))
    assert sidebar.status_code == 200
    html = sidebar.content.decode()
    assert headings(html) == [("Work 2026", ["Plan"])]
    assert 'aria-current="page"' in html  # the open conversation stays marked
    work.refresh_from_db()
    assert work.name == "Work 2026"

    plain = client.post(f"/folders/{work.pk}/rename/", {"name": "Work"})  # without htmx
    assert plain.status_code == 302
    assert Folder.objects.get(pk=work.pk).name == "Work"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "needs a name"),
        ("   ", "needs a name"),
        ("x" * 101, "at most 100 characters"),
        ("Home", "already have a folder named “Home”"),
    ],
    ids=["empty", "blank", "too-long", "taken"],
)
def test_a_folder_rename_is_refused_clearly(client: Client, ada: Any, name: str, says: str) -> None:
    work = Folder.objects.create(user=ada, name="Work")
    Folder.objects.create(user=ada, name="Home")
    refused = rename_folder(client, work, name)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "name")
    assert says in error["message"]
    assert Folder.objects.get(pk=work.pk).name == "Work"


def test_a_folder_name_of_100_characters_is_kept_whole(client: Client, ada: Any) -> None:
    work = Folder.objects.create(user=ada, name="Work")
    assert rename_folder(client, work, "y" * 100).status_code == 200
    assert Folder.objects.get(pk=work.pk).name == "y" * 100


def test_a_too_long_new_folder_is_refused_not_cut(client: Client, ada: Any) -> None:
    mine = Conversation.objects.create(user=ada, title="Mine")
    refused = organise(client, mine, action="move", new_folder="z" * 101)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "new_folder"
    assert not Folder.objects.exists()


def test_nobody_renames_another_users_folder(client: Client, ada: Any) -> None:
    eve = get_user_model().objects.create_user("eve", password="e" * 20)
    their_folder = Folder.objects.create(user=eve, name="Private")
    assert rename_folder(client, their_folder, "Mine now").status_code == 404
    assert Folder.objects.get(pk=their_folder.pk).name == "Private"


def test_renaming_a_folder_needs_the_csrf_token(ada: Any) -> None:
    work = Folder.objects.create(user=ada, name="Work")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(ada)
    assert strict.post(f"/folders/{work.pk}/rename/", {"name": "Hijacked"}).status_code == 403
    assert Folder.objects.get(pk=work.pk).name == "Work"
