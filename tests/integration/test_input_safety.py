"""Hostile and malformed input (issue 12): every JSON endpoint answers a 400 in OpenAI's error
envelope, naming the bad field, and the server logs no traceback; ``/v1`` never answers HTML.

Each case here gave Django's HTML "Server Error (500)" (or ``"internal error"``) before the
strict JSON reader (``chat.jsonbody``) and the JSON error middleware (``chat.middleware``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.http import Http404, HttpRequest, HttpResponse
from django.test import AsyncClient, override_settings
from django.urls import include, path, re_path

from chat.models import Conversation, Message, Widget
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = '[{"role": "user", "content": "Hello"}]'
ORIGIN = "https://docs.example.com"


def chat_body(extra: str, *, stream: bool = False) -> bytes:
    """A valid chat completion request with ``extra`` (raw JSON members) spliced in: raw
    text, since NaN, 1e400 and lone surrogates are what a JSON library will not write."""
    return (
        f'{{"model": "primary", "messages": {HELLO}, "stream": {json.dumps(stream)}, {extra}}}'
    ).encode()


def assert_envelope(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    return error


@pytest.fixture(autouse=True)
def no_traceback_logged(server) -> Iterator[None]:
    """Whatever a test sends, the server logs no traceback while it runs."""
    mark = len(server.log_text())
    yield
    assert "Traceback" not in server.log_text()[mark:]


@pytest.fixture
def v1(server, api_key) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url + "/v1",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        timeout=30,
    ) as client:
        yield client


# ------------------------------------------------------------------------------------------------
# /v1: numbers JSON cannot carry, unstorable strings, deep nesting
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ('"temperature": NaN', "temperature"),
        ('"temperature": Infinity', "temperature"),
        ('"temperature": -Infinity', "temperature"),
        ('"temperature": 1e400', "temperature"),
        ('"user": Infinity', "user"),
        ('"user": NaN', "user"),
        ('"logit_bias": {"50256": NaN}', "logit_bias.50256"),
        ('"logit_bias": {"50256": -1e400}', "logit_bias.50256"),
        (
            '"tools": [{"type": "function", "function": {"name": "f", '
            '"parameters": {"type": "object", "maximum": Infinity}}}]',
            "tools[0].function.parameters.maximum",
        ),
        (
            '"tools": [{"type": "function", "function": {"name": "f", "x": NaN}}]',
            "tools[0].function.x",
        ),
        ('"seed": 123456789012345678901234567890', "seed"),
    ],
)
def test_numbers_json_cannot_carry_are_400(v1, slot, sim, extra, param, stream) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=2)
    error = assert_envelope(v1.post("/chat/completions", content=chat_body(extra, stream=stream)))
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ('"user": "\\ud800"', "user"),
        ('"user": "tail \\udfff"', "user"),
        ('"metadata": {"\\ud800": "key"}', "metadata"),
        ('"user": "a\\u0000b"', "user"),
        ('"metadata": {"k\\u0000": "v"}', "metadata"),
    ],
)
def test_lone_surrogates_and_nul_are_400(v1, slot, sim, extra, param) -> None:
    error = assert_envelope(v1.post("/chat/completions", content=chat_body(extra)))
    assert error["param"] == param
    assert error["code"] == "invalid_value"
    assert sim.stats()["requests"] == 0


def test_lone_surrogate_in_a_message_is_400(v1, slot, sim) -> None:
    body = b'{"model": "primary", "messages": [{"role": "user", "content": "\\ud800"}]}'
    error = assert_envelope(v1.post("/chat/completions", content=body))
    assert error["param"] == "messages[0].content"
    # A surrogate pair is one character (U+1F600), not a lone surrogate.
    sim.configure(ttft_ms=0, tokens_per_s=0, length=2)
    paired = b'{"model": "primary", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert v1.post("/chat/completions", content=paired).status_code == 200


def test_nul_in_a_prompt_is_400(v1, slot, sim) -> None:
    body = b'{"model": "primary", "prompt": "a\\u0000b", "stream": true}'
    assert assert_envelope(v1.post("/completions", content=body))["param"] == "prompt"


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_nesting_is_400(v1, slot, sim, depth) -> None:
    nested = "[" * depth + "]" * depth
    error = assert_envelope(v1.post("/chat/completions", content=chat_body(f'"x": {nested}')))
    assert "deep" in error["message"]
    assert sim.stats()["requests"] == 0


def test_nesting_within_the_limit_passes_through(v1, slot, sim) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=2)
    nested = "[" * 60 + "]" * 60  # with the body object: 61 levels
    assert v1.post("/chat/completions", content=chat_body(f'"x": {nested}')).status_code == 200


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"\xff\xfe{}", b"[1, 2]", b'"text"', b"null", b"\xef\xbb\xbf{}"]
)
def test_not_a_json_object_is_400(v1, slot, raw) -> None:
    assert_envelope(v1.post("/chat/completions", content=raw))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 129}, "n"),
        ({"n": 10**9}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"stop": [str(i) for i in range(17)]}, "stop"),
        # Matched against every chunk of every choice on the event loop: 20,000 stop strings
        # with n=64 blocked the process (every request in it) past a 10 s client timeout.
        ({"stop": [f"x{i}" for i in range(20_000)], "n": 64, "stream": True}, "stop"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"user": 5}, "user"),
        ({"logit_bias": {"1": "x"}}, "logit_bias"),
        ({"tools": [1]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": "f"}]}, "tools[0].function"),
        ({"tool_choice": {"type": "function", "function": 1}}, "tool_choice.function"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]"),
    ],
)
def test_fields_the_relay_reads_are_checked(v1, slot, sim, body, param) -> None:
    request = {"model": "primary", "messages": json.loads(HELLO), **body}
    error = assert_envelope(v1.post("/chat/completions", json=request))
    assert error["param"] == param
    assert sim.stats()["requests"] == 0


def test_a_prompt_array_of_mixed_types_is_400(v1, slot, sim) -> None:
    refused = v1.post("/completions", json={"model": "primary", "prompt": [1, "a"]})
    assert assert_envelope(refused)["param"] == "prompt"
    assert sim.stats()["requests"] == 0


# ------------------------------------------------------------------------------------------------
# /v1: never HTML
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/v1/foo", "/v1", "/v1/", "/v1/models/", "/v1/chat/completions/x"])
def test_unknown_v1_url_is_an_envelope_404(server, api_key, url) -> None:
    response = httpx.post(server.base_url + url, headers={"Authorization": f"Bearer {api_key}"})
    error = assert_envelope(response, 404)
    assert error["code"] == "unknown_url"
    assert error["message"] == f"Invalid URL (POST {url})"


@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/primary", "GET"),
    ],
)
def test_wrong_method_is_an_envelope_405(server, api_key, method, url, allow) -> None:
    response = httpx.request(
        method, server.base_url + url, headers={"Authorization": f"Bearer {api_key}"}
    )
    error = assert_envelope(response, 405)
    assert error["message"] == f"Invalid method for URL ({method} {url})."
    assert response.headers["Allow"] == allow


# ------------------------------------------------------------------------------------------------
# The chat's and the widget's stream endpoints
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"parent": [1]}, "parent"),
        ({"parent": {"id": 1}}, "parent"),
        ({"parent": "1"}, "parent"),
        ({"parent": True}, "parent"),
        ({"regenerate": [1]}, "regenerate"),
        ({"regenerate": "7"}, "regenerate"),
        ({"conversation": [1]}, "conversation"),
        ({"conversation": 5}, "conversation"),
        ({"slot": ["primary"]}, "slot"),
        ({"content": ["hi"]}, "content"),
    ],
)
def test_chat_stream_wrong_types_are_400(slot, sim, browser_session, fields, param) -> None:
    body = {"content": "x", **fields}
    response = browser_session.post("/chat/stream/", json=body)
    assert assert_envelope(response)["param"] == param
    assert Message.objects.count() == 0


def test_chat_stream_parent_list_in_an_existing_conversation_is_400(
    slot, sim, browser_session
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=2)
    meta = post_message(browser_session, "first").meta("slipstream.message")
    response = browser_session.post(
        "/chat/stream/",
        json={"content": "x", "conversation": meta["conversation_id"], "parent": [1]},
    )
    assert assert_envelope(response)["param"] == "parent"
    assert Message.objects.count() == 2


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"content": "x", "slot": NaN}', "slot"),
        (b'{"content": "\\ud800"}', "content"),
        (b'{"content": "a\\u0000b"}', "content"),
        (b'{"content": "x", "parent": 1e400}', "parent"),
        (b'{"content": "x", "y": ' + b"[" * 1000 + b"]" * 1000 + b"}", None),
    ],
)
def test_chat_stream_refuses_what_json_cannot_carry(slot, browser_session, raw, param) -> None:
    response = browser_session.post(
        "/chat/stream/", content=raw, headers={"Content-Type": "application/json"}
    )
    assert assert_envelope(response)["param"] == param
    assert Conversation.objects.count() == 0


@pytest.fixture
def widget(slot) -> Widget:
    return Widget.objects.create(name="Docs", slot=slot, allowed_origins=ORIGIN)


def widget_post(server, widget: Widget, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Origin": ORIGIN, **kwargs.pop("headers", {})}
    url = f"{server.base_url}/widget/{widget.public_key}/{path}"
    return httpx.post(url, headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"content": "x", "conversation": [1]}', "conversation"),
        (b'{"content": "x", "conversation": 5}', "conversation"),
        (b'{"content": "x", "conversation": {"id": "x"}}', "conversation"),
        (b'{"content": NaN}', "content"),
        (b'{"content": "\\udc00"}', "content"),
        (b'{"content": "x\\u0000"}', "content"),
        (b"[" * 1000 + b"]" * 1000, None),
    ],
)
def test_widget_stream_refuses_bad_input(server, widget, sim, raw, param) -> None:
    token = widget_post(server, widget, "visitor/").json()["token"]
    response = widget_post(
        server,
        widget,
        "stream/",
        content=raw,
        headers={"X-Widget-Visitor": token, "Content-Type": "application/json"},
    )
    assert assert_envelope(response)["param"] == param
    assert Conversation.objects.count() == 0


# ------------------------------------------------------------------------------------------------
# An unexpected exception in a JSON endpoint's view: a generic 500 envelope, logged once
# ------------------------------------------------------------------------------------------------
SECRET = "a detail only the log may show"


async def _boom(request: HttpRequest) -> HttpResponse:
    raise ZeroDivisionError(SECRET)


async def _missing(request: HttpRequest) -> HttpResponse:
    raise Http404("No such thing")


urlpatterns = [
    path("v1/boom", _boom),
    path("v1/missing", _missing),
    path("", include(([path("chat/stream/", _boom, name="stream")], "chat"))),
    path("page/", _boom),
    re_path(r"^v1/", _boom),
]


@override_settings(ROOT_URLCONF=__name__)
@pytest.mark.parametrize("url", ["/v1/boom", "/chat/stream/"])
async def test_unexpected_exception_is_a_generic_500_envelope_logged_once(
    url, caplog: pytest.LogCaptureFixture
) -> None:
    client = AsyncClient(raise_request_exception=False)
    with caplog.at_level(logging.INFO):
        response = await client.post(url, data={}, content_type="application/json")
    assert response.status_code == 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert SECRET not in response.content.decode()
    assert "ZeroDivision" not in error["message"]
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1
    exc_info = logged[0].exc_info
    assert exc_info is not None
    assert isinstance(exc_info[1], ZeroDivisionError)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == logged


@override_settings(ROOT_URLCONF=__name__)
async def test_http404_in_a_v1_view_is_an_envelope() -> None:
    response = await AsyncClient(raise_request_exception=False).get("/v1/missing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@override_settings(ROOT_URLCONF=__name__)
async def test_other_pages_keep_django_s_error_page() -> None:
    response = await AsyncClient(raise_request_exception=False).get("/page/")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("url", "handler", "status"),
    [("/v1/chat/completions", "server_error", 500), ("/v1/models", "bad_request", 400)],
)
def test_failures_outside_views_are_envelopes_under_v1(url, handler, status) -> None:
    from django.core.exceptions import DisallowedHost
    from django.test import RequestFactory

    from chat import middleware

    request = RequestFactory().post(url)
    if handler == "server_error":
        response = middleware.server_error(request)
    else:
        response = middleware.bad_request(request, DisallowedHost("evil.example"))
    assert response.status_code == status
    assert set(json.loads(response.content)["error"]) == {"message", "type", "param", "code"}
    assert b"evil.example" not in response.content
