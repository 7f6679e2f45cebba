"""Writes of stored ``/v1/responses``: created, finalised, cancelled, deleted; a backend's
Responses API noted."""

from __future__ import annotations

import logging
import zlib
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import DatabaseError

from chat import readcache, records
from chat.models import (
    ApiKey,
    Backend,
    StoredResponse,
)

logger = logging.getLogger(__name__)


def pack_chunks(chunks: list[str]) -> bytes:
    """A response's upstream chunks (JSON texts) as stored: zlib-compressed JSON lines (a
    chunk's JSON never holds a raw newline)."""
    return zlib.compress("\n".join(chunks).encode(), level=6)


def unpack_chunks(packed: bytes | memoryview) -> list[str]:
    """The inverse of ``pack_chunks``."""
    data = bytes(packed)
    return zlib.decompress(data).decode().split("\n") if data else []


async def response_acreate(
    *,
    response_id: str,
    user: User,
    api_key: ApiKey | None,
    previous_id: str | None,
    slot_name: str,
    response: dict[str, Any],
    input_items: list[dict[str, Any]],
    generation_id: str = "",
    chunks: list[str] | None = None,
    native: bool = False,
) -> bool:
    """Store a response (one INSERT): ``in_progress`` when its stream starts, or whole, in the
    process's next batch of records (``chat.records``: kept through a database outage and
    stored, in order, before its end). Returns False when the database refused it (logged)."""
    row = StoredResponse(
        id=response_id,
        user_id=user.pk,
        api_key_id=api_key.pk if api_key is not None else None,
        previous_id=previous_id,
        slot_name=slot_name[:100],
        status=response["status"],
        generation_id=generation_id,
        native=native,
        response=response,
        input_items=input_items,
        chunks=pack_chunks(chunks or []),
    )
    return await records.write(
        records.Record(write=lambda: row.save(force_insert=True), label=f"response {response_id}")
    )


async def response_afinalise(
    *, response_id: str, response: dict[str, Any], chunks: list[str]
) -> None:
    """Store how a streamed response ended (one UPDATE): the response object and its chunks,
    in the process's next batch of records (after its INSERT, kept through a database
    outage). A refused UPDATE is logged, never raised: the client has its answer already."""
    packed = pack_chunks(chunks)

    def store() -> None:
        StoredResponse.objects.filter(pk=response_id).update(
            status=response["status"], response=response, chunks=packed
        )

    await records.write(records.Record(write=store, label=f"response {response_id} (its end)"))


async def response_amark_cancelled(*, response_id: str) -> dict[str, Any]:
    """Store a response left ``in_progress`` by a process that died as ``cancelled`` (one
    read, one UPDATE, only while it is still in progress); returns it as stored."""
    stored = await StoredResponse.objects.aget(pk=response_id)
    if stored.status == StoredResponse.Status.IN_PROGRESS:
        stored.response = {**stored.response, "status": StoredResponse.Status.CANCELLED}
        await StoredResponse.objects.filter(
            pk=response_id, status=StoredResponse.Status.IN_PROGRESS
        ).aupdate(status=StoredResponse.Status.CANCELLED, response=stored.response)
    response: dict[str, Any] = stored.response
    return response


async def response_adelete(*, user: User, response_id: str) -> bool:
    """Delete ``user``'s stored response; False when there is none of theirs by that id."""
    deleted, _ = await StoredResponse.objects.filter(pk=response_id, user=user).adelete()
    return deleted > 0


async def backend_anote_responses_api(*, backend_id: int, native: bool) -> None:
    """Remember what the first ``/v1/responses`` call found on a backend in ``auto`` mode
    (its own Responses API, or none): one UPDATE, and the cached slot lookups renewed so
    every process reads it on its next call. A failed UPDATE is logged: the next call finds
    out again."""
    try:
        await Backend.objects.filter(pk=backend_id).aupdate(responses_api_detected=native)
        await sync_to_async(readcache.invalidate)()  # .update() sends no signal
    except DatabaseError:
        logger.exception("backend %s: noting its Responses API failed", backend_id)
