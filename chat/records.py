"""What an answer or call leaves in the database (its ``UsageDay`` and ``UsageHour`` counts, a
``/v1`` call's ``ApiCall`` row, the key's ``last_used_at``, a streaming answer's checkpoint, a
finished answer's row, a stored response, the quota reservation its usage replaces), written by
one group-committing writer per event loop that outlives a database outage.

Why batches: written one by one through the ORM, a ``/v1`` stream's records cost about 3.7 ms
of CPU (bench: two ``sync_to_async`` hops, the ORM compiling an UPDATE of eight ``F()``
increments and an INSERT, two commits), more than issue 14's 2 ms budget for a whole request
outside its chunks. Here a record waits only for the batch it joins: when nothing is being
written, its batch starts at once (one stream alone is written as soon as it ends, no added
delay); records that end while a batch is being written form the next one. A batch is one
thread hop and one transaction: one UPDATE per (day, scope) and one per (hour, scope) with the
batch's counts summed, one INSERT statement for all its ``ApiCall`` rows (all compiled once, not
by the ORM per answer).
At hundreds of streams the cost per answer falls with the batch's size; the writes per answer
stay O(1).

``write`` returns once its record is committed, so a client that has read a stream's end can
read its call and usage. A batch the database refuses a value of is retried record by record,
so one bad record loses only itself (logged).

Why it outlives an outage (issue 29): while the database cannot be reached
(``chat.database.is_unavailable``), nothing is dropped. The batch goes back to the head of the
queue and is tried again with backoff (``RETRY_FIRST_S`` doubling to ``RETRY_CAP_S``) until it
commits, in the order the records were queued; a streaming answer's older checkpoints are
superseded by its newer one or by its final row. A caller waits for its record at most
``KEEP_WAIT_S`` once the outage is known, so readers get their answer's end; its record is then
logged by what it is (``message 12``) and kept in memory until stored. One log line when the
database goes away and one when it is back, with how many records waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Field
from django.utils import timezone

from chat.database import is_unavailable
from chat.models import ApiCall, ApiKey, QuotaReservation, UsageCounts, UsageDay, UsageHour

logger = logging.getLogger(__name__)

# Backoff between tries of a batch while the database is unavailable (s): soon after a blip,
# then every few seconds, so a database coming back is not met by a storm of reconnections.
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0
# How long a caller waits for its record once the database is known to be unavailable (s): a
# reader's end of stream is held at most this long by the store of its answer.
KEEP_WAIT_S = 1.0


@dataclass(slots=True)
class Usage:
    """One answer's or call's increments of its ``UsageDay`` and ``UsageHour`` rows
    (``counts``: column name → amount; ``day``: its UTC day, ``hour``: the start of its UTC
    hour, aware), and the rows' identity should they not exist yet."""

    day: date
    hour: datetime
    scope: str
    slot_name: str
    counts: dict[str, int | float]
    user_id: int | None = None
    api_key_id: int | None = None
    widget_id: int | None = None


@dataclass(slots=True)
class Final:
    """A finished answer's row: ``fields`` (``services.generation_fields``: text, status,
    finish_reason, usage, error, timings), ``text`` (its text alone, stored with its status
    when the database refuses a value of the rest), and its conversation bumped in the
    sidebar; ``at``: when it ended."""

    message_id: int
    conversation_id: Any
    fields: dict[str, Any]
    text: dict[str, Any]
    at: datetime


@dataclass(slots=True)
class Record:
    """What one answer or call leaves: its usage, its ``ApiCall`` row's fields, the key whose
    ``last_used_at`` to set (id, time), a streaming answer's checkpoint, a finished answer's
    ``final`` row, or any other ``write`` (a function run in the batch's transaction, in the
    order records were queued, named in the log by ``label``). ``settles``: the
    ``QuotaReservation`` (id) that this record's usage replaces (``chat.quotas``), deleted in
    the same transaction; a record with nothing else gives it back whole."""

    usage: Usage | None = None
    call: dict[str, Any] | None = None
    key_used: tuple[int, datetime] | None = None
    # An answer still streaming: its message's id and text so far (``content``,
    # ``reasoning``, ``tool_calls``, and ``checkpoint``: where that text stands in the
    # generation's chunks), stored unless the message has ended meanwhile.
    checkpoint: tuple[int, dict[str, Any]] | None = None
    final: Final | None = None
    settles: int | None = None
    write: Callable[[], None] | None = field(default=None, repr=False)
    label: str = ""
    done: asyncio.Future[bool] | None = field(default=None, repr=False)
    kept: bool = field(default=False, repr=False)  # its caller is let go while it waits

    def describe(self) -> str:
        """What the record is, for the log: ``message 12``, ``response resp_…``, …"""
        if self.label:
            return self.label
        if self.final is not None:
            return f"message {self.final.message_id}"
        if self.checkpoint is not None:
            return f"message {self.checkpoint[0]} (checkpoint)"
        if self.call is not None:
            return f"a /v1 call of key {self.call.get('api_key_id')}"
        return "usage"

    @property
    def only_checkpoint(self) -> bool:
        """Nothing but a checkpoint: superseded by a later one or by the answer's end."""
        return self.checkpoint is not None and not (
            self.usage or self.call or self.key_used or self.final or self.write or self.settles
        )


