"""A streaming answer's checkpoint stores the sequence number of the last chunk its text includes,
and a resume after that number, in this process or (with Redis) another, brings exactly the rest
(daphne serving Slipstream, the simulator as the upstream)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest

from chat import services
from chat.models import Message
from chat.relay.accumulate import MessageAccumulator
from chat.relay.sse import ServerSentEvent, SSEDecoder
from tests.conftest import server_env, session_client
from tests.support.daphne_server import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)


def chunk_events(events: list[ServerSentEvent]) -> list[tuple[int, dict[str, Any]]]:
    """``(SSE id, chunk)`` of each chunk event."""
    return [
        (int(e.id or 0), json.loads(e.data))
        for e in events
        if e.event == "message" and e.data != "[DONE]"
    ]


def meta(events: list[ServerSentEvent], name: str) -> dict[str, Any]:
    (event,) = [e for e in events if e.event == name]
    result: dict[str, Any] = json.loads(event.data)
    return result


def resume(client: httpx.Client, generation_id: str, after: int) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    with client.stream("GET", f"/chat/generations/{generation_id}/?after={after}") as response:
        assert response.status_code == 200
        events = [e for raw in response.iter_raw() for e in decoder.feed(raw)]
    return events + decoder.flush()


def folded(delta: dict[str, Any] | None, chunks: list[tuple[int, dict[str, Any]]]) -> tuple:
    """``(content, reasoning)`` of the checkpoint's delta with ``chunks`` folded in after it."""
    acc = MessageAccumulator()
    if delta is not None:
        acc.add({"choices": [{"index": 0, "delta": delta}]})
    for _, chunk in chunks:
        acc.add(chunk)
    return acc.content(), acc.reasoning()


def checkpoint_then_resume(client: httpx.Client, resumer: httpx.Client) -> dict[str, Any]:
    """Stream an answer through ``client``; once its row holds a checkpoint (read as the page is
    rendered, while it streams), resume it through ``resumer`` after the checkpoint's number
    and read both to the end."""
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    seen: Message | None = None
    rest: list[ServerSentEvent] = []
    with client.stream("POST", "/chat/stream/", json={"content": "A long one"}) as response:
        assert response.status_code == 200
        for raw in response.iter_raw():
            events.extend(decoder.feed(raw))
            if seen is None and len(chunk_events(events)) >= 60:
                started = meta(events, "slipstream.message")
                row = Message.objects.get(pk=started["assistant_message_id"])
                if row.checkpoint is not None:
                    seen = row
                    assert isinstance(row.checkpoint, dict)
                    rest = resume(resumer, started["generation_id"], row.checkpoint["seq"])
    assert seen is not None, "no checkpoint was stored while the answer streamed"
    return {"events": events + decoder.flush(), "seen": seen, "rest": rest}


def test_the_checkpoint_says_which_chunk_its_text_goes_up_to_and_resumes_there(
    slot, sim, browser_session
) -> None:
    # Four seconds of answer: checkpoints (about one a second) land while it streams.
    sim.configure(ttft_ms=0, tokens_per_s=50, length=180, reasoning_tokens=20)
    run = checkpoint_then_resume(browser_session, browser_session)
    seen, events, rest = run["seen"], run["events"], run["rest"]
    assert seen.status == Message.Status.STREAMING
    chunks = chunk_events(events)
    assert [number for number, _ in chunks] == list(range(1, len(chunks) + 1))
    after = seen.checkpoint["seq"]
    assert 1 <= after < len(chunks)

    # The stored text is exactly the first `after` chunks' (the SSE ids the page saw).
    assert (seen.content, seen.reasoning) == folded(None, chunks[:after])
    assert seen.reasoning  # the reasoning had ended,
    assert seen.content  # and the answer begun

    # Resumed while it streamed: the chunks after the checkpoint, which on top of the
    # checkpoint's delta are the whole answer as stored.
    final = Message.objects.get(pk=seen.pk)
    assert final.status == Message.Status.COMPLETE
    assert final.checkpoint is None  # stored whole: nothing to go on from
    assert len(final.content.split()) == 180
    assert meta(rest, "slipstream.message")["resumed_after"] == after
    assert chunk_events(rest) == chunks[after:]
    assert folded(services.resume_delta(seen), chunk_events(rest)) == (
        final.content,
        final.reasoning,
    )

    # Ended before the page asked (still findable): the same rest, then its end.
    generation_id = meta(events, "slipstream.message")["generation_id"]
    late = resume(browser_session, generation_id, after)
    assert chunk_events(late) == chunks[after:]
    assert meta(late, "slipstream.done")["status"] == "complete"

    # A number past the buffer names no chunk of it: read from the first, and say so.
    again = resume(browser_session, generation_id, len(chunks) + 50)
    assert meta(again, "slipstream.message")["resumed_after"] == 0
    assert chunk_events(again) == chunks


@pytest.fixture
def second(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """Another process next to the session's ``server``, sharing its database and Redis."""
    with django_db_blocker.unblock():
        env = server_env()
    with DaphneServer(env=env) as daphne:
        yield daphne


@pytest.mark.skipif(
    not (os.environ.get("REDIS_URL") and "postgres" in os.environ.get("DATABASE_URL", "")),
    reason="needs REDIS_URL and DATABASE_URL=postgres://… (the test command's second pass)",
)
def test_another_process_resumes_after_the_checkpoint_with_the_same_numbers(
    server, second, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=50, length=180, reasoning_tokens=20)
    with (
        closing(session_client(server, user)) as a,
        closing(session_client(second, user, session=a.cookies["sessionid"])) as b,
    ):
        run = checkpoint_then_resume(a, b)
    seen, rest = run["seen"], run["rest"]
    chunks = chunk_events(run["events"])
    after = seen.checkpoint["seq"]
    assert (seen.content, seen.reasoning) == folded(None, chunks[:after])
    # Process B's mirror numbers the chunks as process A does.
    assert meta(rest, "slipstream.message")["resumed_after"] == after
    assert chunk_events(rest) == chunks[after:]
    final = Message.objects.get(pk=seen.pk)
    assert folded(services.resume_delta(seen), chunk_events(rest)) == (
        final.content,
        final.reasoning,
    )
