"""The answer lifecycle, for the chat, the widget and ``/v1``: start, keep, resume, stop, record.

An *answer* is one assistant message (or one ``/v1`` call) fed by one relay ``Generation``.
The surfaces (``views``, ``widget``, ``api``) parse and authorise, then call one function here:

- ``start_chat_answer`` / ``start_widget_answer``: store the user's message (a new turn, an edit
  as a sibling branch, or a regenerate of an earlier one), submit the history to the slot's
  dispatcher, store the assistant's row as ``streaming`` and ``keep`` it.
- ``keep``: this process stores the message from the generation: its text about once a second
  while it streams (``CHECKPOINT_INTERVAL_S``) and once when it ends. Who owns a generation's
  outcome is kept here, by message id, not in the relay: with single-flight one generation can
  be several people's answers, and one person's Stop must not end another's.
- ``resume``: the running generation of a message, from this process or (with ``REDIS_URL``)
  mirrored from the process that runs it.
- ``stop``: end an answer, here or in the process that runs it.
- Quotas: a chat answer is admitted (``chat.quotas.admit``) just before its upstream call, and
  its record settles its reservation; a ``/v1`` call's record settles the call's.
- Widgets switched off: a widget's answers in flight are stopped once it is disabled (polled by
  each process that runs some, every ``WIDGET_WATCH_S``); one that shares its generation with
  another answer (single-flight) is stopped alone, its stream ended (``Started.reader``).
- ``record_api_call`` / ``record_whole_api_call``: a streamed or whole ``/v1`` call's record,
  and its conversation when the key keeps them.
- ``/v1/responses``: a streamed response stored ``in_progress`` off the first byte's path
  (``store_response_start``), its end stored (``record_response``), ``cancel_response``.
- ``sweep_forever``: mark ``interrupted`` the answers whose process died.

Raises ``Refusal`` (``chat.http``) for requests that name what the user may not reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.contrib.auth.models import User
from django.utils import timezone

from chat import attachments, database, quotas, readcache, records, selectors, services, streaming
from chat.http import Refusal, invalid
from chat.models import (
    ApiKey,
    Attachment,
    Conversation,
    Message,
    Slot,
    StoredResponse,
    Widget,
)
from chat.relay import dispatch, responses, tokenize
from chat.relay.background import spawn
from chat.relay.cluster import Shared, SharedUnavailable, shared
from chat.relay.generation import Generation, ReaderStop, Status, find
from chat.relay.types import Chunk

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 100_000
# A Stop for an answer running in another process is answered once that process stored it,
# usually within milliseconds; after this long, with the message as it stands.
STOP_WAIT_S = 5.0
SWEEP_EVERY_S = 2.0
# Uploads never sent (attachments.purge_unsent) and per-hour usage past its keeping
# (services.usage_hour_aprune): hourly is plenty.
PURGE_EVERY_S = 3600.0
# How often a process running widget answers checks whether their widgets were disabled: the
# README promises a switched-off widget stops answering at once (issue 16, finding 7).
WIDGET_WATCH_S = 0.25

# Message ids whose answer each running generation of this process stores (see the module).
_owners: dict[str, set[int]] = {}
# The quota reservation (chat.quotas) of each such answer that has one, by message id: the
# record that stores the answer settles it.
_reservations: dict[int, int] = {}


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """What the chat's stream endpoint asks for, its types already checked.

    ``content`` is the new user message (None for a regenerate); ``parent_given`` tells an
    explicit ``parent`` (``parent_id`` None: a new root) from an absent one (follow the shown
    thread); ``regenerate_id`` answers that user message again."""

    content: str | None = None
    conversation_id: UUID | None = None
    slot_name: str | None = None
    parent_given: bool = False
    parent_id: int | None = None
    regenerate_id: int | None = None
    attachment_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Started:
    """A started answer: the ``generation`` (attached for the caller, who must stream it or
    ``detach``), its ``conversation``, the ``user_message`` it answers, the ``assistant`` row
    and the ``slot`` it was asked of; ``reader``, for a widget's answer: what ends its stream
    when ``stop`` stops it while another answer shares the generation (single-flight)."""

    generation: Generation
    conversation: Conversation
    user_message: Message
    assistant: Message
    slot: Slot
    reader: ReaderStop | None = None


# ------------------------------------------------------------------------------------------------
# Start
# ------------------------------------------------------------------------------------------------
async def start_chat_answer(*, user: User, turn: ChatTurn) -> Started:
    """A signed-in user's new message, edit or regenerate, answered. Raises ``Refusal`` 400
    (empty or too long a message, a regenerate without its conversation), 404 (a
    conversation, message or slot the user does not have) or 429 (a quota used up)."""
    if turn.regenerate_id is None:
        check_message(turn.content)
    lookups = readcache.Lookups()
    conversation = await _own_conversation(user, turn.conversation_id)
    slot = await _slot_for(user, turn.slot_name, conversation, lookups)
    if turn.regenerate_id is not None:
        if conversation is None:
            raise invalid("Regenerate needs its conversation.", param="conversation")
        user_message = await _own_user_message(user, conversation, turn.regenerate_id)
        history = await selectors.message_apath_to(message=user_message)
        return await _answer(
            conversation,
            slot,
            user_message,
            history,
            keep_running=True,
            move_leaf=True,
            quota=(user, lookups),
        )
    assert turn.content is not None
    files = await attachments.for_message(
        turn.attachment_ids, slot=slot, conversation=conversation, user=user
    )
    thread = await selectors.message_alist(conversation=conversation) if conversation else []
    parent = await _parent(user, conversation, thread, turn)
    # The new turn is not under the shown leaf (an edit, a new root): show its branch.
    move_leaf = turn.parent_given and bool(thread) and (parent is None or parent != thread[-1])
    if conversation is None:
        conversation = services.conversation_new(user=user, slot=slot, first_message=turn.content)
    user_message = services.message_new_user(
        conversation=conversation,
        content=turn.content,
        parent=parent,
        attachment_ids=[str(a.pk) for a in files],
    )
    # The shown thread runs down from its root, so a parent in it has its path there already.
    if parent is None:
        path: list[Message] = []
    elif parent in thread:
        path = thread[: thread.index(parent) + 1]
    else:
        path = await selectors.message_apath_to(message=parent)
    return await _answer(
        conversation,
        slot,
        user_message,
        [*path, user_message],
        keep_running=True,
        move_leaf=move_leaf,
        quota=(user, lookups),
        files=files,
    )


async def start_widget_answer(
    *,
    widget: Widget,
    visitor_id: UUID,
    slot: Slot,
    content: str,
    conversation_id: str | None,
    attachment_ids: list[str] | None = None,
) -> Started:
    """A widget visitor's message, with the images they uploaded (``attachment_ids``),
    answered in their conversation ``conversation_id`` (a new one when it is not theirs on this
    widget). The answer is cancelled when the visitor goes away. Raises ``Refusal`` 400 for an
    empty or too long message or an image the slot cannot read, 404 for an attachment that is
    not theirs."""
    check_message(content)
    conversation = await selectors.conversation_aget_for_visitor(
        widget=widget, visitor_id=visitor_id, conversation_id=conversation_id
    )
    files = await attachments.for_message(
        attachment_ids or (),
        slot=slot,
        conversation=conversation,
        widget=widget,
        visitor_id=visitor_id,
    )
    thread: list[Message] = []
    if conversation is None:
        conversation = services.conversation_new_for_visitor(
            widget=widget, visitor_id=visitor_id, slot=slot, first_message=content
        )
    else:
        thread = await selectors.message_alist(conversation=conversation)
    user_message = services.message_new_user(
        conversation=conversation,
        content=content,
        parent=thread[-1] if thread else None,
        attachment_ids=[str(a.pk) for a in files],
    )
    started = await _answer(
        conversation, slot, user_message, [*thread, user_message], keep_running=False, files=files
    )
    started = dataclasses.replace(started, reader=ReaderStop())
    _watch_widget_answer(started)
    return started


def check_message(content: str | None) -> str:
    """A user message's text, or ``Refusal`` 400 (empty, over ``MAX_MESSAGE_CHARS``)."""
    if not isinstance(content, str) or not content.strip():
        raise invalid("Message is empty.", param="content")
    if len(content) > MAX_MESSAGE_CHARS:
        raise invalid(f"Message is over {MAX_MESSAGE_CHARS} characters.", param="content")
    return content


