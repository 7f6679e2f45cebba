"""The lean ASGI route for /v1's completion endpoints (chat.api_asgi), in front of Django: the
same headers as Django's middleware gives, requests it is not sure of left to Django, its
failures as OpenAI's envelope, and Django's own view of the same endpoint still answering."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import httpx
import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import JsonResponse
from django.test import AsyncClient

from chat.api import completions
from chat.api_asgi import LeanApi
from chat.relay.sse import SSEDecoder
from chatsite.asgi import django_app
from tests.conftest import HTTPS
from tests.support.openapi import assert_valid

pytestmark = pytest.mark.django_db(transaction=True)

# Set by daphne or by the response's own body, not by middleware.
NOT_MIDDLEWARE = {"content-length", "content-type", "date", "server"}


def middleware_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in NOT_MIDDLEWARE}


@pytest.mark.parametrize("behind_proxy", [False, True])
def test_the_lean_routes_headers_are_djangos(
    request, server, slot, sim, api_key, behind_proxy
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    base = request.getfixturevalue("proxied").base_url if behind_proxy else server.base_url
    headers = HTTPS if behind_proxy else {}
    with httpx.Client(base_url=base, headers=headers) as client:
        lean = client.post("/v1/chat/completions", json={})  # no key: 401, from the lean route
        django = client.post("/v1/chat/completions/", json={})  # Django's "Invalid URL" 404
        assert (lean.status_code, django.status_code) == (401, 404)
        assert lean.headers["content-type"] == django.headers["content-type"]
        assert middleware_headers(lean) == middleware_headers(django)
        assert ("strict-transport-security" in lean.headers) == behind_proxy
        # A stream: the lean route's and a Django view's (/v1/responses) carry the same headers.
        auth = {"Authorization": f"Bearer {api_key}"}
        body = {"model": "primary", "stream": True}
        with (
            client.stream(
                "POST", "/v1/chat/completions", headers=auth, json={**body, "messages": HI}
            ) as lean_stream,
            client.stream(
                "POST", "/v1/responses", headers=auth, json={**body, "input": "hi"}
            ) as django_stream,
        ):
            assert (lean_stream.status_code, django_stream.status_code) == (200, 200)
            assert middleware_headers(lean_stream) == middleware_headers(django_stream)
            assert lean_stream.headers["content-type"] == django_stream.headers["content-type"]
            assert lean_stream.headers["cache-control"] == "no-cache"
            # Read to the end: each call is recorded before its stream ends, not after the test.
            for response in (lean_stream, django_stream):
                assert b"".join(response.iter_bytes())


HI = [{"role": "user", "content": "Hi"}]


def test_plain_http_behind_the_proxy_is_redirected_by_django(proxied) -> None:
    response = httpx.post(f"{proxied.base_url}/v1/chat/completions", json={})
    assert response.status_code == 301
    assert response.headers["location"] == f"https://127.0.0.1:{proxied.port}/v1/chat/completions"


def test_a_host_not_allowed_gets_djangos_json_400(server, slot, api_key) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Host": "attacker.example", "Authorization": f"Bearer {api_key}"},
        json={"model": "primary", "messages": HI},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Bad request."


def test_a_bad_content_length_is_a_400_after_the_key(server, api_key) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.Client() as client:
        request = client.build_request("POST", url, content=b"{}")
        request.headers["Content-Length"] = "2"
        request.headers["Authorization"] = f"Bearer {api_key}"
        assert client.send(request).status_code == 400
        request.headers["Authorization"] = "Bearer nope"
        assert client.send(request).status_code == 401


# ------------------------------------------------------------------------------------------------
# Bodies that say they are not JSON (issue 33, finding 5): OpenAI's 400, on either route
# ------------------------------------------------------------------------------------------------
# A body both endpoints would take (each ignores the other's field), so only its label differs.
JSON_BODY = json.dumps({"model": "primary", "messages": HI, "prompt": "Hi"})


def assert_unsupported(status: int, body: Any, sent: str) -> None:
    """OpenAI's refusal of a body that is not ``application/json``: 400, its envelope, its code,
    naming the Content-Type that was sent (the API's wording, openai/openai-openapi#502)."""
    assert status == 400, body
    assert_valid(body, "ErrorResponse")
    error = body["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        None,
        "unsupported_content_type",
    )
    assert f"'Content-Type: {sent}" in error["message"]


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_a_body_that_is_not_json_gets_openais_400_from_the_lean_route(
    server, slot, sim, api_key, endpoint
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=2)
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"}
    ) as c:
        upload = c.post(
            f"/v1/{endpoint}",
            data={"model": "primary"},
            files={"file": ("body.json", JSON_BODY.encode(), "application/json")},
        )
        labelled = c.post(
            f"/v1/{endpoint}", content=JSON_BODY, headers={"Content-Type": "text/plain"}
        )
        # JSON by any spelling still is (OpenAI once refused a charset: openai-openapi#194).
        charset = c.post(
            f"/v1/{endpoint}",
            content=JSON_BODY,
            headers={"Content-Type": "Application/JSON; charset=utf-8"},
        )
    assert_unsupported(upload.status_code, upload.json(), "multipart/form-data; boundary=")
    assert_unsupported(labelled.status_code, labelled.json(), "text/plain'")
    assert charset.status_code == 200, charset.text


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
async def test_a_body_that_is_not_json_gets_openais_400_from_djangos_view(
    api_key, endpoint
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    upload = await AsyncClient().post(  # the test client's default: multipart/form-data
        f"/v1/{endpoint}",
        {"model": "primary", "file": SimpleUploadedFile("body.json", JSON_BODY.encode())},
        headers=auth,
    )
    labelled = await AsyncClient().post(
        f"/v1/{endpoint}",
        JSON_BODY,
        content_type="application/x-www-form-urlencoded",
        headers=auth,
    )
    assert_unsupported(upload.status_code, upload.json(), "multipart/form-data; boundary=")
    assert_unsupported(labelled.status_code, labelled.json(), "application/x-www-form-urlencoded'")


# ------------------------------------------------------------------------------------------------
# Failures the adapter did not expect (in process: the route's own code, around a completion
# that raises)
# ------------------------------------------------------------------------------------------------
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/chat/completions",
    "raw_path": b"/v1/chat/completions",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
    "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 80),
}


