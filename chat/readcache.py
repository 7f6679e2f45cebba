"""A short-lived cache of the two lookups every /v1 call makes (its API key, its slot), in this
process's memory, under a version number that every process reads once per call.

Any change to keys, slots, backends, users or groups bumps the version (``invalidate``, wired to
model signals in ``ChatConfig.ready``): a revoked key or a disabled slot stops working on the
next request, in every process, not after a timeout. ``TTL_S`` and ``MAX_ENTRIES`` only bound
memory. Where the version lives depends on the cache:

- shared between processes (Redis, or a file cache via CACHE_URL): in the cache, bumped once
  the change commits (a bump before the commit let a concurrent call cache the old row under
  the new version). With Redis it is read with the relay's own asyncio client
  (``chat.relay.cluster``), on the loop. While Redis is down there is no version: every lookup
  is read from the database and what was kept before is dropped; a change committed meanwhile
  bumps the version on this process's next lookup once Redis answers (issue 29);
- private to each process (locmem, the default without REDIS_URL): in the database
  (``ReadCacheVersion``), bumped in the change's own transaction. A bump in another process's
  memory would never reach this one (issue 16: a key revoked elsewhere kept working for 55 s).

The values themselves stay in this process (a dict of pickles, so every caller gets its own copy,
as from Django's cache): reading them costs no thread hop and no round trip. Each process loads
a lookup from the database at most once per version and ``TTL_S``.

A version is a random 62-bit number, not a counter: a cache that is cleared or a table that is
emptied (a restored backup, a test's flush, a Redis restart) would start a counter again at
numbers this process's memory already holds entries for. A missing version is set to a new one
by the first request that finds it missing (the first writer wins; everyone reads the winner).

A ``Lookups`` serves one request: it reads the version once for all of its lookups. Measured by
bench/profile_relay.py: the two lookups cost about 5 ms of ORM work per call uncached; through
Django's cache API (a ``sync_to_async`` hop per read, even for locmem) a hit cost four hops.
"""

from __future__ import annotations

import functools
import logging
import pickle
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.db import transaction
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from chat.relay.cluster import Shared

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_E = TypeVar("_E")

TTL_S = 60
MAX_ENTRIES = 10_000
VERSION_KEY = "readcache:version"

# "version:name" -> (expires at, time.monotonic() s; the pickled value), oldest first.
_memory: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
# "version:name" -> (expires at; the value itself, immutable: Lookups.derived), oldest first.
_derived: OrderedDict[str, tuple[float, Any]] = OrderedDict()
# A change committed while the shared cache was down: its version bump is owed (``_bump_cache``).
_bump_pending = False


def cache_is_shared() -> bool:
    """Whether other processes see this process's cache writes (not locmem, not dummy). Asked
    on every call: read from the setting, not through ``caches`` (a per-context lookup)."""
    return _is_shared(settings.CACHES["default"]["BACKEND"])


@functools.cache
def _is_shared(backend: str) -> bool:
    return not issubclass(import_string(backend), LocMemCache | DummyCache)


def _database_version() -> int:
    """``ReadCacheVersion``'s one row, in one statement: this runs on every /v1 call, and the
    ORM's query compilation cost more than the query."""
    from django.db import connection

    from chat.models import ReadCacheVersion

    meta, quote = ReadCacheVersion._meta, connection.ops.quote_name
    sql = f"SELECT version FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column or 'id')} = 1"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    if row and row[0]:
        return int(row[0])
    # None yet (a new or emptied table): set one. Another process may do the same at once;
    # each caches under its own until its next request reads the row's last value.
    version = _new_version()
    ReadCacheVersion.objects.update_or_create(pk=1, defaults={"version": version})
    return version


class _SQLiteVersion:
    """The version read from SQLite on the event loop, through a read-only connection of this
    module's own (one per thread), instead of a thread hop to Django's: that hop was most of a
    ``/v1`` call's time before its upstream request (about 0.9 ms of 1.2 ms, and 0.5 ms of
    CPU, bench/profile_relay.py). SQLite's WAL mode (``chatsite.settings``) never blocks a
    reader behind a writer; the connection still waits at most ``BUSY_TIMEOUT_MS`` before
    giving up. ``read`` returns None whenever this is not possible (not SQLite, an in-memory
    database, no row yet, any error): the caller then takes the hop."""

    BUSY_TIMEOUT_MS = 20

    def __init__(self) -> None:
        self._local = threading.local()
        self._sql = ""
        self._path: str | None = None

    def _connection(self) -> sqlite3.Connection | None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        from django.db import connection
        from django.db.backends.sqlite3.creation import DatabaseCreation

        from chat.models import ReadCacheVersion

        name = str(connection.settings_dict["NAME"] or "")
        if connection.vendor != "sqlite" or not name or DatabaseCreation.is_in_memory_db(name):
            return None
        meta, quote = ReadCacheVersion._meta, connection.ops.quote_name
        self._sql = (
            f"SELECT version FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column or 'id')} = 1"
        )
        conn = sqlite3.connect(
            f"{Path(name).resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=self.BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
        )
        self._local.conn = conn
        return conn

    def read(self) -> int | None:
        if getattr(self._local, "unavailable", False):
            return None
        try:
            conn = self._connection()
            if conn is None:
                self._local.unavailable = True
                return None
            row = conn.execute(self._sql).fetchone()
        except sqlite3.Error:
            return None
        return int(row[0]) if row and row[0] else None


