"""What several Slipstream processes share through Redis, when ``REDIS_URL`` is set.

- **Generation buffers**: every chunk, phase change and the end of a generation is appended to
  the Redis Stream ``slipstream:gen:<id>`` with entry id ``0-<n>``, n counting from 1 (chunks
  and phases share the count; a chunk's SSE sequence number is kept in the entry). Writes are
  batched by one writer task per generation, so the relay never waits for Redis. Buffers expire
  ``BUFFER_GRACE_S`` after the end (and ``BUFFER_MAX_S`` after the start, whatever happens).
- **Mirrors**: a process that has to serve a generation running elsewhere (a resume, a Stop, a
  coalesced duplicate) follows its stream into a local ``Generation``, so views read it exactly
  as a local one.
- **Liveness**: the process running a generation keeps ``slipstream:live:<id>`` alive
  (``LIVE_TTL_S``); a streaming message whose generation has no such key lost its process.
- **Stop**: ``PUBLISH slipstream:stop <id>``; the process running it cancels it.
- **Single-flight**: ``SET NX`` of ``slipstream:sf:<slot>:<sha256 of the key>`` to the first
  generation's id; later identical requests, in any process, mirror that generation.
- **Slot leases**: a sorted set per slot of lease ids scored by expiry; a Lua script admits a
  lease only while fewer than the slot's limit are unexpired, so limits hold across processes.

Redis commands and semantics: redis.io/docs (XADD with explicit ids, XREAD BLOCK, SET NX PX,
ZADD/ZREMRANGEBYSCORE/ZCARD, PUBLISH/SUBSCRIBE).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
import weakref
from typing import Any

import redis.asyncio as aioredis

from chat.relay.background import spawn
from chat.relay.errors import RelayError
from chat.relay.generation import Generation, Phase, Status, find
from chat.relay.upstream import Chunk

logger = logging.getLogger(__name__)

BUFFER_GRACE_S = 300
BUFFER_MAX_S = 6 * 3600
LIVE_TTL_S = 6
HEARTBEAT_S = 2.0
LEASE_TTL_S = 60.0
LEASE_POLL_S = 0.05
STOP_CHANNEL = "slipstream:stop"

# Admit a lease when fewer than ARGV[1] unexpired leases exist (KEYS[1]: the slot's set;
# ARGV: limit, now, expiry, lease id).
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  return 1
end
return 0
"""
# Delete a key only while it still holds our value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Replace a key's value ARGV[1] by ARGV[2] (expiring in ARGV[3] s); 0 when it changed meanwhile.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


def gen_key(generation_id: str) -> str:
    return f"slipstream:gen:{generation_id}"


def live_key(generation_id: str) -> str:
    return f"slipstream:live:{generation_id}"


def flight_key(slot: str, key: str) -> str:
    """The single-flight claim of ``key`` (a canonical request body) on ``slot``."""
    return f"slipstream:sf:{slot}:{hashlib.sha256(key.encode()).hexdigest()}"