async def exchange(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[dict[str, Any]]:
    """What the lean route sends when ``create_completion`` does ``answer()``."""

    async def create_completion(**_: Any) -> Any:
        return answer()

    monkeypatch.setattr(completions, "create_completion", create_completion)
    app = ApplicationCommunicator(LeanApi(django_app), SCOPE)
    await app.send_input({"type": "http.request", "body": b"{}"})
    messages = []
    while True:
        message = await app.receive_output(timeout=10)
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            break
    await app.wait(timeout=10)
    return messages


async def test_an_unexpected_failure_before_the_response_is_a_json_500(monkeypatch, caplog):
    def fail() -> Any:
        raise RuntimeError("secret detail")

    start, body = await exchange(monkeypatch, fail)
    assert start["status"] == 500
    envelope = json.loads(body["body"])["error"]
    assert envelope["type"] == "server_error"
    assert "secret" not in body["body"].decode()
    assert any("secret detail" in str(r.exc_info) for r in caplog.records if r.exc_info)


async def test_a_stream_that_fails_midway_still_ends(monkeypatch, caplog):
    async def events() -> AsyncGenerator[bytes, None]:
        yield b"data: {}\n\n"
        raise RuntimeError("broken")

    start, first, end = await exchange(monkeypatch, events)
    assert start["status"] == 200
    assert first["body"] == b"data: {}\n\n"
    assert end == {"type": "http.response.body"}
    assert any(r.exc_info for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# Django's view of the same endpoint (served where the lean route is not in front: a test
# client, another ASGI server mounting Django alone)
# ------------------------------------------------------------------------------------------------
async def test_djangos_view_streams_the_same_completion(slot, api_key, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    response = await AsyncClient().post(
        "/v1/chat/completions",
        {"model": "primary", "messages": HI, "stream": True},
        content_type="application/json",
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 200
    decoder = SSEDecoder()
    events = []
    async for part in cast("AsyncIterator[bytes]", response.streaming_content):  # type: ignore[attr-defined]
        events.extend(decoder.feed(part))
    data = [event.data for event in events]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["model"] for c in chunks} == {"primary"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == 4


# ------------------------------------------------------------------------------------------------
# The request's thread: Django's request_finished check, only where the request used it
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uses_the_thread", [False, True])
async def test_the_connection_check_runs_only_after_a_request_that_used_its_thread(
    monkeypatch, uses_the_thread
) -> None:
    thread = django_app.threads[0]
    monkeypatch.setattr(django_app, "pick_thread", lambda: thread)
    ran: list[str] = []
    submit = type(thread).submit

    def recording_submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        ran.append(getattr(fn, "__name__", None) or repr(fn))  # asgiref's calls: a partial
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(type(thread), "submit", recording_submit)

    def orm_call() -> None:  # what a lookup missing from chat.readcache does on the thread
        pass

    async def create_completion(**_: Any) -> Any:
        if uses_the_thread:
            await sync_to_async(orm_call)()
        return JsonResponse({"ok": True})

    monkeypatch.setattr(completions, "create_completion", create_completion)
    app = ApplicationCommunicator(LeanApi(django_app), SCOPE)
    await app.send_input({"type": "http.request", "body": b"{}"})
    assert (await app.receive_output(timeout=10))["status"] == 200
    await app.receive_output(timeout=10)
    await app.wait(timeout=10)
    if uses_the_thread:
        assert len(ran) == 2
        assert "orm_call" in ran[0]
        assert ran[1] == "close_old_connections"
    else:
        assert ran == []
