"""First run: an admin account and a default slot, so a fresh install answers at once."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from chat.models import Backend, Slot

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    admin_username: str | None = None
    admin_password: str | None = None  # only when generated here: shown once, never stored
    slot_created: bool = False
    uses_simulator: bool = False


def simulator_base_url() -> str:
    return f"http://127.0.0.1:{settings.SIMULATOR_PORT}/v1"


@transaction.atomic
def bootstrap() -> BootstrapResult:
    """Create the first admin and the ``primary`` slot when they do not exist yet.

    The admin comes from ``DJANGO_SUPERUSER_USERNAME`` / ``DJANGO_SUPERUSER_PASSWORD`` (Django's
    own variables) or gets a random password, returned so the caller can print it once. The slot
    points at ``LLM_BASE_URL`` (with ``LLM_API_KEY``, ``LLM_MODEL``) when set, else at the
    built-in simulator. Idempotent: a second run changes nothing.
    """
    username = password = None
    user_model = get_user_model()
    if not user_model.objects.filter(is_superuser=True).exists():
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        given = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        generated = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=username, password=given or generated)
        password = None if given else generated

    slot_created = False
    if not Slot.objects.exists():
        if settings.LLM_BASE_URL:
            backend = Backend(name="upstream", base_url=settings.LLM_BASE_URL)
            backend.set_api_key(settings.LLM_API_KEY)
            backend.save()
            model = settings.LLM_MODEL or "default"
        else:
            backend = Backend.objects.create(name="simulator", base_url=simulator_base_url())
            model = "sim"
        Slot.objects.create(name="primary", backend=backend, upstream_model=model, is_default=True)
        slot_created = True
    uses_simulator = Backend.objects.filter(
        slots__enabled=True, base_url=simulator_base_url()
    ).exists()
    return BootstrapResult(username, password, slot_created, uses_simulator)
