"""The sweeper every process runs: answers whose process died are ended (recovered from the
shared buffer with ``REDIS_URL``, else marked ``interrupted``), quota reservations renewed, and
old uploads and per-hour usage pruned."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from django.utils import timezone

from chat import attachments, database, quotas, records, selectors, services
from chat.relay.cluster import Shared, SharedUnavailable, shared
from chat.relay.generation import find

logger = logging.getLogger(__name__)


SWEEP_EVERY_S = 2.0


# Uploads never sent (attachments.purge_unsent) and per-hour usage past its keeping
# (services.usage_hour_aprune): hourly is plenty.
PURGE_EVERY_S = 3600.0


async def sweep_interrupted(*, older_than_s: float = 3.0) -> int:
    """End every streaming answer whose generation no process runs any more (its process died
    or restarted). A generation counts as running when this process has it, or (with
    ``REDIS_URL``) its liveness key exists. With ``REDIS_URL`` an answer whose shared buffer
    is still there is stored from it (``services.message_arecover``: every chunk relayed, and
    how it ended); any other is marked ``interrupted``, keeping its checkpointed text. Returns
    how many were ended."""
    store = shared()
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    # Answers that ended here and whose row waits for the database (chat.records): their end
    # is on its way, so they are not lost.
    ending = records.writer().pending_message_ids()
    lost = []
    recovered = 0
    for pk, generation_id in await selectors.message_alist_streaming(updated_before=cutoff):
        if pk in ending:
            continue
        running = find(generation_id) if generation_id else None
        if running is not None and not running.ended and not running.is_mirror:
            continue
        if store is not None and generation_id:
            if await store.is_live(generation_id):
                continue
            if await _recovered(store, pk, generation_id):
                recovered += 1
                continue
        lost.append(pk)
    marked = await services.message_amark_interrupted(message_ids=lost) if lost else 0
    return recovered + marked


async def _recovered(store: Shared, message_id: int, generation_id: str) -> bool:
    """Whether answer ``message_id`` was stored from its shared buffer (``message_arecover``);
    False when there is none, or Redis is down."""
    try:
        buffered = await store.buffered(generation_id)
    except SharedUnavailable:
        return False
    if buffered is None:
        return False
    chunks, end = buffered
    logger.warning(
        "message %s: its process is gone; stored from its shared buffer (%d chunks, %s)",
        message_id,
        len(chunks),
        (end or {}).get("status", "no end"),
    )
    return await services.message_arecover(message_id=message_id, chunks=chunks, end=end)


async def sweep_forever(*, every_s: float = SWEEP_EVERY_S) -> None:
    """Run ``sweep_interrupted`` every ``every_s`` for the life of the process (with
    ``quotas.renew_held``: the quota reservations this process holds stay live), and
    ``attachments.purge_unsent`` and ``services.usage_hour_aprune`` every ``PURGE_EVERY_S``."""
    purged_at = -PURGE_EVERY_S
    failures = database.FailureLog("the sweep of interrupted answers and unsent uploads")
    while True:
        try:
            await quotas.renew_held()
            swept = await sweep_interrupted()
            if swept:
                logger.warning(
                    "ended %d answers whose process is gone (stored from their shared buffer, "
                    "or interrupted)",
                    swept,
                )
            if time.monotonic() - purged_at >= PURGE_EVERY_S:
                purged_at = time.monotonic()
                if purged := await attachments.purge_unsent():
                    logger.info("deleted %d uploads never sent with a message", purged)
                await services.usage_hour_aprune()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.failed(exc)
        else:
            failures.succeeded()
        await asyncio.sleep(every_s)
