from __future__ import annotations

import csv
import json
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from asgiref.sync import async_to_sync
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

from chat import charts, crypto, selectors, services
from chat.models import (
    ApiCall,
    ApiKey,
    Attachment,
    AuditEntry,
    Backend,
    Conversation,
    McpServer,
    McpTool,
    Message,
    Quota,
    SignOnIdentity,
    Slot,
    UsageDay,
    Widget,
)
from chat.templatetags.units import duration_ms, per_second
from chat.tools import catalog
from chat.tools import client as mcp_client
from chat.tools import urls as mcp_urls


class SlotStateMixin:
    @admin.display(description="state", ordering="state")
    def state_badge(self, slot: Slot) -> str:
        """The slot's state as a badge that static/chat/slot_state.js keeps live."""
        return format_html(
            '<span class="slot-state" data-slot="{}" data-state="{}" title="{}">{}</span>',
            slot.name,
            slot.state,
            slot.last_error,
            slot.state,
        )


def _in_units(field: str, description: str, show: Callable[[Any], str]) -> Any:
    """A list or detail column showing ``field`` for people (``chat.templatetags.units``),
    sortable by the field itself."""

    @admin.display(description=description, ordering=field)
    def column(admin_: Any, obj: Any) -> str:
        return show(getattr(obj, field))

    return column


class StopStringsField(forms.CharField):
    """A slot's stop strings as lines of text instead of raw JSON: one string per line, with
    ``\\n`` for a newline inside one (the commonest stop is a blank line: ``\\n\\n``),
    ``\\t`` for a tab and ``\\\\`` for a backslash. Cleans to a list of non-empty strings."""

    _ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("strip", False)
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 3, "cols": 40}))
        kwargs.setdefault(
            "help_text",
            "One per line; write \\n for a newline inside one (\\n\\n: a blank line).",
        )
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("["):
            value = json.loads(value)  # the model field's JSON, on a form shown again
        if isinstance(value, list):
            return "\n".join(
                str(s).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
                for s in value
            )
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [self._unescape(line) for line in text.splitlines() if line.strip()]

    def _unescape(self, line: str) -> str:
        out, chars = [], iter(line.rstrip("\r"))
        for char in chars:
            if char == "\\":
                following = next(chars, "")
                out.append(self._ESCAPES.get(following, "\\" + following))
            else:
                out.append(char)
        return "".join(out)


class SlotForm(forms.ModelForm[Slot]):
    """The slot's form in the admin: the fields are SlotAdmin's fieldsets (Django's admin
    passes them); this only edits stop strings as lines."""

    stop = StopStringsField(label="Stop strings")

    class Meta:
        model = Slot
        fields = ["stop"]


class SlotInline(SlotStateMixin, admin.TabularInline[Slot, Backend]):
    model = Slot
    extra = 0
    fields = ("name", "upstream_model", "state_badge", "is_default", "enabled")
    readonly_fields = ("state_badge",)
    show_change_link = True


