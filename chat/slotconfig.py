"""A stored slot as the relay sees it: ``SlotConfig``, ORM-free, with its fallbacks."""

from __future__ import annotations

from chat.models import Slot
from chat.relay.dispatch import SlotConfig

# How many fallbacks deep a slot's chain is loaded (selectors.SLOT_RELATED matches it).
FALLBACK_DEPTH = 2


def slot_config(slot: Slot, *, depth: int = 0) -> SlotConfig:
    """The relay's ORM-free view of a slot and its fallbacks (needs ``slot.backend`` and the
    fallback chain loaded, as ``selectors.slot_aget`` does: two fallbacks deep)."""
    fallback = None
    if depth < FALLBACK_DEPTH and slot.fallback_id is not None:
        candidate = slot.fallback
        if candidate is not None and candidate.enabled:
            fallback = slot_config(candidate, depth=depth + 1)
    return SlotConfig(
        id=slot.pk,
        name=slot.name,
        upstream_model=slot.upstream_model,
        backend=slot.backend.config(),
        system_prompt=slot.system_prompt,
        defaults=slot.defaults(),
        stop=slot.stop_strings(),
        health_path=slot.backend.health_path,
        single_flight=slot.single_flight,
        max_concurrency=max(1, slot.max_concurrency),
        queue_timeout_s=slot.queue_timeout_s,
        cold_boot_timeout_s=slot.cold_boot_timeout_s,
        max_retries=slot.max_retries,
        fallback=fallback,
        responses_native=slot.backend.responses_native,
        backend_id=slot.backend_id,
    )
