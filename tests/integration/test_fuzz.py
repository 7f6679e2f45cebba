"""Fuzzing every JSON endpoint against the real daphne server (issue 12).

Two sources of input: property-based bodies (hypothesis) for ``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``, the chat's ``POST /chat/stream/`` and the widget's
``POST /widget/<key>/stream/``, hostile on purpose (NaN, Infinity, 1e400, integers past 64 bits,
lone surrogates, NUL, deep nesting, wrong types, truncated and non-UTF-8 bytes); and a contract
run of schemathesis against OpenAI's own OpenAPI document for the ``/v1`` operations Slipstream
serves (``tests/fixtures/openapi/``), in its positive and negative modes.

Every exchange must hold the same promises: no 5xx; every error body is OpenAI's envelope
``{"error": {"message": str, "type": str, "param", "code"}}``; every response, streams included,
ends within ``BOUND_S`` (read to the end with httpx, whatever the status); a stream ends with
``data: [DONE]`` or one final error envelope; and the server logs no traceback meanwhile.

Runs are bounded and reproducible: fixed ``max_examples``, derandomized, no example database.
The slot is the simulator with no pacing, so each answer streams at once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.models import Conversation, Message, Widget
from chat.relay.sse import ServerSentEvent, SSEDecoder

pytestmark = pytest.mark.django_db(transaction=True)

BOUND_S = 30.0  # no exchange may take longer, streams read to their end included
OPENAPI = Path(__file__).parents[1] / "fixtures" / "openapi" / "openai-openapi.yaml"
ORIGIN = "https://docs.example.com"

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    # The server, slot and session fixtures are set up once per test on purpose: the examples
    # share them as clients share a server.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


# ------------------------------------------------------------------------------------------------
# One exchange and its checks
# ------------------------------------------------------------------------------------------------
@dataclass
class Exchange:
    """A request and its whole response, read to the end."""

    request: str
    status: int
    content_type: str
    body: bytes

    def events(self) -> list[ServerSentEvent]:
        decoder = SSEDecoder()
        return decoder.feed(self.body) + decoder.flush()

    def __str__(self) -> str:
        return f"{self.request} → {self.status} {self.body[:300]!r}"


def exchange(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Exchange:
    """Send one request and read its response to the end, failing the test when that takes
    more than ``BOUND_S`` (a hang): httpx's timeout covers a silent server, the clock one that
    keeps sending (keep-alive comments, say)."""
    started = time.monotonic()
    shown = f"{method} {url} {kwargs.get('content', b'')[:300]!r}"
    body = bytearray()
    try:
        with client.stream(method, url, **kwargs) as response:
            for piece in response.iter_raw():
                body += piece
                if time.monotonic() - started > BOUND_S:
                    pytest.fail(f"hang: {shown} still streaming after {BOUND_S} s")
    except httpx.TimeoutException as exc:
        pytest.fail(f"hang: {shown}: {exc!r} after {time.monotonic() - started:.1f} s")
    return Exchange(
        request=shown,
        status=response.status_code,
        content_type=response.headers.get("content-type", ""),
        body=bytes(body),
    )


def is_envelope(value: Any) -> bool:
    """OpenAI's error envelope: ``{"error": {"message": str, "type": str, "param", "code"}}``."""
    if not isinstance(value, dict) or not isinstance(value.get("error"), dict):
        return False
    error = value["error"]
    return (
        isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and "param" in error
        and "code" in error
    )


def assert_sound(result: Exchange, *, method: str = "POST") -> None:
    assert result.status < 500, f"5xx: {result}"
    if result.status >= 400 and method != "HEAD":
        assert result.content_type.startswith("application/json"), f"not JSON: {result}"
        assert is_envelope(json.loads(result.body)), f"not the envelope: {result}"
    elif result.status == 200 and result.content_type.startswith("text/event-stream"):
        data = [e.data for e in result.events() if e.event == "message"]
        assert data, f"an empty stream: {result}"
        assert data[-1] == "[DONE]" or is_envelope(json.loads(data[-1])), (
            f"a stream that ends without [DONE] or an error: {result.body[-300:]!r}"
        )
    elif result.status == 200 and method != "HEAD":
        assert isinstance(json.loads(result.body), dict), f"not a JSON object: {result}"


