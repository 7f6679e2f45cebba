"""Fold streamed chunks into the final message: content, reasoning, tool calls, usage. (Events
of a backend's own Responses API fold into choice 0 the same way: ``_add_event``.)

Rules from the OpenAI API reference ("The chat completion chunk object"): ``choices[i].delta``
carries ``role`` once, then ``content`` fragments; ``tool_calls`` fragments are keyed by their
``index``, the first fragment of a call carrying ``id``, ``type`` and ``function.name`` and later
ones ``function.arguments`` pieces; ``finish_reason`` arrives on a choice's last chunk; ``usage``
arrives on a final chunk (``choices: []``) when ``stream_options.include_usage`` is set.
Reasoning arrives as ``reasoning_content`` (DeepSeek, vLLM, llama-server) or ``reasoning``
(vLLM ≥ 0.10, Ollama, OpenRouter, Groq); vLLM has sent both in one delta with the same text.
Models served without a reasoning parser (DeepSeek-R1 and Qwen3 on a plain llama-server or
vLLM) put it in ``content`` between ``<think>`` and ``</think>``: ``content``/``reasoning``
move such a leading block to the reasoning (``split_think``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chat.relay.chunkcheck import clean_usage


@dataclass(slots=True)
class ChoiceState:
    """What one choice index has accumulated so far."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    token_chunks: int = 0  # chunks that carried text: a token count when usage is absent


class MessageAccumulator:
    """Accumulates ``chat.completion.chunk`` (or legacy ``text_completion``) objects.

    ``add`` costs O(size of the chunk); joins happen once, when the text is read. Chunks must have
    passed ``chunkcheck.chunk_problem`` (``UpstreamStream`` checks every chunk it yields).
    """

    def __init__(self) -> None:
        self.choices: dict[int, ChoiceState] = {}
        self.usage: dict[str, Any] | None = None
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None

    def add(self, chunk: dict[str, Any]) -> bool:
        """Fold one chunk in. Returns True when it carried text (content, reasoning, refusal,
        tool-call arguments): the moment that counts for time to first token."""
        if "choices" not in chunk and "type" in chunk:
            return self._add_event(chunk)
        if self.id is None:
            self.id = chunk.get("id")
            self.model = chunk.get("model")
            self.created = chunk.get("created")
        usage = chunk.get("usage")
        if usage:
            # Stored and shown as is: only well-formed counts (an upstream's -5 or "many" would
            # fail the database's checks and cost the whole answer).
            self.usage = clean_usage(usage)
        carried = False
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = self.choices.get(index)
            if state is None:
                state = self.choices[index] = ChoiceState()
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]
            text = choice.get("text")  # legacy /v1/completions
            if text:
                state.content.append(text)
                carried = True
            delta = choice.get("delta")
            if delta and self._add_delta(state, delta):
                carried = True
            if carried:
                state.token_chunks += 1
        return carried

    def _add_event(self, event: dict[str, Any]) -> bool:
        """One event of a backend's own Responses stream (OpenAI API reference, "Streaming
        events"): text deltas into choice 0, the terminal event's usage (input/output tokens
        as prompt/completion tokens) and status (as a finish_reason)."""
        kind = event.get("type")
        delta = event.get("delta")
        state = self.choices.get(0)
        if state is None:
            state = self.choices[0] = ChoiceState()
        if isinstance(delta, str) and delta and isinstance(kind, str):
            if kind == "response.output_text.delta":
                state.content.append(delta)
            elif kind == "response.refusal.delta":
                state.refusal.append(delta)
            elif kind.startswith("response.reasoning"):
                state.reasoning.append(delta)
            state.token_chunks += 1
            return True
        response = event.get("response")
        if kind in _TERMINAL_FINISH and isinstance(response, dict):
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.usage = clean_usage(
                    {
                        "prompt_tokens": usage.get("input_tokens"),
                        "completion_tokens": usage.get("output_tokens"),
                        "total_tokens": usage.get("total_tokens"),
                    }
                )
            state.finish_reason = _TERMINAL_FINISH[kind]
        return False

    @staticmethod
    def _add_delta(state: ChoiceState, delta: dict[str, Any]) -> bool:
        carried = False
        content = delta.get("content")
        if content:
            state.content.append(content)
            carried = True
        # Prefer reasoning_content; only fall back to reasoning so a delta carrying both (vLLM
        # #29408) is not counted twice.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning and isinstance(reasoning, str):
            state.reasoning.append(reasoning)
            carried = True
        refusal = delta.get("refusal")
        if refusal:
            state.refusal.append(refusal)
            carried = True
        for fragment in delta.get("tool_calls") or ():
            index = fragment.get("index", len(state.tool_calls))
            call = state.tool_calls.get(index)
            if call is None:
                call = state.tool_calls[index] = {
                    "id": fragment.get("id") or "",
                    "type": fragment.get("type") or "function",
                    "function": {"name": "", "arguments": ""},
                }
            elif fragment.get("id") and not call["id"]:
                call["id"] = fragment["id"]
            function = fragment.get("function") or {}
            # The name comes whole in its first fragment; some servers (OpenRouter) repeat it.
            if function.get("name") and not call["function"]["name"]:
                call["function"]["name"] = function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]
                carried = True
            elif function.get("name"):
                carried = True
        return carried

    def choice(self, index: int = 0) -> ChoiceState:
        return self.choices.get(index) or ChoiceState()

    def content(self, index: int = 0) -> str:
        """The answer's text, without a leading ``<think>`` block."""
        return split_think("".join(self.choice(index).content))[1]

    def reasoning(self, index: int = 0) -> str:
        """Reasoning from the reasoning fields, then any leading ``<think>`` block of content."""
        fields = "".join(self.choice(index).reasoning)
        think = split_think("".join(self.choice(index).content))[0]
        return fields + ("\n" if fields and think else "") + think

    def refusal(self, index: int = 0) -> str:
        return "".join(self.choice(index).refusal)

    def tool_calls(self, index: int = 0) -> list[dict[str, Any]]:
        calls = self.choice(index).tool_calls
        return [calls[i] for i in sorted(calls)]

    def finish_reason(self, index: int = 0) -> str | None:
        return self.choice(index).finish_reason

    def completion_tokens(self, index: int = 0) -> int:
        """``usage.completion_tokens`` when the upstream sent usage, else the number of chunks
        that carried text (one token per chunk is what vLLM, llama-server and OpenAI send)."""
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return int(self.usage["completion_tokens"])
        return self.choice(index).token_chunks


# A Responses stream's terminal event as the finish_reason it amounts to.
_TERMINAL_FINISH = {
    "response.completed": "stop",
    "response.incomplete": "length",
    "response.failed": "error",
}

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_think(content: str) -> tuple[str, str]:
    """``(reasoning, answer)`` of a content that starts (after whitespace) with ``<think>``: the
    text up to ``</think>`` is reasoning, the rest (leading whitespace dropped) the answer. With
    no closing tag (cut off while thinking) it is all reasoning. Other content is all answer.
    static/chat/delta.js applies the same rule to streamed text."""
    stripped = content.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return "", content
    body = stripped[len(THINK_OPEN) :]
    end = body.find(THINK_CLOSE)
    if end < 0:
        return body.strip(), ""
    return body[:end].strip(), body[end + len(THINK_CLOSE) :].lstrip()