async def _answer(
    conversation: Conversation,
    slot: Slot,
    user_message: Message,
    history: list[Message],
    *,
    keep_running: bool,
    move_leaf: bool = False,
    quota: tuple[User, readcache.Lookups] | None = None,
    files: list[Attachment] | None = None,
) -> Started:
    """Submit ``history`` (ending with ``user_message``) to ``slot``, then store the turn
    (``services.turn_acreate``: ``conversation`` and ``user_message`` if they are new, the
    ``files`` sent with it, the assistant's row); ``keep_running``: the answer goes on without
    a reader (the chat resumes it), else it ends with its last one. ``quota``: the user whose
    quotas admit the answer first (``quotas.admit``, with the request's lookups: 429 when one
    is used up; its output limit capped at the tokens left), None for a widget's. The upstream
    call leaves before anything is written: the turn is stored while the upstream works on its
    first token (its writes were 2-3 ms of the chat's time to first token,
    bench/relay_latency.py). If storing fails, the answer is stopped (unless another request
    shares it), nothing of the turn is kept, and its reservation is given back."""
    request = chat_request(
        conversation=conversation,
        history=await attachments.upstream_history(history, slot=slot),
    )
    reservation = None
    cfg = slot.config()
    if quota is not None:

        def prompt() -> tokenize.Prompt:
            sent = dispatch.request_body(cfg, request, chat=True, stream=False)
            return tokenize.chat_prompt(sent["messages"])

        reservation = await quotas.admit(
            user=quota[0],
            lookups=quota[1],
            request=request,
            default=slot.max_tokens,
            prompt=tokenize.counter(cfg.backend, cfg.upstream_model, prompt),
        )
    try:
        generation, joined = await dispatch.submit(
            cfg, "chat/completions", request, keep_running=keep_running
        )
    except BaseException:
        quotas.release_soon(reservation)
        raise
    try:
        assistant = await services.turn_acreate(
            conversation=conversation,
            user_message=user_message,
            attachment_ids=[str(a.pk) for a in files or () if a.conversation_id is None],
            slot_name=slot.name,
            generation_id=generation.id,
            move_leaf=move_leaf,
        )
    except BaseException:
        quotas.release_soon(reservation)
        generation.detach()
        if not joined and not generation.subscribers:
            generation.cancel()  # nobody will store it (keep_running would let it run on)
        raise
    await keep(
        generation,
        message_id=assistant.pk,
        conversation_id=conversation.pk,
        owner=(conversation.user_id, conversation.widget_id),
        reservation=reservation,
    )
    return Started(generation, conversation, user_message, assistant, slot)