_sqlite_version = _SQLiteVersion()


async def _aversion() -> int:
    global _bump_pending
    if not cache_is_shared():
        version = _sqlite_version.read()
        if version is not None:
            return version
        return await sync_to_async(_database_version, thread_sensitive=True)()
    if isinstance(caches["default"], RedisCache):
        from chat.relay.cluster import SharedUnavailable, shared

        store = shared()
        if store is not None:  # REDIS_URL: the cache's own server, on the loop
            try:
                return await _redis_version(store)
            except SharedUnavailable:
                # Redis is down: no version, so every lookup is read from the database
                # (correct, only slower), and nothing cached before the outage is used after
                # it (a change made meanwhile could not bump the version).
                _memory.clear()
                _derived.clear()
                return 0
    if _bump_pending:
        _bump_pending = False
        await cache.aset(VERSION_KEY, _new_version(), None)
    version = await cache.aget(VERSION_KEY)
    if not version:
        await cache.aadd(VERSION_KEY, _new_version(), None)
        version = await cache.aget(VERSION_KEY)
    return int(version or 0)


async def _redis_version(store: Shared) -> int:
    """The version in Redis, read (and set where missing or owed: ``_bump_cache``) with the
    relay's client. Raises ``SharedUnavailable`` while Redis is down."""
    global _bump_pending
    key = cache.make_and_validate_key(VERSION_KEY)
    with store.reach() as redis:
        if _bump_pending:
            await redis.set(key, _new_version())
            _bump_pending = False
        raw = await redis.get(key)
        if raw is None:  # a new or restarted Redis: the first to set one wins
            await redis.set(key, _new_version(), nx=True)
            raw = await redis.get(key)
    return int(raw) if raw is not None else 0


class Lookups:
    """One request's cached lookups (see the module): the version is read on the first one."""

    __slots__ = ("_version",)

    def __init__(self) -> None:
        self._version: int | None = None

    async def aget_or_load(self, name: str, load: Callable[[], Awaitable[_T]]) -> _T:
        """The cached value for ``name`` at the current version, else ``load()`` (cached, even
        when None, so an unknown key does not hit the database every time)."""
        if self._version is None:
            self._version = await _aversion()
        if not self._version:
            return await load()
        key = f"{self._version}:{name}"
        now = time.monotonic()
        entry = _memory.get(key)
        if entry is not None and entry[0] > now:
            return pickle.loads(entry[1])  # type: ignore[no-any-return]
        value = await load()
        _keep(_memory, key, (now + TTL_S, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)))
        return value

    def derived(self, name: str, compute: Callable[[], _T]) -> _T:
        """``compute()``, a value made from this request's lookups, kept under the version
        they were read at (same ``TTL_S``) and handed to every caller as is: only for immutable
        values (``chat.relay.types.SlotConfig``, a frozen dataclass), never for models. Call it
        after ``aget_or_load``; ``name`` must say everything ``compute`` depends on.

        Why: a ``/v1`` call turned its cached slot into a ``SlotConfig`` every time, its
        backend's API key decrypted anew (Fernet: 14 µs; the whole build 25-32 µs, hot)."""
        if not self._version:
            return compute()
        key = f"{self._version}:{name}"
        now = time.monotonic()
        entry = _derived.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]  # type: ignore[no-any-return]
        value = compute()
        _keep(_derived, key, (now + TTL_S, value))
        return value


def _keep(store: OrderedDict[str, _E], key: str, entry: _E) -> None:
    """``store[key] = entry`` as its newest entry, the oldest dropped past ``MAX_ENTRIES``."""
    store[key] = entry
    store.move_to_end(key)
    while len(store) > MAX_ENTRIES:
        store.popitem(last=False)


def invalidate(**_: Any) -> None:
    """Forget every cached lookup, in every process, once the current transaction commits (a
    signal receiver: takes any arguments). Synchronous: call it from sync code."""
    if cache_is_shared():
        transaction.on_commit(_bump_cache)
    else:
        _bump_database()


def _new_version() -> int:
    # An int (Django's Redis serialiser stores ints as plain numbers, which the asyncio client
    # reads back), never 0.
    return secrets.randbits(62) + 1


def _bump_cache() -> None:
    global _bump_pending
    try:
        cache.set(VERSION_KEY, _new_version(), None)
    except Exception as exc:
        # The change is committed: its request must not fail for the cache (a Redis outage).
        # This process bumps the version on its next lookup once the cache answers; until then
        # other processes keep what they cached before, for TTL_S at most.
        _bump_pending = True
        logger.warning("readcache: the cache is unavailable (%s); version bump deferred", exc)


def _bump_database() -> None:
    from chat.models import ReadCacheVersion

    ReadCacheVersion.objects.update_or_create(pk=1, defaults={"version": _new_version()})
