"""chat.sso_session's own decisions: when the middleware lets a recheck go (never on a request
that did not read its session, once per interval otherwise), which provider answers end a
session (only invalid_grant), the 401 for JSON endpoints, and the end_session URL. The whole
flow against a real provider is in tests/e2e/test_sso_session.py."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from django.contrib.sessions.backends.db import SessionStore
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.test import RequestFactory, override_settings
from django.urls import resolve

from chat import sso, sso_session
from chat.sso_session import Outcome

pytestmark = pytest.mark.django_db


@pytest.fixture
def scheduled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """The rechecks the middleware lets go, as (row id, session key), instead of running them."""
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(
        sso_session,
        "_schedule",
        lambda *, row_id, session_key: calls.append((row_id, session_key)),
    )
    return calls


def request_with(session: SessionStore, path: str = "/") -> HttpRequest:
    request = RequestFactory().get(path)
    request.session = SessionStore(session.session_key)  # as the middleware makes it: unread
    request.resolver_match = resolve(path)
    return request


def through(request: HttpRequest, response: HttpResponse | None = None) -> Any:
    middleware = sso_session.SessionRecheck(lambda r: response or HttpResponse())
    return middleware.process_response(request, response or HttpResponse())


def sso_session_store(*, due_in_s: float) -> SessionStore:
    session = SessionStore()
    session[sso.SESSION_ROW] = 7
    session[sso.RECHECK_AT] = time.time() + due_in_s
    session.save()
    return session


def test_a_request_that_does_not_read_its_session_lets_no_recheck_go(
    scheduled: list[tuple[int, str]],
) -> None:
    request = request_with(sso_session_store(due_in_s=-1))
    through(request)
    assert scheduled == []
    assert not request.session.accessed  # the middleware read nothing either


@override_settings(SLIPSTREAM_SSO_RECHECK_S=300)
def test_a_due_recheck_goes_once_and_the_next_is_an_interval_later(
    scheduled: list[tuple[int, str]],
) -> None:
    store = sso_session_store(due_in_s=-1)
    request = request_with(store)
    assert request.session.get(sso.SESSION_ROW) == 7  # the view read the session
    through(request)
    assert scheduled == [(7, store.session_key)]
    # Not written to the session: no save (a hop, a write) that could race the recheck's end.
    assert not request.session.modified
    due = sso_session._next_recheck[str(store.session_key)]
    assert due == pytest.approx(time.time() + 300, abs=5)

    again = request_with(store)
    again.session.get(sso.SESSION_ROW)
    through(again)
    assert len(scheduled) == 1  # not due yet


def test_a_session_not_signed_in_by_sso_is_never_rechecked(
    scheduled: list[tuple[int, str]],
) -> None:
    store = SessionStore()
    store["other"] = 1
    store.save()
    request = request_with(store)
    request.session.get("other")
    through(request)
    assert scheduled == []


def test_a_json_endpoints_redirect_to_sign_in_is_a_401_envelope() -> None:
    store = SessionStore()
    store.save()
    to_login = HttpResponseRedirect("/login/?next=/chat/slots/")
    answer = through(request_with(store, "/chat/slots/"), to_login)
    assert answer.status_code == 401
    assert json.loads(answer.content)["error"]["code"] == "not_signed_in"
    page = through(request_with(store, "/"), HttpResponseRedirect("/login/?next=/"))
    assert page.status_code == 302  # a page still goes to the sign-in page


def token_error(status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return response


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (400, {"error": "invalid_grant", "error_description": "grant revoked"}, Outcome.REFUSED),
        # Our client's credentials refused: our configuration, not the person's account.
        (401, {"error": "invalid_client"}, Outcome.UNREACHABLE),
        (400, {"error": "invalid_request"}, Outcome.UNREACHABLE),
        (500, {"error": "server_error"}, Outcome.UNREACHABLE),
        (503, b"<html>down for maintenance</html>", Outcome.UNREACHABLE),
        (400, b"invalid_grant", Outcome.UNREACHABLE),  # not RFC 6749's JSON: not a refusal
    ],
)
def test_only_invalid_grant_ends_a_session(status: int, body: Any, outcome: Outcome) -> None:
    assert sso_session._http_error(token_error(status, body))[0] is outcome


def test_the_end_session_url_keeps_the_endpoints_own_query() -> None:
    url = sso_session._with_query(
        "https://id.example.com/logout?tenant=a", {"state": "s t", "client_id": "c"}
    )
    assert url == "https://id.example.com/logout?tenant=a&state=s+t&client_id=c"
