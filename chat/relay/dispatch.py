"""Where every request meets its slot: defaults filled in, then the upstream stream opened.

This is the seam the slot dispatcher grows from (state, cold boot, queueing, retries,
single-flight, fallback); today it routes one request to one upstream call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chat.relay.upstream import BackendConfig, UpstreamStream


@dataclass(frozen=True, slots=True)
class SlotConfig:
    """A slot as the relay sees it: ORM-free. ``defaults`` are request fields (temperature,
    max_tokens, stop, …) applied when the request is silent about them."""

    name: str
    upstream_model: str
    backend: BackendConfig
    system_prompt: str = ""
    defaults: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def chat_body(slot: SlotConfig, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The body to send upstream for an OpenAI chat request addressed to ``slot``.

    ``model`` becomes the slot's upstream model id; the slot's system prompt is prepended unless
    the request brings its own system message; slot defaults fill absent fields; streaming asks
    for the usage chunk (``stream_options.include_usage``, OpenAI API reference) so token counts
    are exact. Every other field passes through untouched.
    """
    body = {**slot.defaults, **request, "model": slot.upstream_model, "stream": stream}
    messages = list(request.get("messages") or ())
    if slot.system_prompt and not any(
        isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages
    ):
        messages.insert(0, {"role": "system", "content": slot.system_prompt})
    body["messages"] = messages
    return _with_usage(body) if stream else body


def completion_body(slot: SlotConfig, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The body to send upstream for a legacy ``/v1/completions`` request: slot defaults under
    the request's fields, the upstream model id, and the usage chunk asked for when streaming."""
    body = {**slot.defaults, **request, "model": slot.upstream_model, "stream": stream}
    return _with_usage(body) if stream else body


def _with_usage(body: dict[str, Any]) -> dict[str, Any]:
    # Always ask for the usage chunk, so token counts are exact; the API drops it again for
    # clients that did not ask (api.ChunkRewriter).
    options = dict(body.get("stream_options") or {})
    options.setdefault("include_usage", True)
    body["stream_options"] = options
    return body


async def open_stream(slot: SlotConfig, endpoint: str, body: dict[str, Any]) -> UpstreamStream:
    """Open a stream on ``slot``'s backend: ``endpoint`` is ``"chat/completions"`` or
    ``"completions"``. Raises ``RelayError`` before any byte reached the client."""
    return await UpstreamStream.open(slot.backend, endpoint, body)
