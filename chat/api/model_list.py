"""``GET /v1/models`` and ``GET /v1/models/{model}``: the slots a key may use, as OpenAI's model
objects."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from chat import readcache, selectors
from chat.api.common import authenticate, method_not_allowed, resolve_slot
from chat.http import error_response
from chat.models import Slot
from chat.relay.errors import EnvelopeError


def model_object(slot: Slot) -> dict[str, Any]:
    return {
        "id": slot.name,
        "object": "model",
        "created": int(slot.created_at.timestamp()),
        "owned_by": "slipstream",
    }


@csrf_exempt
async def models(request: HttpRequest, model: str | None = None) -> HttpResponse:
    """``GET /v1/models`` (the slots a key may use) and ``GET /v1/models/{model}``."""
    if request.method != "GET":
        return method_not_allowed(request, allowed="GET")
    try:
        lookups = readcache.Lookups()
        key = await authenticate(request, lookups)
        if model is not None:
            return JsonResponse(model_object(await resolve_slot(model, key, lookups)))
        slots = [model_object(slot) async for slot in selectors.slot_list_enabled(user=key.user)]
        return JsonResponse({"object": "list", "data": slots})
    except EnvelopeError as exc:
        return error_response(exc)
