"""The admin of what was said: conversations with their messages, widgets, attachments."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html

from chat import services
from chat.admin.base import ReadOnlyAdmin, in_units
from chat.models import (
    Attachment,
    Conversation,
    Message,
    Widget,
)
from chat.templatetags.units import duration_ms, per_second


class MessageInline(admin.StackedInline[Message, Conversation]):
    model = Message
    extra = 0
    can_delete = False
    fields = ("role", "status", "content", "reasoning", "finish_reason", "usage", "ttft")
    readonly_fields = fields
    ttft = in_units("ttft_ms", "TTFT", duration_ms)

    def has_add_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin[Conversation]):
    list_display = ("__str__", "user", "widget", "slot", "updated_at")
    list_filter = ("widget", "slot")
    search_fields = ("title", "user__username")
    list_select_related = ("user", "slot", "widget")
    readonly_fields = ("user", "widget", "visitor_id", "created_at", "updated_at")
    exclude = ("current_leaf",)
    inlines = [MessageInline]

    def has_change_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        # A widget visitor's conversation is a record of what they were told: read-only.
        if obj is not None and obj.widget_id is not None:
            return False
        return super().has_change_permission(request, obj)


@admin.register(Widget)
class WidgetAdmin(admin.ModelAdmin[Widget]):
    list_display = ("name", "slot", "public_key", "enabled", "rate_per_minute", "rate_per_day")
    list_filter = ("enabled", "slot")
    search_fields = ("name", "public_key")
    readonly_fields = ("public_key", "embed_snippet", "created_at")
    fieldsets = (
        (None, {"fields": ("name", "slot", "enabled", "public_key", "embed_snippet")}),
        ("Look", {"fields": ("title", "accent_color", "greeting")}),
        ("Answers", {"fields": ("system_prompt",)}),
        ("Access", {"fields": ("allowed_origins", "visitor_days")}),
        ("Attachments", {"fields": ("accepts_images", "image_max_bytes")}),
        (
            "Limits",
            {
                "description": "Each answers 429 once reached. A new visitor is one request "
                "away, so the per-visitor limits hold only beside the others.",
                "fields": (
                    ("rate_per_minute", "rate_per_day"),
                    ("ip_rate_per_minute", "ip_rate_per_day"),
                    "daily_cap",
                    ("ip_visitors_per_hour", "visitors_per_hour"),
                ),
            },
        ),
    )

    def get_form(
        self, request: HttpRequest, obj: Widget | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[Widget]]:
        self._request = request  # embed_snippet needs the site's address
        return super().get_form(request, obj, change, **kwargs)

    @admin.display(description="embed snippet")
    def embed_snippet(self, widget: Widget) -> str:
        """Paste either into a page on an allowed origin."""
        if widget.pk is None:
            return "Saved widgets show their snippet here."
        snippets = widget.embed_snippets(base_url=self._request.build_absolute_uri("/"))
        return format_html(
            "<p>A launcher button (recommended):</p>"
            '<div class="copy-field"><pre id="embed-script">{}</pre>'
            '<button type="button" class="button" data-copy="#embed-script">Copy</button></div>'
            "<p>Or a plain frame:</p>"
            '<div class="copy-field"><pre id="embed-iframe">{}</pre>'
            '<button type="button" class="button" data-copy="#embed-iframe">Copy</button></div>',
            snippets["script"],
            snippets["iframe"],
        )


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin[Message]):
    list_display = (
        "id",
        "conversation",
        "role",
        "status",
        "finish_reason",
        "ttft",
        "speed",
        "created_at",
    )
    list_filter = ("role", "status")
    search_fields = ("content",)
    list_select_related = ("conversation",)
    readonly_fields = ("conversation",)
    ttft = in_units("ttft_ms", "TTFT", duration_ms)
    speed = in_units("tokens_per_s", "tokens/s", per_second)


@admin.register(Attachment)
class AttachmentAdmin(ReadOnlyAdmin, admin.ModelAdmin[Attachment]):
    """Uploaded files, for staff to see what is stored and by whom, and to delete. The file
    itself is not linked: it is its owner's."""

    list_display = ("created_at", "name", "kind", "mime", "size", "user", "widget", "conversation")
    list_filter = ("kind", "mime")
    list_select_related = ("user", "widget", "conversation")
    search_fields = ("name", "user__username")
    exclude = ("text", "file")

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj: Attachment) -> str:
        return filesizeformat(obj.size_bytes)

    def delete_model(self, request: HttpRequest, obj: Attachment) -> None:
        names = [obj.file.name] if obj.file.name else []
        super().delete_model(request, obj)
        transaction.on_commit(lambda: services.attachment_files_delete(names))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Attachment]) -> None:
        names = [name for name in queryset.values_list("file", flat=True) if name]
        super().delete_queryset(request, queryset)
        transaction.on_commit(lambda: services.attachment_files_delete(names))