def chat_request(*, conversation: Conversation, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The OpenAI request for the next answer in ``conversation``: its history, and its own
    settings over the slot's (a system prompt of its own replaces the slot's)."""
    messages: list[dict[str, Any]] = list(history)
    if conversation.system_prompt.strip():
        messages.insert(0, {"role": "system", "content": conversation.system_prompt})
    request: dict[str, Any] = {"messages": messages}
    if conversation.temperature is not None:
        request["temperature"] = conversation.temperature
    if conversation.max_tokens is not None:
        request["max_tokens"] = conversation.max_tokens
    return request


async def _own_conversation(user: User, conversation_id: UUID | None) -> Conversation | None:
    if conversation_id is None:
        return None
    conversation = await selectors.conversation_aget(user=user, conversation_id=conversation_id)
    if conversation is None:
        raise _not_found("Unknown conversation.", param="conversation")
    return conversation


async def _slot_for(
    user: User, name: str | None, conversation: Conversation | None, lookups: readcache.Lookups
) -> Slot:
    """The slot asked for, else the conversation's, else the default one, through the lookup
    cache as /v1's (``readcache``: uncached, the query cost 5-7 ms before the first token)."""
    name = name or (conversation.slot.name if conversation and conversation.slot else None)
    slot = await selectors.slot_aget_cached(name=name or "", user=user, lookups=lookups)
    if slot is None:
        raise _not_found("No model is available.", param="slot")
    return slot


async def _own_user_message(user: User, conversation: Conversation, message_id: int) -> Message:
    message = await selectors.message_aget(user=user, message_id=message_id)
    if message is None or message.conversation_id != conversation.pk:
        raise _not_found("Unknown message to regenerate.", param="regenerate")
    if message.role != Message.Role.USER:
        raise _not_found("Unknown message to regenerate.", param="regenerate")
    return message


