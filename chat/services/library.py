"""Writes of a user's library: conversations renamed, organised, deleted and shared, prompts
and folders."""

from __future__ import annotations

import logging
import uuid
from typing import Literal

from django.contrib.auth.models import Group, User
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.models import (
    Conversation,
    Folder,
    Prompt,
)

logger = logging.getLogger(__name__)


def conversation_rename(*, conversation: Conversation, title: str) -> None:
    title = " ".join(title.split())[:200]
    conversation.title = title or conversation.title
    conversation.save(update_fields=["title"])


def conversation_organise(
    *,
    conversation: Conversation,
    pinned: bool | None = None,
    archived: bool | None = None,
    folder: Folder | Literal["keep"] | None = "keep",
) -> None:
    """Pin or unpin, archive or bring back, move into a folder (``None``: out of any) what is
    given; the conversation's last activity (its place by date) is left as it was."""
    fields = []
    if pinned is not None:
        conversation.pinned = pinned
        fields.append("pinned")
    if archived is not None:
        conversation.archived_at = timezone.now() if archived else None
        fields.append("archived_at")
    if folder != "keep":
        conversation.folder = folder
        fields.append("folder")
    if fields:
        conversation.save(update_fields=fields)


# The longest prompt title, prompt text and folder name, characters (the models' max_length).
PROMPT_TITLE_MAX, PROMPT_TEXT_MAX, FOLDER_NAME_MAX = 100, 20_000, 100


def _prompt_fields(title: str, text: str) -> tuple[str, str]:
    """A prompt's title (spaces collapsed) and text (stripped, CRLF as LF: a form sends a
    textarea's line breaks as CRLF, HTML's "constructing the entry list"), as stored. Raises
    ``ValueError`` for an empty one or one over its limit (never cut: a cut prompt would say
    something else)."""
    title, text = " ".join(title.split()), text.replace("\r\n", "\n").strip()
    if not title or not text:
        raise ValueError("A prompt needs a title and a text.")
    if len(title) > PROMPT_TITLE_MAX:
        raise ValueError(f"A prompt's title is at most {PROMPT_TITLE_MAX} characters.")
    if len(text) > PROMPT_TEXT_MAX:
        raise ValueError(f"A prompt's text is at most {PROMPT_TEXT_MAX:,} characters.")
    return title, text


def prompt_create(*, owner: User, title: str, text: str, group: Group | None = None) -> Prompt:
    """A new prompt of ``owner``'s library, shared with ``group`` (one of theirs) when given.
    Raises ``ValueError`` for an empty or too long title or text, or a group the owner is not
    in."""
    title, text = _prompt_fields(title, text)
    if group is not None and not owner.groups.filter(pk=group.pk).exists():
        raise ValueError("Prompts are shared only with your own groups.")
    return Prompt.objects.create(owner=owner, title=title, text=text, group=group)


def prompt_update(*, prompt: Prompt, title: str, text: str) -> Prompt:
    """Change a prompt's title and text (whoever it is shared with sees the new ones). The
    caller has checked that the user owns it (``selectors.prompt_get_own``). Raises
    ``ValueError`` as ``prompt_create`` does."""
    prompt.title, prompt.text = _prompt_fields(title, text)
    prompt.save(update_fields=["title", "text"])
    return prompt


def _folder_name(name: str) -> str:
    """A folder's name as stored: spaces collapsed. Raises ``ValueError`` for an empty name
    or one over ``FOLDER_NAME_MAX`` characters."""
    name = " ".join(name.split())
    if not name:
        raise ValueError("A folder needs a name.")
    if len(name) > FOLDER_NAME_MAX:
        raise ValueError(f"A folder's name is at most {FOLDER_NAME_MAX} characters.")
    return name


def folder_get_or_create(*, user: User, name: str) -> Folder:
    """The user's folder of that name (spaces collapsed), made if new. Raises ``ValueError``
    for an empty name or one over ``FOLDER_NAME_MAX`` characters."""
    return Folder.objects.get_or_create(user=user, name=_folder_name(name))[0]


def folder_rename(*, folder: Folder, name: str) -> Folder:
    """Rename one of a user's folders (its conversations stay in it). The caller has checked
    that the user owns it. Raises ``ValueError`` for an empty or too long name, or the name of
    another of the user's folders (names are unique per user: ``folder_user_name``)."""
    name = _folder_name(name)
    if name == folder.name:
        return folder
    if Folder.objects.filter(user_id=folder.user_id, name=name).exclude(pk=folder.pk).exists():
        raise ValueError(f"You already have a folder named “{name}”.")
    folder.name = name
    try:
        # A rename racing another to the same name meets the constraint instead.
        with transaction.atomic():
            folder.save(update_fields=["name"])
    except IntegrityError as exc:
        raise ValueError(f"You already have a folder named “{name}”.") from exc
    return folder


def folder_delete(*, folder: Folder) -> None:
    """Delete a folder; its conversations stay, in no folder."""
    folder.delete()


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete ``conversation``, its messages and its attachments, their files included (once
    the rows are gone for good: a rolled-back delete keeps its files)."""
    names = list(conversation.attachments.values_list("file", flat=True))
    conversation.delete()
    if names:
        transaction.on_commit(lambda: attachment_files_delete(names))


def attachment_files_delete(names: list[str]) -> None:
    """Remove stored attachment files by name; one that is already gone is skipped."""
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete attachment file %s", name, exc_info=True)


def conversation_share(*, conversation: Conversation, shared: bool) -> None:
    """Share read-only with signed-in members (a new unguessable link each time), or stop."""
    conversation.share_id = uuid.uuid4() if shared else None
    conversation.save(update_fields=["share_id"])