@pytest.fixture(autouse=True)
def no_traceback_logged(server) -> Iterator[None]:
    mark = len(server.log_text())
    yield
    assert "Traceback" not in server.log_text()[mark:], server.log_text()[mark:][-3000:]


@pytest.fixture
def fast_slot(slot, sim):
    """The ``primary`` slot on the simulator, answering at once: a few tokens, no pacing."""
    sim.configure(ttft_ms=0, tokens_per_s=0, length=6)
    return slot


@pytest.fixture
def v1(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url + "/v1", timeout=BOUND_S) as client:
        yield client


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


# ------------------------------------------------------------------------------------------------
# Hostile JSON
# ------------------------------------------------------------------------------------------------
class Deep:
    """Stands for ``depth`` nested arrays, written into the text after encoding (json.dumps
    itself recurses once per level and gives up near 1,000)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


def encode(value: Any) -> bytes:
    """JSON text of ``value`` as a careless client writes it: NaN and Infinity literals for
    non-finite floats, lone surrogates as ``\\udXXX`` escapes, ``Deep`` as nested brackets."""
    deep: dict[str, int] = {}

    def placeholder(obj: Any) -> str:
        assert isinstance(obj, Deep)
        marker = f"@@deep{len(deep)}@@"
        deep[marker] = obj.depth
        return marker

    text = json.dumps(value, allow_nan=True, default=placeholder)
    for marker, depth in deep.items():
        text = text.replace(json.dumps(marker), "[" * depth + "]" * depth, 1)
    return text.encode()


# Every code point, surrogates and NUL included.
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
plain_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0, 2**63, -(2**63) - 1]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, any_text, st.integers(1, 3000).map(Deep))
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=10,
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` seven times in eight, else any value at all (most bodies with several fields
    then still reach the upstream)."""
    return st.integers(0, 7).flatmap(lambda i: values if i == 0 else valid)


message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"])},
    optional={
        "content": mostly(
            plain_text
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": plain_text}))
        ),
        "name": mostly(plain_text),
    },
)
tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": mostly(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))},
            optional={
                "parameters": mostly(
                    st.fixed_dictionaries(
                        {
                            "type": st.just("object"),
                            "properties": st.dictionaries(
                                st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                                st.fixed_dictionaries(
                                    {"type": st.sampled_from(["string", "integer", "boolean"])}
                                ),
                                max_size=3,
                            ),
                        }
                    )
                )
            },
        ),
    }
)
COMMON_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "n": st.integers(1, 8) | st.integers(-2, 300),
    "max_tokens": st.integers(0, 8) | st.integers(-2, 2**63 - 1),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "stop": plain_text | st.lists(plain_text, max_size=20),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "user": plain_text,
    "logit_bias": st.dictionaries(
        st.from_regex(r"[0-9]{1,6}", fullmatch=True), st.integers(-100, 100)
    ),
    "logprobs": st.booleans(),
    "metadata": st.dictionaries(plain_text, plain_text, max_size=3),
}
CHAT_FIELDS = {
    **COMMON_FIELDS,
    "max_completion_tokens": st.integers(0, 8),
    "top_logprobs": st.integers(0, 20),
    "tools": st.lists(tool, max_size=2),
    "tool_choice": st.sampled_from(["none", "auto", "required"])
    | st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries({"name": plain_text})}
    ),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
}
COMPLETION_FIELDS = {
    **COMMON_FIELDS,
    "echo": st.booleans(),
    "suffix": plain_text,
    "best_of": st.integers(0, 3),
}


