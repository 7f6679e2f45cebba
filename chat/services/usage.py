"""Usage counted per day and per hour (``UsageDay``, ``UsageHour``) through ``chat.records``, and
the hour rows pruned."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.utils import timezone

from chat import records
from chat.models import (
    TOKENS_PER_S_BUCKETS,
    TTFT_BUCKETS_MS,
    USAGE_HOURS_KEPT,
    UsageHour,
    bucket_field,
)

logger = logging.getLogger(__name__)


async def usage_arecord(usage: records.Usage) -> None:
    """Count one answer or call (``usage_today``'s increments) in its ``UsageDay`` and
    ``UsageHour``: one UPDATE each, or an INSERT for the scope's first of the day or hour, in
    the process's next batch of records (``chat.records``). Never raises: a failed write is
    logged, and the answer stands."""
    await records.write(records.Record(usage=usage))


async def usage_hour_aprune(*, now: datetime | None = None) -> int:
    """Delete the ``UsageHour`` rows of hours that started more than ``USAGE_HOURS_KEPT``
    hours before ``now`` (default: the current time); returns how many. One DELETE on the
    (hour, scope) index; the per-day rows are kept."""
    cutoff = (now or timezone.now()) - timedelta(hours=USAGE_HOURS_KEPT)
    deleted, _ = await UsageHour.objects.filter(hour__lt=cutoff).adelete()
    return deleted


def usage_today(
    *,
    slot_name: str,
    ok: bool,
    admitted: bool = True,
    user_id: int | None = None,
    api_key_id: int | None = None,
    widget_id: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    ttft_ms: float | None = None,
    tokens_per_s: float | None = None,
) -> records.Usage:
    """Today's (UTC) increments of one answer's or call's ``UsageDay``, and of its
    ``UsageHour`` for the current hour (its scope: user, API key, widget, slot). Tokens are
    counted as given (None: 0); ``ttft_ms`` and ``tokens_per_s`` (None: not measured) also go
    into the rows' histograms; ``admitted``: the request counts against request budgets
    (``chat.quotas``)."""
    scope = f"u{user_id or '-'}:k{api_key_id or '-'}:w{widget_id or '-'}:{slot_name}"[:200]
    counts: dict[str, int | float] = {
        "requests": 1,
        "admitted": 1 if admitted else 0,
        "errors": 0 if ok else 1,
        "prompt_tokens": prompt_tokens or 0,
        "completion_tokens": completion_tokens or 0,
        "ttft_ms_sum": ttft_ms or 0.0,
        "ttft_count": 0 if ttft_ms is None else 1,
    }
    if ttft_ms is not None:
        counts[bucket_field("ttft", TTFT_BUCKETS_MS, ttft_ms)] = 1
    if tokens_per_s is not None:
        counts[bucket_field("tps", TOKENS_PER_S_BUCKETS, tokens_per_s)] = 1
    now = timezone.now()
    return records.Usage(
        day=now.date(),
        hour=now.replace(minute=0, second=0, microsecond=0),
        scope=scope,
        slot_name=slot_name,
        counts=counts,
        user_id=user_id,
        api_key_id=api_key_id,
        widget_id=widget_id,
    )
