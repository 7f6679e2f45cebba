"""A short-lived cache of the two lookups every /v1 call makes (its API key, its slot), on
Django's cache: in memory in one process, in Redis when REDIS_URL is set (so every process sees
an invalidation at once).

Every entry is keyed under a version number that any change to keys, slots, backends, users or
groups bumps (``invalidate``, wired to model signals in ``ChatConfig.ready``): a revoked key or
a disabled slot stops working on the next request, not after a timeout. ``TTL_S`` only bounds
memory. Measured by bench/profile_relay.py: the two lookups cost about 5 ms of ORM work per
call; a hit costs two cache reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.core.cache import cache

_T = TypeVar("_T")

TTL_S = 60
VERSION_KEY = "readcache:version"
_MISSING = object()


async def aget_or_load(name: str, load: Callable[[], Awaitable[_T]]) -> _T:
    """The cached value for ``name`` at the current version, else ``load()`` (cached, even
    when None, so an unknown key does not hit the database every time)."""
    version = await cache.aget(VERSION_KEY) or 0
    key = f"readcache:{version}:{name}"
    value: Any = await cache.aget(key, _MISSING)
    if value is _MISSING:
        value = await load()
        await cache.aset(key, value, TTL_S)
    return value  # type: ignore[no-any-return]


def invalidate(**_: Any) -> None:
    """Forget every cached lookup (a signal receiver: takes any arguments)."""
    try:
        cache.incr(VERSION_KEY)
    except ValueError:
        cache.set(VERSION_KEY, 1, None)
