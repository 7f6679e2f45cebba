"""The ``/v1`` API: OpenAI's wire format, so the official SDKs work by changing ``base_url``.
An HTTP adapter: authenticate, read and check, resolve the slot, then the relay
(``dispatch``), ``answers`` (recording) and ``streaming`` (the SSE).

Rules follow the OpenAI API reference (Chat Completions, Completions, Responses, Embeddings,
Models, "Error codes"):
errors are ``{"error": {"message", "type", "param", "code"}}``; streams are SSE ``data:``
events of ``chat.completion.chunk`` (or ``text_completion``) objects ending in ``data: [DONE]``;
a failure after the stream began is one final ``data: {"error": …}`` event, which the SDKs raise
as ``APIError`` during iteration. ``/v1/responses`` streams typed events instead and ends in
its terminal event (``chat.relay.responses``).

One module per job; each view parses, authorises, calls and responds:

- ``common``: the key's authentication, the slot it names, the call (``Call``: its quota
  reservation, its record when refused or answered whole), the endpoints' names, 404 and 405.
- ``validation``: request bodies checked by OpenAI's rules (a 400 naming the param).
- ``model_list``: ``GET /v1/models``.
- ``completions``: ``POST /v1/chat/completions`` and ``POST /v1/completions``.
- ``responses``: ``/v1/responses`` and its retrieve, input items and cancel.
- ``embeddings``: ``POST /v1/embeddings``.
"""
