"""``/v1/responses`` stored: a streamed response kept ``in_progress`` off the first byte's path
(``store_response_start``), its end stored (``record_response``, ``final_response``), and
``cancel_response``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from chat import services, streaming
from chat.answers import STOP_WAIT_S
from chat.api_records import record_api_call
from chat.http import invalid
from chat.models import (
    ApiKey,
    Slot,
    StoredResponse,
)
from chat.relay import responses
from chat.relay.background import spawn
from chat.relay.cluster import shared
from chat.relay.generation import Generation, Status, find
from chat.relay.types import Chunk

logger = logging.getLogger(__name__)


def store_response_start(
    *,
    key: ApiKey,
    slot: Slot,
    initial: dict[str, Any],
    items: list[dict[str, Any]],
    previous_id: str | None,
    generation: Generation,
    native: bool,
) -> asyncio.Task[bool]:
    """Store a streamed response as ``in_progress`` (so ``GET``, ``cancel`` and a resume find
    it while it streams) in a task of its own, off the path to the first byte. The task's
    result says whether the row was written or is kept to be (False: refused, logged)."""

    async def insert() -> bool:
        return await services.response_acreate(
            response_id=initial["id"],
            user=key.user,
            api_key=key,
            previous_id=previous_id,
            slot_name=slot.name,
            response=initial,
            input_items=items,
            generation_id=generation.id,
            native=native,
        )

    return spawn(insert())


async def record_response(
    *,
    key: ApiKey,
    slot: Slot,
    initial: dict[str, Any],
    generation: Generation,
    messages: list[Any],
    stored: asyncio.Task[bool] | None,
    read_to_end: bool,
    native: bool,
    reservation: int | None = None,
) -> None:
    """A streamed response's end: its ``/v1`` call record (settling its quota
    ``reservation``), and (``stored``: the task of ``store_response_start``) the stored
    response's final object and chunks, rendered again from the chunks as the stream sent
    them; cancelled when the client left first."""
    await record_api_call(
        key=key,
        slot=slot,
        endpoint="responses",
        messages=messages,
        generation=generation,
        outcome=generation.status if read_to_end else Status.STOPPED,
        reservation=reservation,
    )
    if stored is None or not await stored:
        return
    chunks = list(generation.chunks)
    response = final_response(initial, generation, chunks, native=native, left=not read_to_end)
    await services.response_afinalise(
        response_id=initial["id"], response=response, chunks=[chunk.data for chunk in chunks]
    )


def final_response(
    initial: dict[str, Any],
    generation: Generation,
    chunks: list[Chunk],
    *,
    native: bool,
    left: bool = False,
) -> dict[str, Any]:
    """The response object a generation's ``chunks`` make, rendered as its stream rendered
    them: chat chunks through ``ResponseEvents``, a backend's own events through
    ``NativeEvents``; cancelled when the client ``left`` first."""
    ending = streaming.response_ending(generation, initial["created_at"], left=left)
    if native:
        _, _, response = responses.render_native(
            initial,
            [chunk.data for chunk in chunks],
            cancelled=ending["cancelled"],
            error=ending["error"],
        )
        return response
    _, response = responses.render(initial, [chunk.obj for chunk in chunks], **ending)
    return response


async def cancel_response(stored: StoredResponse) -> dict[str, Any]:
    """Cancel a response in progress (``POST /v1/responses/{id}/cancel``): its generation is
    cancelled here, or in the process that runs it, and the response returned as it ends
    (``cancelled``, its output so far). A response whose process died before storing its end
    is stored as cancelled, with no output. Raises ``Refusal`` 400 for a response that
    already ended."""
    if stored.status != StoredResponse.Status.IN_PROGRESS:
        raise invalid(
            f"Cannot cancel response {stored.id}: it is already {stored.status}; only a "
            "response in progress can be cancelled.",
            code="response_not_cancellable",
        )
    generation = find(stored.generation_id) if stored.generation_id else None
    store = shared()
    if generation is not None and not generation.is_mirror and not generation.ended:
        generation.cancel()
        if generation.task is not None:
            await asyncio.wait((generation.task,), timeout=STOP_WAIT_S)
        return final_response(
            stored.response, generation, list(generation.chunks), native=stored.native, left=True
        )
    if generation is None and (store is None or not await store.is_live(stored.generation_id)):
        # It runs nowhere: its process died (or restarted) before storing its end.
        return await services.response_amark_cancelled(response_id=stored.id)
    if store is not None:
        await store.request_stop(stored.generation_id)
    deadline = asyncio.get_running_loop().time() + STOP_WAIT_S
    while stored.status == StoredResponse.Status.IN_PROGRESS:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)  # the row, written by the process that runs it
        await stored.arefresh_from_db()
    ended: dict[str, Any] = stored.response
    return ended
