"""``/v1/responses``: create (streamed or whole; the backend's own ``/responses`` or translated to
chat completions by ``chat.relay.responses``), retrieve (also as a resumed stream), input items,
cancel. Stored unless ``store`` is false."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat import (
    answers,
    jsonbody,
    quotas,
    readcache,
    response_store,
    selectors,
    services,
    streaming,
)
from chat.api.common import (
    CHAT,
    RESPONSES,
    Call,
    answered_whole,
    authenticate,
    first_chunk,
    method_not_allowed,
    refused,
    resolve_slot,
)
from chat.api.media import refuse_images, refuse_media_urls
from chat.api.validation import out_of_range, validate_response_request
from chat.http import Refusal, error_response, invalid, sse_response
from chat.models import ApiKey, Backend, Slot, StoredResponse
from chat.relay import dispatch, responses, tokenize
from chat.relay.errors import EnvelopeError, RelayError
from chat.relay.generation import Generation
from chat.relay.responses import NativeEvents, ResponseEvents
from chat.relay.types import SlotConfig

logger = logging.getLogger(__name__)


def _new_response_id() -> str:
    return "resp_" + uuid.uuid4().hex


def _response_not_found(response_id: str, *, param: str | None = None) -> Refusal:
    """OpenAI's wording for an unknown (or another user's) response id."""
    return invalid(
        f"Response with id '{response_id}' not found.", status=404, param=param, code=None
    )


@csrf_exempt
async def create_response(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """``POST /v1/responses``, streaming or not, on the slot's dispatcher: passed to the
    backend's own ``/responses`` (``Backend.responses_api``: native, or ``auto`` until a 404
    says it has none) or translated to chat completions (``chat.relay.responses``); stored
    unless ``store`` is false. A backend set to native that answers 404, 405 or 501 there is
    translated for too (``_native_missing``): the client asked for a model that exists."""
    if request.method != "POST":
        return method_not_allowed(request, allowed="POST")
    call = Call(RESPONSES)
    try:
        turn = await _read_turn(call, request)
        cfg = turn.slot.config()
        if _goes_native(cfg):
            try:
                if not call.stream:
                    return await _whole_native_response(call, turn, cfg)
                return await _streamed_native_response(call, turn, cfg)
            except RelayError as exc:
                if not await _without_responses_api(cfg, exc):
                    raise
        if not call.stream:
            return await _whole_response(call, turn)
        return await _streamed_response(call, turn)
    except responses.TranslationError as exc:
        return await refused(call, invalid(str(exc), param=exc.param))
    except EnvelopeError as exc:
        return await refused(call, exc)
    except BaseException:
        quotas.release_soon(call.reservation)  # cancelled (the client left), or a bug
        raise


async def _read_turn(call: Call, request: HttpRequest) -> _ResponseTurn:
    """Authenticate, read and check a ``POST /v1/responses``, resolve its slot and its
    ``previous_response_id`` chain, then admit it under its quotas. Raises ``Refusal``."""
    lookups = readcache.Lookups()
    call.key = await authenticate(request, lookups)
    body = jsonbody.read_object(request, max_bytes=settings.SLIPSTREAM_API_MAX_BODY_BYTES)
    validate_response_request(body)
    call.slot_name, call.stream = body["model"], bool(body.get("stream"))
    slot = await resolve_slot(call.slot_name, call.key, lookups)
    refuse_images(slot, body, param="input")
    await refuse_media_urls(slot, body)
    previous_id = body.get("previous_response_id")
    history_items: list[dict[str, Any]] = []
    if previous_id:
        chain = await selectors.response_achain(user=call.key.user, response_id=previous_id)
        if chain is None:
            raise _response_not_found(previous_id, param="previous_response_id")
        for earlier in chain:
            history_items += earlier.input_items
            history_items += [
                o for o in earlier.response.get("output") or () if o.get("type") != "reasoning"
            ]
    # Last: a 404 above counts not.
    await call.admit(
        lookups,
        body,
        slot,
        ["max_output_tokens"],
        lambda: tokenize.responses_prompt(body, history=history_items),
    )
    response_id = _new_response_id()
    return _ResponseTurn(
        call.key,
        slot,
        body,
        responses.skeleton(
            body, response_id=response_id, model=slot.name, created_at=int(time.time())
        ),
        responses.input_items(body["input"], response_id=response_id),
        previous_id,
        history_items,
    )


@dataclass(slots=True)
class _ResponseTurn:
    """One ``POST /v1/responses`` once read: the request ``body``, the ``initial`` response
    object, this request's input ``items``, the items of its ``previous_response_id`` chain.
    ``chat_body()`` is the chat completions request it is translated to, made when a
    translated backend is to answer: a backend with its own Responses API gets the request as
    the client sent it, hosted tools and all."""

    key: ApiKey
    slot: Slot
    body: dict[str, Any]
    initial: dict[str, Any]
    items: list[dict[str, Any]]
    previous_id: str | None
    history_items: list[dict[str, Any]]
    _chat: dict[str, Any] | None = None
    omitted: list[str] = field(default_factory=list)  # hosted tool types left out

    @property
    def store(self) -> bool:
        return self.body.get("store", True) is not False

    def chat_body(self) -> dict[str, Any]:
        """The translated request under the slot's hosted-tool policy (``Slot.hosted_tools``).
        Raises ``TranslationError``."""
        if self._chat is None:
            self._chat, self.omitted = self._translated(self.slot.hosted_tools)
            if self.omitted:
                logger.info(
                    "response %s on slot %s: hosted tools left out (the slot's policy): %s",
                    self.initial["id"],
                    self.slot.name,
                    ", ".join(self.omitted),
                )
        return self._chat

    def messages(self) -> list[dict[str, Any]]:
        """The turn's chat messages, as a key that keeps conversations keeps them: the
        translated request's, or for a native backend the same said leniently (hosted tools
        left out; nothing when the input has what chat cannot say)."""
        if self._chat is not None:
            return list(self._chat["messages"])
        try:
            messages: list[dict[str, Any]] = self._translated(responses.OMIT)[0]["messages"]
        except responses.TranslationError:
            return []
        return messages

    def _translated(self, policy: str) -> tuple[dict[str, Any], list[str]]:
        tools = responses.ToolTranslation(self.body.get("tools") or (), policy=policy)
        history = responses.items_to_messages(
            self.history_items, at="previous_response", tools=tools
        )
        chat = responses.chat_request(self.body, history=history, items=self.items, tools=tools)
        return chat, tools.omitted

    def noted(self, response: HttpResponse | StreamingHttpResponse) -> None:
        """``response`` with the hosted tools left out named in ``Slipstream-Omitted-Tools``
        (a comma-separated list of tool and item types), once per response."""
        if self.omitted:
            response["Slipstream-Omitted-Tools"] = ", ".join(self.omitted)

    def native_body(self) -> dict[str, Any]:
        """The request for a backend's own ``/responses``: the client's, with a
        ``previous_response_id`` chain spelled out as input items (the backend never saw our
        ids), without our ids and statuses on them."""
        body = {k: v for k, v in self.body.items() if k != "previous_response_id"}
        if self.history_items:
            given = body["input"]
            now = [{"role": "user", "content": given}] if isinstance(given, str) else given
            body["input"] = [_as_sent(item) for item in self.history_items] + now
        return body


def _as_sent(item: dict[str, Any]) -> dict[str, Any]:
    """A stored item as input for a backend: message items lose the id and status we gave
    them; the backend's own items (function calls) keep theirs."""
    if item.get("type", "message") != "message":
        return item
    return {k: v for k, v in item.items() if k not in ("id", "status")}


