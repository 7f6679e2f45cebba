"""The admin of the ``/v1`` API and of changes: API keys (created and revoked from the admin,
audited), their calls, the audit log."""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from django.contrib import admin
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from chat import services
from chat.admin.base import ReadOnlyAdmin, in_units
from chat.models import (
    ApiCall,
    ApiKey,
    AuditEntry,
)
from chat.templatetags.units import duration_ms


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = ("name", "prefix", "user", "store_conversations", "last_used_at", "revoked_at")
    list_filter = ("store_conversations",)
    search_fields = ("name", "prefix", "user__username")
    list_select_related = ("user",)
    readonly_fields = ("prefix", "created_at", "last_used_at")
    fields = (
        "user",
        "name",
        "store_conversations",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A new raw key, from save_model to response_add of the same request. Never through
        # the messages framework: its cookie is signed, not encrypted (issue 16).
        self._new_raw_keys: WeakKeyDictionary[HttpRequest, str] = WeakKeyDictionary()

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # A new key is made by the service, which hands back the raw key once.
        key, raw = services.api_key_create(
            user=obj.user, name=obj.name, store_conversations=obj.store_conversations
        )
        obj.pk, obj.prefix, obj.digest = key.pk, key.prefix, key.digest
        self._new_raw_keys[request] = raw

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """The new key, shown once in the response to the POST that made it (no redirect, so
        it is in no URL, cookie or session), and never stored by a cache."""
        raw = self._new_raw_keys.pop(request, None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "opts": self.opts,
            "key": obj,
            "raw_key": raw,
        }
        response = TemplateResponse(request, "admin/chat/apikey/created.html", context)
        add_never_cache_headers(response)
        return response


@admin.register(ApiCall)
class ApiCallAdmin(ReadOnlyAdmin, admin.ModelAdmin[ApiCall]):
    list_display = (
        "created_at",
        "api_key",
        "endpoint",
        "slot_name",
        "stream",
        "http_status",
        "outcome",
        "prompt_tokens",
        "completion_tokens",
        "ttft",
        "duration",
    )
    list_filter = ("outcome", "endpoint", "stream", "slot_name")
    list_select_related = ("api_key",)
    ttft = in_units("ttft_ms", "TTFT", duration_ms)
    duration = in_units("duration_ms", "duration", duration_ms)


@admin.register(AuditEntry)
class AuditLogAdmin(ReadOnlyAdmin, admin.ModelAdmin[AuditEntry]):
    """Who changed what, and when: every admin change (backends, slots, widgets, keys, users
    and their groups) as Django's admin logs it, and API keys created or revoked on the keys
    page (``services.audit_log``). Read-only, for staff with the view permission."""

    list_display = ("action_time", "user", "content_type", "object_repr", "action", "message")
    list_filter = ("action_flag", "content_type")
    search_fields = ("object_repr", "change_message", "user__username")
    date_hierarchy = "action_time"
    list_select_related = ("user", "content_type")

    @admin.display(description="action", ordering="action_flag")
    def action(self, entry: LogEntry) -> str:
        return {ADDITION: "added", CHANGE: "changed", DELETION: "deleted"}.get(
            entry.action_flag, str(entry.action_flag)
        )

    @admin.display(description="change")
    def message(self, entry: LogEntry) -> str:
        return entry.get_change_message()

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # an audit log nobody can rewrite
