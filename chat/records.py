"""The records an answer leaves (its ``UsageDay`` counts, a ``/v1`` call's ``ApiCall`` row, the
key's ``last_used_at``), written by one group-committing writer per event loop.

Why: written one by one through the ORM, a ``/v1`` stream's records cost about 3.7 ms of CPU
(bench: two ``sync_to_async`` hops, the ORM compiling an UPDATE of eight ``F()`` increments and
an INSERT, two commits), more than issue 14's 2 ms budget for a whole request outside its
chunks. Here a record waits only for the batch it joins: when nothing is being written, its
batch starts at once (one stream alone is written as soon as it ends, no added delay); records
that end while a batch is being written form the next one. A batch is one thread hop and one
transaction: one UPDATE per (day, scope) with the batch's counts summed, one INSERT statement
for all its ``ApiCall`` rows (both compiled once, not by the ORM per answer). At hundreds of
streams the cost per answer falls with the batch's size; the writes per answer stay O(1).

``write`` returns once its record is committed (or its failure logged: a record never fails the
answer it counts), so a client that has read a stream's end can read its call and usage. A
failed batch is retried record by record, so one bad record loses only itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Field
from django.utils import timezone

from chat.models import ApiCall, ApiKey, UsageDay

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Usage:
    """One answer's or call's increments of its day's ``UsageDay`` row (``counts``: column
    name → amount), and the row's identity should it not exist yet."""

    day: date
    scope: str
    slot_name: str
    counts: dict[str, int | float]
    user_id: int | None = None
    api_key_id: int | None = None
    widget_id: int | None = None


@dataclass(slots=True)
class Record:
    """What one answer or call leaves: its usage, its ``ApiCall`` row's fields, the key whose
    ``last_used_at`` to set (id, time), or a streaming answer's checkpoint."""

    usage: Usage | None = None
    call: dict[str, Any] | None = None
    key_used: tuple[int, datetime] | None = None
    # An answer still streaming: its message's id and text so far (``content``,
    # ``reasoning``, ``tool_calls``), stored unless the message has ended meanwhile.
    checkpoint: tuple[int, dict[str, Any]] | None = None
    done: asyncio.Future[None] | None = field(default=None, repr=False)


class GroupWriter:
    """Writes ``Record``s in batches, one batch at a time (see the module)."""

    def __init__(self) -> None:
        self._queue: list[Record] = []
        self._writing = False
        self.batches = 0  # written so far, for the tests and benchmarks

    async def write(self, record: Record) -> None:
        """Queue ``record`` and return once the batch holding it was written (or its failure
        logged). Never raises; a caller cancelled meanwhile leaves its record queued."""
        record.done = asyncio.get_running_loop().create_future()
        self._queue.append(record)
        if not self._writing:
            self._writing = True
            from chat.relay.background import spawn

            spawn(self._write_batches())
        await asyncio.shield(record.done)

    async def _write_batches(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                self.batches += 1
                try:
                    await _write_batch_in_thread(batch)
                finally:
                    for record in batch:
                        if record.done is not None and not record.done.done():
                            record.done.set_result(None)
        finally:
            self._writing = False
            for record in self._queue:  # cancelled while writing: the loop is going away
                if record.done is not None and not record.done.done():
                    record.done.cancel()


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupWriter] = (
    weakref.WeakKeyDictionary()
)


def writer() -> GroupWriter:
    """This event loop's writer."""
    loop = asyncio.get_running_loop()
    found = _writers.get(loop)
    if found is None:
        found = _writers[loop] = GroupWriter()
    return found


async def write(record: Record) -> None:
    """``record`` written by this event loop's writer (``GroupWriter.write``)."""
    await writer().write(record)


# ------------------------------------------------------------------------------------------------
# The batch, in a thread
# ------------------------------------------------------------------------------------------------
def write_batch(batch: list[Record]) -> None:
    """Write ``batch`` in one transaction; if that fails, each record in its own (logged when
    it fails too). Never raises ``DatabaseError``."""
    try:
        with transaction.atomic():
            _write(batch)
        return
    except DatabaseError:
        if len(batch) == 1:
            logger.exception("recording an answer's usage and call failed")
            return
        logger.warning("a batch of %s records failed: writing them one by one", len(batch))
    for record in batch:
        try:
            with transaction.atomic():
                _write([record])
        except DatabaseError:
            logger.exception("recording an answer's usage and call failed: %s", record)


# Made once: asgiref's wrapper inspects the function each time one is made.
_write_batch_in_thread = sync_to_async(write_batch, thread_sensitive=True)