# A backend without the Responses API answers its path so (vLLM and llama-server: 404).
_NO_RESPONSES_API = frozenset({404, 405, 501})


# Backends set to native (``Backend.responses_api``) found without /responses, in this process:
# backend id -> when found (time.monotonic() s). The operator's setting stays as they made it;
# the backend is asked again after ``NATIVE_RECHECK_S`` (an upgrade, a model server swapped).
_missing_native: dict[int, float] = {}


# Backends already warned of, in this process: one warning each, not one per request.
_warned_native: set[int] = set()


NATIVE_RECHECK_S = 600.0


async def _without_responses_api(cfg: SlotConfig, exc: RelayError) -> bool:
    """Whether ``exc``, a native call's failure, says that the backend has no ``/responses``
    (404, 405, 501), so that the request is to be translated; what is learnt is kept: ``auto``
    stored as translate, ``native`` remembered in this process (``_native_missing``)."""
    # The slot whose call failed: a fallback's backend may lack what the primary's has, and
    # what is learnt belongs to the backend that answered.
    failed = cfg.in_chain(exc.slot)
    if exc.upstream_status not in _NO_RESPONSES_API or failed.responses_native is False:
        return False
    if failed.responses_native is None:
        await services.backend_anote_responses_api(backend_id=failed.backend_id, native=False)
    else:
        await _native_missing(failed, exc.upstream_status)
    return True


