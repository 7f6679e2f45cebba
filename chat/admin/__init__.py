"""The Django admin, one module per subject; importing this package registers every model's
admin (Django's autodiscovery imports ``chat.admin``)."""

from __future__ import annotations

from chat.admin import backends, base, conversations, keys, usage

__all__ = ["backends", "base", "conversations", "keys", "usage"]
