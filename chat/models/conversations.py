"""Conversations as trees of messages (``Conversation``, ``Message``), their folders, the files
sent with them (``Attachment``), and the prompt library (``Prompt``)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.urls import reverse
from django.utils import timezone

from chat.models.backends import Slot
from chat.models.widgets import Widget
from chat.relay.generation import Status as GenerationStatus


class Folder(models.Model):
    """A user's folder of conversations in the sidebar (a conversation is in one or none)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="folders"
    )
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="folder_user_name")]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # A team member's conversation, or a widget visitor's (then user is empty).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="conversations",
        null=True,
        blank=True,
    )
    widget = models.ForeignKey(
        Widget, on_delete=models.CASCADE, null=True, blank=True, related_name="conversations"
    )
    visitor_id = models.UUIDField(null=True, blank=True, db_index=True)
    title = models.CharField(max_length=200, blank=True)
    slot = models.ForeignKey(Slot, on_delete=models.SET_NULL, null=True, blank=True)
    # Per-conversation settings: empty means the slot's own defaults.
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    # The message whose branch is shown: the path from the root to it is the conversation.
    current_leaf = models.ForeignKey(
        "Message", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Set while shared: other signed-in members open it read-only at /s/<share_id>/.
    share_id = models.UUIDField(null=True, blank=True, unique=True)
    # The sidebar's organisation: pinned on top, in a folder, or archived (out of the list).
    pinned = models.BooleanField(default=False)
    folder = models.ForeignKey(
        Folder, on_delete=models.SET_NULL, null=True, blank=True, related_name="conversations"
    )
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or "New chat"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"

    class Status(models.TextChoices):
        # A generation's statuses (chat.relay.generation.Status), and one of storage's own.
        STREAMING = GenerationStatus.STREAMING.value
        COMPLETE = GenerationStatus.COMPLETE.value
        STOPPED = GenerationStatus.STOPPED.value
        ERROR = GenerationStatus.ERROR.value
        INTERRUPTED = "interrupted"  # its process died mid-answer (sweep.sweep_interrupted)

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    # The message this one answers or follows; siblings (same parent) are branches: an edited
    # user message, a regenerated answer.
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    # The user's attachments sent with this message (``Attachment`` ids as strings, in order).
    # A list on the row, not a many-to-many table, so that building an answer's history needs
    # no extra query when nothing is attached; an edit's new version lists the same ids.
    attachment_ids = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    finish_reason = models.CharField(max_length=32, blank=True)
    usage = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="OpenAI error envelope, if any.")
    slot_name = models.CharField(max_length=100, blank=True)
    ttft_ms = models.FloatField(
        "TTFT (ms)", null=True, blank=True, help_text="Time to first token, ms."
    )
    tokens_per_s = models.FloatField("tokens/s", null=True, blank=True)
    # The generation that streams this answer: a reloaded page resumes it by this id.
    generation_id = models.CharField(max_length=32, blank=True, db_index=True)
    # While streaming, where the stored text stands in the generation's chunks, so a reloaded
    # page goes on from there (services.resume_point): {"seq": the SSE id of the last chunk the
    # text includes, and the raw text where it differs from the stored fields}. None before the
    # first checkpoint, once stored whole, and on answers checkpointed before it existed.
    checkpoint = models.JSONField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


def attachment_path(attachment: Attachment, filename: str) -> str:
    """Where an attachment's file is stored: under a random name, never the uploaded one."""
    return f"attachments/{attachment.created_at:%Y/%m}/{attachment.pk.hex}"


class Attachment(models.Model):
    """A file a user (or a widget visitor) attached to a message: an image sent to vision
    models as an ``image_url`` part, or a document whose extracted ``text`` is sent as context.

    Uploaded before the message is sent (``conversation`` None until then), served only to its
    owner and to viewers of its conversation's share link (``views.attachment_file``), deleted
    with its conversation. ``size_bytes`` is the stored file's size, which counts against the
    owner's quota of stored bytes."""

    class Kind(models.TextChoices):
        IMAGE = "image"
        DOCUMENT = "document"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="attachments",
    )
    widget = models.ForeignKey(
        Widget, on_delete=models.CASCADE, null=True, blank=True, related_name="attachments"
    )
    visitor_id = models.UUIDField(null=True, blank=True)
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="attachments",
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=255, help_text="The file's name as uploaded.")
    mime = models.CharField("MIME type", max_length=100, help_text="Found from the content.")
    size_bytes = models.PositiveBigIntegerField("size (bytes)")
    file = models.FileField(upload_to=attachment_path, max_length=200)
    sha256 = models.CharField(max_length=64, help_text="Of the stored file.")
    width = models.PositiveIntegerField("width (px)", null=True, blank=True)
    height = models.PositiveIntegerField("height (px)", null=True, blank=True)
    # Documents: the text extracted once at upload, so a regenerate does not extract again.
    text = models.TextField(blank=True)
    text_tokens = models.PositiveIntegerField(
        "text (tokens)", null=True, blank=True, help_text="Tokens of the text that are sent."
    )
    text_truncated = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        return reverse("chat:attachment", args=[self.pk])

    @property
    def type_label(self) -> str:
        """A document's badge: its extension in capitals ("PDF", "MD"), else "FILE" (as
        render.js' ``typeBadge``)."""
        _, dot, extension = self.name.rpartition(".")
        return extension.upper() if dot and _ and len(extension) <= 4 else "FILE"


class Prompt(models.Model):
    """A saved prompt of the prompt library: its owner's, and shared with the members of
    ``group`` when set. ``/`` in the chat's message box finds it by title."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompts"
    )
    title = models.CharField(max_length=100)
    text = models.TextField(max_length=20_000)
    group = models.ForeignKey(
        Group,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Members of this group see and use it too.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title", "pk"]

    def __str__(self) -> str:
        return self.title