async def _native_missing(failed: SlotConfig, status: int | None) -> None:
    """``failed``'s backend is set to native but answered ``status`` (404, 405, 501) on its
    ``/responses``: translate for it in this process for ``NATIVE_RECHECK_S``, and say so
    once per backend (a WARNING naming the backend and the setting to change)."""
    _missing_native[failed.backend_id] = time.monotonic()
    if failed.backend_id in _warned_native:
        return
    _warned_native.add(failed.backend_id)
    name = (
        await Backend.objects.filter(pk=failed.backend_id).values_list("name", flat=True).afirst()
    )
    logger.warning(
        'backend "%s" (id %s, %s) is set to Responses API "native" but answered HTTP %s on '
        "/responses: its Responses requests are translated to chat completions in this "
        'process. Set its Responses API to "auto" or "translate" in the admin.',
        name,
        failed.backend_id,
        failed.backend.base_url,
        status,
    )


def _native_for(slot: SlotConfig) -> bool:
    """Whether ``slot``'s backend may have its own ``/responses`` (native, or not known yet),
    unless this process found a native one without it within ``NATIVE_RECHECK_S``."""
    if slot.responses_native is False:
        return False
    found = _missing_native.get(slot.backend_id)
    if found is None:
        return True
    if time.monotonic() - found < NATIVE_RECHECK_S:
        return False
    _missing_native.pop(slot.backend_id, None)
    return True


def _goes_native(cfg: SlotConfig) -> bool:
    """Whether a Responses request goes to the backend's own ``/responses``: when every slot
    of the fallback chain may have one (``_native_for``) and none has stop strings (the relay
    cuts those from chat deltas only)."""
    return all(_native_for(c) and not c.stop for c in cfg.chain())


async def _noted_native(answered: SlotConfig) -> None:
    """The slot that ``answered`` (the primary, or a fallback) has an ``auto`` backend that
    answered on its own ``/responses``: remember it."""
    if answered.responses_native is None:
        await services.backend_anote_responses_api(backend_id=answered.backend_id, native=True)


async def _whole_native_response(call: Call, turn: _ResponseTurn, cfg: SlotConfig) -> JsonResponse:
    """A non-streaming response from the backend's own ``/responses``: its response object
    with our id, model, ``store`` and ``previous_response_id``. Raises ``RelayError``."""
    result, answered = await dispatch.call_whole(cfg, RESPONSES, turn.native_body())
    if result.get("object") != "response" or not isinstance(result.get("output"), list):
        raise RelayError(
            "upstream answered /responses with a body that is not a response object",
            code="upstream_malformed_body",
        )
    await _noted_native(answered)
    ours = {name: turn.initial[name] for name in ("id", "model", "store", "previous_response_id")}
    response = {**result, **ours}
    usage: dict[str, Any] = result.get("usage") or {}
    chat_usage = {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
    }
    return await _whole_ended(call, turn, response, responses.response_as_chunk(result), chat_usage)