async def _parent(
    user: User, conversation: Conversation | None, thread: list[Message], turn: ChatTurn
) -> Message | None:
    """The message the new one follows: the shown thread's last, unless ``parent`` was given."""
    if not turn.parent_given:
        return thread[-1] if thread else None
    if turn.parent_id is None:
        return None
    shown = next((m for m in thread if m.pk == turn.parent_id), None)
    if shown is not None:
        return shown
    message = await selectors.message_aget(user=user, message_id=turn.parent_id)
    if conversation is None or message is None or message.conversation_id != conversation.pk:
        raise _not_found("Unknown parent message.", param="parent")
    return message


def _not_found(message: str, *, param: str) -> Refusal:
    return invalid(message, param=param, status=404)


# ------------------------------------------------------------------------------------------------
# Keep
# ------------------------------------------------------------------------------------------------
async def keep(
    generation: Generation,
    *,
    message_id: int,
    conversation_id: Any,
    owner: tuple[int | None, int | None] | None = None,
    reservation: int | None = None,
) -> None:
    """Store message ``message_id`` from ``generation``: its text about once a second while it
    streams, and once when it ends, unless it was stopped on its own meanwhile (``stop`` of a
    shared single-flight answer stores it then). ``owner``: the conversation's (user id,
    widget id), for its usage (else read when it ends), which settles its quota
    ``reservation``."""
    owners = _owners.setdefault(generation.id, set())
    owners.add(message_id)
    if reservation is not None:
        _reservations[message_id] = reservation

    async def store(finished: Generation) -> None:
        if message_id in owners:
            await services.message_afinalise(
                message_id=message_id,
                conversation_id=conversation_id,
                generation=finished,
                owner=owner,
                reservation=_reservations.pop(message_id, None),
            )
        owners.discard(message_id)
        if not owners:
            _owners.pop(finished.id, None)

    async def checkpoint(running: Generation) -> None:
        if message_id in owners:
            await services.message_acheckpoint(message_id=message_id, generation=running)

    generation.add_checkpoint_callback(checkpoint)
    if not generation.add_finish_callback(store):
        await store(generation)  # it ended while the message was being created


# ------------------------------------------------------------------------------------------------
# Resume and stop
# ------------------------------------------------------------------------------------------------
async def resume(*, message: Message) -> Generation | None:
    """The generation streaming ``message``, attached for the caller (who must ``detach``):
    this process's, or with ``REDIS_URL`` a mirror of the one another process runs. None when
    it runs nowhere any more: the stored message is the whole answer."""
    return await running(
        message.generation_id,
        slot_name=message.slot_name,
        streaming=message.status == Message.Status.STREAMING,
    )


async def running(generation_id: str, *, slot_name: str, streaming: bool) -> Generation | None:
    """The generation ``generation_id`` attached for the caller (who must ``detach``): this
    process's, or with ``REDIS_URL`` and while its record says ``streaming``, a mirror of the
    one another process runs. None when it runs nowhere any more."""
    generation = find(generation_id) if generation_id else None
    store = shared()
    if (
        generation is None
        and generation_id
        and store is not None
        and streaming
        and await store.exists(generation_id)
    ):
        generation = store.mirror(generation_id, slot=slot_name, keep_running=False)
    if generation is not None:
        generation.attach()
    return generation


async def stop(*, message: Message) -> Message:
    """Stop ``message``'s answer (the Stop button): cancel its generation, which closes the
    upstream response and stores the answer as ``stopped``. A generation shared with someone
    else's answer (single-flight) goes on for them; only this message is stored as stopped, and
    its own stream ends (``Started.reader``). In another process, the stop is sent there;
    but an answer kept here from another process's generation (it joined it: single-flight
    across processes) is that one's sharer, and is stopped here alone. Returns the message as
    stored."""
    generation = find(message.generation_id)
    owners = _owners.get(generation.id, set()) if generation is not None else set()
    joined_elsewhere = generation is not None and generation.is_mirror and message.pk in owners
    if generation is not None and generation.is_mirror and not joined_elsewhere:
        generation = None  # a copy of one running elsewhere: ask its own process
    store = shared()
    if generation is None and store is not None and message.status == Message.Status.STREAMING:
        await store.request_stop(message.generation_id)
        return await _stored(message)
    if generation is None or generation.ended:
        return message
    if joined_elsewhere or owners - {message.pk}:
        owners.discard(message.pk)
        await services.message_afinalise(
            message_id=message.pk,
            conversation_id=message.conversation_id,
            generation=generation,
            status=Status.STOPPED,
            reservation=_reservations.pop(message.pk, None),
        )
        # Its own stream ends too (a widget's: nobody else would end it); the others' go on.
        reader = _readers.pop(message.pk, None)
        if reader is not None:
            reader.stop()
    else:
        generation.cancel()  # its finish callback stores the answer as stopped
        if generation.task is not None:
            await asyncio.wait((generation.task,), timeout=STOP_WAIT_S)
    await message.arefresh_from_db()
    return message


