"""The slot dispatcher: every request, from the chat, the widget or ``/v1``, meets its slot here.

Per request, in order (after hal0's dispatcher):

1. **Single-flight**: an identical request (same endpoint and canonical upstream body, stream-only
   fields aside) already in flight on the slot is joined instead of calling the upstream again;
   per slot ``off``, ``not_ready`` (only while the slot is not ready, the default) or ``always``.
2. **Fallback**: a slot in ``error`` with a fallback hands the request to it at once.
3. **Admission**: at most ``max_concurrency`` requests in flight per slot; the rest wait in FIFO
   order up to ``queue_timeout_s``, then 429 with ``Retry-After``.
4. **Cold boot**: while the upstream answers 503 ("Loading model") or refuses connections after
   it was seen up, the request waits up to ``cold_boot_timeout_s`` (polling, and woken early by
   the slot's probes), then 503 with ``Retry-After``.
5. **Retries**: before the first chunk is published, connection errors, upstream 502/503/504 and
   timeouts are retried up to ``max_retries`` times with exponential backoff and full jitter;
   never after. When they are spent, the fallback slot (if any) takes the request.
6. **Stop sequences**: the slot's and the request's ``stop`` strings are enforced on the stream
   (``stops.StopEnforcer``), whether or not the upstream honours them.

Streaming requests become a ``Generation`` run as its own task (``submit``); non-streaming ones
are one JSON call with the same admission, cold-boot, retry and fallback rules
(``complete_whole``); both go through ``with_slot_policy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from chat.relay import chunkcheck, drain, observe, upstream
from chat.relay.background import spawn
from chat.relay.cluster import shared
from chat.relay.errors import RelayError
from chat.relay.generation import Generation, Phase, PhaseState, Status, find
from chat.relay.slots import QUEUE_RETRY_AFTER_S, SlotRuntime, SlotState, slot_runtime
from chat.relay.stops import StopEnforcer, stop_strings
from chat.relay.types import SlotConfig
from chat.relay.upstream import UpstreamStream, request_json

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

SINGLE_FLIGHT_MODES = ("off", "not_ready", "always")
# OpenAI accepts at most 4 stop sequences (API reference, ``stop``); the relay enforces all of
# them itself and sends the upstream only the first 4, so a strict upstream does not refuse.
UPSTREAM_STOP_LIMIT = 4
# Retry-After for a slot still warming after its cold-boot timeout: model loads take tens of
# seconds, so a client should not come back at once.
WARMING_RETRY_AFTER_S = 10.0
RETRYABLE_STATUSES = frozenset({502, 503, 504})
RETRYABLE_CODES = frozenset(
    {
        upstream.REFUSED,
        upstream.UNREACHABLE,
        upstream.RESET,
        upstream.CONNECT_TIMEOUT,
        upstream.TIMEOUT,
    }
)
# Stream-only request fields: they change how an answer is delivered, not what it is.
_STREAM_ONLY_FIELDS = ("stream", "stream_options")


# ------------------------------------------------------------------------------------------------
# Request bodies
# ------------------------------------------------------------------------------------------------
def request_body(
    slot: SlotConfig, request: dict[str, Any], *, chat: bool, stream: bool
) -> dict[str, Any]:
    """The body to send upstream for an OpenAI request addressed to ``slot``.

    ``model`` becomes the slot's upstream model id; slot defaults fill absent fields; ``stop`` is
    the slot's stop strings plus the request's (the first ``UPSTREAM_STOP_LIMIT``). For chat, the
    slot's system prompt is prepended unless the request brings its own system or developer
    message. Streaming asks for the usage chunk (``stream_options.include_usage``, OpenAI API
    reference) so token counts are exact. Every other field passes through untouched.
    """
    body = {**slot.defaults, **request, "model": slot.upstream_model, "stream": stream}
    stops = all_stops(slot, request)
    if stops:
        body["stop"] = stops[:UPSTREAM_STOP_LIMIT]
    else:
        body.pop("stop", None)
    if chat:
        messages = list(request.get("messages") or ())
        if slot.system_prompt and not any(
            isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages
        ):
            messages.insert(0, {"role": "system", "content": slot.system_prompt})
        body["messages"] = messages
    if stream:
        # Always ask for the usage chunk; the API drops it again for clients that did not ask.
        options = dict(body.get("stream_options") or {})
        options.setdefault("include_usage", True)
        body["stream_options"] = options
    return body


RESPONSES = "responses"
EMBEDDINGS = "embeddings"


def upstream_body(
    slot: SlotConfig, request: dict[str, Any], *, endpoint: str, stream: bool
) -> dict[str, Any]:
    """The body ``endpoint`` (``"chat/completions"``, ``"completions"``, ``"responses"``,
    ``"embeddings"``) sends to ``slot``'s backend for the client's ``request``."""
    if endpoint == RESPONSES:
        return responses_body(slot, request, stream=stream)
    if endpoint == EMBEDDINGS:
        return {**request, "model": slot.upstream_model}
    return request_body(slot, request, chat=_is_chat(endpoint), stream=stream)


def responses_body(slot: SlotConfig, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The body of a Responses API request passed to a backend's own ``/responses``: ``model``
    the slot's upstream model; slot defaults for silent fields (``max_tokens`` as
    ``max_output_tokens``); the slot's system prompt as ``instructions`` unless the request
    brings instructions or a system/developer message; ``store`` false (Slipstream stores the
    response; the backend need not). The caller has already spelled out any
    ``previous_response_id`` chain as input items."""
    body = {**request, "model": slot.upstream_model, "stream": stream, "store": False}
    for name, value in slot.defaults.items():
        body.setdefault("max_output_tokens" if name == "max_tokens" else name, value)
    items = body.get("input")
    has_system = isinstance(items, list) and any(
        isinstance(item, dict) and item.get("role") in ("system", "developer") for item in items
    )
    if slot.system_prompt and not body.get("instructions") and not has_system:
        body["instructions"] = slot.system_prompt
    return body