def _write(batch: list[Record]) -> None:
    summed: dict[tuple[date, str], Usage] = {}
    for record in batch:
        usage = record.usage
        if usage is None:
            continue
        key = (usage.day, usage.scope)
        total = summed.get(key)
        if total is None:
            summed[key] = dataclasses.replace(usage, counts=dict(usage.counts))
        else:
            for name, amount in usage.counts.items():
                total.counts[name] = total.counts.get(name, 0) + amount
    for usage in summed.values():
        _count(usage)
    calls = [record.call for record in batch if record.call is not None]
    if calls:
        _insert_calls(calls)
    for key_id, when in {r.key_used for r in batch if r.key_used is not None}:
        ApiKey.objects.filter(pk=key_id).update(last_used_at=when)
    checkpoints = [record.checkpoint for record in batch if record.checkpoint is not None]
    if checkpoints:
        _checkpoint(checkpoints)


def _count(usage: Usage) -> None:
    """Add ``usage.counts`` to its row: one UPDATE, or an INSERT for the scope's first of the
    day (another process inserting it first ends in the UPDATE)."""
    names = tuple(sorted(usage.counts))
    params: list[Any] = [usage.counts[name] for name in names]
    params += [connection.ops.adapt_datefield_value(usage.day), usage.scope]
    with connection.cursor() as cursor:
        cursor.execute(_update_sql(connection.vendor, names), params)
        if cursor.rowcount:
            return
    try:
        with transaction.atomic():
            UsageDay.objects.create(
                day=usage.day,
                scope=usage.scope,
                user_id=usage.user_id,
                api_key_id=usage.api_key_id,
                widget_id=usage.widget_id,
                slot_name=usage.slot_name[:100],
                **usage.counts,
            )
    except IntegrityError:
        with connection.cursor() as cursor:
            cursor.execute(_update_sql(connection.vendor, names), params)


@lru_cache(maxsize=256)
def _update_sql(vendor: str, names: tuple[str, ...]) -> str:
    """``UPDATE usageday SET col = col + %s, … WHERE day = %s AND scope = %s`` for the columns
    of ``names`` (``vendor``: the database's, whose quoting it uses). The ORM compiled this
    statement anew for every answer."""
    quote, meta = connection.ops.quote_name, UsageDay._meta

    def column(name: str) -> str:
        return quote(meta.get_field(name).column or name)  # type: ignore[union-attr]

    sets = ", ".join(f"{column(name)} = {column(name)} + %s" for name in names)
    day, scope = column("day"), column("scope")
    return f"UPDATE {quote(meta.db_table)} SET {sets} WHERE {day} = %s AND {scope} = %s"


def _insert_calls(calls: list[dict[str, Any]]) -> None:
    """``ApiCall`` rows from their fields by attribute name (``api_key_id``; a missing one
    takes its default; ``created_at`` is now): one INSERT statement, compiled once, for the
    batch."""
    fields, sql = _insert_sql(connection.vendor)
    now = timezone.now()
    rows = []
    for call in calls:
        values = {**call, "created_at": now}
        rows.append(
            [
                field.get_db_prep_save(
                    values[field.attname] if field.attname in values else field.get_default(),
                    connection,
                )
                for field in fields
            ]
        )
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


@lru_cache(maxsize=8)
def _insert_sql(vendor: str) -> tuple[list[Field[Any, Any]], str]:
    """The ``ApiCall`` fields an INSERT sets (all but the primary key) and its SQL for
    ``vendor``'s quoting."""
    quote, meta = connection.ops.quote_name, ApiCall._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    columns = ", ".join(quote(f.column or f.name) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    return fields, f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({marks})"


CHECKPOINT_FIELDS = ("content", "reasoning", "tool_calls", "updated_at")


def _checkpoint(checkpoints: list[tuple[int, dict[str, Any]]]) -> None:
    """Streaming answers' text so far: one UPDATE statement, compiled once, executed for each
    message still ``streaming`` (a message that ended meanwhile keeps its final text)."""
    from chat.models import Message

    fields, sql = _checkpoint_sql(connection.vendor)
    now = timezone.now()
    status = Message.Status.STREAMING.value
    rows = []
    for message_id, text in checkpoints:
        values = {**text, "updated_at": now}
        row = [field.get_db_prep_save(values[field.name], connection) for field in fields]
        rows.append([*row, message_id, status])
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


@lru_cache(maxsize=8)
def _checkpoint_sql(vendor: str) -> tuple[list[Field[Any, Any]], str]:
    """The checkpoint's fields and its UPDATE for ``vendor``'s quoting."""
    from chat.models import Message

    quote, meta = connection.ops.quote_name, Message._meta
    fields: list[Field[Any, Any]] = [
        field for name in CHECKPOINT_FIELDS if isinstance(field := meta.get_field(name), Field)
    ]
    sets = ", ".join(f"{quote(f.column or f.name)} = %s" for f in fields)
    status_field = meta.get_field("status")
    assert isinstance(status_field, Field)
    pk, status = quote(meta.pk.column or "id"), quote(status_field.column or "status")
    sql = f"UPDATE {quote(meta.db_table)} SET {sets} WHERE {pk} = %s AND {status} = %s"
    return fields, sql