def body_of(required: dict[str, Any], fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A request body: the required fields mostly valid, any of ``fields`` mostly valid, and
    now and then unknown fields."""
    return st.tuples(
        st.fixed_dictionaries(
            {name: mostly(strategy) for name, strategy in required.items()},
            optional={name: mostly(strategy) for name, strategy in fields.items()},
        ),
        st.dictionaries(any_text, values, max_size=2) | st.just({}),
    ).map(lambda parts: {**parts[1], **parts[0]})


chat_bodies = body_of(
    {
        "model": st.just("primary"),
        "messages": st.lists(message, min_size=1, max_size=3),
        "stream": st.booleans(),
    },
    CHAT_FIELDS,
)
# Every shape of OpenAI's prompt: text, texts, token ids, arrays of token ids.
token_ids = st.lists(st.integers(0, 100_000), max_size=4)
completion_bodies = body_of(
    {
        "model": st.just("primary"),
        "prompt": plain_text
        | st.lists(plain_text, max_size=3)
        | token_ids
        | st.lists(token_ids, max_size=3),
        "stream": st.booleans(),
    },
    COMPLETION_FIELDS,
)


def pick(items: list[Any], *, fallback: Callable[[int], Any]) -> st.SearchStrategy[Any]:
    """One of ``items`` (ids that exist now), else ``fallback(i)``. Drawn as an index, so the
    examples' shape does not change as the database fills (hypothesis replays them)."""
    return st.integers(0, 2**16).map(lambda i: items[i % len(items)] if items else fallback(i))


def corrupt(raw: bytes, how: int, at: int) -> bytes:
    """Byte-level damage to a JSON text: cut it short, splice in bytes that are not UTF-8 or
    not JSON, or wrap it in deep nesting."""
    at = at % (len(raw) + 1)
    damage = [
        lambda: raw[:at],
        lambda: raw[:at] + b"\xff\xfe" + raw[at:],
        lambda: raw[:at] + b"NaN" + raw[at:],
        lambda: raw[:at] + b'"\\ud800' + raw[at:],
        lambda: b"[" * 2000 + raw + b"]" * 2000,
        lambda: raw[:-1] + b', "deep": ' + b"[" * 1500 + b"]" * 1500 + b"}",
        lambda: b"\xef\xbb\xbf" + raw,
        lambda: raw + b" trailing",
    ]
    return damage[how % len(damage)]()


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_v1_completions_fuzz(v1, fast_slot, api_key, endpoint, data) -> None:
    bodies = chat_bodies if endpoint == "chat/completions" else completion_bodies
    raw = encode(data.draw(bodies, label="body"))
    if data.draw(st.integers(0, 9), label="damage?") == 0:
        raw = corrupt(raw, data.draw(st.integers(0, 7)), data.draw(st.integers(0, 10**6)))
    headers = {**bearer(api_key), "Content-Type": "application/json"}
    assert_sound(exchange(v1, "POST", f"/{endpoint}", content=raw, headers=headers))


@settings(FUZZ, max_examples=80)
@given(
    method=st.sampled_from(["GET", "GET", "GET", "POST", "DELETE", "HEAD", "OPTIONS"]),
    model=st.none() | st.just("primary") | any_text,
    authorization=st.sampled_from(["valid", "missing", "Bearer nope", "Basic x", "Bearer"]),
)
def test_v1_models_fuzz(v1, fast_slot, api_key, method, model, authorization) -> None:
    # Lone surrogates too, percent-encoded as the bytes Python would give them.
    url = "/models" + ("" if model is None else "/" + quote(model.encode("utf-8", "surrogatepass")))
    headers = {
        "valid": bearer(api_key),
        "missing": {},
    }.get(authorization, {"Authorization": authorization})
    assert_sound(exchange(v1, method, url, headers=headers), method=method)


# ------------------------------------------------------------------------------------------------
# The chat's and the widget's stream endpoints
# ------------------------------------------------------------------------------------------------
@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_chat_stream_fuzz(fast_slot, browser_session, data) -> None:
    known = list(Message.objects.values_list("pk", "conversation_id"))
    message_ids = pick([pk for pk, _ in known], fallback=lambda i: i)
    conversations = pick([str(c) for _, c in known], fallback=lambda i: str(uuid.UUID(int=i)))
    body = data.draw(
        st.fixed_dictionaries(
            {"content": mostly(plain_text.filter(str.strip))},
            optional={
                "conversation": mostly(conversations),
                "slot": mostly(st.just("primary")),
                "parent": mostly(message_ids),
                "regenerate": mostly(message_ids),
            },
        ),
        label="body",
    )
    raw = encode(body)
    if data.draw(st.integers(0, 9), label="damage?") == 0:
        raw = corrupt(raw, data.draw(st.integers(0, 7)), data.draw(st.integers(0, 10**6)))
    headers = {"Content-Type": "application/json"}
    assert_sound(exchange(browser_session, "POST", "/chat/stream/", content=raw, headers=headers))


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_widget_stream_fuzz(server, fast_slot, data) -> None:
    widget = Widget.objects.get_or_create(
        name="Docs",
        defaults={
            "slot": fast_slot,
            "allowed_origins": ORIGIN,
            "rate_per_minute": 100_000,
            "rate_per_day": 100_000,
            "ip_rate_per_minute": 100_000,
            "ip_rate_per_day": 100_000,
            "daily_cap": 100_000,
            "visitors_per_hour": 100_000,
            "ip_visitors_per_hour": 100_000,
        },
    )[0]
    with httpx.Client(
        base_url=f"{server.base_url}/widget/{widget.public_key}",
        headers={"Origin": ORIGIN},
        timeout=BOUND_S,
    ) as client:
        token = client.post("/visitor/").json()["token"]
        known = [
            str(pk)
            for pk in Conversation.objects.filter(widget=widget).values_list("pk", flat=True)
        ]
        body = data.draw(
            st.fixed_dictionaries(
                {"content": mostly(plain_text.filter(str.strip))},
                optional={
                    "conversation": mostly(pick(known, fallback=lambda i: str(uuid.UUID(int=i))))
                },
            ),
            label="body",
        )
        raw = encode(body)
        if data.draw(st.integers(0, 9), label="damage?") == 0:
            raw = corrupt(raw, data.draw(st.integers(0, 7)), data.draw(st.integers(0, 10**6)))
        headers = {"Content-Type": "application/json", "X-Widget-Visitor": token}
        assert_sound(exchange(client, "POST", "/stream/", content=raw, headers=headers))


# ------------------------------------------------------------------------------------------------
# Contract: OpenAI's own OpenAPI document (schemathesis)
# ------------------------------------------------------------------------------------------------
openai_schema = schemathesis.openapi.from_path(OPENAPI)


@openai_schema.parametrize()
@settings(FUZZ, max_examples=25)
def test_openai_contract(case, v1, fast_slot, api_key) -> None:
    """Requests shaped by OpenAI's schema for each operation, valid and not (schemathesis's
    positive and negative modes), sent with a valid key; most name the ``primary`` model so
    they reach the upstream."""
    if isinstance(case.body, dict) and "model" in case.body and len(str(case.body)) % 4:
        case.body["model"] = "primary"
    if case.path_parameters and len(str(case.path_parameters)) % 2:
        case.path_parameters["model"] = "primary"
    kwargs = case.as_transport_kwargs(
        base_url=str(v1.base_url).rstrip("/"), headers=bearer(api_key)
    )
    request: dict[str, Any] = {
        "headers": {k: v for k, v in kwargs["headers"].items() if k != "Accept-Encoding"},
        "params": kwargs.get("params"),
        "cookies": kwargs.get("cookies"),
    }
    if "json" in kwargs:
        request["content"] = json.dumps(kwargs["json"]).encode()
    elif isinstance(kwargs.get("data"), bytes | str):
        request["content"] = kwargs["data"]
    elif kwargs.get("data") is not None or kwargs.get("files") is not None:
        request["data"], request["files"] = kwargs.get("data"), kwargs.get("files")
    with httpx.Client(timeout=BOUND_S) as client:
        result = exchange(client, kwargs["method"], kwargs["url"], **request)
    assert_sound(result, method=kwargs["method"])