async def _whole_ended(
    call: Call,
    turn: _ResponseTurn,
    response: dict[str, Any],
    chunk: dict[str, Any],
    usage: dict[str, Any] | None,
) -> JsonResponse:
    """A non-streamed response's end: stored (unless ``store`` is false) with the one chat
    chunk a resumed stream of it is rendered from, its call recorded (``usage`` in chat
    completions' words) and kept as a conversation when the key says so, and answered."""
    if turn.store:
        await _store_whole(turn, response, chunk)
    return await answered_whole(
        call,
        turn.key,
        turn.slot,
        response,
        usage,
        messages=turn.messages(),
        chunk=chunk,
    )


async def _store_whole(
    turn: _ResponseTurn, response: dict[str, Any], chunk: dict[str, Any]
) -> None:
    """One INSERT (``services.response_acreate``: kept through a database outage); a refusal
    is logged, never raised: the client gets its answer."""
    await services.response_acreate(
        response_id=response["id"],
        user=turn.key.user,
        api_key=turn.key,
        previous_id=turn.previous_id,
        slot_name=turn.slot.name,
        response=response,
        input_items=turn.items,
        chunks=[json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)],
    )


async def _streamed_native_response(
    call: Call, turn: _ResponseTurn, cfg: SlotConfig
) -> StreamingHttpResponse:
    """A streamed response from the backend's own ``/responses``, relayed event by event
    (``NativeEvents``). Raises ``RelayError`` before the first event."""
    generation = await first_chunk(
        await dispatch.submit(cfg, RESPONSES, turn.native_body(), started_at=call.started_at)
    )
    if generation.chunks:
        # Its first event came from the slot that answered; held only until the first
        # keep-alive, the call may not have reached one yet: the next call finds out then.
        await _noted_native(cfg.in_chain(generation.slot))
    return _stream_response(call, turn, generation, native=True)


async def _whole_response(call: Call, turn: _ResponseTurn) -> JsonResponse:
    """A non-streaming response: one chat completion, rendered as the response object.
    Raises ``RelayError``."""
    result = await dispatch.complete_whole(turn.slot.config(), CHAT, turn.chat_body())
    chunk = responses.whole_as_chunk(result)
    _, response = responses.render(
        turn.initial,
        [chunk],
        completed_at=turn.initial["created_at"] + round(time.monotonic() - call.started_at),
    )
    answered = await _whole_ended(call, turn, response, chunk, result.get("usage"))
    turn.noted(answered)
    return answered


async def _streamed_response(call: Call, turn: _ResponseTurn) -> StreamingHttpResponse:
    """A streamed response, with the same held status as ``_streamed_completion``: a failure
    before the first chunk is an HTTP error. Raises ``RelayError``."""
    generation = await first_chunk(
        await dispatch.submit(
            turn.slot.config(), CHAT, turn.chat_body(), started_at=call.started_at
        )
    )
    streamed = _stream_response(call, turn, generation, native=False)
    turn.noted(streamed)
    return streamed


def _stream_response(
    call: Call, turn: _ResponseTurn, generation: Generation, *, native: bool
) -> StreamingHttpResponse:
    """The SSE response of a started generation: stored ``in_progress`` off the first byte's
    path (unless ``store`` is false), its end recorded (settling ``call``'s quota reservation)
    when the client leaves."""
    stored = (
        response_store.store_response_start(
            key=turn.key,
            slot=turn.slot,
            initial=turn.initial,
            items=turn.items,
            previous_id=turn.previous_id,
            generation=generation,
            native=native,
        )
        if turn.store
        else None
    )

    messages = turn.messages()

    async def record(read_to_end: bool) -> None:
        await response_store.record_response(
            key=turn.key,
            slot=turn.slot,
            initial=turn.initial,
            generation=generation,
            messages=messages,
            stored=stored,
            read_to_end=read_to_end,
            native=native,
            reservation=call.reservation,
        )

    if native:
        events = streaming.native_responses_sse(
            generation, NativeEvents(turn.initial), on_leave=record
        )
    else:
        events = streaming.responses_sse(generation, ResponseEvents(turn.initial), on_leave=record)
    return sse_response(events)


async def _owned_response(request: HttpRequest, response_id: str) -> tuple[ApiKey, StoredResponse]:
    """The key and the key's user's stored response ``response_id``. Raises ``Refusal`` 401 or
    404 (also for another user's response)."""
    key = await authenticate(request, readcache.Lookups())
    stored = await selectors.response_aget(user=key.user, response_id=response_id)
    if stored is None:
        raise _response_not_found(response_id)
    return key, stored


