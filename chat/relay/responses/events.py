"""A chat-completions upstream's chunks turned into the Responses API's typed, numbered events
(``ResponseEvents``), deterministic given the response skeleton and the chunks: replaying a
stored response's chunks re-renders its exact stream (``render``, ``replay``)."""

from __future__ import annotations

import json
import re
from typing import Any

from chat.relay.responses.request import Offered, ToolNames, usage_of
from chat.relay.sse import encode_event

# Which incomplete_details.reason a chat finish_reason becomes (others complete the response).
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponseEvents:
    """Turns chat chunks (choice 0) into Responses events, numbered from 0.

    ``start()`` gives ``response.created`` and ``response.in_progress``; ``feed(chunk)`` the
    events one chunk makes (reasoning, text, refusal and tool-call deltas, opening and closing
    output items as the kind of output changes); ``finish(...)`` closes the open item and gives
    the terminal event. Each method returns a list of event objects (``{"type", …,
    "sequence_number"}``); ``encode`` makes one SSE event of one. ``response`` is the response
    object as it stands (output items as finished so far). A ``<think>`` block in content
    (a model served without a reasoning parser) stays in the text, as the upstream sent it.
    """

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = {**response, "output": []}
        self.sequence = 0
        self._base = response["id"].removeprefix("resp_")
        self._open: dict[str, Any] | None = None  # the message or reasoning item streaming
        self._part_kind = ""  # its open content part: output_text, refusal, reasoning_text
        self._text: list[str] = []  # the open part's text so far
        # Function calls stream side by side (a chat delta may interleave their fragments), so
        # all of them stay open until text comes or the answer ends.
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index → its open item
        self._calls_seen: set[int] = set()
        self._index_of: dict[str, int] = {}  # item id → output index
        self._generated_call_ids: set[str] = set()
        self._last_added: dict[str, Any] = {}
        # What the chat names of the request's tools stand for (``Response.tools`` echoes
        # them, so a replay of stored chunks names its calls the same way).
        self._names = ToolNames(response.get("tools") or ())
        self._inputs: dict[str, CustomInput] = {}  # custom call item id → its input so far
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None

    # -- the public steps ------------------------------------------------------------------------
    def start(self) -> list[dict[str, Any]]:
        snapshot = self._snapshot()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self.chat_usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the Responses API has one output; n is not part of it
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events += self._text_delta("reasoning", "reasoning_text", reasoning)
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._text_delta("message", "output_text", delta["content"])
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                events += self._text_delta("message", "refusal", delta["refusal"])
            for fragment in delta.get("tool_calls") or ():
                if isinstance(fragment, dict):
                    events += self._call_delta(fragment)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(
        self,
        *,
        cancelled: bool = False,
        error: dict[str, Any] | None = None,
        completed_at: int | None = None,
    ) -> list[dict[str, Any]]:
        """Close what is open and end: ``response.failed`` with ``error`` (a ``Response.error``
        object, ``error_of``); status ``cancelled`` (stopped before its end) as
        ``response.failed`` too, since OpenAI's stream has no cancelled event;
        ``response.incomplete`` for a length or content-filter finish; else
        ``response.completed`` (at ``completed_at``, Unix s)."""
        reason = _INCOMPLETE_REASONS.get(self.finish_reason or "")
        item_status = "incomplete" if (reason or cancelled or error) else "completed"
        events = self._close(item_status)
        response = self.response
        usage = usage_of(self.chat_usage)
        if usage is not None:
            response["usage"] = usage
        if error is not None:
            response["status"], response["error"] = "failed", error
            kind = "response.failed"
        elif cancelled:
            response["status"], kind = "cancelled", "response.failed"
        elif reason:
            response["status"], kind = "incomplete", "response.incomplete"
            response["incomplete_details"] = {"reason": reason}
        else:
            response["status"], kind = "completed", "response.completed"
            response["completed_at"] = completed_at
        events.append(self._event(kind, response=self._snapshot()))
        return events

    @staticmethod
    def encode(event: dict[str, Any]) -> bytes:
        """One event as SSE bytes: ``event: <type>`` and its JSON on one ``data:`` line."""
        return encode_event(
            json.dumps(event, separators=(",", ":"), ensure_ascii=False), event=event["type"]
        )

    # -- items -----------------------------------------------------------------------------------
    def _text_delta(self, item_kind: str, part_kind: str, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self._close_calls("completed")
        if self._open is None or self._open["type"] != item_kind:
            events += self._close_text("completed")
            events += self._add_item(item_kind)
        if self._part_kind != part_kind:
            events += self._close_part()
            events += self._add_part(part_kind)
        self._text.append(text)
        item = self._open
        assert item is not None
        where = {
            "item_id": item["id"],
            "output_index": self._index_of[item["id"]],
            "content_index": len(item["content"]),
        }
        if part_kind == "output_text":
            events.append(
                self._event("response.output_text.delta", **where, delta=text, logprobs=[])
            )
        elif part_kind == "refusal":
            events.append(self._event("response.refusal.delta", **where, delta=text))
        else:
            events.append(self._event("response.reasoning_text.delta", **where, delta=text))
        return events

    def _call_delta(self, fragment: dict[str, Any]) -> list[dict[str, Any]]:
        """One tool-call fragment (keyed by its ``index``; without one, a new call, as
        ``MessageAccumulator`` counts them). A fragment of a call closed already (text came
        between) has nothing to add to and is dropped. A call of a custom tool is a
        ``custom_tool_call`` item whose ``input`` streams as the decoded ``input`` argument;
        a call of a namespace's tool carries its ``namespace``."""
        events: list[dict[str, Any]] = []
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = len(self._calls_seen)
        function = fragment.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            if index in self._calls_seen:
                return events
            self._calls_seen.add(index)
            events += self._close_text("completed")
            call_id = fragment.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"call_{self._base}{self._next_index:02d}"
                self._generated_call_ids.add(call_id)
            offered = self._names.offered(str(function.get("name") or ""))
            kind = "custom_tool_call" if offered.kind == "custom" else "function_call"
            events += self._add_item(kind, call_id=call_id, offered=offered)
            item = self._calls[index] = self._last_added
        # Some servers send the id or the name after the first fragment.
        if fragment.get("id") and item["call_id"] in self._generated_call_ids:
            item["call_id"] = fragment["id"]
        if function.get("name") and not item["name"]:
            _name(item, self._names.offered(function["name"]))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events += self._arguments(item, arguments)
        return events

    def _arguments(self, item: dict[str, Any], arguments: str) -> list[dict[str, Any]]:
        where = {"item_id": item["id"], "output_index": self._index_of[item["id"]]}
        if item["type"] == "function_call":
            item["arguments"] += arguments
            return [self._event("response.function_call_arguments.delta", **where, delta=arguments)]
        text = self._inputs[item["id"]].feed(arguments)
        if not text:
            return []
        item["input"] += text
        return [self._event("response.custom_tool_call_input.delta", **where, delta=text)]

    @property
    def _next_index(self) -> int:
        return len(self._index_of)

    def _add_item(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}.get(kind, "ctc")
        index = self._next_index
        item: dict[str, Any] = {
            "id": f"{prefix}_{self._base}{index:02d}",
            "type": kind,
            "status": "in_progress",
        }
        self._index_of[item["id"]] = index
        if kind == "message":
            item.update(role="assistant", content=[])
        elif kind == "reasoning":
            item.update(summary=[], content=[])
        else:
            item["call_id"] = fields["call_id"]
            _name(item, fields["offered"])
            if kind == "function_call":
                item["arguments"] = ""
            else:
                item["input"] = ""
                self._inputs[item["id"]] = CustomInput()
        if kind in ("message", "reasoning"):
            self._open = item
        self._last_added = item
        return [self._event("response.output_item.added", output_index=index, item=_copy(item))]

    def _add_part(self, kind: str) -> list[dict[str, Any]]:
        self._part_kind, self._text = kind, []
        item = self._open
        assert item is not None
        return [
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self._index_of[item["id"]],
                content_index=len(item["content"]),
                part=_part(kind, ""),
            )
        ]

    def _close_part(self) -> list[dict[str, Any]]:
        item = self._open
        if item is None or not self._part_kind:
            return []
        kind, text = self._part_kind, "".join(self._text)
        self._part_kind, self._text = "", []
        where = {
            "item_id": item["id"],
            "output_index": self._index_of[item["id"]],
            "content_index": len(item["content"]),
        }
        events = []
        if kind == "output_text":
            events.append(self._event("response.output_text.done", **where, text=text, logprobs=[]))
        elif kind == "refusal":
            events.append(self._event("response.refusal.done", **where, refusal=text))
        else:
            events.append(self._event("response.reasoning_text.done", **where, text=text))
        events.append(self._event("response.content_part.done", **where, part=_part(kind, text)))
        item["content"].append(_part(kind, text))
        return events

    def _close(self, status: str) -> list[dict[str, Any]]:
        """Close whatever is open (text, or calls: never both)."""
        return self._close_text(status) + self._close_calls(status)

    def _close_text(self, status: str) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        events = self._close_part()
        events += self._done(item, status)
        self._open = None
        return events

    def _close_calls(self, status: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for item in sorted(self._calls.values(), key=lambda i: self._index_of[i["id"]]):
            where = {"item_id": item["id"], "output_index": self._index_of[item["id"]]}
            if item["type"] == "function_call":
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        **where,
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                )
            else:
                whole = self._inputs.pop(item["id"]).whole()
                if whole.startswith(item["input"]) and len(whole) > len(item["input"]):
                    rest = whole[len(item["input"]) :]
                    events.append(
                        self._event("response.custom_tool_call_input.delta", **where, delta=rest)
                    )
                item["input"] = whole
                events.append(
                    self._event("response.custom_tool_call_input.done", **where, input=whole)
                )
            events += self._done(item, status)
        self._calls.clear()
        return events

    def _done(self, item: dict[str, Any], status: str) -> list[dict[str, Any]]:
        item["status"] = status
        self.response["output"].append(item)
        return [
            self._event(
                "response.output_item.done",
                output_index=self._index_of[item["id"]],
                item=_copy(item),
            )
        ]

    # -- helpers ---------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return _copy(self.response)


