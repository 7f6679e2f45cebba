"""Stop sequences enforced by the relay, for upstreams that ignore ``stop``.

OpenAI API reference (Chat Completions, ``stop``): "Up to 4 sequences where the API will stop
generating further tokens. The returned text will not contain the stop sequence." The relay
applies the same rule to every stop string it knows (the slot's and the request's), holding back
only the characters that could still begin one, so no other token is delayed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from chat.relay.types import Chunk


class StopHoldback:
    """Cuts one text stream before the first occurrence of any stop string.

    ``feed(text)`` returns the characters that are now certain to be output; ``held`` is what is
    kept back: the longest tail of the text so far that is a proper prefix of some stop string.
    Once a stop string is seen, ``stopped`` is True and everything after it is dropped.
    ``flush()`` releases the held tail at the end of the stream.
    """

    __slots__ = ("held", "stopped", "stops")

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(s for s in dict.fromkeys(stops) if s)
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buffer = self.held + text
        keep = self._prefix_tail(buffer)
        pending = len(buffer) - keep  # where a stop string may still be starting
        cut = self._first_match(buffer)
        if cut >= 0 and not (keep and pending < cut):
            self.held, self.stopped = "", True
            return buffer[:cut]
        # No match, or a longer stop string that began earlier may still complete (stops
        # "\n" and "a\na" on "a\n|a": the answer ends before the "a", not after it).
        self.held = buffer[pending:]
        return buffer[:pending]

    def flush(self) -> str:
        """The held tail at the end of the stream, cut at a stop string it already holds."""
        held, self.held = self.held, ""
        cut = self._first_match(held)
        if cut >= 0:
            self.stopped = True
            return held[:cut]
        return held

    def _first_match(self, buffer: str) -> int:
        return min((i for s in self.stops if (i := buffer.find(s)) >= 0), default=-1)

    def _prefix_tail(self, buffer: str) -> int:
        """The length of the longest tail of ``buffer``, shorter than the longest stop string,
        that some stop string starts with: where a match may still be under way."""
        for size in range(min(len(buffer), max(len(s) for s in self.stops) - 1), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self.stops):
                return size
        return 0


def stop_strings(value: Any) -> list[str]:
    """The ``stop`` field of a request as a list: a string, a list of strings, or nothing."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [s for s in value if isinstance(s, str) and s]
    return []


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class StopEnforcer:
    """Applies ``StopHoldback`` to each choice of a chunk stream.

    Chat chunks carry text in ``choices[i].delta.content``, legacy completions in
    ``choices[i].text``. A chunk whose text is unchanged is passed on as it came (its raw
    ``data`` too); a changed one is re-serialised. When a stop string ends a choice, the choice
    gets a final chunk with ``finish_reason: "stop"`` and its later chunks are dropped; ``done``
    turns True once every choice seen has stopped, so the caller can close the upstream.
    """

    def __init__(self, stops: Iterable[str], *, chat: bool) -> None:
        self.stops = tuple(stops)
        self.chat = chat
        self.choices: dict[int, StopHoldback] = {}
        self.finished: set[int] = set()
        self.template: dict[str, Any] | None = None  # id, object, created, model of the stream

    @property
    def done(self) -> bool:
        """Every choice has ended and the relay cut at least one: the upstream is ignoring
        ``stop`` and whatever it still sends would be dropped, so it can be closed."""
        return (
            bool(self.choices)
            and len(self.finished) == len(self.choices)
            and any(h.stopped for h in self.choices.values())
        )

    def apply(self, chunk: Chunk) -> list[Chunk]:
        """The chunks to pass on in place of ``chunk`` (none, it, a changed copy, plus a finish
        chunk for a choice that just hit a stop string)."""
        obj = chunk.obj
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return [chunk]  # usage-only and other choice-less chunks pass untouched
        if self.template is None:
            self.template = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        out_choices: list[Any] = []
        finishes: list[int] = []
        changed = False
        for choice in choices:
            kept, choice_changed, stopped = self._apply_choice(choice)
            changed = changed or choice_changed
            if kept is not None:
                out_choices.append(kept)
            if stopped is not None:
                finishes.append(stopped)
        out: list[Chunk] = []
        if not changed:
            out.append(chunk)
        elif out_choices:
            new = {**obj, "choices": out_choices}
            out.append(Chunk(_dumps(new), new))
        out.extend(self._finish_chunk(index) for index in finishes)
        return out

    def _apply_choice(self, choice: Any) -> tuple[Any, bool, int | None]:
        """One choice of a chunk: what to pass on (None: nothing), whether that differs from
        what came, and the choice's index when a stop string has just ended it."""
        if not isinstance(choice, dict):
            return choice, False, None
        index = choice.get("index", 0)
        holdback = self.choices.get(index)
        if holdback is None:
            holdback = self.choices[index] = StopHoldback(self.stops)
        if holdback.stopped:  # cut by a stop string: the upstream's tail is dropped
            return None, True, None
        text = self._text(choice)
        emitted = holdback.feed(text) if text else ""
        upstream_finished = choice.get("finish_reason") is not None
        if upstream_finished and not holdback.stopped:
            emitted += holdback.flush()
        if holdback.stopped:
            self.finished.add(index)
            return self._cut(choice, emitted), True, index
        if upstream_finished:
            self.finished.add(index)
        if emitted == text:
            return choice, False, None
        if emitted or self._has_more_than_text(choice) or choice.get("finish_reason"):
            return self._with_text(choice, emitted), True, None
        return None, True, None

    def _cut(self, choice: dict[str, Any], emitted: str) -> dict[str, Any] | None:
        """The last piece of a choice a stop string ended (its finish chunk follows)."""
        if emitted or self._has_more_than_text(choice):
            return self._with_text(choice, emitted, finish_reason=None)
        return None

    def flush(self) -> list[Chunk]:
        """At the end of an upstream stream that never sent a ``finish_reason``: the held text
        of each open choice, in one chunk per choice."""
        out = []
        for index, holdback in self.choices.items():
            if index in self.finished:
                continue
            self.finished.add(index)
            text = holdback.flush()
            if text:
                piece = {"delta": {"content": text}} if self.chat else {"text": text}
                obj = {
                    **(self.template or {}),
                    "choices": [{"index": index, **piece, "finish_reason": None}],
                }
                out.append(Chunk(_dumps(obj), obj))
            if holdback.stopped:
                out.append(self._finish_chunk(index))
        return out

    def _text(self, choice: dict[str, Any]) -> str:
        if self.chat:
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
        else:
            content = choice.get("text")
        return content if isinstance(content, str) else ""

    def _has_more_than_text(self, choice: dict[str, Any]) -> bool:
        """Whether the delta carries anything besides its text (a role, reasoning, tool calls)
        that must still reach the client."""
        if self.chat:
            delta = choice.get("delta")
            return isinstance(delta, dict) and any(
                k != "content" and v is not None for k, v in delta.items()
            )
        return False

    def _with_text(self, choice: dict[str, Any], text: str, **fields: Any) -> dict[str, Any]:
        if self.chat:
            delta = dict(choice.get("delta") or {})
            delta["content"] = text
            return {**choice, "delta": delta, **fields}
        return {**choice, "text": text, **fields}

    def _finish_chunk(self, index: int) -> Chunk:
        piece: dict[str, Any] = {"delta": {}} if self.chat else {"text": ""}
        obj = {
            **(self.template or {}),
            "choices": [{"index": index, **piece, "finish_reason": "stop"}],
        }
        return Chunk(_dumps(obj), obj)
