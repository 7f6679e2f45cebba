"""``POST /v1/embeddings``: passed to the slot's backend, recorded like the other calls."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat import jsonbody, quotas, readcache
from chat.api.common import (
    EMBEDDINGS,
    Call,
    answered_whole,
    authenticate,
    method_not_allowed,
    refused,
    resolve_slot,
)
from chat.api.validation import check_field, is_int, is_prompt
from chat.http import invalid
from chat.relay import dispatch, tokenize
from chat.relay.errors import EnvelopeError


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    """``POST /v1/embeddings``: passed to the slot's backend through its dispatcher (queue,
    retries, fallback), ``model`` made the slot's name again in the answer."""
    if request.method != "POST":
        return method_not_allowed(request, allowed="POST")
    call = Call(EMBEDDINGS)
    lookups = readcache.Lookups()
    try:
        call.key = await authenticate(request, lookups)
        body = jsonbody.read_object(request, max_bytes=settings.SLIPSTREAM_API_MAX_BODY_BYTES)
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise invalid("you must provide a model parameter", param="model")
        if "input" not in body:
            raise invalid("Missing required parameter: 'input'.", param="input")
        check_field(
            body,
            "input",
            is_prompt,
            "a string, an array of strings, an array of tokens or an array of token arrays",
            nullable=False,
        )
        if isinstance(body["input"], list) and not body["input"]:
            raise invalid("'input' must not be empty.", param="input")
        check_field(
            body, "encoding_format", lambda v: v in ("float", "base64"), "'float' or 'base64'"
        )
        check_field(body, "dimensions", is_int, "an integer")
        call.slot_name = body["model"]
        slot = await resolve_slot(call.slot_name, call.key, lookups)
        await call.admit(lookups, None, slot, [], lambda: tokenize.completion_prompt(body["input"]))
        result, _ = await dispatch.call_whole(slot.config(), EMBEDDINGS, body)
        result["model"] = slot.name
        return await answered_whole(call, call.key, slot, result, result.get("usage"))
    except EnvelopeError as exc:
        return await refused(call, exc)
    except BaseException:
        quotas.release_soon(call.reservation)  # cancelled (the client left), or a bug
        raise
