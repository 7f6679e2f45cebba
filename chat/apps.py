from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Slipstream"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from chat import services
        from chat.relay import shared, slots

        shared.configure(settings.REDIS_URL)
        # The relay knows nothing of the ORM: it reports slot state changes, we store them.
        if services.slot_astore_state not in slots.state_listeners:
            slots.state_listeners.append(services.slot_astore_state)