class Unwritten(Exception):
    """The database became unavailable while a batch was written: ``remaining`` (in order)
    were not committed, ``failed`` were refused for a value (logged) before it did."""

    def __init__(self, remaining: list[Record], failed: list[Record]) -> None:
        super().__init__(f"{len(remaining)} records not written")
        self.remaining = remaining
        self.failed = failed


class GroupWriter:
    """Writes ``Record``s in batches, one batch at a time, through database outages (see the
    module)."""

    def __init__(self) -> None:
        self._queue: list[Record] = []
        self._writing = False
        self.batches = 0  # committed so far, for the tests and benchmarks
        # While the database is unavailable: since when (loop time).
        self.unavailable_since: float | None = None
        self._wake = asyncio.Event()
        self._in_flight: set[int] = set()  # answers whose final row the batch in hand writes

    @property
    def pending(self) -> int:
        """How many records are queued and not committed yet (the batch in hand excluded)."""
        return len(self._queue)

    def pending_message_ids(self) -> set[int]:
        """Ids of finished answers whose row is queued and not committed yet (the sweeper
        leaves them alone: their end is on its way)."""
        return {r.final.message_id for r in self._queue if r.final is not None} | self._in_flight

    async def write(self, record: Record) -> bool:
        """Queue ``record`` and return once the batch holding it was committed (True) or it
        was refused for a value (False, logged); while the database is unavailable, after
        ``KEEP_WAIT_S`` (True: kept in memory and stored once it is back, logged by what it
        is). A caller cancelled meanwhile leaves its record queued."""
        loop = asyncio.get_running_loop()
        done = record.done = loop.create_future()
        self._queue.append(record)
        if self.unavailable_since is not None:
            self._let_go_later(record)
        if not self._writing:
            self._writing = True
            from chat.relay.background import spawn

            spawn(self._write_batches())
        return await asyncio.shield(done)

    def _let_go_later(self, record: Record) -> None:
        """Release ``record``'s caller after ``KEEP_WAIT_S`` unless it was stored by then:
        the database is unavailable, and a reader's end of stream must not wait for it."""
        if not record.kept:
            record.kept = True
            asyncio.get_running_loop().call_later(KEEP_WAIT_S, _let_go, record)

    def retry_now(self) -> None:
        """Cut the backoff short: the database was seen answering (``/readyz``)."""
        self._wake.set()

    async def _write_batches(self) -> None:
        delay = RETRY_FIRST_S
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                self._in_flight = {r.final.message_id for r in batch if r.final is not None}
                try:
                    failed = await _write_batch_in_thread(batch)
                except Unwritten as unwritten:
                    self._keep(batch, unwritten)
                    await self._pause(delay)
                    delay = min(delay * 2, RETRY_CAP_S)
                    continue
                except Exception:  # the thread hop itself failed: its callers must not hang
                    logger.exception("writing a batch of %d records failed", len(batch))
                    for record in batch:
                        _resolve(record, False)
                    continue
                finally:
                    self._in_flight = set()
                self.batches += 1
                delay = RETRY_FIRST_S
                if self.unavailable_since is not None:
                    self._came_back(len(batch))
                refused = {id(r) for r in failed}
                for record in batch:
                    _resolve(record, id(record) not in refused)
        finally:
            self._writing = False
            for record in self._queue:  # cancelled while writing: the loop is going away
                if record.done is not None and not record.done.done():
                    record.done.cancel()

    def _keep(self, batch: list[Record], unwritten: Unwritten) -> None:
        """The database went away while ``batch`` was written: what was written or refused
        before is told so, the rest goes back to the head of the queue (superseded
        checkpoints dropped), and the outage is noted."""
        left = {id(r) for r in unwritten.remaining}
        refused = {id(r) for r in unwritten.failed}
        for record in batch:
            if id(record) not in left:
                _resolve(record, id(record) not in refused)
        self._queue = _superseded(unwritten.remaining + self._queue)
        self._went_down(unwritten.__cause__)

    def _went_down(self, cause: BaseException | None) -> None:
        if self.unavailable_since is not None:
            return
        self.unavailable_since = asyncio.get_running_loop().time()
        logger.error(
            "the database is unavailable (%s): answers, calls and usage are kept in memory "
            "and stored when it is back",
            str(cause).strip()[:200] or type(cause).__name__,
        )
        for record in self._queue:
            self._let_go_later(record)

    def _came_back(self, stored: int) -> None:
        assert self.unavailable_since is not None
        lasted = asyncio.get_running_loop().time() - self.unavailable_since
        logger.warning(
            "the database is back after %.1f s: stored the %d records kept meanwhile",
            lasted,
            stored,
        )
        self.unavailable_since = None

    async def _pause(self, delay: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)


