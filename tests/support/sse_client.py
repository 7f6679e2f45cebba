"""Reading Slipstream's SSE answers in tests, with the project's own decoder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from chat.relay.sse import ServerSentEvent, SSEDecoder


@dataclass
class Answer:
    """Everything one stream carried: its events, and the parsed pieces tests look at."""

    status_code: int
    events: list[ServerSentEvent] = field(default_factory=list)

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [
            json.loads(e.data)
            for e in self.events
            if e.event == "message" and e.data != "[DONE]" and "error" not in json.loads(e.data)
        ]

    def meta(self, name: str) -> dict[str, Any]:
        (event,) = [e for e in self.events if e.event == name]
        result: dict[str, Any] = json.loads(event.data)
        return result

    @property
    def content(self) -> str:
        return "".join(
            (c["choices"][0]["delta"].get("content") or "") for c in self.chunks if c.get("choices")
        )


def read_sse(response: httpx.Response) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for raw in response.iter_raw():
        events.extend(decoder.feed(raw))
    return events + decoder.flush()


def post_message(client: httpx.Client, content: str, **fields: Any) -> Answer:
    with client.stream("POST", "/chat/stream/", json={"content": content, **fields}) as response:
        if response.status_code != 200:
            response.read()
            return Answer(response.status_code, [ServerSentEvent(data=response.text)])
        assert response.headers["content-type"].startswith("text/event-stream")
        return Answer(200, read_sse(response))


def text_of(events: list[ServerSentEvent]) -> str:
    """The answer's text in ``events`` (chat chunks' ``delta.content``, completions' ``text``,
    every choice; error events have none), as a reader put it together so far."""
    text = ""
    for event in events:
        if event.event == "message" and event.data != "[DONE]":
            for choice in json.loads(event.data).get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
    return text