class BackendForm(forms.ModelForm[Backend]):
    """The API key is write-only: the form says whether one is set, never what it is (not even
    in the input's value); a new value replaces it, an empty one keeps it. A new base URL is
    another server: what ``auto`` detected of the old one's Responses API is forgotten."""

    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    clear_api_key = forms.BooleanField(label="Remove the API key", required=False)

    class Meta:
        model = Backend
        # BackendAdmin's fieldsets choose the model's fields and the admin builds them, with
        # its widgets; api_key_encrypted is not editable, so never among them.
        fields = ("name",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        state = "set" if self.instance.has_api_key else "not set"
        self.fields["api_key"].help_text = (
            f"Currently {state}. Sent as a Bearer token; stored encrypted. Type a new key to "
            "replace it; leave empty to keep it."
        )

    def save(self, commit: bool = True) -> Backend:
        if self.cleaned_data.get("clear_api_key"):
            self.instance.set_api_key("")
        elif self.cleaned_data.get("api_key"):
            self.instance.set_api_key(self.cleaned_data["api_key"])
        if "base_url" in self.changed_data:
            # The next /v1/responses call detects again (a server without /responses put where
            # one with it was would otherwise get every request native, and 404).
            self.instance.responses_api_detected = None
        return super().save(commit)


admin.site.site_header = "Slipstream"
admin.site.site_title = "Slipstream admin"
admin.site.index_title = "Administration"


class ReadOnlyAdmin:
    """For records the app writes and staff only read (and may delete): no add, no change."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin[Backend]):
    form = BackendForm
    list_display = ("name", "base_url", "api_key_set", "max_concurrency", "created_at")
    search_fields = ("name", "base_url")
    inlines = [SlotInline]
    fieldsets = (
        (None, {"fields": ("name", "base_url", "api_key", "clear_api_key")}),
        (
            "Limits",
            {
                "fields": (
                    "connect_timeout_s",
                    "read_timeout_s",
                    "total_timeout_s",
                    "health_path",
                    "max_concurrency",
                )
            },
        ),
        ("Responses API", {"fields": ("responses_api", "responses_api_detected")}),
    )
    readonly_fields = ("responses_api_detected",)
    # Upstreams on loopback or a LAN mostly speak plain HTTP: a base URL typed without a scheme
    # means http:// (Django 6 will assume https; saying which silences its deprecation warning).
    formfield_overrides = {models.URLField: {"assume_scheme": "http"}}

    @admin.display(description="API key", boolean=True)
    def api_key_set(self, backend: Backend) -> bool:
        return backend.has_api_key


class McpServerForm(forms.ModelForm[McpServer]):
    """The secret is write-only, as a backend's API key (BackendForm): the form says whether
    one is set, never what it is. An http server's URL must pass the URL policy
    (chat.tools.urls) when saved; it is checked again at each connection."""

    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    clear_secret = forms.BooleanField(label="Remove the secret", required=False)

    class Meta:
        model = McpServer
        fields = ("label",)  # McpServerAdmin's fieldsets choose the rest

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        state = "set" if self.instance.has_secret else "not set"
        self.fields["secret"].help_text = (
            f"Currently {state}. Sent as Authorization: Bearer …; stored encrypted. Type a new "
            "secret to replace it; leave empty to keep it."
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        url = cleaned.get("url") or ""
        if cleaned.get("transport") == McpServer.Transport.HTTP and url:
            reason = async_to_sync(mcp_urls.refusal)(
                url, allow_hosts=settings.SLIPSTREAM_MCP_ALLOW_HOSTS
            )
            if reason:
                self.add_error("url", f"Refused: {reason}.")
        return cleaned

    def save(self, commit: bool = True) -> McpServer:
        if self.cleaned_data.get("clear_secret"):
            self.instance.set_secret("")
        elif self.cleaned_data.get("secret"):
            self.instance.set_secret(self.cleaned_data["secret"])
        return super().save(commit)


class McpToolInline(admin.TabularInline[McpTool, McpServer]):
    """A server's tools as its last listing described them: the description is the server's
    text, shown escaped (never HTML); staff set each tool's policy. Rows come from refreshes
    only."""

    model = McpTool
    extra = 0
    fields = ("name", "description", "policy", "gone")
    readonly_fields = ("name", "description", "gone")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin[McpServer]):
    form = McpServerForm
    list_display = (
        "label",
        "transport",
        "url",
        "enabled",
        "secret_set",
        "tools_fetched_at",
        "last_error",
    )
    list_filter = ("transport", "enabled")
    search_fields = ("label", "url")
    inlines = [McpToolInline]
    fieldsets = (
        (None, {"fields": ("label", "transport", "url", "headers", "secret", "clear_secret")}),
        ("Use", {"fields": ("enabled", "groups", "timeout_s")}),
        ("Tool list", {"fields": ("tools_fetched_at", "last_error")}),
    )
    readonly_fields = ("tools_fetched_at", "last_error")
    filter_horizontal = ("groups",)
    actions = ("refresh_tools",)

    @admin.display(description="Secret", boolean=True)
    def secret_set(self, server: McpServer) -> bool:
        return server.has_secret

    @admin.action(description="Refresh tool list")
    def refresh_tools(self, request: HttpRequest, queryset: QuerySet[McpServer]) -> None:
        """Lists each server's tools now (chat.tools.catalog.refresh); a failure is reported
        and kept as the server's last error, its cached tools left as they were."""
        for server in queryset:
            try:
                done = catalog.refresh(server)
            except (mcp_client.McpError, crypto.SecretUnreadable) as exc:
                self.message_user(request, str(exc), messages.ERROR)  # names the server
                continue
            self.message_user(
                request,
                f"Tool list of {server.label}: {done.added} new, {done.updated} listed again, "
                f"{done.gone} gone.",
                messages.SUCCESS,
            )


@admin.register(Slot)
class SlotAdmin(SlotStateMixin, admin.ModelAdmin[Slot]):
    form = SlotForm
    list_display = (
        "name",
        "backend",
        "upstream_model",
        "state_badge",
        "last_error",
        "state_changed_at",
        "fallback",
        "is_default",
        "enabled",
    )
    list_filter = ("state", "enabled", "backend")
    search_fields = ("name", "upstream_model")
    list_select_related = ("backend", "fallback")
    readonly_fields = ("state_badge", "last_error", "state_changed_at")
    fieldsets = (
        (None, {"fields": ("name", "display_name", "backend", "upstream_model")}),
        ("State", {"fields": ("state_badge", "last_error", "state_changed_at")}),
        ("Defaults", {"fields": ("system_prompt", "temperature", "max_tokens", "stop")}),
        (
            "Dispatch",
            {
                "fields": (
                    "max_concurrency",
                    "queue_timeout_s",
                    "cold_boot_timeout_s",
                    "max_retries",
                    "single_flight",
                    "fallback",
                )
            },
        ),
        ("Routing", {"fields": ("is_default", "enabled", "groups")}),
        (
            "Attachments",
            {
                "description": "The slot list's action “Ask the server whether it reads "
                "images” sets Accepts images from llama.cpp's or Ollama's own answer.",
                "fields": (
                    "accepts_images",
                    "image_max_side",
                    "image_links",
                    "document_tokens",
                    "media_urls",
                ),
            },
        ),
        ("Agent clients (/v1/responses)", {"fields": ("hosted_tools",)}),
    )
    filter_horizontal = ("groups",)
    actions = ("detect_images",)

    @admin.action(description="Ask the server whether it reads images")
    def detect_images(self, request: HttpRequest, queryset: QuerySet[Slot]) -> None:
        """Sets ``accepts_images`` from what each slot's server says of its model, where it
        says it (``relay.capabilities``); a slot whose server says nothing is left as it is."""
        for slot in queryset.select_related("backend"):
            before = slot.accepts_images
            said, where = services.slot_detect_images(slot=slot)
            if said is None:
                self.message_user(
                    request,
                    f"{slot.name}: the server does not say whether {slot.upstream_model} reads "
                    "images (only llama.cpp's server and Ollama do); set it by hand.",
                    messages.WARNING,
                )
                continue
            verdict = "reads images" if said else "does not read images"
            self.message_user(request, f"{slot.name}: {verdict} ({where}).", messages.SUCCESS)
            if said != before:
                self.log_change(request, slot, f"Accepts images: {said}, from {where}.")

    class Media:
        js = ("chat/slot_state.js",)
        css = {"all": ("chat/slot_state.css",)}


class MessageInline(admin.StackedInline[Message, Conversation]):
    model = Message
    extra = 0
    can_delete = False
    fields = ("role", "status", "content", "reasoning", "finish_reason", "usage", "ttft")
    readonly_fields = fields
    ttft = _in_units("ttft_ms", "TTFT", duration_ms)

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
    ttft = _in_units("ttft_ms", "TTFT", duration_ms)
    speed = _in_units("tokens_per_s", "tokens/s", per_second)


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
    ttft = _in_units("ttft_ms", "TTFT", duration_ms)
    duration = _in_units("duration_ms", "duration", duration_ms)


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


# The CSV export's columns, as exported (the admin's list shows the same figures).
USAGE_CSV_FIELDS = (
    "day",
    "user",
    "api_key",
    "widget",
    "slot_name",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "mean_ttft_ms",
)


@admin.register(UsageDay)
class UsageDayAdmin(ReadOnlyAdmin, admin.ModelAdmin[UsageDay]):
    """Usage per day, user, API key, widget and slot (``services.usage_arecord``), read-only,
    with a CSV export of the selected rows (or all the filtered ones: select all)."""

    # The CSV's columns, with the mean TTFT in readable units instead of raw ms.
    list_display = (*USAGE_CSV_FIELDS[:-1], "mean_ttft")
    list_filter = ("day", "slot_name")
    search_fields = ("user__username", "slot_name", "api_key__name", "widget__name")
    date_hierarchy = "day"
    list_select_related = ("user", "api_key", "widget")
    actions = ("export_csv",)

    # The dashboard's periods, days (the first is its default), and hours (UsageHour's rows).
    DASHBOARD_DAYS = (30, 7, 90)
    DASHBOARD_HOURS = (48,)

    def get_urls(self) -> list[URLPattern]:
        dashboard = path(
            "dashboard/",
            self.admin_site.admin_view(self.dashboard),
            name="chat_usageday_dashboard",
        )
        return [dashboard, *super().get_urls()]

    def dashboard(self, request: HttpRequest) -> HttpResponse:
        """Usage over the last 7, 30 or 90 days (``?days=``) or the last 48 hours (``?hours=48``,
        UTC): totals with TTFT and speed percentiles, tokens and requests per day or hour as
        bar charts, and the top users, API keys, widgets and slots. Read from the per-day or
        per-hour rows only (``selectors.usage_within``, ``selectors.usage_summary``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now, days, hours = timezone.now(), self.DASHBOARD_DAYS, self.DASHBOARD_HOURS
        period = charts.usage_period(request.GET, days=days, hours=hours, now=now)
        rows = selectors.usage_within(period=period)
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage dashboard",
            "opts": self.model._meta,
            "period": period,
            "periods": charts.period_choices(days=days, hours=hours, now=now),
            "total": selectors.usage_summary(rows, by=[])[0],
            "charts": charts.usage_charts(period, selectors.usage_summary(rows, by=[period.unit])),
            "tables": [
                (
                    heading,
                    label,
                    selectors.usage_summary(rows.filter(**only), by=by)[:DASHBOARD_TOP],
                )
                for heading, label, only, by in DASHBOARD_TABLES
            ],
        }
        return TemplateResponse(request, "admin/chat/usageday/dashboard.html", context)

    @admin.display(description="mean TTFT")
    def mean_ttft(self, row: UsageDay) -> str:
        return duration_ms(row.mean_ttft_ms)

    @admin.action(description="Export selected rows as CSV")
    def export_csv(self, request: HttpRequest, queryset: Any) -> HttpResponse:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="slipstream-usage.csv"'
        writer = csv.writer(response)
        writer.writerow(USAGE_CSV_FIELDS)
        for row in queryset.select_related("user", "api_key", "widget"):
            writer.writerow(
                [
                    row.day.isoformat(),
                    row.user.get_username() if row.user else "",
                    row.api_key.name if row.api_key else "",
                    row.widget.name if row.widget else "",
                    row.slot_name,
                    row.requests,
                    row.errors,
                    row.prompt_tokens,
                    row.completion_tokens,
                    "" if row.mean_ttft_ms is None else round(row.mean_ttft_ms, 1),
                ]
            )
        return response


# Rows in each of the dashboard's top lists.
DASHBOARD_TOP = 20
# The dashboard's top lists: heading, first column's name, which rows, summed by what. A
# user's answers count for each of their groups.
DASHBOARD_TABLES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("Users", "User", {"user__isnull": False}, ["user__username"]),
    ("Groups", "Group", {"user__groups__isnull": False}, ["user__groups__name"]),
    ("API keys", "API key · user", {"api_key__isnull": False}, ["api_key__name", "user__username"]),
    ("Widgets", "Widget", {"widget__isnull": False}, ["widget__name"]),
    ("Slots", "Slot", {}, ["slot_name"]),
]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin[Quota]):
    """Token and request budgets per day or month for users, groups and API keys, enforced
    when each request is admitted, before its upstream call (``quotas.admit``)."""

    list_display = ("__str__", "period", "max_tokens", "max_requests")
    list_filter = ("period",)
    list_select_related = ("user", "group", "api_key")
    autocomplete_fields = ("user", "group")
    fields = ("user", "group", "api_key", "period", "max_tokens", "max_requests")


@admin.register(SignOnIdentity)
class SignOnIdentityAdmin(admin.ModelAdmin[SignOnIdentity]):
    """Which account at the single sign-on provider signs in as which user (``chat.sso``).
    Adding one links an existing local user to its provider account (the provider's ``sub``
    claim); deleting one makes the next sign-in with that account ask for a new user."""

    list_display = ("user", "subject", "issuer", "created_at", "last_login_at")
    search_fields = ("user__username", "subject")
    list_select_related = ("user",)
    autocomplete_fields = ("user",)
    readonly_fields = ("created_at", "last_login_at")
