"""A backend's own Responses API (the native path): its events relayed with our id and model,
and a ``response.failed`` of ours when its stream ends without a terminal event."""

from __future__ import annotations

import json
from typing import Any

from chat.relay.responses.events import ResponseEvents
from chat.relay.responses.request import ToolNames, chat_call
from chat.relay.sse import encode_event
from chat.relay.types import TERMINAL_EVENTS

# The fields of a natively answered response that are Slipstream's, not the backend's.
_OURS = ("id", "model", "store", "previous_response_id")


class NativeEvents:
    """A backend's own Responses events, relayed as they came with the response's ``id`` and
    ``model`` made ours (``initial``: our ``in_progress`` object); everything else, item ids
    and sequence numbers included, is the backend's. A stream that ends without a terminal
    event (the backend failed or was cut off, or the client cancelled) gets a
    ``response.failed`` of our own, numbered after the last event, whose response holds the
    output items finished so far."""

    def __init__(self, initial: dict[str, Any]) -> None:
        self.initial = initial
        self.response = initial
        # What our response says whatever the backend's says: ours are stored here, it need
        # not store them, and it never saw our previous_response_id.
        self._ours = {name: initial.get(name) for name in _OURS}
        self._id_json = json.dumps(initial["id"])
        self._model_field = '"model":' + json.dumps(initial["model"])
        self._swaps: list[tuple[str, str]] = []
        self.items: dict[int, dict[str, Any]] = {}
        self.last_sequence = -1
        self.terminal = False

    def feed(self, data: str, obj: dict[str, Any]) -> tuple[bytes, int]:
        """One upstream event (its JSON text and object) as SSE bytes, and its number."""
        kind = str(obj.get("type"))
        response = obj.get("response")
        if isinstance(response, dict):
            if not self._swaps:
                self._learn(response)
            data = self._rewrite(data, obj, response)
        if kind == "response.output_item.done" and isinstance(obj.get("item"), dict):
            index = obj.get("output_index")
            self.items[index if isinstance(index, int) else len(self.items)] = obj["item"]
        if kind in TERMINAL_EVENTS:
            self.terminal = True
        sequence = obj.get("sequence_number")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            self.last_sequence = sequence
        return encode_event(data, event=kind), self.last_sequence

    def finish(
        self, *, cancelled: bool = False, error: dict[str, Any] | None = None, **_: Any
    ) -> list[dict[str, Any]]:
        """The closing event when the backend sent none (see the class), else nothing.
        Accepts ``ResponseEvents.finish``'s arguments (``completed_at`` is the backend's)."""
        if self.terminal:
            return []
        self.terminal = True
        self.response = {
            **self.response,
            "status": "cancelled" if cancelled and error is None else "failed",
            "error": error,
            "output": [self.items[i] for i in sorted(self.items)],
        }
        self.last_sequence += 1
        return [
            {
                "type": "response.failed",
                "response": self.response,
                "sequence_number": self.last_sequence,
            }
        ]

    def _learn(self, response: dict[str, Any]) -> None:
        """The backend's id and model, as text to replace in every later event."""
        if isinstance(response.get("id"), str):
            self._swaps.append((json.dumps(response["id"]), self._id_json))
        if isinstance(response.get("model"), str):
            self._swaps.append(('"model":' + json.dumps(response["model"]), self._model_field))

    def _rewrite(self, data: str, obj: dict[str, Any], response: dict[str, Any]) -> str:
        """``data`` with the response's id and model replaced as text (the backend's bytes
        otherwise), or re-encoded when its JSON is not in the compact form that allows it or
        another of our fields (``store``, ``previous_response_id``) differs."""
        ours = {**response, **self._ours}
        self.response = ours
        if all(response.get(name) == self._ours[name] for name in _OURS[2:]):
            for old, new in self._swaps:
                data = data.replace(old, new)
            if self._id_json in data and self._model_field in data:
                return data
        return json.dumps({**obj, "response": ours}, separators=(",", ":"), ensure_ascii=False)


def render_native(
    initial: dict[str, Any],
    chunks: list[str],
    *,
    cancelled: bool = False,
    error: dict[str, Any] | None = None,
) -> tuple[list[bytes], list[int], dict[str, Any]]:
    """A native response's events (SSE bytes and their numbers) and its final object, from
    the backend's event texts as they came: the same bytes the live stream sent."""
    native = NativeEvents(initial)
    encoded, numbers = [], []
    for chunk in chunks:
        data, number = native.feed(chunk, json.loads(chunk))
        encoded.append(data)
        numbers.append(number)
    for event in native.finish(cancelled=cancelled, error=error):
        encoded.append(ResponseEvents.encode(event))
        numbers.append(event["sequence_number"])
    return encoded, numbers, native.response


def response_as_chunk(response: dict[str, Any]) -> dict[str, Any]:
    """A whole response object (a backend's own, non-streaming) as the one chat chunk that
    says the same, so its stream can be rendered by ``ResponseEvents`` when asked for."""
    delta: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    names = ToolNames(response.get("tools") or ())
    for item in response.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    delta["content"] = delta.get("content", "") + part.get("text", "")
                elif part.get("type") == "refusal":
                    delta["refusal"] = delta.get("refusal", "") + part.get("refusal", "")
        elif kind == "reasoning":
            text = "".join(p.get("text", "") for p in item.get("content") or ())
            delta["reasoning_content"] = delta.get("reasoning_content", "") + text
        elif kind in ("function_call", "custom_tool_call"):
            calls.append({**chat_call(item, names), "index": len(calls)})
    if calls:
        delta["tool_calls"] = calls
    incomplete = (response.get("incomplete_details") or {}).get("reason")
    finish = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(
        incomplete or "", "tool_calls" if calls else "stop"
    )
    usage = response.get("usage") or {}
    chat_usage = {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }
    return {
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": chat_usage if usage else None,
    }