@csrf_exempt
async def response_detail(
    request: HttpRequest, response_id: str
) -> HttpResponse | StreamingHttpResponse:
    """``GET /v1/responses/{id}`` (``?stream=true&starting_after=N``: its stream's events
    after number N, live while it streams) and ``DELETE /v1/responses/{id}``."""
    if request.method not in ("GET", "DELETE"):
        return method_not_allowed(request, allowed="GET, DELETE")
    try:
        key, stored = await _owned_response(request, response_id)
        if request.method == "DELETE":
            await services.response_adelete(user=key.user, response_id=response_id)
            return JsonResponse({"id": response_id, "object": "response", "deleted": True})
        if request.GET.get("stream", "").lower() != "true":
            return JsonResponse(stored.response)
        after = _int_query(request, "starting_after", default=-1)
        return await _resumed_stream(stored, after)
    except EnvelopeError as exc:
        return error_response(exc)


def _int_query(request: HttpRequest, name: str, *, default: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid(
            f"Invalid '{name}': expected an integer.", param=name, code="invalid_value"
        ) from None


async def _resumed_stream(stored: StoredResponse, after: int) -> StreamingHttpResponse:
    """A stored response's stream from event ``after`` + 1: live from its generation while it
    runs (here, or mirrored from its process), else rendered again from its stored chunks."""
    if stored.status == StoredResponse.Status.IN_PROGRESS:
        generation = await answers.running(
            stored.generation_id, slot_name=stored.slot_name, streaming=True
        )
        if generation is not None and stored.native:
            return sse_response(
                streaming.native_responses_sse(
                    generation, NativeEvents(stored.response), starting_after=after
                )
            )
        if generation is not None:
            events = ResponseEvents(stored.response)
            return sse_response(streaming.responses_sse(generation, events, starting_after=after))
    chunks = services.unpack_chunks(stored.chunks)
    if stored.native:
        encoded, numbers, _ = responses.render_native(
            responses.initial_of(stored.response),
            chunks,
            cancelled=stored.status == StoredResponse.Status.CANCELLED,
            error=stored.response.get("error"),
        )
        body = b"".join(e for e, n in zip(encoded, numbers, strict=True) if n > after)
    else:
        replayed = responses.replay(stored.response, chunks)
        body = b"".join(ResponseEvents.encode(e) for e in replayed if e["sequence_number"] > after)

    async def events_once() -> AsyncGenerator[bytes, None]:
        yield body

    return sse_response(events_once())


@csrf_exempt
async def response_input_items(request: HttpRequest, response_id: str) -> HttpResponse:
    """``GET /v1/responses/{id}/input_items``: the response's input items, as a list page
    (``limit`` 1 to 100, default 20; ``order`` ``desc`` by default, or ``asc``; ``after`` an item
    id), OpenAI's ``ResponseItemList``."""
    if request.method != "GET":
        return method_not_allowed(request, allowed="GET")
    try:
        _, stored = await _owned_response(request, response_id)
        limit = _int_query(request, "limit", default=20)
        if not 1 <= limit <= 100:
            raise out_of_range("limit", "must be from 1 to 100")
        order = request.GET.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid("Invalid 'order': expected 'asc' or 'desc'.", param="order")
        items = list(stored.input_items)
        if order == "desc":
            items.reverse()
        after = request.GET.get("after")
        if after:
            ids = [item.get("id") for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return JsonResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )
    except EnvelopeError as exc:
        return error_response(exc)


@csrf_exempt
async def cancel_response(request: HttpRequest, response_id: str) -> HttpResponse:
    """``POST /v1/responses/{id}/cancel``: stop a response in progress; returns it as it
    ended (``cancelled``)."""
    if request.method != "POST":
        return method_not_allowed(request, allowed="POST")
    try:
        _, stored = await _owned_response(request, response_id)
        return JsonResponse(await response_store.cancel_response(stored))
    except EnvelopeError as exc:
        return error_response(exc)
