"""OpenAI's Responses API served by a chat-completions upstream: requests translated to chat
completions, the upstream's chunks turned into Responses events. No ORM, no HTTP.

Rules from the OpenAI API reference ("Responses", "Streaming events") and its OpenAPI document
(``Response``, ``ResponseStreamEvent``, ``InputItem``):

- A stream is typed SSE events (``event: <type>`` and ``data: {"type": <type>, …,
  "sequence_number": n}``), n from 0, and no ``[DONE]``: ``response.created``,
  ``response.in_progress``, then per output item ``response.output_item.added``, its parts
  (``response.content_part.added`` … ``.done``) and deltas (``response.output_text.delta``,
  ``response.reasoning_text.delta``, ``response.refusal.delta``,
  ``response.function_call_arguments.delta``) with their ``.done`` events, then
  ``response.output_item.done``; last ``response.completed``, ``response.incomplete``
  (``incomplete_details.reason``: ``max_output_tokens``, ``content_filter``) or
  ``response.failed`` (``error``), each carrying the whole response object.
- Output items: ``reasoning`` (``content`` of ``reasoning_text`` parts), ``message`` (role
  ``assistant``, ``output_text`` or ``refusal`` parts) and ``function_call`` (``call_id``,
  ``name``, ``arguments`` as a JSON string).
- Usage is ``input_tokens`` / ``output_tokens`` / ``total_tokens`` with
  ``input_tokens_details.cached_tokens`` and ``output_tokens_details.reasoning_tokens``.

Everything is deterministic given the response skeleton and the chunks: replaying the stored
chunks of a response re-renders the exact same events, which is how a stream is resumed by
``starting_after`` (``ResponseEvents``).

One module per job, all importable from here: ``request`` (the translation of a request),
``events`` (chat chunks to Responses events), ``native`` (a backend's own Responses API).
"""

from __future__ import annotations

from chat.relay.responses.events import (
    CustomInput,
    ResponseEvents,
    initial_of,
    output_text,
    render,
    replay,
)
from chat.relay.responses.native import NativeEvents, render_native, response_as_chunk
from chat.relay.responses.request import (
    OMIT,
    REFUSE,
    RESPONSES_FIELDS,
    Offered,
    ToolNames,
    ToolTranslation,
    TranslationError,
    chat_call,
    chat_request,
    error_of,
    input_items,
    items_to_messages,
    skeleton,
    usage_of,
    whole_as_chunk,
)

__all__ = [
    "OMIT",
    "REFUSE",
    "RESPONSES_FIELDS",
    "CustomInput",
    "NativeEvents",
    "Offered",
    "ResponseEvents",
    "ToolNames",
    "ToolTranslation",
    "TranslationError",
    "chat_call",
    "chat_request",
    "error_of",
    "initial_of",
    "input_items",
    "items_to_messages",
    "output_text",
    "render",
    "render_native",
    "replay",
    "response_as_chunk",
    "skeleton",
    "usage_of",
    "whole_as_chunk",
]
