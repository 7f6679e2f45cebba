"""The widget's limits and switch over real HTTP (issue 16, findings 4 and 7): new visitors and
messages counted per visitor, per client IP and per widget; tokens that expire; a disabled
widget's answer in flight stopped.

The limits under test are per day or per hour, never per minute: django-ratelimit's windows are
fixed, and a run that crossed a minute's edge would see a fresh allowance."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.core import signing

from chat.models import Message, Widget
from chat.relay.sse import ServerSentEvent, SSEDecoder
from chat.widget import VISITOR_HEADER, VISITOR_SALT
from tests.conftest import server_env
from tests.support.daphne_server import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)

HOST = "https://docs.example.com"
# Loose enough that only the limit a test sets low is ever reached.
ROOMY = {
    "rate_per_minute": 3,  # the widget
    "ip_rate_per_minute": 1000,
    "ip_rate_per_day": 1000,
    "daily_cap": 1000,
    "visitors_per_hour": 1000,
    "ip_visitors_per_hour": 1000,
}


def make_widget(slot: Any, **limits: int) -> Widget:
    fields: dict[str, Any] = {**ROOMY, **limits}
    return Widget.objects.create(name="Docs", slot=slot, allowed_origins=HOST, **fields)


def url(server: DaphneServer, widget: Widget, path: str) -> str:
    return f"{server.base_url}/widget/{widget.public_key}/{path}"


def mint(
    client: httpx.Client, server: DaphneServer, widget: Widget, **headers: str
) -> httpx.Response:
    return client.post(url(server, widget, "visitor/"), headers={"Origin": HOST, **headers})


def send(
    client: httpx.Client, server: DaphneServer, widget: Widget, token: str, **headers: str
) -> httpx.Response:
    """One message, its answer read to the end (so the simulator has counted it)."""
    return client.post(
        url(server, widget, "stream/"),
        json={"content": "Hello"},
        headers={"Origin": HOST, VISITOR_HEADER: token, **headers},
    )


def fresh_visitors_send(
    client: httpx.Client, server: DaphneServer, widget: Widget, count: int, **headers: str
) -> list[httpx.Response]:
    """``count`` messages, each from a visitor minted just for it."""
    responses = []
    for _ in range(count):
        token = mint(client, server, widget, **headers).json()["token"]
        responses.append(send(client, server, widget, token, **headers))
    return responses


def assert_refused_for_rate(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) > 0


def statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


# ------------------------------------------------------------------------------------------------
# Finding 4: limits that rotating tokens cannot escape
# ------------------------------------------------------------------------------------------------
def test_new_visitors_are_limited_per_ip_and_per_widget(server, sim, slot) -> None:
    per_ip = make_widget(slot, ip_visitors_per_hour=3)
    per_widget = make_widget(slot, visitors_per_hour=4)
    with httpx.Client(timeout=30) as client:
        minted = [mint(client, server, per_ip) for _ in range(10)]
        assert statuses(minted) == [200] * 3 + [429] * 7
        assert_refused_for_rate(minted[-1])
        minted = [mint(client, server, per_widget) for _ in range(10)]
        assert statuses(minted) == [200] * 4 + [429] * 6
        assert_refused_for_rate(minted[-1])


def test_rotating_tokens_cannot_exceed_the_ip_limit(server, sim, slot) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    widget = make_widget(slot, ip_rate_per_day=5)
    with httpx.Client(timeout=30) as client:
        responses = fresh_visitors_send(client, server, widget, 20)
    assert statuses(responses) == [200] * 5 + [429] * 15
    assert_refused_for_rate(responses[-1])
    assert sim.stats()["requests"] == 5


def test_rotating_tokens_cannot_exceed_the_widget_daily_cap(server, sim, slot) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    widget = make_widget(slot, daily_cap=4)
    with httpx.Client(timeout=30) as client:
        responses = fresh_visitors_send(client, server, widget, 20)
    assert statuses(responses) == [200] * 4 + [429] * 16
    assert_refused_for_rate(responses[-1])
    assert sim.stats()["requests"] == 4  # the slot is protected


def test_a_rotating_x_forwarded_for_does_not_help_without_a_proxy(server, sim, slot) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    messages = make_widget(slot, ip_rate_per_day=3)
    visitors = make_widget(slot, ip_visitors_per_hour=3)
    with httpx.Client(timeout=30) as client:
        sent = []
        for i in range(10):
            forwarded = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
            token = mint(client, server, messages, **forwarded).json()["token"]
            sent.append(send(client, server, messages, token, **forwarded))
        minted = [
            mint(client, server, visitors, **{"X-Forwarded-For": f"198.51.100.{i + 1}"})
            for i in range(10)
        ]
    assert statuses(sent) == [200] * 3 + [429] * 7
    assert statuses(minted) == [200] * 3 + [429] * 7


@pytest.fixture
def proxied_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """Slipstream as deployed behind nginx (``DJANGO_BEHIND_PROXY``), but on plain HTTP."""
    with django_db_blocker.unblock():
        env = server_env()
    env |= {"DJANGO_BEHIND_PROXY": "true", "DJANGO_SSL_REDIRECT": "false"}
    with DaphneServer(env=env) as daphne:
        yield daphne


def test_behind_the_proxy_the_hop_it_added_is_the_client(proxied_server, sim, slot) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    widget = make_widget(slot, ip_rate_per_day=2)
    with httpx.Client(timeout=30) as client:
        # The client writes the first hops; nginx appends the address it saw, last.
        forged = [
            fresh_visitors_send(
                client, proxied_server, widget, 1, **{"X-Forwarded-For": f"10.0.0.{i}, 203.0.113.7"}
            )[0]
            for i in range(5)
        ]
        other = fresh_visitors_send(
            client, proxied_server, widget, 1, **{"X-Forwarded-For": "10.0.0.1, 203.0.113.8"}
        )
    assert statuses(forged) == [200] * 2 + [429] * 3
    assert statuses(other) == [200]  # another client behind the same proxy


def expired_token(widget: Widget, *, age_days: float) -> str:
    """A visitor token of ``widget`` as if signed ``age_days`` ago."""

    class Past(signing.TimestampSigner):
        def timestamp(self) -> str:
            return signing.b62_encode(int(time.time() - age_days * 86400))

    claims = {"w": widget.pk, "v": "8f0e7f7e-1a7e-4c57-9a55-1d1d6a5a0b3c"}
    return Past(salt=VISITOR_SALT).sign_object(claims)


def test_an_expired_token_is_refused(server, sim, slot) -> None:
    widget = make_widget(slot)  # tokens last 30 days by default
    with httpx.Client(timeout=30) as client:

        def conversation(token: str) -> httpx.Response:
            return client.get(url(server, widget, "conversation/"), headers={VISITOR_HEADER: token})

        assert conversation(expired_token(widget, age_days=29)).status_code == 200
        old = expired_token(widget, age_days=31)
        refused = conversation(old)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_visitor"
        assert send(client, server, widget, old).status_code == 401
        Widget.objects.filter(pk=widget.pk).update(visitor_days=1)
        young = expired_token(widget, age_days=2)
        assert conversation(young).status_code == 401
    assert sim.stats()["requests"] == 0


# ------------------------------------------------------------------------------------------------
# Finding 7: a disabled widget stops answering at once
# ------------------------------------------------------------------------------------------------
def test_disabling_a_widget_stops_its_answer_in_flight(server, sim, slot) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=50, length=2000)  # 40 s if nothing stops it
    widget = make_widget(slot)
    events: list[ServerSentEvent] = []
    with httpx.Client(timeout=30) as client:
        token = mint(client, server, widget).json()["token"]
        with client.stream(
            "POST",
            url(server, widget, "stream/"),
            json={"content": "Tell me everything"},
            headers={"Origin": HOST, VISITOR_HEADER: token},
        ) as response:
            assert response.status_code == 200
            decoder = SSEDecoder()
            disabled_at = None
            for raw in response.iter_raw():
                events.extend(decoder.feed(raw))
                if disabled_at is None and any(e.event == "message" for e in events):
                    widget.enabled = False
                    widget.save()  # as the admin's form does
                    disabled_at = time.monotonic()
                if disabled_at is not None and time.monotonic() - disabled_at > 5:
                    break  # still streaming: it was never stopped
            ended_after = time.monotonic() - (disabled_at or 0)
    assert disabled_at is not None
    assert ended_after < 1.0
    sim.wait_for(lambda s: s["cancelled"] >= 1)
    done = [json.loads(e.data) for e in events if e.event == "slipstream.done"]
    assert done
    assert done[0]["status"] == "stopped"
    assert events[-1].data == "[DONE]"
    answer = Message.objects.get(role=Message.Role.ASSISTANT)
    assert answer.status == Message.Status.STOPPED
    assert answer.content  # what was said before the stop is kept