def all_stops(slot: SlotConfig, request: dict[str, Any]) -> list[str]:
    """The slot's stop strings then the request's, each once."""
    return list(dict.fromkeys([*slot.stop, *stop_strings(request.get("stop"))]))


def coalescing_key(endpoint: str, body: dict[str, Any]) -> str:
    """What makes two requests identical for single-flight: the endpoint and the upstream body
    in canonical JSON, stream-only fields aside."""
    canonical = {k: v for k, v in body.items() if k not in _STREAM_ONLY_FIELDS}
    return endpoint + " " + json.dumps(canonical, sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------------------------------------------------
# Streaming: generations
# ------------------------------------------------------------------------------------------------
async def submit(
    slot: SlotConfig,
    endpoint: str,
    request: dict[str, Any],
    *,
    started_at: float | None = None,
    keep_running: bool = False,
) -> tuple[Generation, bool]:
    """Start (or join) the generation answering ``request`` on ``slot``.

    ``endpoint`` is ``"chat/completions"``, ``"completions"`` or ``"responses"`` (a backend's
    own Responses API: its events are the chunks, stop strings are not enforced); ``request`` is
    the client's OpenAI request (its ``model`` is replaced per slot). Returns the generation,
    already ``attach``-ed for the caller (who must ``detach``), and whether an identical
    request's generation was joined, in this process or (with ``REDIS_URL``) in another one,
    whose buffer is then mirrored here. Failures arrive through the generation (``status``,
    ``error``); only a process that drains refuses here: ``RelayError`` 503 ``draining``
    (``chat.relay.drain``).
    """
    drain.refuse()
    runtime = slot_runtime(slot)
    key = None
    if slot.single_flight == "always" or (
        slot.single_flight == "not_ready" and runtime.state != SlotState.READY
    ):
        body = upstream_body(slot, request, endpoint=endpoint, stream=True)
        key = coalescing_key(endpoint, body)
        joined = runtime.coalescing.get(key)
        if joined is not None and joined.status == Status.STREAMING:
            # A joiner whose answer must outlive its reader (the chat's, which resumes) keeps
            # the shared one running: the others' readers leaving must not cut it.
            joined.keep_running |= keep_running
            joined.attach()
            observe.observer.joined(slot.name)
            return joined, True
    store = shared()
    generation_id = uuid.uuid4().hex
    if store is not None and key is not None:
        running = await store.claim(slot.name, key, generation_id)
        if running is not None:
            mirror = find(running) or store.mirror(
                running, slot=slot.name, keep_running=keep_running
            )
            mirror.keep_running |= keep_running
            mirror.attach()
            observe.observer.joined(slot.name)
            return mirror, True
    generation = Generation(
        slot=slot.name,
        started_at=started_at,
        keep_running=keep_running,
        generation_id=generation_id,
    )
    generation.attach()
    if key is not None:
        runtime.coalescing[key] = generation
    if store is not None:
        store.publish(generation)
    generation.task = spawn(_run(generation, slot, endpoint, request, runtime=runtime, key=key))
    return generation, False


def _is_chat(endpoint: str) -> bool:
    return endpoint == "chat/completions"


async def _run(
    generation: Generation,
    slot: SlotConfig,
    endpoint: str,
    request: dict[str, Any],
    *,
    runtime: SlotRuntime,
    key: str | None,
) -> None:
    """The generation's task: dispatch, relay every chunk into the buffer, finish once."""
    status, error = Status.STOPPED, None
    chat = _is_chat(endpoint)
    observe.observer.started(slot.name)

    async def attempt(cfg: SlotConfig, body: dict[str, Any]) -> None:
        # Stop strings are cut from chat deltas; a backend's Responses events pass as they are.
        stops = [] if endpoint == RESPONSES else all_stops(cfg, request)
        await _relay(generation, cfg, endpoint, body, stops=stops, chat=chat)

    try:
        await with_slot_policy(
            slot,
            request,
            endpoint=endpoint,
            stream=True,
            attempt=attempt,
            published=lambda: bool(generation.chunks),
            generation=generation,
        )
        status = Status.COMPLETE
    except RelayError as exc:
        status, error = Status.ERROR, exc
    except asyncio.CancelledError:
        status = Status.STOPPED
    except Exception:  # a bug must still end the answer, never leave it "streaming"
        logger.exception("generation %s failed", generation.id)
        # The client learns that it failed, never how: class names and tracebacks stay in the log.
        status, error = (
            Status.ERROR,
            RelayError("internal error", status=500, code="internal_error"),
        )
    finally:
        await _forget(generation, slot.name, runtime=runtime, key=key)
        await asyncio.shield(generation.finish(status, error))
        ttft_ms = generation.ttft_ms
        observe.observer.ended(
            slot.name,
            status=status,
            ttft_s=None if ttft_ms is None else ttft_ms / 1000,
            tokens=generation.accumulator.completion_tokens(),
            duration_s=time.monotonic() - generation.started_at,
            error_code=(error.code or error.type or "") if error is not None else "",
        )


async def _relay(
    generation: Generation,
    cfg: SlotConfig,
    endpoint: str,
    body: dict[str, Any],
    *,
    stops: list[str],
    chat: bool,
) -> None:
    """One attempt: open the upstream stream on ``cfg`` and publish its chunks into the
    generation, ``stops`` enforced. Raises ``RelayError`` (before the first chunk: the
    dispatcher may retry) or ``MidStreamError``."""
    stream = await UpstreamStream.open(cfg.backend, endpoint, body)
    slot_runtime(cfg).call_succeeded()
    generation.set_phase(Phase(PhaseState.STREAMING, cfg.name))
    generation.set_slot(cfg.name)
    try:
        async with aclosing(stream.chunks()) as chunks:
            if not stops:
                async for chunk in chunks:
                    generation.publish(chunk)
                return
            enforcer = StopEnforcer(stops, chat=chat)
            async for chunk in chunks:
                for out in enforcer.apply(chunk):
                    generation.publish(out)
                if enforcer.done:
                    break  # the upstream ignored stop: closing it stops the compute
            for out in enforcer.flush():
                generation.publish(out)
    finally:
        await stream.aclose()


async def _forget(
    generation: Generation, slot_name: str, *, runtime: SlotRuntime, key: str | None
) -> None:
    """Take an ended generation out of the single-flight table, and give up its claim across
    processes."""
    if key is None:
        return
    if runtime.coalescing.get(key) is generation:
        del runtime.coalescing[key]
    store = shared()
    if store is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(store.unclaim(slot_name, key, generation.id))


# ------------------------------------------------------------------------------------------------
# Non-streaming
# ------------------------------------------------------------------------------------------------
async def complete_whole(
    slot: SlotConfig, endpoint: str, request: dict[str, Any]
) -> dict[str, Any]:
    """A non-streaming call under the same rules as a stream: returns the upstream's JSON
    answer with the stop strings enforced on each choice's text. Raises ``RelayError`` (503
    ``draining`` at once while the process drains, which waits for the call otherwise)."""
    chat = _is_chat(endpoint)

    async def attempt(cfg: SlotConfig, body: dict[str, Any]) -> dict[str, Any]:
        result = await _json_object(cfg, endpoint, body)
        problem = chunkcheck.completion_problem(result, chat=chat)
        if problem is not None:
            raise RelayError(
                f"upstream answered with a malformed completion: {problem}",
                code=upstream.INCOMPLETE
                if "finish_reason" in problem
                else "upstream_malformed_body",
            )
        _cut_at_stops(result, all_stops(cfg, request), chat=chat)
        return result

    with drain.whole_call():
        return await with_slot_policy(
            slot, request, endpoint=endpoint, stream=False, attempt=attempt, published=lambda: False
        )


async def call_whole(
    slot: SlotConfig, endpoint: str, request: dict[str, Any]
) -> tuple[dict[str, Any], SlotConfig]:
    """A non-streaming call whose answer is not a chat or text completion (``"embeddings"``,
    or ``"responses"`` on a backend's own Responses API) under the slot's policy, its body
    from ``upstream_body``. Returns the upstream's JSON object (NUL characters removed) and the
    slot of the chain that answered (a fallback, once it took over). Raises ``RelayError``
    (503 ``draining`` at once while the process drains)."""

    async def attempt(cfg: SlotConfig, body: dict[str, Any]) -> tuple[dict[str, Any], SlotConfig]:
        return await _json_object(cfg, endpoint, body), cfg

    with drain.whole_call():
        return await with_slot_policy(
            slot, request, endpoint=endpoint, stream=False, attempt=attempt, published=lambda: False
        )


async def _json_object(cfg: SlotConfig, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """One non-streaming POST to ``cfg``'s backend: its JSON object answer, NUL characters
    removed (they cannot be stored). Raises ``RelayError``."""
    result = await request_json(cfg.backend, "POST", endpoint, body)
    slot_runtime(cfg).call_succeeded()
    if not isinstance(result, dict):
        raise RelayError(
            "upstream answered with a body that is not an object", code="upstream_malformed_body"
        )
    if chunkcheck.has_nul(json.dumps(result)):
        result = chunkcheck.without_nul(result)
    return result


def _cut_at_stops(result: dict[str, Any], stops: list[str], *, chat: bool) -> None:
    if not stops:
        return
    for choice in result.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        holder = choice.get("message") if chat else choice
        text = holder.get("content" if chat else "text") if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or not isinstance(text, str):
            continue
        cut = min((i for s in stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            holder["content" if chat else "text"] = text[:cut]
            choice["finish_reason"] = "stop"


# ------------------------------------------------------------------------------------------------
# The rules both share
# ------------------------------------------------------------------------------------------------
async def with_slot_policy(
    slot: SlotConfig,
    request: dict[str, Any],
    *,
    endpoint: str,
    stream: bool,
    attempt: Callable[[SlotConfig, dict[str, Any]], Awaitable[_T]],
    published: Callable[[], bool],
    generation: Generation | None = None,
) -> _T:
    """Run ``attempt(slot, body)`` under the slot's policy, falling back along its chain.

    ``published()`` tells whether a byte of the answer has reached a client (no retry, no
    fallback after that). Phases (queued, warming, retrying) are published on ``generation``.
    Raises the last ``RelayError``, its ``slot`` naming the slot whose call failed (a fallback
    may lack what the primary has: ``/responses``, say).
    """
    chain = slot.chain()
    for position, cfg in enumerate(chain):
        last = position == len(chain) - 1
        runtime = slot_runtime(cfg)
        if runtime.state == SlotState.ERROR and not last:
            runtime.probe_soon()  # it may come back; meanwhile the fallback answers
            continue
        body = upstream_body(cfg, request, endpoint=endpoint, stream=stream)
        try:
            lease = await _admit(cfg, runtime, generation)
        except RelayError as exc:
            exc.slot = exc.slot or cfg.name
            raise
        try:
            return await _attempts(cfg, runtime, body, attempt, published, generation)
        except RelayError as exc:
            exc.slot = exc.slot or cfg.name
            # Spent retries, or a model still loading after its cold-boot wait: the fallback
            # answers instead, if nothing reached the client yet.
            if last or published() or not (_retryable(exc) or exc.code == "slot_warming"):
                raise
            logger.warning(
                "slot %s failed (%s); falling back to %s", cfg.name, exc, chain[position + 1].name
            )
        finally:
            runtime.release(limit=cfg.max_concurrency)
            store = shared()
            if lease is not None and store is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(store.release_lease(lease))
    raise AssertionError("unreachable: the last slot of a chain raises or returns")


async def _admit(
    cfg: SlotConfig, runtime: SlotRuntime, generation: Generation | None
) -> str | None:
    """A place on the slot: in this process's FIFO queue, then (with ``REDIS_URL``) a lease
    across processes, all within ``queue_timeout_s``. Returns the lease to give back, if any.
    Raises ``RelayError`` 429."""
    started = time.monotonic()
    await runtime.acquire(
        limit=cfg.max_concurrency, timeout_s=cfg.queue_timeout_s, generation=generation
    )
    store = shared()
    if store is None:
        return None
    remaining = max(0.0, cfg.queue_timeout_s - (time.monotonic() - started))
    try:
        lease = await store.acquire_lease(
            f"{cfg.id}:{cfg.name}", limit=cfg.max_concurrency, timeout_s=remaining
        )
    except BaseException:
        runtime.release(limit=cfg.max_concurrency)
        raise
    if lease is None:
        runtime.release(limit=cfg.max_concurrency)
        raise RelayError(
            f"Slot {cfg.name} is busy: {cfg.max_concurrency} requests in flight and none ended "
            f"within {cfg.queue_timeout_s:g} s. Try again shortly.",
            status=429,
            type="rate_limit_error",
            code="slot_queue_timeout",
            retry_after=QUEUE_RETRY_AFTER_S,
        )
    return lease


async def _attempts(
    cfg: SlotConfig,
    runtime: SlotRuntime,
    body: dict[str, Any],
    attempt: Callable[[SlotConfig, dict[str, Any]], Awaitable[_T]],
    published: Callable[[], bool],
    generation: Generation | None,
) -> _T:
    """Call the upstream until an answer begins, under the slot's protection rule (README,
    "Slots"): while the slot's calls fail, one request at a time calls it, spaced by the
    slot-wide backoff (``SlotRuntime.take_turn``). A warming upstream (503, or a refusal after
    being seen up) holds the request up to ``cold_boot_timeout_s``, then 503 ``slot_warming``;
    transient failures (resets, timeouts, 502/504, refusals of a server never seen up) are
    retried ``max_retries`` times; anything else is raised at once."""
    retries = _Retries(cfg, runtime, generation)
    while True:
        turn = await retries.take_turn()
        try:
            return await attempt(cfg, body)
        except RelayError as exc:
            if published():
                raise
            retries.after(exc, turn)
        finally:
            runtime.end_turn(turn)


class _Retries:
    """One request's way through a failing slot: its cold-boot deadline and retry count."""

    def __init__(self, cfg: SlotConfig, runtime: SlotRuntime, generation: Generation | None):
        self.cfg, self.runtime, self.generation = cfg, runtime, generation
        self.retries = 0
        self.warm_deadline = time.monotonic() + cfg.cold_boot_timeout_s

    async def take_turn(self) -> int | None:
        """``SlotRuntime.take_turn`` within the cold-boot deadline. Raises ``RelayError`` 503
        ``slot_warming`` when the deadline passes first."""
        if self.runtime.suspect and self.runtime.state == SlotState.WARMING:
            self._phase(Phase(PhaseState.WARMING, self.cfg.name))
        try:
            return await self.runtime.take_turn(max(0.0, self.warm_deadline - time.monotonic()))
        except TimeoutError:
            raise _still_warming(self.cfg, self.runtime.last_error) from None

    def after(self, exc: RelayError, turn: int | None = None) -> None:
        """Count a failed call before any chunk (made in ``turn``, if the slot gave one);
        return to try again, or raise to give up."""
        warming = _warming(exc, self.runtime)
        retrying = warming or (_retryable(exc) and self.retries < self.cfg.max_retries)
        observe.observer.attempt_failed(
            self.cfg.name, code=exc.code or exc.type or str(exc.status), retrying=retrying
        )
        if not warming and not _retryable(exc):
            raise exc
        self.runtime.call_failed(exc.message, warming=warming, turn=turn)
        if warming:
            if time.monotonic() >= self.warm_deadline:
                raise _still_warming(self.cfg, exc.message) from exc
            self._phase(Phase(PhaseState.WARMING, self.cfg.name))
            return
        if self.retries >= self.cfg.max_retries:
            self.runtime.set_state(SlotState.ERROR, exc.message)
            raise exc
        self.retries += 1
        delay = max(0.0, self.runtime.next_call_at - time.monotonic())
        self._phase(
            Phase(
                PhaseState.RETRYING, self.cfg.name, attempt=self.retries, retry_in_s=round(delay, 2)
            )
        )
        logger.info("slot %s: retry %d in %.2f s after %s", self.cfg.name, self.retries, delay, exc)

    def _phase(self, phase: Phase) -> None:
        if self.generation is not None:
            self.generation.set_phase(phase)


def _still_warming(cfg: SlotConfig, error: str) -> RelayError:
    return RelayError(
        f"Slot {cfg.name} is still warming up after {cfg.cold_boot_timeout_s:g} s. "
        "Try again shortly.",
        status=503,
        type="service_unavailable",
        code="slot_warming",
        retry_after=WARMING_RETRY_AFTER_S,
    )


def _warming(exc: RelayError, runtime: SlotRuntime) -> bool:
    """503 ("Loading model", or a server shedding load), or a refused connection from a
    backend seen up before (restarting). Resets and timeouts are not: a server that drops
    connections is failing, not loading."""
    if exc.upstream_status == 503:
        return True
    return exc.code == upstream.REFUSED and runtime.seen_up


def _retryable(exc: RelayError) -> bool:
    return exc.upstream_status in RETRYABLE_STATUSES or (
        exc.upstream_status is None and exc.code in RETRYABLE_CODES
    )
