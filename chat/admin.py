from __future__ import annotations

from django.contrib import admin

from chat.models import Backend, Conversation, Message, Slot


class SlotInline(admin.TabularInline[Slot, Backend]):
    model = Slot
    extra = 0
    fields = ("name", "upstream_model", "state", "is_default", "enabled")
    readonly_fields = ("state",)
    show_change_link = True


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin[Backend]):
    list_display = ("name", "base_url", "max_concurrency", "read_timeout_s", "created_at")
    search_fields = ("name", "base_url")
    inlines = [SlotInline]
    fieldsets = (
        (None, {"fields": ("name", "base_url", "api_key")}),
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
    )


@admin.register(Slot)
class SlotAdmin(admin.ModelAdmin[Slot]):
    list_display = ("name", "backend", "upstream_model", "state", "is_default", "enabled")
    list_filter = ("state", "enabled", "backend")
    search_fields = ("name", "upstream_model")
    list_select_related = ("backend",)
    readonly_fields = ("state",)
    fieldsets = (
        (None, {"fields": ("name", "display_name", "backend", "upstream_model", "state")}),
        ("Defaults", {"fields": ("system_prompt", "temperature", "max_tokens", "stop")}),
        ("Routing", {"fields": ("is_default", "enabled")}),
    )


class MessageInline(admin.StackedInline[Message, Conversation]):
    model = Message
    extra = 0
    can_delete = False
    fields = ("role", "status", "content", "reasoning", "finish_reason", "usage", "ttft_ms")
    readonly_fields = fields

    def has_add_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin[Conversation]):
    list_display = ("__str__", "user", "slot", "updated_at")
    list_filter = ("slot",)
    search_fields = ("title", "user__username")
    list_select_related = ("user", "slot")
    readonly_fields = ("user", "created_at", "updated_at")
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin[Message]):
    list_display = (
        "id",
        "conversation",
        "role",
        "status",
        "finish_reason",
        "ttft_ms",
        "created_at",
    )
    list_filter = ("role", "status")
    search_fields = ("content",)
    list_select_related = ("conversation",)
    readonly_fields = ("conversation",)
