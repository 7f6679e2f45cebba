"""The admin of what answers: backends (their API key write-only), slots (state shown live, stop
strings, images and documents), and MCP servers with their tools' policies."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from chat import crypto, services
from chat.models import (
    Backend,
    McpServer,
    McpTool,
    Slot,
)
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
