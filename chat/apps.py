from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Slipstream"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django.core import checks

        from chat import database, internals, services
        from chat.relay import cluster, slots

        # Code that leans on other projects' internals names the versions it was written for.
        checks.register(internals.check)
        cluster.configure(settings.REDIS_URL)
        # Background ORM work must outlive a database outage (issue 29).
        database.check_background_thread()

        from django.contrib.auth.models import Group, User
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from chat import readcache
        from chat.models import ApiKey, Backend, Quota, Slot, Widget

        # Any change that could change who may use what drops the cached lookups.
        for model in (ApiKey, Backend, Quota, Slot, Widget, User, Group):
            post_save.connect(readcache.invalidate, sender=model, dispatch_uid=f"rc-{model}")
            post_delete.connect(readcache.invalidate, sender=model, dispatch_uid=f"rc-d-{model}")
        for through in (Slot.groups.through, User.groups.through):
            m2m_changed.connect(readcache.invalidate, sender=through, dispatch_uid=f"rc-{through}")
        # The relay knows nothing of the ORM: it reports slot state changes, we store them.
        if services.slot_astore_state not in slots.state_listeners:
            slots.state_listeners.append(services.slot_astore_state)

        from chat import metrics

        metrics.install()
