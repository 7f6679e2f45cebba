"""A short-lived cache of the two lookups every /v1 call makes (its API key, its slot), on
Django's cache: in memory in one process, in Redis when REDIS_URL is set.

Every entry is keyed under a version number that any change to keys, slots, backends, users or
groups bumps (``invalidate``, wired to model signals in ``ChatConfig.ready``): a revoked key or
a disabled slot stops working on the next request, in every process, not after a timeout.
``TTL_S`` only bounds memory. Where the version lives depends on the cache:

- shared between processes (Redis, or a file cache via CACHE_URL): in the cache, bumped once
  the change commits (a bump before the commit let a concurrent call cache the old row under
  the new version);
- private to each process (locmem, the default without REDIS_URL): in the database
  (``ReadCacheVersion``), bumped in the change's own transaction, read once per call. A bump in
  another process's memory would never reach this one (issue 16: a key revoked elsewhere
  kept working for 55 s).

Measured by bench/profile_relay.py: the two lookups cost about 5 ms of ORM work per call; a hit
costs two cache reads (plus one single-row query with a private cache).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.core.cache import cache, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.db import transaction
from django.db.models import F

_T = TypeVar("_T")

TTL_S = 60
VERSION_KEY = "readcache:version"
_MISSING = object()


def cache_is_shared() -> bool:
    """Whether other processes see this process's cache writes (not locmem, not dummy)."""
    return not isinstance(caches["default"], LocMemCache | DummyCache)


async def _aversion() -> int:
    if cache_is_shared():
        return await cache.aget(VERSION_KEY) or 0
    from chat.models import ReadCacheVersion

    row = ReadCacheVersion.objects.filter(pk=1).values_list("version", flat=True)
    return await row.afirst() or 0


async def aget_or_load(name: str, load: Callable[[], Awaitable[_T]]) -> _T:
    """The cached value for ``name`` at the current version, else ``load()`` (cached, even
    when None, so an unknown key does not hit the database every time)."""
    version = await _aversion()
    key = f"readcache:{version}:{name}"
    value: Any = await cache.aget(key, _MISSING)
    if value is _MISSING:
        value = await load()
        await cache.aset(key, value, TTL_S)
    return value  # type: ignore[no-any-return]


def invalidate(**_: Any) -> None:
    """Forget every cached lookup, in every process, once the current transaction commits (a
    signal receiver: takes any arguments). Synchronous: call it from sync code."""
    if cache_is_shared():
        transaction.on_commit(_bump_cache)
    else:
        _bump_database()


def _bump_cache() -> None:
    try:
        cache.incr(VERSION_KEY)
    except ValueError:
        cache.set(VERSION_KEY, 1, None)


def _bump_database() -> None:
    from chat.models import ReadCacheVersion

    if not ReadCacheVersion.objects.filter(pk=1).update(version=F("version") + 1):
        ReadCacheVersion.objects.get_or_create(pk=1, defaults={"version": 1})
