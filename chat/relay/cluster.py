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
- **Upstream protection**: a hash per slot (failure streak, next allowed call) and a turn key
  (``SET NX PX``) checked by a Lua script, with news on ``slipstream:protect``: one caller at a
  time across processes while a slot's calls fail (see the section's comment).

While Redis is down (issue 29), each process serves alone rather than fail: ``Health`` notes the
outage (one log line when it starts, one when it ends) and every call site skips Redis until the
heartbeat, the one caller that still asks (every ``PROBE_S``), finds it back. Per feature:

- generation buffers: the events wait in the writer, in order, and are written when Redis is
  back, so the answer can still be resumed elsewhere (a buffer Redis lost meanwhile is given up,
  not written with a hole);
- single-flight: within the process only (the dispatcher's own table);
- slot leases: the slot's limit holds per process (``LOCAL_LEASE``), leases given back later;
- liveness: unknown counts as alive (nothing is swept on a guess);
- a resume or a Stop that another process may have to serve: ``SharedUnavailable``, a 503 with
  ``Retry-After`` (where the answer runs cannot be told, and a Stop cannot be delivered);
- mirrors already following another process's buffer wait ``MIRROR_WAIT_S`` for Redis.

A dead Redis fails a call at once (``CONNECT_TIMEOUT_S``, ``COMMAND_TIMEOUT_S``), never holding a
request for long.

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
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from chat.relay.background import spawn
from chat.relay.errors import RelayError
from chat.relay.generation import Generation, Phase, Status, find
from chat.relay.types import Chunk

logger = logging.getLogger(__name__)

BUFFER_GRACE_S = 300
BUFFER_MAX_S = 6 * 3600
LIVE_TTL_S = 6
HEARTBEAT_S = 2.0
LEASE_TTL_S = 60.0
LEASE_POLL_S = 0.05
STOP_CHANNEL = "slipstream:stop"
# How long the stop listener waits for a message before it looks at Redis's health again (s).
STOP_POLL_S = 1.0

# Redis could not be reached: refused, reset, timed out, still loading its data set. redis-py
# raises its own errors for the socket's.
UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# A Redis that is gone refuses a connection at once, but one that does not answer at all (a host
# down, a partition) would hold a call until the kernel gave up, minutes later. The read timeout
# must outlast XREAD's BLOCK of 1 s (``_follow``); a subscriber has none (``subscriber``).
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 3.0
# While Redis is down only the heartbeat asks it, this often (s): a dead Redis costs no request
# a thing, and its return is seen within this time.
PROBE_S = 1.0
# The Retry-After of a request that needs Redis while it is down (s).
RETRY_AFTER_S = 2
# A mirror waits this long (s) for Redis to come back before it ends its readers' stream.
MIRROR_WAIT_S = 30.0
# A generation's writer holds its events this long (s) after the generation ended for Redis to
# come back, then drops them (the answer is stored; only a resume elsewhere needed them).
WRITER_HOLD_S = 60.0
# ``acquire_lease``'s answer while Redis is down: admitted by the process's own limit only.
LOCAL_LEASE = ""

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


class SharedUnavailable(RelayError):
    """Redis cannot be reached and the request cannot be served without it (a resume or a Stop
    of an answer another process may run): a 503 with ``Retry-After``."""

    def __init__(self) -> None:
        super().__init__(
            "Slipstream's shared state is unavailable for a moment. Try again shortly.",
            status=503,
            type="server_error",
            code="shared_state_unavailable",
            retry_after=RETRY_AFTER_S,
        )


class Health:
    """Whether this process reaches Redis, as its calls last found it (``Shared.reach`` tells
    it each outcome). The first failure logs one line and the first answer after it another: an
    outage costs two lines, not one per call. While down (``up`` False) callers skip Redis and
    the heartbeat alone asks it."""

    def __init__(self) -> None:
        self.down_since: float | None = None  # time.monotonic() s
        # Outages seen so far: a call begun before the latest one proves nothing by answering.
        self.outages = 0
        self._back = asyncio.Event()
        self._back.set()

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, exc: BaseException) -> None:
        """A call could not reach Redis (``exc``, one of ``UNREACHABLE``)."""
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.outages += 1
        self._back.clear()
        logger.warning(
            "redis unavailable (%s): this process serves alone until it answers again",
            str(exc) or type(exc).__name__,
        )

    def answered(self, outages: int) -> None:
        """A call begun when ``outages`` outages had been seen reached Redis."""
        if self.down_since is None or outages != self.outages:
            return
        logger.info("redis back after %.1f s", time.monotonic() - self.down_since)
        self.down_since = None
        self._back.set()

    async def wait_up(self, timeout_s: float | None) -> bool:
        """Whether Redis answers, once it does or after ``timeout_s`` (None: no limit)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._back.wait(), timeout_s)
        return self.up


class Shared:
    """One process's connection to the shared state, per event loop (``shared()``)."""

    def __init__(self, url: str) -> None:
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_keepalive": True,
        }
        self.redis = aioredis.from_url(  # type: ignore[no-untyped-call]
            url, socket_timeout=COMMAND_TIMEOUT_S, **options
        )
        # Subscribers wait for news as long as there is none: no read timeout.
        self._subscribers = aioredis.from_url(url, **options)  # type: ignore[no-untyped-call]
        self.health = Health()
        self.process_id = uuid.uuid4().hex
        self.local: set[Generation] = set()  # generations this process runs (not mirrors)
        self.leases: dict[str, str] = {}  # lease id -> slot set key, refreshed by heartbeat
        self._claims: dict[tuple[str, str], str] = {}  # single-flight claims made here
        self._claiming: dict[tuple[str, str], asyncio.Future[None]] = {}  # claims in progress
        # What could not be given back while Redis was down, for the heartbeat to give back:
        # (slot set key, lease id) and (claim key, claim value).
        self._unreleased_leases: list[tuple[str, str]] = []
        self._unreleased_claims: list[tuple[str, str]] = []
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
        await self._subscribers.aclose()

    @contextlib.contextmanager
    def reach(self, *, probe: bool = False) -> Iterator[Any]:
        """The client (``redis.asyncio.Redis``, typed Any as ``from_url`` gives it: its stubs
        type replies as sync-or-async unions), for one call or pipeline made in the ``with``
        block, whose outcome is told to ``health``. Raises ``SharedUnavailable`` at once while
        Redis is known down (unless ``probe``: the heartbeat's question), or when the call could
        not reach it (``UNREACHABLE``); any other error (a script's, a bug) passes unchanged."""
        if not (probe or self.health.up):
            raise SharedUnavailable
        outages = self.health.outages
        try:
            yield self.redis
        except UNREACHABLE as exc:
            self.report_unavailable(exc)
            raise SharedUnavailable from exc
        self.health.answered(outages)

    def report_unavailable(self, exc: BaseException) -> None:
        """Redis could not be reached (by this client, or by Django's cache on the same
        server): note the outage, and have the heartbeat ask until it answers."""
        self.health.failed(exc)
        self.start()

    def subscriber(self) -> Any:
        """A pub/sub connection (``redis.asyncio.client.PubSub``; ``aclose`` it), from a client
        without a read timeout: a subscriber waits for news as long as there is none."""
        return self._subscribers.pubsub()

    # -- publishing a local generation --

    def publish(self, generation: Generation) -> None:
        """Mirror ``generation`` (run here) into its Redis Stream, batched, never blocking;
        while Redis is down its events wait in the writer (``_StreamWriter``)."""
        self.start()
        self.local.add(generation)
        generation.sink = _StreamWriter(self, generation)

    # -- following a remote generation --

    async def exists(self, generation_id: str) -> bool:
        """Whether a buffer of ``generation_id`` exists. Raises ``SharedUnavailable`` while
        Redis is down: whether the answer runs elsewhere cannot be told."""
        with self.reach() as redis:
            return bool(await redis.exists(gen_key(generation_id)))

    async def buffered(self, generation_id: str) -> tuple[list[str], dict[str, Any] | None] | None:
        """What the buffer of ``generation_id`` holds, for an answer whose process is gone
        (``chat.sweep.sweep_interrupted``): its chunks' JSON texts in order and its end
        (``{"status": …, "error"?: …}``; None when it never ended), or None when there is no
        buffer (never written, or expired ``BUFFER_GRACE_S`` after its end). Raises
        ``SharedUnavailable`` while Redis is down."""
        with self.reach() as redis:
            entries = await redis.xrange(gen_key(generation_id))
        if not entries:
            return None
        chunks: list[str] = []
        end: dict[str, Any] | None = None
        for _, fields in entries:
            if fields.get("t") == "c":
                chunks.append(fields["d"])
            elif fields.get("t") == "e":
                end = json.loads(fields["d"])
        return chunks, end

    def mirror(self, generation_id: str, *, slot: str, keep_running: bool) -> Generation:
        """A local ``Generation`` fed from another process's buffer, from its first entry."""
        self.start()
        mirror = Generation(slot=slot, keep_running=keep_running, generation_id=generation_id)
        mirror.is_mirror = True
        mirror.task = spawn(self._follow(mirror))
        return mirror

    async def _follow(self, mirror: Generation) -> None:
        last = "0-0"
        # Another process's claim can be seen a moment before its buffer exists: only a buffer
        # still missing (or a process silent) after this long means the generation is lost.
        patience_until = time.monotonic() + LIVE_TTL_S + 2
        try:
            while True:
                try:
                    entries = await self._read_buffer(mirror.id, last, patience_until)
                except SharedUnavailable:
                    if not await self.health.wait_up(MIRROR_WAIT_S):
                        await mirror.finish(Status.ERROR, SharedUnavailable())
                        return
                    # Its process shows it lives again with its next heartbeat or write.
                    patience_until = time.monotonic() + LIVE_TTL_S + 2
                    continue
                if entries is None:
                    # Gone, or its process died: the sweeper marks its message.
                    await mirror.finish(
                        Status.ERROR,
                        RelayError("the answer's process stopped", code="generation_lost"),
                    )
                    return
                for entry_id, fields in entries:
                    last = entry_id
                    if await self._apply(mirror, fields):
                        return
        except asyncio.CancelledError:
            # Nobody here reads it any more; the generation itself goes on where it runs.
            await asyncio.shield(mirror.finish(Status.STOPPED))
            raise

    async def _read_buffer(
        self, generation_id: str, last: str, patience_until: float
    ) -> list[tuple[str, dict[str, str]]] | None:
        """The buffer's entries after ``last``, waiting up to a second for one (none: an empty
        list); None once ``patience_until`` passed with the buffer gone or its process silent.
        Raises ``SharedUnavailable``."""
        key = gen_key(generation_id)
        with self.reach() as redis:
            reply = await redis.xread({key: last}, block=1000, count=500)
            if reply:
                entries: list[tuple[str, dict[str, str]]] = reply[0][1]
                return entries
            if time.monotonic() < patience_until:
                return []
            if not await redis.exists(key) or not await self.is_live(generation_id):
                return None
            return []

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
        """Whether the process running ``generation_id`` is alive. True while Redis is down:
        that cannot be told, and nothing is marked interrupted on a guess."""
        try:
            with self.reach() as redis:
                return bool(await redis.exists(live_key(generation_id)))
        except SharedUnavailable:
            return True

    # -- stop --

    async def request_stop(self, generation_id: str) -> None:
        """Ask the process running ``generation_id`` to stop it. Raises ``SharedUnavailable``
        while Redis is down (the Stop cannot be delivered: the client sends it again)."""
        with self.reach() as redis:
            await redis.publish(STOP_CHANNEL, generation_id)

    async def _listen_for_stops(self) -> None:
        """Cancel the generations other processes ask to stop, subscribed again after each
        outage (what was published meanwhile is lost: those Stops got a 503)."""
        while True:
            await self.health.wait_up(None)
            outages = self.health.outages
            pubsub = self.subscriber()
            try:
                await pubsub.subscribe(STOP_CHANNEL)
                # An outage seen by another call ends this subscription too: a partition leaves
                # its connection silent rather than broken.
                while self.health.outages == outages:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=STOP_POLL_S
                    )
                    if message is not None and message.get("type") == "message":
                        generation = find(str(message["data"]))
                        if generation is not None and not generation.is_mirror:
                            generation.cancel()
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                self.report_unavailable(exc)
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
        except SharedUnavailable:
            return None  # Redis is down: single-flight within this process only
        finally:
            del self._claiming[flight]
            done.set_result(None)

    async def _claim(self, slot: str, key: str, generation_id: str) -> str | None:
        name = flight_key(slot, key)
        mine = f"{generation_id} {time.time():.3f}"
        with self.reach() as redis:
            while True:
                if await redis.set(name, mine, nx=True, ex=BUFFER_MAX_S):
                    break
                current = await redis.get(name)
                if current is None:
                    continue  # released between the two calls: ours may be first now
                running, _, made = str(current).partition(" ")
                fresh = time.time() - float(made or 0) < LIVE_TTL_S + 2
                if fresh or find(running) is not None or await self.is_live(running):
                    return running
                # A dead process's claim. Compare-and-set: when two processes see it dead at
                # once, one takes it over and the other joins that one.
                if await redis.eval(_TAKE_OVER, 1, name, current, mine, BUFFER_MAX_S):
                    break
        self._claims[(slot, key)] = mine
        return None

    async def unclaim(self, slot: str, key: str, generation_id: str) -> None:
        """Give up this process's claim of ``key`` for ``generation_id`` (ended); while Redis
        is down, the heartbeat gives it up once Redis answers."""
        mine = self._claims.get((slot, key))
        if mine is None or not mine.startswith(f"{generation_id} "):
            return
        del self._claims[(slot, key)]
        try:
            with self.reach() as redis:
                await redis.eval(_RELEASE, 1, flight_key(slot, key), mine)
        except SharedUnavailable:
            self._unreleased_claims.append((flight_key(slot, key), mine))

    # -- slot leases --

    async def acquire_lease(self, slot_key: str, *, limit: int, timeout_s: float) -> str | None:
        """A lease on one of the slot's ``limit`` places across processes, waiting up to
        ``timeout_s``; None when none came free in time. ``LOCAL_LEASE`` while Redis is down:
        the limit then holds in each process alone (its own queue admitted the caller), and
        there is nothing to give back."""
        lease = uuid.uuid4().hex
        name = f"slipstream:slot:{slot_key}:leases"
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.time()
            try:
                with self.reach() as redis:
                    admitted = await redis.eval(
                        _ACQUIRE, 1, name, limit, now, now + LEASE_TTL_S, lease
                    )
            except SharedUnavailable:
                # The script may have run before the connection failed: give back what may
                # have been taken, once Redis answers.
                self._unreleased_leases.append((name, lease))
                return LOCAL_LEASE
            if admitted:
                self.start()
                self.leases[lease] = name
                return lease
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(LEASE_POLL_S)

    async def release_lease(self, lease: str) -> None:
        """Give ``lease`` back; while Redis is down, the heartbeat gives it back once Redis
        answers (until then it holds a place, for ``LEASE_TTL_S`` at most)."""
        name = self.leases.pop(lease, None)
        if name is None:
            return
        try:
            with self.reach() as redis:
                await redis.zrem(name, lease)
        except SharedUnavailable:
            self._unreleased_leases.append((name, lease))

    # -- upstream protection --
    #
    # Issue 12's rule across processes (issue 29): once a call to a slot fails in any process, the
    # slot is suspect in all; one caller at a time in the whole cluster calls it (the turn: a key
    # SET NX PX, kept alive while its call runs, so a dead process's turn lapses), no sooner than
    # the slot-wide backoff allows (a hash: the failure streak and the next allowed call, on
    # Redis's clock, so processes' clocks need not agree); the first success anywhere deletes
    # both. Every change is published on PROTECT_CHANNEL as "<what> <slot key>" (suspect, clear,
    # free), so processes waiting on the slot learn of it at once and a healthy slot costs no
    # Redis command per request. The per-slot logic is ``chat.relay.slots.SlotRuntime``'s.

    PROTECT_CHANNEL = "slipstream:protect"
    # The turn's TTL (ms): its holder renews it while its call runs (``protect_keep``).
    PROTECT_TURN_TTL_MS = 6000
    # How long a suspect slot's state outlives its last failure (s): a slot nobody called for
    # this long is trusted again.
    PROTECT_STATE_TTL_S = 600
    # While another process holds the turn, ask again after this long (ms) at the latest; its
    # end is published, which wakes the waiting process sooner.
    PROTECT_BUSY_POLL_MS = 500

    # KEYS: the slot's state hash, its turn. ARGV: our token, the turn's TTL (ms), the busy poll
    # (ms). Returns {0, 0} not suspect: call; {1, 0} the turn is ours; {2, ms} backing off: ask
    # again in ms; {3, ms} another caller's turn: ask again in ms, or when told.
    _PROTECT_TURN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = tonumber(redis.call('HGET', KEYS[1], 'next_at') or '0') - now
