"""Generations as SSE byte streams, for every surface.

One loop reads a generation for all of them (``generation_sse``): subscribe from a sequence
number, turn each chunk, phase and keep-alive into bytes, detach however the client leaves, then
the final events. Two renderings sit on it:

- ``answer_sse``, the chat's and the widget's: a named ``slipstream.message`` event first, the
  upstream's chunks unchanged with ``id:`` their sequence number (WHATWG SSE "last event ID":
  a reconnect resumes after it), ``slipstream.status`` events while the answer waits, then a
  ``slipstream.done`` event and ``data: [DONE]`` or a final ``data: {"error": …}``.
- ``api_sse``, ``/v1``'s: the chunks rewritten as OpenAI's (``ChunkRewriter``), keep-alive
  comments, then ``data: [DONE]`` or one final ``data: {"error": …}`` (OpenAI API reference,
  "Streaming"; the SDKs raise that as ``APIError``).
- ``responses_sse``, ``/v1/responses``': the chunks as typed Responses events
  (``chat.relay.responses.ResponseEvents``), numbered, ending in the response's terminal event;
  ``native_responses_sse`` relays a backend's own Responses events (``NativeEvents``).

Framing goes through ``chat.relay.sse`` only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import aclosing
from typing import Any

from django.conf import settings

from chat.relay.background import spawn
from chat.relay.generation import KEEPALIVE, Generation, Phase, ReaderStop, Status
from chat.relay.responses import NativeEvents, ResponseEvents, error_of
from chat.relay.sse import DONE_EVENT, KEEPALIVE_COMMENT, encode_data, encode_event
from chat.relay.types import Chunk

# What the end of a stream looks like to a surface, given the ended generation.
EndRenderer = Callable[[Generation], bytes]
# Called once when the client stops reading, with whether it read to the end; shielded from
# cancellation (a client that leaves still gets its call recorded).
LeaveHook = Callable[[bool], Coroutine[Any, Any, None]]


async def generation_sse(
    generation: Generation,
    *,
    render_chunk: Callable[[int, Chunk], bytes | None],
    render_end: EndRenderer,
    render_phase: Callable[[Phase], bytes] | None = None,
    head: bytes = b"",
    after: int = 0,
    on_leave: LeaveHook | None = None,
    stop: ReaderStop | None = None,
) -> AsyncGenerator[bytes, None]:
    """``head``, then every chunk after sequence number ``after`` (``render_chunk(sequence,
    chunk)``; None skips it), phases while the answer waits, ``: keep-alive`` comments after
    ``SLIPSTREAM_KEEPALIVE_S`` without news, and ``render_end(generation)`` once it ended.

    The caller has ``attach``-ed the generation; this detaches it however the stream ends (a
    client that goes away cancels this generator: Django does so for async streaming
    responses; ``stop`` ends this stream alone, the generation going on for its other
    readers), then runs ``on_leave``."""
    read_to_end = False
    # Chunks that arrived together (one upstream read, or while this client's socket was slow)
    # leave as one write: one ASGI message, one socket send, instead of one per chunk.
    pending: list[bytes] = []
    try:
        if head:
            yield head
        sequence = after
        async with aclosing(
            generation.subscribe(
                after=after, keepalive_s=settings.SLIPSTREAM_KEEPALIVE_S, stop=stop
            )
        ) as events:
            async for item in events:
                if isinstance(item, Chunk):
                    sequence += 1
                    data = render_chunk(sequence, item)
                    if data is not None:
                        pending.append(data)
                    if sequence < len(generation.chunks):
                        continue  # the next one is already here
                elif item is KEEPALIVE:
                    pending.append(KEEPALIVE_COMMENT)
                elif render_phase is not None and isinstance(item, Phase):
                    pending.append(render_phase(item))
                if pending:
                    yield b"".join(pending)
                    pending.clear()
        read_to_end = True
    finally:
        generation.detach()
        if on_leave is not None:
            # A task of its own context, not the request's: it may outlive the request, whose
            # thread for sync calls (chatsite.asgi) is no longer its own by then.
            await asyncio.shield(spawn(on_leave(read_to_end)))
    pending.append(render_end(generation))
    yield b"".join(pending)


# ------------------------------------------------------------------------------------------------
# The chat and the widget
# ------------------------------------------------------------------------------------------------
def answer_sse(
    generation: Generation,
    meta: dict[str, Any],
    *,
    after: int = 0,
    stop: ReaderStop | None = None,
) -> AsyncGenerator[bytes, None]:
    """The browser's stream of one answer from chunk ``after`` + 1 (see the module). ``meta``
    is the ``slipstream.message`` event's object (stored ids, generation id, slot). ``stop``:
    ends this answer's stream while the generation goes on for another answer that shares
    it (single-flight); it then ends as a stopped answer does."""

    def render_end(ended: Generation) -> bytes:
        return _answer_end(ended, stopped=stop is not None and stop.stopped)

    return generation_sse(
        generation,
        head=encode_event(json.dumps(meta), event="slipstream.message"),
        after=after,
        render_chunk=lambda sequence, chunk: encode_data(chunk.data, id=sequence),
        render_phase=_phase_event,
        render_end=render_end,
        stop=stop,
    )


def _phase_event(phase: Phase) -> bytes:
    return encode_event(json.dumps(phase.as_dict()), event="slipstream.status")


def _answer_end(generation: Generation, *, stopped: bool = False) -> bytes:
    """``slipstream.done`` (``status``, ``slot``, ``finish_reason``, ``ttft_ms`` in ms,
    ``tokens_per_s``, ``usage``), then ``[DONE]`` or the error envelope. ``stopped``: this
    reader's answer was stopped while the generation went on (``answer_sse``'s ``stop``)."""
    done: dict[str, Any]
    if stopped:
        done = {
            "status": Status.STOPPED,
            "slot": generation.slot,
            "finish_reason": None,
            "ttft_ms": generation.ttft_ms,
            "tokens_per_s": generation.tokens_per_s,
            "usage": None,
        }
        return encode_event(json.dumps(done), event="slipstream.done") + DONE_EVENT
    done = {
        "status": generation.status,
        "slot": generation.slot,
        "finish_reason": generation.accumulator.finish_reason(),
        "ttft_ms": generation.ttft_ms,
        "tokens_per_s": generation.tokens_per_s,
        "usage": generation.accumulator.usage,
    }
    return encode_event(json.dumps(done), event="slipstream.done") + _final(generation)


def _final(generation: Generation) -> bytes:
    if generation.error is not None:
        return encode_data(json.dumps(generation.error.envelope()))
    return DONE_EVENT


# ------------------------------------------------------------------------------------------------
# /v1
# ------------------------------------------------------------------------------------------------
def api_sse(
    generation: Generation, rewriter: ChunkRewriter, *, on_leave: LeaveHook
) -> AsyncGenerator[bytes, None]:
    """``/v1``'s stream of one completion (see the module). A client that disconnects detaches;
    as the generation's last subscriber that cancels it, which closes the upstream response."""
    return generation_sse(
        generation,
        render_chunk=lambda _, chunk: rewriter(chunk),
        render_end=_final,
        on_leave=on_leave,
    )


