"""The answer lifecycle, for the chat and the widget: start, keep, resume, stop.

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

A ``/v1`` call's record is ``chat.api_records``'s, a stored response ``chat.response_store``'s,
the sweep of answers whose process died ``chat.sweep``'s.

Raises ``Refusal`` (``chat.http``) for requests that name what the user may not reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.contrib.auth.models import User

from chat import attachments, database, quotas, readcache, selectors, services
from chat.http import Refusal, invalid
from chat.models import (
    Attachment,
    Conversation,
    Message,
    Slot,
    Widget,
)
from chat.relay import dispatch, tokenize
from chat.relay.background import spawn
from chat.relay.cluster import shared
from chat.relay.generation import Generation, ReaderStop, Status, find

logger = logging.getLogger(__name__)


logger = logging.getLogger(__name__)


MAX_MESSAGE_CHARS = 100_000


# A Stop for an answer running in another process is answered once that process stored it,
# usually within milliseconds; after this long, with the message as it stands.
STOP_WAIT_S = 5.0


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