def _let_go(record: Record) -> None:
    if record.done is None or record.done.done():
        return
    if not record.only_checkpoint:
        logger.warning(
            "%s: not stored yet, the database is unavailable; kept in memory and stored when "
            "it is back",
            record.describe(),
        )
    record.done.set_result(True)


def _resolve(record: Record, written: bool) -> None:
    if record.done is not None and not record.done.done():
        record.done.set_result(written)


def _superseded(records: list[Record]) -> list[Record]:
    """``records`` in order, less the checkpoints that a later checkpoint or the final row of
    the same answer makes pointless (resolved as written: what they held will be)."""
    latest: dict[int, int] = {}
    ended = {r.final.message_id for r in records if r.final is not None}
    for index, record in enumerate(records):
        if record.only_checkpoint:
            assert record.checkpoint is not None
            latest[record.checkpoint[0]] = index
    kept = []
    for index, record in enumerate(records):
        if record.only_checkpoint:
            assert record.checkpoint is not None
            message_id = record.checkpoint[0]
            if message_id in ended or latest[message_id] != index:
                _resolve(record, True)
                continue
        kept.append(record)
    return kept


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


async def write(record: Record) -> bool:
    """``record`` written by this event loop's writer (``GroupWriter.write``)."""
    return await writer().write(record)


# ------------------------------------------------------------------------------------------------
# The batch, in a thread
# ------------------------------------------------------------------------------------------------
def write_batch(batch: list[Record]) -> list[Record]:
    """Write ``batch`` in one transaction; if the database refuses a value (or a ``write``
    fails), each record in its own. Returns the records refused for good (each logged).
    Raises ``Unwritten`` when the database is unavailable (``chat.database.is_unavailable``),
    naming those not committed."""
    try:
        with transaction.atomic():
            _write(batch)
        return []
    except Exception as exc:  # a refused value, or a write that failed for its own reasons
        if is_unavailable(exc):
            raise Unwritten(batch, []) from exc
        if len(batch) == 1:
            logger.exception("recording %s failed", batch[0].describe())
            return batch
        logger.warning("a batch of %s records failed: writing them one by one", len(batch))
    failed: list[Record] = []
    for index, record in enumerate(batch):
        try:
            with transaction.atomic():
                _write([record])
        except Exception as exc:
            if is_unavailable(exc):
                raise Unwritten(batch[index:], failed) from exc
            logger.exception("recording %s failed: %s", record.describe(), record)
            failed.append(record)
    return failed


# Made once: asgiref's wrapper inspects the function each time one is made.
_write_batch_in_thread = sync_to_async(write_batch, thread_sensitive=True)


# The usage rows each record's counts go to: the model and its period's field (a ``Usage``
# attribute of the same name). The hour's UPDATE is one more statement per scope in a batch
# (bench/records_write.py, a /v1 call alone: about +70 µs of CPU on SQLite, +80 µs of CPU and
# +0.3 ms of wall time on PostgreSQL over a loopback socket); hourly counts read back from
# Message and ApiCall rows would not survive a deleted conversation, nor count refused calls.
_PERIODS: tuple[tuple[type[UsageCounts], str], ...] = ((UsageDay, "day"), (UsageHour, "hour"))


def _write(batch: list[Record]) -> None:
    for model, period in _PERIODS:
        for usage in _summed(batch, period):
            _count(model, period, usage)
    settled = [record.settles for record in batch if record.settles is not None]
    if settled:
        QuotaReservation.objects.filter(pk__in=settled).delete()
    calls = [record.call for record in batch if record.call is not None]
    if calls:
        _insert_calls(calls)
    for key_id, when in {r.key_used for r in batch if r.key_used is not None}:
        ApiKey.objects.filter(pk=key_id).update(last_used_at=when)
    checkpoints = [record.checkpoint for record in batch if record.checkpoint is not None]
    if checkpoints:
        _checkpoint(checkpoints)
    for record in batch:
        if record.final is not None:
            _store_final(record.final)
        if record.write is not None:
            record.write()


