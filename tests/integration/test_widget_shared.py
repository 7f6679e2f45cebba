"""A disabled widget's answer that shares its generation with a chat user's (single-flight;
issue 33, "what users would still miss", 3): the widget's stream ends and its message is
stored ``stopped``; the chat user's answer goes on to its end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from chat.models import Message
from chat.relay.sse import ServerSentEvent, SSEDecoder
from chat.widget import VISITOR_HEADER
from tests.conftest import server_env
from tests.integration.test_widget_limits import HOST, make_widget, mint, url
from tests.support.daphne_server import DaphneServer
from tests.support.polling import wait_until
from tests.support.sse_client import Answer, post_message

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "Tell me everything"
LENGTH = 150  # tokens: 3 s at 50 tokens/s, if nothing stops it


def both_answers_stored() -> bool:
    return Message.objects.filter(role=Message.Role.ASSISTANT).count() == 2


@pytest.mark.parametrize("first", ["chat", "widget"])
def test_a_disabled_widgets_shared_answer_stops_alone(
    server, sim, slot, browser_session, first
) -> None:
    """Before: the widget's message was stored stopped but its stream went on to the end of
    the chat user's answer (3 s here), the visitor reading an answer of a disabled widget."""
    shared_answer_stops_alone(server, sim, slot, browser_session, first=first)


@pytest.fixture(scope="module")
def second(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """A second Slipstream process on the same database and Redis, next to ``server``."""
    with django_db_blocker.unblock():
        env = server_env()
    with DaphneServer(env=env) as daphne:
        yield daphne


@pytest.mark.skipif(
    not (os.environ.get("REDIS_URL") and "postgres" in os.environ.get("DATABASE_URL", "")),
    reason="needs REDIS_URL and DATABASE_URL=postgres://… (the test command's second pass)",
)
def test_a_widget_answer_joined_from_another_process_stops_alone(
    server, second, sim, slot, browser_session
) -> None:
    """The widget's answer, in another process, joined the chat's generation (single-flight
    across processes: it reads a mirror of it). Before: its stop was sent to the chat's
    process, which cancelled the generation, the chat user's answer with it."""
    shared_answer_stops_alone(second, sim, slot, browser_session, first="chat")


def shared_answer_stops_alone(
    server: DaphneServer, sim: Any, slot: Any, browser_session: httpx.Client, *, first: str
) -> None:
    """The chat's answer (``browser_session``'s server) and the widget's (on ``server``) to
    one question, on one generation; the widget disabled once its answer streams."""
    slot.single_flight = "always"
    slot.save()
    sim.configure(ttft_ms=0, tokens_per_s=50, length=LENGTH)
    widget = make_widget(slot)
    events: list[ServerSentEvent] = []
    chat_answer: Future[Answer] | None = None
    disabled: dict[str, Any] | None = None
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(1) as pool:
        token = mint(client, server, widget).json()["token"]
        if first == "chat":
            chat_answer = pool.submit(post_message, browser_session, QUESTION)
            sim.wait_for(lambda s: s["streams_started"] == 1, timeout_s=10)
        with client.stream(
            "POST",
            url(server, widget, "stream/"),
            json={"content": QUESTION},
            headers={"Origin": HOST, VISITOR_HEADER: token},
        ) as response:
            assert response.status_code == 200
            decoder = SSEDecoder()
            for raw in response.iter_raw():
                events.extend(decoder.feed(raw))
                if disabled is not None or not any(e.event == "message" for e in events):
                    continue
                if chat_answer is None:  # the widget's answer runs: the chat's joins it
                    chat_answer = pool.submit(post_message, browser_session, QUESTION)
                wait_until(both_answers_stored, what="both answers on the one generation")
                widget.enabled = False
                widget.save()  # as the admin's form does
                disabled = sim.stats()
            events.extend(decoder.flush())
        widget_ended = sim.stats()
        assert chat_answer is not None
        chat = chat_answer.result(timeout=30)

    assert disabled is not None, "the widget's answer never streamed"
    # One upstream call, shared; the widget's stream ended while it still ran ...
    assert widget_ended["requests"] == 1
    assert (widget_ended["active"], widget_ended["completed"]) == (1, 0)
    done = [json.loads(e.data) for e in events if e.event == "slipstream.done"]
    assert [d["status"] for d in done] == ["stopped"]
    assert events[-1].data == "[DONE]"
    # ... and the chat user got it whole, the upstream never cancelled.
    assert chat.status_code == 200
    assert chat.meta("slipstream.done")["status"] == "complete"
    assert len(chat.content.split()) == LENGTH
    assert sim.stats()["cancelled"] == 0
    widget_message = Message.objects.get(conversation__widget=widget, role="assistant")
    chat_message = Message.objects.get(conversation__widget=None, role="assistant")
    assert widget_message.status == Message.Status.STOPPED
    assert 0 < len(widget_message.content.split()) < LENGTH  # what it said before the stop
    assert chat_message.status == Message.Status.COMPLETE
    assert len(chat_message.content.split()) == LENGTH
