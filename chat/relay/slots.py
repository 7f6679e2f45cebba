"""Per-slot runtime, in this process: lifecycle state from health probes and real calls, the
FIFO admission queue that enforces the slot's concurrency limit, and the in-flight generations
that identical requests may join (single-flight).

State machine (DESIGN.md, "slot"): ``cold`` until anything is known; ``ready`` once the backend
answered (a probe's 2xx or a stream that opened); ``warming`` while it answers 503 ("Loading
model", llama.cpp's ``/health``) or refuses connections after it was seen up; ``error`` when it
is unreachable or failing. A slot that is not ready is probed periodically until it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import httpx

from chat.relay import observe
from chat.relay.background import spawn
from chat.relay.cluster import Shared, shared
from chat.relay.errors import RelayError
from chat.relay.types import BackendConfig, SlotConfig
from chat.relay.upstream import client_for

if TYPE_CHECKING:
    from chat.relay.generation import Generation

logger = logging.getLogger(__name__)


class SlotState(StrEnum):
    """A slot's lifecycle state, as DESIGN.md names it; the values are ``Slot.State``'s."""

    COLD = "cold"
    WARMING = "warming"
    READY = "ready"
    ERROR = "error"


PROBE_INTERVAL_S = {SlotState.WARMING: 1.0, SlotState.ERROR: 5.0, SlotState.COLD: 5.0}
# Probing stops this long after anyone last asked about the slot (a request, a page showing its
# state), so a slot nobody uses, or one deleted, is not probed forever.
PROBE_INTEREST_S = 600.0
# Retry-After for a full queue (429): long enough to let one answer finish, short enough that a
# person retrying by hand does not wait for nothing.
QUEUE_RETRY_AFTER_S = 5.0
# Calls to a slot whose last call failed (warming or failing) are spaced by a slot-wide backoff:
# exponential from the base, capped, with "equal jitter" (half fixed, half random), so two calls
# are never closer than half the current delay. With the cap at 2 s a slot that keeps failing
# gets at most one call a second from this process, however many requests wait on it.
CALL_BACKOFF_BASE_S = 0.25
CALL_BACKOFF_CAP_S = 2.0
# When a call succeeds again, the requests that waited on the slot are let go this far apart (s),
# oldest first, so a server that just came up is not hit by all of them in the same millisecond.
RELEASE_STAGGER_S = 0.05
# With REDIS_URL the rule holds across processes (issue 29), its state in Redis
# (``Shared.protect_*``). A Redis command that fails or takes longer than CLUSTER_TIMEOUT_S (s)
# leaves the slot to this process's own rule until CLUSTER_RETRY_S (s) later, when Redis is asked
# again: a Redis outage costs each turn at most one slow question, not one per request.
CLUSTER_TIMEOUT_S = 1.0
CLUSTER_RETRY_S = 5.0
# Listeners (a database UPDATE and a log line) hear of state changes at most this often (s): a
# flapping slot costs one write a second, and the last state always lands.
STATE_TELL_INTERVAL_S = 1.0
# A health probe's 2xx does not overrule a failed real call (a server may answer /health or
# /v1/models while its completions still answer 503); it counts once no call failed for this long.
PROBE_OVERRULES_AFTER_S = 10.0


@dataclass(frozen=True, slots=True)
class StateChange:
    """What state listeners receive: the slot (``slot_id``, ``name``), its new ``state``,
    ``last_error`` (empty when none) and ``at`` (wall-clock epoch seconds)."""

    slot_id: int
    name: str
    state: SlotState
    last_error: str
    at: float


StateListener = Callable[[StateChange], object]
# Called on every state change (persisting it for the admin and other processes); a listener
# may return an awaitable, which is run as a task.
state_listeners: list[StateListener] = []


class SlotRuntime:
    """One slot's live state in this process. Obtain it with ``runtime_for``. ``store`` is the
    shared state its upstream protection uses across processes (default: ``shared()``, None
    without REDIS_URL)."""

    def __init__(self, slot_id: int, name: str, *, store: Shared | None = None) -> None:
        self.slot_id = slot_id
        self.name = name
        self.state: SlotState = SlotState.COLD
        self.last_error = ""
        self.changed_at = time.time()
        self.seen_up = False
        self.backend: BackendConfig | None = None
        self.health_path = "/models"
        self.in_flight = 0
        self.waiters: deque[tuple[asyncio.Future[None], Generation | None]] = deque()
        self.coalescing: dict[str, Generation] = {}
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_until = 0.0
        self._changed: asyncio.Event = asyncio.Event()
        self._tell_lock = asyncio.Lock()
        self._tell_pending = False
        self._told: tuple[str, str] | None = None
        self._told_at = -STATE_TELL_INTERVAL_S
        # Upstream protection (``take_turn``): while real calls fail, one request at a time
        # calls the upstream, no sooner than ``next_call_at``; the others wait their turn.
        self.suspect = False
        self.failures = 0
        self.failed_at = 0.0
        self.next_call_at = 0.0
        self._turn: int | None = None
        self._turns = 0
        self._turn_waiters: deque[asyncio.Future[None]] = deque()
        # The same across processes, with Redis: the cluster's turn while this process's turn
        # holder has it (its token), news from other processes (``_heard``), the one read of
        # the slot's state when this runtime starts using Redis, this process's writes (sent
        # in order, off the requests' path) and whether Redis answers.
        self._store = store
        self._token: str | None = None
        self._news = asyncio.Event()
        self._synced: asyncio.Task[None] | None = None
        self._reports: asyncio.Task[None] | None = None
        self._cluster_down = False
        self._cluster_retry_at = 0.0

    # -- state --

    def set_state(self, state: SlotState, error: str = "") -> None:
        """Change the slot's state in this process at once; listeners hear of it within
        ``STATE_TELL_INTERVAL_S`` (debounced: they get the latest state, not every flap)."""
        if state == SlotState.READY:
            self.seen_up = True
            error = ""
        if state == self.state:
            return  # the first error of a spell is kept: probes and requests word it differently
        self.state, self.last_error, self.changed_at = state, error, time.time()
        self._changed.set()
        self._changed = asyncio.Event()
        if not self._tell_pending:
            self._tell_pending = True
            delay = self._told_at + STATE_TELL_INTERVAL_S - time.monotonic()
            spawn(self._tell(max(0.0, delay)))
        if state != SlotState.READY:
            self.probe_soon()

    async def _tell(self, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        self._tell_pending = False
        if self._told == (self.state, self.last_error):
            return  # it flapped back to what listeners already know
        self._told, self._told_at = (self.state, self.last_error), time.monotonic()
        change = StateChange(self.slot_id, self.name, self.state, self.last_error, self.changed_at)
        logger.info("slot %s: %s %s", self.name, change.state, change.last_error)
        # One change at a time, in order (asyncio.Lock is FIFO): a slow write of "warming" must
        # not land after the "ready" that followed it.
        async with self._tell_lock:
            for listener in state_listeners:
                try:
                    result = listener(change)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    logger.exception("slot %s: state listener failed", self.name)

    # -- upstream protection --

    @property
    def slot_key(self) -> str:
        """The slot's name in Redis, as its leases have it: ``<id>:<name>``."""
        return f"{self.slot_id}:{self.name}"

    async def take_turn(self, timeout_s: float) -> int | None:
        """Wait until this request may call the upstream. While the slot's last real call
        failed (``suspect``), at most one request per slot in this process calls it at a time
        (the turn, handed on in FIFO order), and no sooner than the slot-wide backoff allows
        (``next_call_at``); the others wait for its result. With REDIS_URL the rule holds
        across processes: a failure in any of them makes the slot suspect in all, and this
        process's turn holder also waits for the cluster's one turn and backoff
        (``Shared.protect_turn``); while Redis fails, the rule is this process's own. Returns
        the turn to give back with ``end_turn`` (None: the slot is healthy, call at once).
        Raises ``TimeoutError`` after ``timeout_s`` without a turn."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        store = self._cluster()
        if store is not None and not self.suspect:
            await self._sync(store)
        while self.suspect:
            if self._turn is None:
                self._turns += 1
                turn = self._turn = self._turns
                try:
                    may_call = await self._wait_to_call(deadline)
                except BaseException:
                    self.end_turn(turn)
                    raise
                if not may_call:  # another process's call or a probe cleared it meanwhile
                    self.end_turn(turn)
                    return None
                return turn
            waiter: asyncio.Future[None] = loop.create_future()
            self._turn_waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._turn_waiters.remove(waiter)
        return None

    async def _wait_to_call(self, deadline: float) -> bool:
        """Hold this process's turn until it may call: the cluster's turn and backoff when
        Redis answers, this process's backoff when there is none or it fails. False when the
        slot was cleared meanwhile. Raises ``TimeoutError`` when the backoff ends after
        ``deadline`` (loop time), or another caller still holds the turn then."""
        loop = asyncio.get_running_loop()
        while self.suspect:
            store = self._cluster()
            if store is None:
                wait = self.next_call_at - time.monotonic()
                if wait <= 0:
                    return True
                if loop.time() + wait > deadline:
                    raise TimeoutError
                await asyncio.sleep(wait)
                continue
            self._news.clear()  # what is heard from now on may change the answer
            verdict, wait = await self._ask_cluster(store)
            if verdict == "granted":
                return True
            if verdict in ("healthy", "failed"):
                continue  # healthy: cleared, the loop ends; failed: this process's rule
            if verdict == "backoff" and loop.time() + wait > deadline:
                raise TimeoutError
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            # Ask again when the wait is over, or sooner when news of the slot arrives (the
            # holder elsewhere gave the turn back, failed or succeeded).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), min(wait, remaining))
        return False

    def end_turn(self, turn: int | None) -> None:
        """Give the turn back (no-op for None or a turn a success already ended): the next
        waiter takes it. The cluster's turn, when this turn holds it, goes back too."""
        if turn is None or turn != self._turn:
            return
        token = self._take_token(turn)
        store = self._store or shared()
        if token is not None and store is not None:
            self._report(lambda: store.protect_release(self.slot_key, token))
        self._turn = None
        while self._turn_waiters:
            waiter = self._turn_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def call_failed(self, error: str, *, warming: bool, turn: int | None = None) -> None:
        """A real call failed before its answer began: the slot is suspect and the next call
        backs off. ``warming`` (503, or refused after being seen up) makes the state warming;
        other failures (resets, timeouts, 502/504) leave the state to the retry rule.
        ``turn`` is the caller's (``take_turn``'s), if it had one: with Redis, the failure is
        counted there too, and the cluster's turn it held goes back with it."""
        now = time.monotonic()
        self.suspect, self.failed_at = True, now
        self.failures += 1
        delay = min(CALL_BACKOFF_CAP_S, CALL_BACKOFF_BASE_S * 2 ** (self.failures - 1))
        self.next_call_at = now + delay / 2 + random.uniform(0, delay / 2)
        store = self._store or shared()
        if store is not None:
            token, jitter = self._take_token(turn), random.random()
            self._report(
                lambda: store.protect_failed(
                    self.slot_key,
                    token,
                    base_s=CALL_BACKOFF_BASE_S,
                    cap_s=CALL_BACKOFF_CAP_S,
                    jitter=jitter,
                )
            )
        if warming:
            self.set_state(SlotState.WARMING, error)

    def call_succeeded(self) -> None:
        """A real call opened: the slot is ready, the turn ends, and the requests waiting for
        a turn go, ``RELEASE_STAGGER_S`` apart in their order (with Redis, in every process)."""
        self.set_state(SlotState.READY)
        if not self.suspect:
            return
        self._cleared()
        store = self._store or shared()
        if store is not None:
            self._report(lambda: store.protect_clear(self.slot_key))

    def _cleared(self) -> None:
        """Trusted again (a success here or elsewhere): the turn ends, the waiters go."""
        if not self.suspect:
            return
        self.suspect, self.failures, self.next_call_at = False, 0, 0.0
        self._turn, self._token = None, None
        loop = asyncio.get_running_loop()
        for position, waiter in enumerate(self._turn_waiters):
            loop.call_later(position * RELEASE_STAGGER_S, _wake, waiter)
        self._turn_waiters.clear()

    # -- upstream protection across processes --

    def _cluster(self) -> Shared | None:
        """The shared store for reading the rule's state: None without REDIS_URL, and for
        ``CLUSTER_RETRY_S`` after Redis failed."""
        if self._cluster_down and time.monotonic() < self._cluster_retry_at:
            return None
        return self._store or shared()

    async def _sync(self, store: Shared) -> None:
        """Learn once (again after the news listener reconnected) whether another process found
        the slot failing, and hear of it from then on. Requests arriving meanwhile wait for the
        same read; one that leaves does not cancel it."""
        synced = self._synced
        if synced is None:
            synced = self._synced = spawn(self._read_cluster(store))
        if not synced.done():
            await asyncio.wait((synced,))

    async def _read_cluster(self, store: Shared) -> None:
        try:
            store.protect_watch(self.slot_key, self._heard)
            await store.protect_subscribed(CLUSTER_TIMEOUT_S)  # news from before the read
            async with asyncio.timeout(CLUSTER_TIMEOUT_S):
                suspect = await store.protect_suspect(self.slot_key)
        except Exception as exc:
            self._cluster_failed(exc)
            return
        self._cluster_answered()
        if suspect:
            self._heard("suspect")

    def _heard(self, what: str) -> None:
        """News of this slot from any process (this one's own included): ``suspect`` (a call
        failed), ``clear`` (one succeeded), ``free`` (a turn given back), ``sync`` (the listener
        reconnected: read the state again)."""
        if what == "suspect":
            # Calls, not /health, decide for a while after the failure (PROBE_OVERRULES_AFTER_S).
            self.suspect, self.failed_at = True, time.monotonic()
        elif what == "clear":
            self._cleared()
        elif what == "sync":
            self._synced = None
        self._news.set()

    async def _ask_cluster(self, store: Shared) -> tuple[str, float]:
        """Ask Redis for the cluster's turn (``Shared.protect_turn``), once this process's own
        reports have landed (a failure reported just now must count). ``("failed", 0)`` when
        Redis did not answer: this process's rule holds for ``CLUSTER_RETRY_S``."""
        reports = self._reports
        if reports is not None and not reports.done():
            await asyncio.wait((reports,))
        token = uuid.uuid4().hex
        try:
            async with asyncio.timeout(CLUSTER_TIMEOUT_S):
                verdict, wait = await store.protect_turn(self.slot_key, token)
        except Exception as exc:
            self._cluster_failed(exc)
            return "failed", 0.0
        self._cluster_answered()
        if verdict == "granted":
            self._token = token
            spawn(self._keep_token(store, token))
        elif verdict == "healthy":  # cleared elsewhere (its news missed), or forgotten
            self._cleared()
        return verdict, wait

    async def _keep_token(self, store: Shared, token: str) -> None:
        """Renew the cluster's turn while this process's call holds it: a slow call keeps it,
        a dead process's lapses. Ends once the turn is given back (``_token`` changed), so a
        turn is never renewed after its call."""
        while True:
            await asyncio.sleep(store.PROTECT_TURN_TTL_MS / 3000)
            if self._token != token:
                return
            try:
                async with asyncio.timeout(CLUSTER_TIMEOUT_S):
                    if not await store.protect_keep(self.slot_key, token):
                        return  # voided by a success elsewhere
            except Exception:
                return  # Redis is away: the turn lapses there, the call goes on here

    def _take_token(self, turn: int | None) -> str | None:
        """The cluster's turn, when ``turn`` is this process's turn and holds it; the caller
        gives it back."""
        if turn is None or turn != self._turn or self._token is None:
            return None
        token, self._token = self._token, None
        return token

    def _report(self, write: Callable[[], Awaitable[object]]) -> None:
        """Send ``write`` to Redis after this process's earlier ones (a success must not land
        before the failure that preceded it), as a task: the request does not wait for it."""
        previous = self._reports

        async def send() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))
            try:
                async with asyncio.timeout(CLUSTER_TIMEOUT_S):
                    await write()
            except Exception as exc:
                self._cluster_failed(exc)
            else:
                self._cluster_answered()

        self._reports = spawn(send())

    def _cluster_failed(self, exc: Exception) -> None:
        self._cluster_retry_at = time.monotonic() + CLUSTER_RETRY_S
        self._synced = None  # read the state again once Redis answers
        if not self._cluster_down:  # one line per outage, not one per call
            self._cluster_down = True
            logger.warning(
                "slot %s: upstream protection is per process until Redis answers again (%s)",
                self.name,
                str(exc) or type(exc).__name__,
            )

    def _cluster_answered(self) -> None:
        if self._cluster_down:
            self._cluster_down = False
            logger.info("slot %s: upstream protection is across processes again", self.name)

    @property
    def ready(self) -> bool:
        return self.state == SlotState.READY

    async def wait_changed(self, timeout_s: float) -> None:
        """Return when the state changes, or after ``timeout_s``."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)

    def note_backend(self, backend: BackendConfig, health_path: str) -> None:
        self.backend, self.health_path = backend, health_path

    # -- probes --

    def probe_soon(self) -> None:
        """Start probing the backend until the slot is ready (no-op when already probing or
        when no backend is known yet)."""
        self._probe_until = time.monotonic() + PROBE_INTEREST_S
        if self.backend is None or (self._probe_task and not self._probe_task.done()):
            return
        self._probe_task = spawn(self._probe_loop())

    async def _probe_loop(self) -> None:
        while time.monotonic() < self._probe_until:
            state = await self.probe() if self._turn is None else self.state
            if state == SlotState.READY:
                return
            await self.wait_changed(PROBE_INTERVAL_S.get(state, 5.0))
            if self.ready:
                return

    async def probe(self) -> SlotState:
        """GET the backend's health path once and set the state from the answer: 2xx ready,
        503 warming, refused connection warming (when seen up before) or error, anything else
        error. Returns the new state."""
        backend = self.backend
        if backend is None:
            return self.state
        try:
            response = await client_for(backend).get(
                backend.url(self.health_path), timeout=backend.connect_timeout_s
            )
        except httpx.ConnectError as exc:
            self.set_state(
                SlotState.WARMING if self.seen_up else SlotState.ERROR, f"unreachable: {exc}"
            )
            return self.state
        except httpx.HTTPError as exc:
            self.set_state(SlotState.ERROR, f"health check failed: {exc or type(exc).__name__}")
            return self.state
        if response.status_code < 300:
            if self.suspect and time.monotonic() - self.failed_at < PROBE_OVERRULES_AFTER_S:
                return self.state  # the last real call failed: calls, not /health, decide
            if self.suspect:
                self.call_succeeded()
            self.set_state(SlotState.READY)
        elif response.status_code == 503:
            self.set_state(SlotState.WARMING, "the backend is loading its model (HTTP 503)")
        else:
            self.set_state(SlotState.ERROR, f"health check answered HTTP {response.status_code}")
        return self.state

    # -- admission --

    async def acquire(
        self, *, limit: int, timeout_s: float, generation: Generation | None = None
    ) -> None:
        """Take one of the slot's ``limit`` places, waiting in FIFO order up to ``timeout_s``.
        Queue positions are published on ``generation`` as ``Phase(PhaseState.QUEUED)``. Raises
        ``RelayError`` 429 (with ``retry_after``) when the wait times out."""
        if self.in_flight < limit and not self.waiters:
            self.in_flight += 1
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (place, generation)
        self.waiters.append(entry)
        self._announce_positions()
        try:
            await asyncio.wait_for(asyncio.shield(place), timeout_s)
        except BaseException as exc:
            if place.done() and not place.cancelled():
                self.release(limit=limit)  # granted just as we gave up: give it back
            else:
                place.cancel()
                self._remove(entry)
            if isinstance(exc, TimeoutError):
                raise RelayError(
                    f"Slot {self.name} is busy: {limit} requests in flight and the queue did "
                    f"not move within {timeout_s:g} s. Try again shortly.",
                    status=429,
                    type="rate_limit_error",
                    code="slot_queue_timeout",
                    retry_after=QUEUE_RETRY_AFTER_S,
                ) from None
            raise

    def release(self, *, limit: int) -> None:
        """Give a place back and let the next waiters in, oldest first."""
        self.in_flight -= 1
        granted = False
        while self.waiters and self.in_flight < limit:
            place, _ = self.waiters.popleft()
            if not place.done():
                place.set_result(None)
                self.in_flight += 1
                granted = True
        if granted:
            self._announce_positions()
        elif not self.waiters:
            observe.observer.queue_length(self.name, 0)

    def _remove(self, entry: tuple[asyncio.Future[None], Generation | None]) -> None:
        try:
            self.waiters.remove(entry)
        except ValueError:
            return
        self._announce_positions()

    def _announce_positions(self) -> None:
        from chat.relay.generation import Phase, PhaseState

        observe.observer.queue_length(self.name, len(self.waiters))
        for position, (_, generation) in enumerate(self.waiters, start=1):
            if generation is not None:
                generation.set_phase(Phase(PhaseState.QUEUED, self.name, position=position))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# Runtimes hold asyncio objects bound to the loop that made them, so they are per loop (one loop
# under daphne; one per test under pytest-asyncio), keyed by slot id and name so that a renamed
# or re-created slot starts afresh.
_runtimes: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, str], SlotRuntime]
] = weakref.WeakKeyDictionary()


def slot_runtime(slot: SlotConfig) -> SlotRuntime:
    """``slot``'s live state in the running process (its backend noted for health checks)."""
    runtime = runtime_for(slot.id, slot.name)
    runtime.note_backend(slot.backend, slot.health_path)
    return runtime


def runtime_for(slot_id: int, name: str) -> SlotRuntime:
    """The running loop's runtime of one slot, created (``cold``) on first use."""
    per_loop = _runtimes.setdefault(asyncio.get_running_loop(), {})
    runtime = per_loop.get((slot_id, name))
    if runtime is None:
        runtime = per_loop[(slot_id, name)] = SlotRuntime(slot_id, name)
    return runtime