if wait > 0 then return {2, wait} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
local ttl = redis.call('PTTL', KEYS[2])
if ttl < 1 then ttl = 1 end
return {3, math.min(ttl, tonumber(ARGV[3]))}
"""
    # A call failed. KEYS: state hash, turn. ARGV: the caller's turn token ('' when it had
    # none), backoff base and cap (ms), jitter in [0, 1), the state's TTL (s), channel, message.
    # Equal jitter, as in one process: half the delay fixed, half random. Returns the streak.
    _PROTECT_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local delay = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (failures - 1))
local next_at = now + delay / 2 + tonumber(ARGV[4]) * delay / 2
redis.call('HSET', KEYS[1], 'next_at', string.format('%.0f', next_at))
redis.call('EXPIRE', KEYS[1], ARGV[5])
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return failures
"""
    # A call succeeded: the slot is trusted again. KEYS: state hash, turn; ARGV: channel, message.
    _PROTECT_CLEAR = """
if redis.call('DEL', KEYS[1], KEYS[2]) > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 0
"""
    # A turn given back without a result. KEYS: the turn; ARGV: token, channel, message.
    _PROTECT_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""
    # Renew our turn (KEYS[1]) for ARGV[2] ms while ARGV[1] still holds it.
    _PROTECT_KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

    # Set on first use (class defaults keep this section apart from __init__).
    _protect_watchers: dict[str, Callable[[str], None]] | None = None
    _protect_listener: asyncio.Task[None] | None = None
    _protect_subscribed: asyncio.Event | None = None

    @staticmethod
    def _protect_keys(slot_key: str) -> tuple[str, str]:
        """The state hash and the turn of ``slot_key`` (``<slot id>:<name>``, as leases)."""
        return f"slipstream:slot:{slot_key}:protect", f"slipstream:slot:{slot_key}:turn"

    def protect_watch(self, slot_key: str, watcher: Callable[[str], None]) -> None:
        """Have ``watcher`` called with ``"suspect"``, ``"clear"`` or ``"free"`` as any process
        publishes that of ``slot_key``, and with ``"sync"`` whenever the listener (re)subscribed
        (what was published meanwhile is lost: read the state again). One watcher per slot key
        (a loop has one runtime per slot); starts the listener once."""
        if self._protect_watchers is None:
            self._protect_watchers = {}
            self._protect_subscribed = asyncio.Event()
        self._protect_watchers[slot_key] = watcher
        if self._protect_listener is None:
            self.start()  # first, so _tasks is not empty when start() looks (aclose ends both)
            self._protect_listener = spawn(self._listen_for_protect())
            self._tasks.append(self._protect_listener)

    async def protect_subscribed(self, timeout_s: float) -> None:
        """Return once the listener is subscribed, or after ``timeout_s``."""
        if self._protect_subscribed is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._protect_subscribed.wait(), timeout_s)

    async def protect_suspect(self, slot_key: str) -> bool:
        """Whether a call to the slot failed (anywhere) since the last success."""
        state, _ = self._protect_keys(slot_key)
        return bool(await self.redis.exists(state))

    async def protect_turn(self, slot_key: str, token: str) -> tuple[str, float]:
        """May this process call the slot now? ``("healthy", 0)``: it is not suspect, call;
        ``("granted", 0)``: the turn is ours as ``token`` for ``PROTECT_TURN_TTL_MS``
        (``protect_keep`` renews it; ``protect_failed``, ``protect_release`` or
        ``protect_clear`` gives it back); ``("backoff", s)``: ask
        again in s seconds; ``("busy", s)``: another caller's turn, ask again in s seconds at
        the latest. Raises Redis's errors."""
        state, turn = self._protect_keys(slot_key)
        code, wait_ms = await self.redis.eval(
            self._PROTECT_TURN,
            2,
            state,
            turn,
            token,
            self.PROTECT_TURN_TTL_MS,
            self.PROTECT_BUSY_POLL_MS,
        )
        return ("healthy", "granted", "backoff", "busy")[int(code)], int(wait_ms) / 1000

    async def protect_keep(self, slot_key: str, token: str) -> bool:
        """Renew the turn ``token`` for ``PROTECT_TURN_TTL_MS``; False when it is not ours
        any more (given back, lapsed, or voided by a success)."""
        _, turn = self._protect_keys(slot_key)
        return bool(
            await self.redis.eval(self._PROTECT_KEEP, 1, turn, token, self.PROTECT_TURN_TTL_MS)
        )

    async def protect_failed(
        self, slot_key: str, token: str | None, *, base_s: float, cap_s: float, jitter: float
    ) -> int:
        """Count a failed call to the slot (by the holder of ``token``, which is given back, or
        by a caller without a turn): the slot is suspect everywhere, and the next call waits
        ``base_s * 2**(streak - 1)`` capped at ``cap_s``, half of it times ``jitter`` (0 to 1).
        Returns the streak. Raises Redis's errors."""
        state, turn = self._protect_keys(slot_key)
        failures = await self.redis.eval(
            self._PROTECT_FAILED,
            2,
            state,
            turn,
            token or "",
            int(base_s * 1000),
            int(cap_s * 1000),
            jitter,
            self.PROTECT_STATE_TTL_S,
            self.PROTECT_CHANNEL,
            f"suspect {slot_key}",
        )
        return int(failures)

    async def protect_clear(self, slot_key: str) -> None:
        """A call to the slot succeeded: trusted again everywhere, every turn void."""
        state, turn = self._protect_keys(slot_key)
        await self.redis.eval(
            self._PROTECT_CLEAR, 2, state, turn, self.PROTECT_CHANNEL, f"clear {slot_key}"
        )

    async def protect_release(self, slot_key: str, token: str) -> None:
        """Give the turn ``token`` back without a result (the call was cancelled, or failed in
        a way that says nothing of the upstream): the next caller may go."""
        _, turn = self._protect_keys(slot_key)
        await self.redis.eval(
            self._PROTECT_RELEASE, 1, turn, token, self.PROTECT_CHANNEL, f"free {slot_key}"
        )

    async def _listen_for_protect(self) -> None:
        lost = False
        while True:
            pubsub = self.subscriber()  # listen() waits for news: no read timeout
            try:
                await pubsub.subscribe(self.PROTECT_CHANNEL)
                async for message in pubsub.listen():
                    self._protect_heard(message)
                    if lost and message.get("type") == "subscribe":
                        lost = False
                        logger.info("upstream protection: listening to other processes again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not lost:  # one line per outage, not one a second
                    lost = True
                    logger.warning(
                        "upstream protection: lost other processes' news (%s); retrying", exc
                    )
                if self._protect_subscribed is not None:
                    self._protect_subscribed.clear()
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _protect_heard(self, message: dict[str, Any]) -> None:
        watchers = self._protect_watchers or {}
        if message.get("type") == "subscribe":
            if self._protect_subscribed is not None:
                self._protect_subscribed.set()
            for each in list(watchers.values()):
                each("sync")
        elif message.get("type") == "message":
            what, _, slot_key = str(message["data"]).partition(" ")
            watcher = watchers.get(slot_key)
            if watcher is not None:
                watcher(what)

    # -- heartbeat --

    async def _heartbeat(self) -> None:
        """Every ``HEARTBEAT_S``: this process's generations' liveness keys and leases kept
        alive, and what could not be given back while Redis was down given back. While Redis
        is down, this is the one question asked of it, every ``PROBE_S``."""
        while True:
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except SharedUnavailable:
                pass  # noted by ``reach``: one line per outage
            except Exception:
                logger.exception("heartbeat failed")
            await asyncio.sleep(HEARTBEAT_S if self.health.up else PROBE_S)

    async def _beat(self) -> None:
        leases, self._unreleased_leases = self._unreleased_leases, []
        claims, self._unreleased_claims = self._unreleased_claims, []
        try:
            with self.reach(probe=True) as redis:
                async with redis.pipeline(transaction=False) as pipe:
                    if not self.health.up:
                        pipe.ping()  # a question, even with nothing to keep alive
                    for generation in list(self.local):
                        if generation.ended:
                            self.local.discard(generation)
                            continue
                        pipe.set(live_key(generation.id), self.process_id, ex=LIVE_TTL_S)
                    expiry = time.time() + LEASE_TTL_S
                    for lease, name in list(self.leases.items()):
                        pipe.zadd(name, {lease: expiry}, xx=True)
                    for name, lease in leases:
                        pipe.zrem(name, lease)
                    for name, mine in claims:
                        pipe.eval(_RELEASE, 1, name, mine)
                    await pipe.execute()
        except BaseException:
            self._unreleased_leases[:0] = leases
            self._unreleased_claims[:0] = claims
            raise


class _StreamWriter:
    """Appends one generation's events to its Redis Stream in order, in batches.

    While Redis is down the events wait here, in order, and are written once it answers again,
    so the buffer is whole and another process can still resume the answer. Entry ids are fixed
    (``0-<n>``), so a batch that failed midway is written again without doubling anything
    (Redis refuses an id it holds). A buffer Redis lost meanwhile (restarted empty, or from an
    older snapshot) is given up rather than written with a hole; so are the events of a
    generation that ended ``WRITER_HOLD_S`` before Redis came back."""

    def __init__(self, shared: Shared, generation: Generation) -> None:
        self.shared = shared
        self.generation = generation
        self.key = gen_key(generation.id)
        self.pending: list[dict[str, str]] = []
        self.written = 0  # entries Redis holds: 0-1 to 0-<written>
        self.started = False  # the liveness key and the buffer's expiry were set
        self.failed = False  # the last write failed: check what Redis kept before the next
        self.given_up = False
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
        if self.given_up:
            return
        self.pending.append(fields)
        self.wake.set()

    async def _write(self) -> None:
        while not self.given_up:
            await self.wake.wait()
            self.wake.clear()
            try:
                await self._flush()
            except SharedUnavailable:
                self.failed = True
                if await self._wait_for_redis():
                    self.wake.set()
                continue
            except Exception as exc:
                # Redis answered with an error (out of memory, say): one line, and this
                # answer is no longer shared; it goes on here.
                logger.warning("generation %s: buffer write failed (%s)", self.generation.id, exc)
                self._give_up()
            if self.closed and not self.pending:
                return

    async def _wait_for_redis(self) -> bool:
        """Wait for Redis to answer again (True); False when the generation ended and Redis
        stayed away ``WRITER_HOLD_S`` (the events are dropped)."""
        while not await self.shared.health.wait_up(WRITER_HOLD_S):
            if self.closed:
                self._give_up()
                return False
        return True

    def _give_up(self) -> None:
        self.given_up = True
        self.pending.clear()

    async def _flush(self) -> None:
        """Write the pending events (those added meanwhile wait for the next flush). Raises
        ``SharedUnavailable``, or the first error Redis answered a command with."""
        batch = self.pending[:]
        ending = self.closed
        with self.shared.reach() as redis:
            if self.failed and self.written and not await self._intact(redis):
                self._give_up()
                return
            async with redis.pipeline(transaction=False) as pipe:
                if not self.started:
                    pipe.set(live_key(self.generation.id), self.shared.process_id, ex=LIVE_TTL_S)
                for n, fields in enumerate(batch, self.written + 1):
                    pipe.xadd(self.key, fields, id=f"0-{n}")
                if not self.started:
                    pipe.expire(self.key, BUFFER_MAX_S)
                if ending:
                    pipe.expire(self.key, BUFFER_GRACE_S)
                    pipe.delete(live_key(self.generation.id))
                results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and not _written_before(result):
                raise result
        del self.pending[: len(batch)]
        self.written += len(batch)
        self.started = True
        self.failed = False

    async def _intact(self, redis: Any) -> bool:
        """Whether Redis still holds every entry written so far (its newest is ours or
        later: a failed batch may have been written in part)."""
        newest = await redis.xrevrange(self.key, count=1)
        return bool(newest) and int(str(newest[0][0]).rpartition("-")[2]) >= self.written


def _written_before(error: Exception) -> bool:
    """Whether ``error`` is Redis refusing an XADD id it already holds: an entry a failed
    batch wrote before it failed."""
    return isinstance(error, redis.exceptions.ResponseError) and "equal or smaller" in str(error)


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
