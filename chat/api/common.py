"""What every ``/v1`` endpoint shares: the key's authentication, the slot it names, the call's
record when it is refused or answered whole, the endpoints' names, and OpenAI's 404 and 405."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from chat import api_records, quotas, readcache, selectors, services
from chat.http import error_response, invalid
from chat.models import ApiKey, Slot
from chat.relay import tokenize
from chat.relay.errors import EnvelopeError
from chat.relay.generation import Generation
from chat.relay.types import SlotConfig


async def authenticate(request: HttpRequest, lookups: readcache.Lookups) -> ApiKey:
    """The API key of ``Authorization: Bearer <key>`` (``lookups``: the request's cached
    lookups). Raises ``Refusal`` 401."""
    return await authenticate_header(request.headers.get("Authorization", ""), lookups)


async def authenticate_header(header: str, lookups: readcache.Lookups) -> ApiKey:
    """The API key of an ``Authorization`` header's value ``Bearer <key>``. Raises
    ``Refusal`` 401."""
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise invalid(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            status=401,
            code="invalid_api_key",
        )
    key = await selectors.api_key_aget_active(raw=raw.strip(), lookups=lookups)
    if key is None:
        shown = raw.strip()[:12]
        raise invalid(
            f"Incorrect API key provided: {shown}…. Create one on your Slipstream API keys page.",
            status=401,
            code="invalid_api_key",
        )
    return key


async def resolve_slot(name: str, key: ApiKey, lookups: readcache.Lookups) -> Slot:
    """The enabled slot called ``name`` that the key's user may use. Raises ``Refusal`` 404
    ``model_not_found`` (also for a slot limited to groups the user is not in)."""
    slot = (
        await selectors.slot_aget_cached(name=name, user=key.user, lookups=lookups)
        if name
        else None
    )
    if slot is None:
        raise invalid(
            f"The model `{name}` does not exist or you do not have access to it.",
            status=404,
            code="model_not_found",
        )
    return slot


def cached_slot_config(slot: Slot, lookups: readcache.Lookups) -> SlotConfig:
    """``slot.config()`` for a slot from ``resolve_slot``, made once per ``readcache``
    version (``Lookups.derived``), not per call."""
    return lookups.derived(f"slot_config:{slot.pk}", slot.config)


def method_not_allowed(request: HttpRequest, *, allowed: str) -> JsonResponse:
    """405 in OpenAI's envelope and wording, with the ``Allow`` header RFC 9110 §15.5.6 asks
    for."""
    response = error_response(
        invalid(
            f"Invalid method for URL ({request.method} {request.path}).",
            status=405,
            code="method_not_allowed",
        )
    )
    response["Allow"] = allowed
    return response


@csrf_exempt
async def unknown_url(request: HttpRequest) -> JsonResponse:
    """Any other path under ``/v1``: 404 in OpenAI's envelope and wording, never Django's HTML
    page (an SDK reports the message as it is)."""
    return error_response(
        invalid(f"Invalid URL ({request.method} {request.path})", status=404, code="unknown_url")
    )


CHAT, TEXT = "chat/completions", "completions"


@dataclass(slots=True)
class Call:
    """What is known of one call so far, for its record when it is refused: ``admitted`` once
    past the quotas (it then counts against request budgets, whatever becomes of it), with
    the quota ``reservation`` (``chat.quotas``) that its record settles."""

    endpoint: str
    started_at: float = field(default_factory=time.monotonic)
    key: ApiKey | None = None
    slot_name: str = ""
    stream: bool = False
    admitted: bool = False
    reservation: int | None = None

    async def admit(
        self,
        lookups: readcache.Lookups,
        body: dict[str, Any] | None,
        slot: Slot,
        fields: list[str],
        prompt: Callable[[], tokenize.Prompt] | None = None,
    ) -> None:
        """Admit the call under its key's quotas (``quotas.admit``: 429 when one is used up;
        ``body``'s output limit, its ``fields``, capped at the tokens left after the prompt;
        None: no output). ``prompt()``: what the call sends as its prompt, counted on the
        slot's backend only when a token budget applies (``tokenize.count``)."""
        assert self.key is not None
        counter = None
        if prompt is not None:
            cfg = cached_slot_config(slot, lookups)
            counter = tokenize.counter(cfg.backend, cfg.upstream_model, prompt)
        self.reservation = await quotas.admit(
            user=self.key.user,
            api_key=self.key,
            lookups=lookups,
            request=body,
            default=slot.max_tokens,
            fields=fields,
            prompt=counter,
        )
        self.admitted = True


async def answered_whole(
    call: Call,
    key: ApiKey,
    slot: Slot,
    body: dict[str, Any],
    usage: dict[str, Any] | None,
    *,
    messages: list[Any] | None = None,
    chunk: dict[str, Any] | None = None,
) -> JsonResponse:
    """A whole (non-streamed) answer, its call recorded as complete with ``usage`` (chat
    completions' words: prompt and completion tokens) and kept as a conversation when the key
    says so (``messages``: the chat request's; ``chunk``: the answer as one chat chunk)."""
    await api_records.record_whole_api_call(
        key=key,
        slot=slot,
        endpoint=call.endpoint,
        started_at=call.started_at,
        usage=usage,
        messages=messages,
        chunk=chunk,
        reservation=call.reservation,
    )
    return JsonResponse(body)


RESPONSES = "responses"


async def refused(call: Call, exc: EnvelopeError) -> JsonResponse:
    """A call refused or failed before its answer began: recorded when the key is known,
    counted against request budgets only once admitted (its reservation settled: one request,
    no tokens)."""
    if call.key is not None:
        await services.api_call_arecord(
            api_key=call.key,
            endpoint=call.endpoint,
            slot_name=call.slot_name,
            stream=call.stream,
            http_status=exc.status,
            outcome="error",
            started_at=call.started_at,
            error=exc,
            admitted=call.admitted,
            reservation=call.reservation,
        )
    return error_response(exc)


EMBEDDINGS = "embeddings"


async def first_chunk(submitted: tuple[Generation, bool]) -> Generation:
    """The submitted generation once its first chunk is here or the first keep-alive is due
    (the HTTP status is held until then). Raises the generation's ``RelayError`` when it
    failed before any chunk; the generation is detached then."""
    generation, _ = submitted
    try:
        await generation.wait_started(settings.SLIPSTREAM_KEEPALIVE_S)
    except BaseException:
        generation.detach()
        raise
    if generation.ended and not generation.chunks and generation.error is not None:
        generation.detach()
        raise generation.error
    return generation