class ChunkRewriter:
    """Makes upstream chunks OpenAI's: one ``chatcmpl-…`` (or ``cmpl-…``) id for the whole
    stream, ``model`` set to the slot name, ``role`` on each choice's first delta, and the
    usage-only chunk (``choices: []``) dropped unless the client asked for it with
    ``stream_options.include_usage`` (Slipstream always asks upstream, to record tokens).
    Returns the encoded SSE event, or None for a dropped chunk."""

    def __init__(self, *, completion_id: str, model: str, include_usage: bool, chat: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self._id_json = json.dumps(completion_id)
        self._model_json = json.dumps(model)
        self.include_usage = include_usage
        self.chat = chat
        self.seen_choices: set[int] = set()
        # '"id":"<the upstream's id>"' by (field, value): upstreams repeat them on every chunk.
        self._upstream_fields: dict[tuple[str, str], str] = {}

    def __call__(self, chunk: Chunk) -> bytes | None:
        # The chunk is shared with every subscriber of the generation: copy, never mutate.
        obj = chunk.obj
        choices = obj.get("choices")
        if not choices and obj.get("usage") and not self.include_usage:
            return None
        needs_role = (
            self.chat
            and choices
            and any(
                isinstance(c, dict) and c.get("index", 0) not in self.seen_choices for c in choices
            )
        )
        if not needs_role:
            fast = self._swap_id_and_model(chunk)
            if fast is not None:
                return encode_data(fast)
        out = {**obj, "id": self.completion_id, "model": self.model}
        if needs_role and isinstance(choices, list):
            out["choices"] = [self._with_role(choice) for choice in choices]
        return encode_data(json.dumps(out, separators=(",", ":"), ensure_ascii=False))

    def _swap_id_and_model(self, chunk: Chunk) -> str | None:
        """The chunk's own text with its ``id`` and ``model`` values replaced, when each
        appears exactly once in the compact form ``"id":"…"``; else None (then the chunk is
        re-serialised). Most chunks take this path: a text replacement instead of a JSON
        encode per chunk, and the upstream's own bytes for everything else."""
        data, obj = chunk.data, chunk.obj
        for field, value in (("id", self._id_json), ("model", self._model_json)):
            current = obj.get(field)
            if not isinstance(current, str):
                return None
            old = self._upstream_fields.get((field, current))
            if old is None:
                if len(self._upstream_fields) > 8:  # an upstream that changes them per chunk
                    self._upstream_fields.clear()
                old = self._upstream_fields[field, current] = f'"{field}":{json.dumps(current)}'
            if data.count(old) != 1:
                return None
            data = data.replace(old, f'"{field}":{value}')
        return data

    def _with_role(self, choice: Any) -> Any:
        if not isinstance(choice, dict):
            return choice
        index = choice.get("index", 0)
        if index in self.seen_choices:
            return choice
        self.seen_choices.add(index)
        delta = choice.get("delta")
        if isinstance(delta, dict) and "role" not in delta:
            return {**choice, "delta": {"role": "assistant", **delta}}
        return choice


# ------------------------------------------------------------------------------------------------
# /v1/responses
# ------------------------------------------------------------------------------------------------
def responses_sse(
    generation: Generation,
    events: ResponseEvents,
    *,
    starting_after: int = -1,
    on_leave: LeaveHook | None = None,
) -> AsyncGenerator[bytes, None]:
    """``/v1/responses``' stream (OpenAI API reference, "Streaming events"): the generation's
    chat chunks as typed Responses events from ``events`` (``response.created`` first, a
    terminal ``response.completed`` / ``.incomplete`` / ``.failed`` last, no ``[DONE]``),
    only those numbered after ``starting_after`` (a resumed stream; -1: all). Keep-alives are
    SSE comments, which every client skips."""

    def encoded(batch: list[dict[str, Any]]) -> bytes | None:
        out = [ResponseEvents.encode(e) for e in batch if e["sequence_number"] > starting_after]
        return b"".join(out) or None

    return generation_sse(
        generation,
        head=encoded(events.start()) or b"",
        render_chunk=lambda _, chunk: encoded(events.feed(chunk.obj)),
        render_end=lambda ended: encoded(finish_events(events, ended)) or b"",
        on_leave=on_leave,
    )


def finish_events(events: ResponseEvents, generation: Generation) -> list[dict[str, Any]]:
    """The closing events of a response fed by ``generation``, once it ended."""
    return events.finish(**response_ending(generation, events.response["created_at"]))


def response_ending(
    generation: Generation, created_at: int, *, left: bool = False
) -> dict[str, Any]:
    """How a response fed by ``generation`` ends, as ``ResponseEvents.finish``'s arguments:
    failed with its error, cancelled when it was stopped (or its client ``left`` before the
    end), else by its finish_reason. ``completed_at`` (s) is ``created_at`` plus the
    generation's own duration, so every rendering of one response (the live stream, a resumed
    one, the stored object) says the same second."""
    ended_at = generation.ended_at if generation.ended_at is not None else time.monotonic()
    failed = generation.status == Status.ERROR and generation.error is not None
    return {
        "cancelled": left or generation.status == Status.STOPPED,
        "error": error_of(generation.error) if failed and generation.error else None,
        "completed_at": created_at + round(ended_at - generation.started_at),
    }


def native_responses_sse(
    generation: Generation,
    native: NativeEvents,
    *,
    starting_after: int = -1,
    on_leave: LeaveHook | None = None,
) -> AsyncGenerator[bytes, None]:
    """``/v1/responses``' stream from a backend's own Responses API: its events as they came,
    id and model made ours (``NativeEvents``), those numbered after ``starting_after``, and a
    ``response.failed`` of our own when it ended without a terminal event."""

    def render_chunk(_: int, chunk: Chunk) -> bytes | None:
        data, number = native.feed(chunk.data, chunk.obj)
        return data if number > starting_after else None

    def render_end(ended: Generation) -> bytes:
        closing = native.finish(**response_ending(ended, 0))
        return b"".join(
            ResponseEvents.encode(e) for e in closing if e["sequence_number"] > starting_after
        )

    return generation_sse(
        generation, render_chunk=render_chunk, render_end=render_end, on_leave=on_leave
    )