def _name(item: dict[str, Any], offered: Offered) -> None:
    """A call item's ``name`` (and ``namespace``, when its tool is in one), as the client
    declared them."""
    item["name"] = offered.name
    if offered.namespace is not None:
        item["namespace"] = offered.namespace


class CustomInput:
    """A custom tool's input as its chat arguments (``{"input": "…"}``, see ``_chat_tool``)
    stream in. ``feed(fragment)`` gives the input's text that the fragment completes (escapes
    decoded; an escape or a surrogate pair cut in two waits for its end); ``whole()`` the
    input once the arguments are complete: their ``input`` (or only) string, or the arguments
    themselves when a model wrote the raw input instead of JSON."""

    _OPENING = re.compile(r'\s*\{\s*"input"\s*:\s*"')
    _DECODER = json.JSONDecoder(strict=False)  # a model may write a raw newline in a string

    def __init__(self) -> None:
        self.arguments = ""
        self._start: int | None = None  # where the input string's characters begin
        self._streaming = True
        self._given = ""

    def feed(self, fragment: str) -> str:
        self.arguments += fragment
        if not self._streaming:
            return ""
        if self._start is None:
            opening = self._OPENING.match(self.arguments)
            if opening is None:
                compact = re.sub(r"\s", "", self.arguments)
                self._streaming = '{"input":"'.startswith(compact)
                return ""
            self._start = opening.end()
        text = self._decoded(self.arguments[self._start :])
        if text is None or not text.startswith(self._given):
            self._streaming = False
            return ""
        new, self._given = text[len(self._given) :], text
        return new

    def _decoded(self, raw: str) -> str | None:
        """The decoded text of the longest complete prefix of a JSON string's characters."""
        i, n = 0, len(raw)
        while i < n and raw[i] != '"':
            if raw[i] != "\\":
                i += 1
                continue
            step = 6 if raw[i + 1 : i + 2] == "u" else 2
            if i + step > n:
                break
            i += step
        try:
            text: str = self._DECODER.decode(f'"{raw[:i]}"')
        except ValueError:
            return None
        if text and "\ud800" <= text[-1] <= "\udbff":
            text = text[:-1]  # the first half of a surrogate pair: its second is still to come
        return text

    def whole(self) -> str:
        try:
            value = self._DECODER.decode(self.arguments)
        except ValueError:
            return self.arguments
        if isinstance(value, dict):
            given = value.get("input")
            if isinstance(given, str):
                return given
            strings = [v for v in value.values() if isinstance(v, str)]
            if len(strings) == 1:
                return strings[0]
        return self.arguments


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "reasoning_text", "text": text}


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON object (events must not change when the response does later)."""
    copied: dict[str, Any] = json.loads(json.dumps(obj))
    return copied


def output_text(response: dict[str, Any]) -> str:
    """The text of a response's message items (what the SDKs call ``output_text``)."""
    return "".join(
        part.get("text", "")
        for item in response.get("output") or ()
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if part.get("type") == "output_text"
    )


def initial_of(response: dict[str, Any]) -> dict[str, Any]:
    """The ``in_progress`` object a stored (ended) response's stream began with."""
    response = {k: v for k, v in response.items() if k != "usage"}
    return {
        **response,
        "status": "in_progress",
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "output": [],
    }


def render(
    initial: dict[str, Any],
    chunks: list[dict[str, Any]],
    *,
    cancelled: bool = False,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every event of a response's stream and its final object, rendered from the ``initial``
    object (``response.created``'s) and its chunks (parsed): the same events, numbers included,
    as a live stream of the same chunks sends."""
    events = ResponseEvents(initial)
    out = events.start()
    for chunk in chunks:
        out += events.feed(chunk)
    out += events.finish(cancelled=cancelled, error=error, completed_at=completed_at)
    return out, events.response


def replay(response: dict[str, Any], chunks: list[str]) -> list[dict[str, Any]]:
    """Every event of a stored, ended response's stream, rendered again from its stored chunks
    (JSON texts)."""
    events, _ = render(
        initial_of(response),
        [json.loads(chunk) for chunk in chunks],
        cancelled=response["status"] == "cancelled",
        error=response.get("error"),
        completed_at=response.get("completed_at"),
    )
    return events