async def _stored(message: Message) -> Message:
    """``message`` once no longer ``streaming`` (its process stores it when the stop arrives),
    or as it stands after ``STOP_WAIT_S``: read every 50 ms, since that process's store
    reaches this one only through the database."""
    deadline = asyncio.get_running_loop().time() + STOP_WAIT_S
    while True:
        await message.arefresh_from_db()
        if message.status != Message.Status.STREAMING:
            return message
        if asyncio.get_running_loop().time() >= deadline:
            return message
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# Widgets switched off
# ------------------------------------------------------------------------------------------------
# A widget is disabled by a write anywhere: the admin's form in any process, its list's bulk
# edit (a QuerySet.update, which sends no signal), a shell. So rather than hear of it, each
# process polls for it, only while it runs widget answers: one indexed query per loop every
# WIDGET_WATCH_S, however many answers run, and nothing when none do. The stop itself is
# ``stop``'s: the generation is cancelled (the upstream closed), the answer stored ``stopped``,
# and the visitor's stream ends with that status. Per event loop, as generations are.
_widget_answers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[int]] = (
    weakref.WeakKeyDictionary()
)
_widget_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)
# The streams of widget answers in flight, by message id: ``stop`` ends one whose generation
# goes on for another answer (single-flight), which its cancel would otherwise not end.
_readers: dict[int, ReaderStop] = {}


def _watch_widget_answer(started: Started) -> None:
    """Watch ``started`` (a widget answer) until its generation ends."""
    loop = asyncio.get_running_loop()
    running = _widget_answers.setdefault(loop, set())
    message_id = started.assistant.pk

    async def unwatch(_: Generation) -> None:
        running.discard(message_id)
        _readers.pop(message_id, None)

    if not started.generation.add_finish_callback(unwatch):
        return  # already over
    running.add(message_id)
    if started.reader is not None:
        _readers[message_id] = started.reader
    watcher = _widget_watchers.get(loop)
    if watcher is None or watcher.done():
        _widget_watchers[loop] = spawn(_watch_widgets(running))


async def _watch_widgets(running: set[int]) -> None:
    """Every ``WIDGET_WATCH_S`` while ``running`` (answer ids) has any: ``stop`` those whose
    widget is disabled."""
    failures = database.FailureLog("checking for disabled widgets")
    while running:
        await asyncio.sleep(WIDGET_WATCH_S)
        try:
            switched_off = await selectors.message_alist_switched_off(message_ids=set(running))
            if switched_off:
                logger.info(
                    "stopping %d answers of disabled widgets: messages %s",
                    len(switched_off),
                    [message.pk for message in switched_off],
                )
                await asyncio.gather(*(stop(message=message) for message in switched_off))
                # Stopped: a shared generation that goes on is no reason to ask again.
                running.difference_update(message.pk for message in switched_off)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.failed(exc)
        else:
            failures.succeeded()


# ------------------------------------------------------------------------------------------------
# /v1 calls
# ------------------------------------------------------------------------------------------------
# The endpoints whose calls a key marked "keep calls as conversations" keeps (embeddings and
# legacy completions have no conversation to show).
KEPT_ENDPOINTS = ("chat/completions", "responses")


async def record_api_call(
    *,
    key: ApiKey,
    slot: Slot,
    endpoint: str,
    messages: list[Any],
    generation: Generation,
    outcome: str,
    reservation: int | None = None,
) -> None:
    """Record a finished streamed ``/v1`` call (one ``ApiCall`` row; its usage settles its
    quota ``reservation``), and keep it as a conversation of the key's owner when the key says
    so (chat completions and responses)."""
    await services.api_call_arecord(
        api_key=key,
        endpoint=endpoint,
        slot_name=slot.name,
        stream=True,
        http_status=200,
        outcome=outcome,
        started_at=generation.started_at,
        generation=generation,
        error=generation.error,
        reservation=reservation,
    )
    if key.store_conversations and endpoint in KEPT_ENDPOINTS:
        await services.api_conversation_astore(
            api_key=key,
            slot=slot,
            messages=messages,
            answer=services.generation_fields(generation, status=outcome),
        )