def _summed(batch: list[Record], period: str) -> list[Usage]:
    """The batch's usage, one ``Usage`` per (``period``, scope) with the counts added up
    (``period``: ``"day"`` or ``"hour"``; answers of one day may fall in two hours)."""
    summed: dict[tuple[date | datetime, str], Usage] = {}
    for record in batch:
        usage = record.usage
        if usage is None:
            continue
        key = (getattr(usage, period), usage.scope)
        total = summed.get(key)
        if total is None:
            summed[key] = dataclasses.replace(usage, counts=dict(usage.counts))
        else:
            for name, amount in usage.counts.items():
                total.counts[name] = total.counts.get(name, 0) + amount
    return list(summed.values())


def _store_final(final: Final) -> None:
    """A finished answer's row (one UPDATE) and its conversation's ``updated_at``. When the
    database refuses a value of the row (not when it is unavailable), the text and status
    are stored without the rest: an error in storing usage costs the usage, never the answer."""
    from chat.models import Conversation, Message

    answer = Message.objects.filter(pk=final.message_id)
    try:
        with transaction.atomic():
            # Stored whole: no checkpoint to go on from (``Message.checkpoint``).
            answer.update(**final.fields, checkpoint=None, updated_at=final.at)
    except DatabaseError as exc:
        if is_unavailable(exc):
            raise
        logger.exception(
            "message %s: storing its answer failed; storing its text and status only",
            final.message_id,
        )
        answer.update(
            **final.text, status=final.fields["status"], checkpoint=None, updated_at=final.at
        )
    Conversation.objects.filter(pk=final.conversation_id).update(updated_at=final.at)


def _count(model: type[UsageCounts], period: str, usage: Usage) -> None:
    """Add ``usage.counts`` to its row of ``model`` (``UsageDay`` or ``UsageHour``, whose
    ``period`` field is ``"day"`` or ``"hour"``): one UPDATE, or an INSERT for the scope's first
    of the period (another process inserting it first ends in the UPDATE)."""
    names = tuple(sorted(usage.counts))
    when = getattr(usage, period)
    params: list[Any] = [usage.counts[name] for name in names]
    params += [_field(model, period).get_db_prep_value(when, connection), usage.scope]
    sql = _update_sql(model, period, connection.vendor, names)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if cursor.rowcount:
            return
    try:
        with transaction.atomic():
            model._default_manager.create(
                **{period: when},
                scope=usage.scope,
                user_id=usage.user_id,
                api_key_id=usage.api_key_id,
                widget_id=usage.widget_id,
                slot_name=usage.slot_name[:100],
                **usage.counts,
            )
    except IntegrityError:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)


@lru_cache(maxsize=8)
def _field(model: type[UsageCounts], name: str) -> Field[Any, Any]:
    """``model``'s concrete field ``name``."""
    found = model._meta.get_field(name)
    assert isinstance(found, Field)
    return found


@lru_cache(maxsize=256)
def _update_sql(model: type[UsageCounts], period: str, vendor: str, names: tuple[str, ...]) -> str:
    """``UPDATE usageday SET col = col + %s, … WHERE day = %s AND scope = %s`` (``model``'s
    table, its ``period`` column) for the columns of ``names`` (``vendor``: the database's,
    whose quoting it uses). The ORM compiled this statement anew for every answer."""
    quote, meta = connection.ops.quote_name, model._meta

    def column(name: str) -> str:
        return quote(meta.get_field(name).column or name)  # type: ignore[union-attr]

    sets = ", ".join(f"{column(name)} = {column(name)} + %s" for name in names)
    when, scope = column(period), column("scope")
    return f"UPDATE {quote(meta.db_table)} SET {sets} WHERE {when} = %s AND {scope} = %s"


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


CHECKPOINT_FIELDS = ("content", "reasoning", "tool_calls", "checkpoint", "updated_at")


def _checkpoint(checkpoints: list[tuple[int, dict[str, Any]]]) -> None:
    """Streaming answers' text so far and where it stands in the generation's chunks
    (``checkpoint``: ``services.resume_point``), in the same row so the two always match: one
    UPDATE statement, compiled once, executed for each message still ``streaming`` (a message
    that ended meanwhile keeps its final text)."""
    from chat.models import Message

    fields, sql = _checkpoint_sql(connection.vendor)
    now = timezone.now()
    status = Message.Status.STREAMING.value
    rows = []
    for message_id, text in checkpoints:
        # A checkpoint that does not say where it stands is read again from chunk 1.
        values = {"checkpoint": None, **text, "updated_at": now}
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