class Shared:
    """One process's connection to the shared state, per event loop (``shared()``)."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.from_url(url, decode_responses=True)  # type: ignore[no-untyped-call]
        self.process_id = uuid.uuid4().hex
        self.local: set[Generation] = set()  # generations this process runs (not mirrors)
        self.leases: dict[str, str] = {}  # lease id -> slot set key, refreshed by heartbeat
        self._claims: dict[tuple[str, str], str] = {}  # single-flight claims made here
        self._claiming: dict[tuple[str, str], asyncio.Future[None]] = {}  # claims in progress
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the heartbeat and the stop listener (once)."""
        if self._tasks:
            return
        self._tasks = [spawn(self._heartbeat()), spawn(self._listen_for_stops())]

    async def aclose(self) -> None:
        """Stop the heartbeat and the stop listener, then close every connection (the stop
        listener's own included). Connections belong to the loop: close them before it."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    # -- publishing a local generation --

    def publish(self, generation: Generation) -> None:
        """Mirror ``generation`` (run here) into its Redis Stream, batched, never blocking."""
        self.start()
        self.local.add(generation)
        generation.sink = _StreamWriter(self, generation)

    # -- following a remote generation --

    async def exists(self, generation_id: str) -> bool:
        return bool(await self.redis.exists(gen_key(generation_id)))

    def mirror(self, generation_id: str, *, slot: str, keep_running: bool) -> Generation:
        """A local ``Generation`` fed from another process's buffer, from its first entry."""
        self.start()
        mirror = Generation(slot=slot, keep_running=keep_running, generation_id=generation_id)
        mirror.is_mirror = True
        mirror.task = spawn(self._follow(mirror))
        return mirror

    async def _follow(self, mirror: Generation) -> None:
        key = gen_key(mirror.id)
        last = "0-0"
        # Another process's claim can be seen a moment before its buffer exists: only a buffer
        # still missing (or a process silent) after this long means the generation is lost.
        patience_until = time.monotonic() + LIVE_TTL_S + 2
        try:
            while True:
                reply = await self.redis.xread({key: last}, block=1000, count=500)
                if not reply:
                    if time.monotonic() < patience_until:
                        continue
                    if not await self.redis.exists(key) or not await self.is_live(mirror.id):
                        # Gone, or its process died: the sweeper marks its message.
                        await mirror.finish(
                            Status.ERROR,
                            RelayError("the answer's process stopped", code="generation_lost"),
                        )
                        return
                    continue
                for entry_id, fields in reply[0][1]:
                    last = entry_id
                    if await self._apply(mirror, fields):
                        return
        except asyncio.CancelledError:
            # Nobody here reads it any more; the generation itself goes on where it runs.
            await asyncio.shield(mirror.finish(Status.STOPPED))
            raise

    @staticmethod
    async def _apply(mirror: Generation, fields: dict[str, str]) -> bool:
        """Replay one buffer entry on ``mirror``: ``t`` is its kind (``c`` chunk, ``p`` phase,
        ``s`` slot, ``e`` end) and ``d`` its JSON. True once the generation ended."""
        kind = fields["t"]
        if kind == "c":
            data = fields["d"]
            mirror.publish(Chunk(data, json.loads(data)))
        elif kind == "p":
            mirror.set_phase(Phase(**json.loads(fields["d"])))
        elif kind == "s":
            mirror.slot = fields["d"]
        elif kind == "e":
            end = json.loads(fields["d"])
            error = end.get("error")
            await mirror.finish(
                Status(end["status"]), RelayError.from_dict(error) if error else None
            )
            return True
        return False

    async def is_live(self, generation_id: str) -> bool:
        return bool(await self.redis.exists(live_key(generation_id)))

    # -- stop --

    async def request_stop(self, generation_id: str) -> None:
        await self.redis.publish(STOP_CHANNEL, generation_id)

    async def _listen_for_stops(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(STOP_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    generation = find(str(message["data"]))
                    if generation is not None and not generation.is_mirror:
                        generation.cancel()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("stop listener failed; reconnecting")
                await asyncio.sleep(1)
            finally:
                # Its connection is its own (out of the pool until released): hand it back
                # closed, or it outlives the loop (a ResourceWarning in tests).
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # -- single-flight --

    async def claim(self, slot: str, key: str, generation_id: str) -> str | None:
        """Register ``generation_id`` as the answer to ``key`` on ``slot``; returns the id of
        the generation that already answers it (in any process), or None when ours is first
        (the caller then starts it, without awaiting anything first, and ``unclaim``-s it at
        its end). A claim is ``<id> <epoch s>``: one whose generation shows no sign of life well
        after it was made (its process died) is taken over.

        Identical requests in this process claim one at a time, so a later one learns an
        earlier one's claim only once its generation exists here (``find``) and joins it, rather
        than mirroring this process's own generation back from Redis."""
        flight = (slot, key)
        while (earlier := self._claiming.get(flight)) is not None:
            await asyncio.wait((earlier,))  # never cancels the shared future
        done = asyncio.get_running_loop().create_future()
        self._claiming[flight] = done
        try:
            return await self._claim(slot, key, generation_id)
        finally:
            del self._claiming[flight]
            done.set_result(None)

    async def _claim(self, slot: str, key: str, generation_id: str) -> str | None:
        name = flight_key(slot, key)
        mine = f"{generation_id} {time.time():.3f}"
        while True:
            if await self.redis.set(name, mine, nx=True, ex=BUFFER_MAX_S):
                break
            current = await self.redis.get(name)
            if current is None:
                continue  # released between the two calls: ours may be first now
            running, _, made = str(current).partition(" ")
            fresh = time.time() - float(made or 0) < LIVE_TTL_S + 2
            if fresh or find(running) is not None or await self.is_live(running):
                return running
            # A dead process's claim. Compare-and-set: when two processes see it dead at once,
            # one takes it over and the other joins that one.
            if await self.redis.eval(_TAKE_OVER, 1, name, current, mine, BUFFER_MAX_S):
                break
        self._claims[(slot, key)] = mine
        return None

    async def unclaim(self, slot: str, key: str, generation_id: str) -> None:
        mine = self._claims.get((slot, key))
        if mine is None or not mine.startswith(f"{generation_id} "):
            return
        del self._claims[(slot, key)]
        await self.redis.eval(_RELEASE, 1, flight_key(slot, key), mine)

    # -- slot leases --

    async def acquire_lease(self, slot_key: str, *, limit: int, timeout_s: float) -> str | None:
        """A lease on one of the slot's ``limit`` places across processes, waiting up to
        ``timeout_s``; None when none came free in time."""
        lease = uuid.uuid4().hex
        name = f"slipstream:slot:{slot_key}:leases"
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.time()
            if await self.redis.eval(_ACQUIRE, 1, name, limit, now, now + LEASE_TTL_S, lease):
                self.start()
                self.leases[lease] = name
                return lease
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(LEASE_POLL_S)

    async def release_lease(self, lease: str) -> None:
        name = self.leases.pop(lease, None)
        if name is not None:
            await self.redis.zrem(name, lease)

    # -- heartbeat --

    async def _heartbeat(self) -> None:
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for generation in list(self.local):
                        if generation.ended:
                            self.local.discard(generation)
                            continue
                        pipe.set(live_key(generation.id), self.process_id, ex=LIVE_TTL_S)
                    expiry = time.time() + LEASE_TTL_S
                    for lease, name in list(self.leases.items()):
                        pipe.zadd(name, {lease: expiry}, xx=True)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("heartbeat failed")
            await asyncio.sleep(HEARTBEAT_S)


class _StreamWriter:
    """Appends one generation's events to its Redis Stream in order, in batches."""

    def __init__(self, shared: Shared, generation: Generation) -> None:
        self.shared = shared
        self.generation = generation
        self.key = gen_key(generation.id)
        self.pending: list[dict[str, str]] = []
        self.count = 0
        self.wake = asyncio.Event()
        self.closed = False
        self.task = spawn(self._write())
        self.slot(generation.slot)  # written at once: the buffer and liveness key exist early

    def chunk(self, chunk: Chunk) -> None:
        self._add({"t": "c", "d": chunk.data})

    def phase(self, phase: Phase) -> None:
        self._add({"t": "p", "d": json.dumps(phase.as_dict())})

    def slot(self, name: str) -> None:
        self._add({"t": "s", "d": name})

    def end(self, status: str, error: RelayError | None) -> None:
        end: dict[str, Any] = {"status": status}
        if error is not None:
            end["error"] = error.to_dict()
        self._add({"t": "e", "d": json.dumps(end)})
        self.closed = True

    def _add(self, fields: dict[str, str]) -> None:
        self.pending.append(fields)
        self.wake.set()

    async def _write(self) -> None:
        first = True
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.pending = self.pending, []
            try:
                async with self.shared.redis.pipeline(transaction=False) as pipe:
                    if first:
                        pipe.set(
                            live_key(self.generation.id), self.shared.process_id, ex=LIVE_TTL_S
                        )
                    for fields in batch:
                        self.count += 1
                        pipe.xadd(self.key, fields, id=f"0-{self.count}")
                    if first:
                        pipe.expire(self.key, BUFFER_MAX_S)
                    if self.closed and not self.pending:
                        pipe.expire(self.key, BUFFER_GRACE_S)
                        pipe.delete(live_key(self.generation.id))
                    await pipe.execute()
                first = False
            except Exception:
                logger.exception("generation %s: buffer write failed", self.generation.id)
            if self.closed and not self.pending:
                return


# One Shared per event loop (its connections belong to the loop).
_instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Shared] = (
    weakref.WeakKeyDictionary()
)
_url: str = ""


def configure(url: str) -> None:
    """Turn sharing on (``REDIS_URL``) or off (empty), for loops that start using it after."""
    global _url
    _url = url


def shared() -> Shared | None:
    """The running loop's shared state, or None in single-process mode."""
    if not _url:
        return None
    loop = asyncio.get_running_loop()
    instance = _instances.get(loop)
    if instance is None:
        instance = _instances[loop] = Shared(_url)
    return instance


async def aclose() -> None:
    """Close this loop's connection (tests, shutdown)."""
    loop = asyncio.get_running_loop()
    instance = _instances.pop(loop, None)
    if instance is not None:
        with contextlib.suppress(Exception):
            await instance.aclose()