async def record_whole_api_call(
    *,
    key: ApiKey,
    slot: Slot,
    endpoint: str,
    started_at: float,
    usage: dict[str, Any] | None,
    messages: list[Any] | None = None,
    chunk: dict[str, Any] | None = None,
    reservation: int | None = None,
) -> None:
    """Record a whole (non-streamed) ``/v1`` call as complete (one ``ApiCall`` row, ``usage``
    in chat completions' words, which settles its quota ``reservation``), and keep it as a
    conversation of the key's owner as ``record_api_call`` keeps a stream: ``messages`` the
    chat request's, ``chunk`` the one chat chunk that says what it answered
    (``responses.whole_as_chunk``)."""
    await services.api_call_arecord(
        api_key=key,
        endpoint=endpoint,
        slot_name=slot.name,
        stream=False,
        http_status=200,
        outcome="complete",
        started_at=started_at,
        usage=usage,
        reservation=reservation,
    )
    if key.store_conversations and endpoint in KEPT_ENDPOINTS and chunk is not None:
        await services.api_conversation_astore(
            api_key=key,
            slot=slot,
            messages=messages or [],
            answer=services.whole_answer_fields(chunk, slot_name=slot.name),
        )


# ------------------------------------------------------------------------------------------------
# /v1/responses
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Sweep
# ------------------------------------------------------------------------------------------------
async def sweep_interrupted(*, older_than_s: float = 3.0) -> int:
    """End every streaming answer whose generation no process runs any more (its process died
    or restarted). A generation counts as running when this process has it, or (with
    ``REDIS_URL``) its liveness key exists. With ``REDIS_URL`` an answer whose shared buffer
    is still there is stored from it (``services.message_arecover``: every chunk relayed, and
    how it ended); any other is marked ``interrupted``, keeping its checkpointed text. Returns
    how many were ended."""
    store = shared()
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    # Answers that ended here and whose row waits for the database (chat.records): their end
    # is on its way, so they are not lost.
    ending = records.writer().pending_message_ids()
    lost = []
    recovered = 0
    for pk, generation_id in await selectors.message_alist_streaming(updated_before=cutoff):
        if pk in ending:
            continue
        running = find(generation_id) if generation_id else None
        if running is not None and not running.ended and not running.is_mirror:
            continue
        if store is not None and generation_id:
            if await store.is_live(generation_id):
                continue
            if await _recovered(store, pk, generation_id):
                recovered += 1
                continue
        lost.append(pk)
    marked = await services.message_amark_interrupted(message_ids=lost) if lost else 0
    return recovered + marked


async def _recovered(store: Shared, message_id: int, generation_id: str) -> bool:
    """Whether answer ``message_id`` was stored from its shared buffer (``message_arecover``);
    False when there is none, or Redis is down."""
    try:
        buffered = await store.buffered(generation_id)
    except SharedUnavailable:
        return False
    if buffered is None:
        return False
    chunks, end = buffered
    logger.warning(
        "message %s: its process is gone; stored from its shared buffer (%d chunks, %s)",
        message_id,
        len(chunks),
        (end or {}).get("status", "no end"),
    )
    return await services.message_arecover(message_id=message_id, chunks=chunks, end=end)


async def sweep_forever(*, every_s: float = SWEEP_EVERY_S) -> None:
    """Run ``sweep_interrupted`` every ``every_s`` for the life of the process (with
    ``quotas.renew_held``: the quota reservations this process holds stay live), and
    ``attachments.purge_unsent`` and ``services.usage_hour_aprune`` every ``PURGE_EVERY_S``."""
    purged_at = -PURGE_EVERY_S
    failures = database.FailureLog("the sweep of interrupted answers and unsent uploads")
    while True:
        try:
            await quotas.renew_held()
            swept = await sweep_interrupted()
            if swept:
                logger.warning(
                    "ended %d answers whose process is gone (stored from their shared buffer, "
                    "or interrupted)",
                    swept,
                )
            if time.monotonic() - purged_at >= PURGE_EVERY_S:
                purged_at = time.monotonic()
                if purged := await attachments.purge_unsent():
                    logger.info("deleted %d uploads never sent with a message", purged)
                await services.usage_hour_aprune()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.failed(exc)
        else:
            failures.succeeded()
        await asyncio.sleep(every_s)
