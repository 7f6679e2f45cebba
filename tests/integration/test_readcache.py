"""The /v1 lookup cache (``chat.readcache``): values kept in process memory under a version that
every request reads, wherever that version lives (a shared cache, or the database)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.test import override_settings

from chat import readcache
from chat.models import ReadCacheVersion

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def counting_loader() -> tuple[list[int], Callable[[], Awaitable[int]]]:
    loads: list[int] = []

    async def load() -> int:
        loads.append(len(loads) + 1)
        return loads[-1]

    return loads, load


async def lookup(name: str, load: Callable[[], Awaitable[int]]) -> int:
    return await readcache.Lookups().aget_or_load(name, load)


async def test_a_cleared_shared_version_never_brings_back_old_entries() -> None:
    """A version that was a counter started again at 1 after the cache was cleared, and this
    process's memory still held entries under 1 from before: stale keys and slots came back
    (seen as a queued /v1 call that never timed out, its slot's old limits cached)."""
    assert readcache.cache_is_shared()  # the tests' file cache, as the daphne servers share it
    _, load = counting_loader()
    await sync_to_async(cache.delete)(readcache.VERSION_KEY)  # a fresh (or restarted) cache
    assert await lookup("thing", load) == 1  # the first request set a version
    assert await lookup("thing", load) == 1  # cached under it
    await sync_to_async(cache.delete)(readcache.VERSION_KEY)  # cleared again
    assert await lookup("thing", load) == 2  # a new version: nothing from before
    await sync_to_async(readcache._bump_cache)()  # a change
    assert await lookup("thing", load) == 3
    assert await lookup("thing", load) == 3


async def test_one_request_reads_the_version_once() -> None:
    _, load = counting_loader()
    await sync_to_async(readcache._bump_cache)()
    lookups = readcache.Lookups()
    first = await lookups.aget_or_load("a", load)
    await sync_to_async(readcache._bump_cache)()  # a change during the request
    assert await lookups.aget_or_load("a", load) == first
    assert await lookup("a", load) != first  # the next request sees it


@pytest.mark.django_db(transaction=True)
async def test_the_database_version_survives_an_emptied_table() -> None:
    with override_settings(CACHES=LOCMEM):
        assert not readcache.cache_is_shared()
        _, load = counting_loader()
        await ReadCacheVersion.objects.all().adelete()  # a new database
        assert await lookup("slot", load) == 1  # the first request set a version
        assert await lookup("slot", load) == 1
        await ReadCacheVersion.objects.all().adelete()  # a flush, a restored backup
        assert await lookup("slot", load) == 2
        await sync_to_async(readcache._bump_database)()
        assert await lookup("slot", load) == 3
        assert await lookup("slot", load) == 3


@pytest.mark.django_db(transaction=True)
async def test_sqlite_version_is_read_on_the_loop_and_sees_every_commit() -> None:
    """On SQLite (the default) the version is read on the event loop through a read-only
    connection of readcache's own, not by a thread hop: it must see a bump committed by
    Django's connection at once, and give way (None) where it cannot read."""
    from django.db import connection

    reader = readcache._SQLiteVersion()
    if connection.vendor != "sqlite":
        assert reader.read() is None  # PostgreSQL: the hop, as before
        return
    await ReadCacheVersion.objects.all().adelete()
    assert reader.read() is None  # no row yet: the hop sets one
    for _ in range(3):
        await sync_to_async(readcache._bump_database)()
        row = await ReadCacheVersion.objects.aget(pk=1)
        assert reader.read() == row.version


async def test_a_derived_value_is_made_once_per_version_and_shared() -> None:
    """What a /v1 call derives from its cached slot (its ``SlotConfig``, whose backend key is
    decrypted to make it) is made once per version, not per call, and made anew after any
    change."""
    _, load = counting_loader()
    made: list[object] = []

    def compute() -> object:
        made.append(object())
        return made[-1]

    async def call() -> object:
        lookups = readcache.Lookups()
        await lookups.aget_or_load("slot", load)
        return lookups.derived("config", compute)

    await sync_to_async(readcache._bump_cache)()
    first = await call()
    assert await call() is first  # the same (immutable) value, not made again
    assert len(made) == 1
    await sync_to_async(readcache._bump_cache)()  # a change to a key, slot or backend
    assert await call() is not first
    assert len(made) == 2
