"""One count against a django-ratelimit rate, kept in Django's cache (Redis with ``REDIS_URL``,
so processes share it), for the limits that answer a single request: chat uploads
(``attachment_views``) and CSP reports (``csp``). The widget's several limits per message are
``chat.widget._exceeded``."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django_ratelimit.core import is_ratelimited

from chat.relay.cluster import UNREACHABLE, shared


async def over_rate(request: HttpRequest, *, group: str, key: str, rate: str) -> bool | None:
    """Count one hit of ``key`` in ``group`` against ``rate`` (django-ratelimit's
    ``count/period``, e.g. ``"30/m"``): True past it, False within it, None when it cannot be
    counted (the cache unreachable, reported to the Redis health; or Redis known down: not
    asked at all). One thread hop (the cache client is synchronous)."""
    store = shared()
    if store is not None and not store.health.up:
        return None

    def check() -> bool | Exception:
        try:
            limited: bool = is_ratelimited(
                request, group=group, key=lambda _group, _request: key, rate=rate, increment=True
            )
        except UNREACHABLE as exc:
            return exc
        return limited

    outcome = await sync_to_async(check)()
    if isinstance(outcome, Exception):
        if store is not None:
            store.report_unavailable(outcome)
        return None
    return outcome


def period_s(rate: str) -> int:
    """Seconds of a django-ratelimit rate's period (``"30/m"``: 60, ``"100/2h"``: 7,200), the
    longest wait before the count starts again (django-ratelimit staggers windows per key)."""
    period = rate.partition("/")[2]
    return int(period[:-1] or 1) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[-1]]
