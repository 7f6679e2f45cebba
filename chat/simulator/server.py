"""The built-in OpenAI-compatible test upstream: a small HTTP/1.1 server on asyncio streams.

It is a test double for a model server (vLLM, llama-server, OpenAI), used by the demo default
slot, the tests and the benchmarks; never presented to users as a model. No web framework: the
point is byte-level control of the stream, of dropped connections and of disconnect detection.

Protocol sources:
- OpenAI API reference, "Chat Completions" (the ``chat.completion`` object and the streamed
  ``chat.completion.chunk`` objects) and the legacy "Completions" (``text_completion``); the
  shapes are checked against the recordings in ``tests/fixtures/sse/``.
- WHATWG HTML, "Server-sent events": ``data:`` lines, ``:`` comments, a blank line ends an event.
- RFC 9112 (HTTP/1.1): §7.1 chunked transfer coding, §9.3 persistent connections.
- llama.cpp ``tools/server/README.md``, ``GET /health``: the 503 "Loading model" body.

Answers are deterministic: the words come from a fixed list, chosen by an RNG seeded from the
request's messages (or prompt) and ``seed``, so identical requests give identical answers and a
request with ``max_tokens=k`` gets the first k words of the uncapped answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import random
import re
import socket
import string
import struct
import threading
import time
import typing
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
Stats = dict[str, Any]

DEFAULT_REPLAY_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sse"
HISTORY_SIZE = 1000  # per-request records and cancel times kept for /sim/stats
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


@dataclass
class SimConfig:
    """How the simulated model behaves. Server-wide defaults live in ``Simulator.config``; every
    field can be overridden per request by a ``"sim": {...}`` object in the JSON body (the
    OpenAI SDK's ``extra_body``) or an ``x-sim-config: <json>`` header (the body wins).

    "Tokens" are paced steps: reasoning words, content words and tool-argument fragments, one
    per choice per step; the ``*_after`` faults fire once that many steps have been written.
    """

    ttft_ms: float = 50  # time to first token, from the request (ms); headers go out at once
    tokens_per_s: float = 50  # pacing per choice; 0 = as fast as possible
    max_tokens_default: int = 64  # answer length (tokens) when nothing else decides it
    length: int | None = None  # force the answer length (tokens); max_tokens still caps it
    reasoning_tokens: int = 0  # emit this many ``delta.reasoning_content`` words first
    tool_call: bool = False  # answer with one tool call (also when the request has ``tools``)
    error_after: int | None = None  # after N tokens: one ``data: {"error": ...}`` event, end
    drop_after: int | None = None  # after N tokens: close TCP, no terminating chunk
    malformed_after: int | None = None  # after N tokens: one non-JSON ``data:`` line
    stall_after: int | None = None  # after N tokens: send nothing for ``stall_s``
    stall_s: float = 5.0  # length of that stall (s)
    cold_boot_s: float = 0  # 503 "Loading model" for this long after start / configure()
    fail_requests: int = 0  # the next N completion requests answer ``fail_status`` (set by
    # configure(), which starts the count; a per-request override has no effect)
    fail_status: int = 502  # the HTTP status of those failures (502, 503, 504, 500, 429, ...)
    fail_with: str = "status"  # how those requests fail: "status" (answer fail_status),
    # "reset" (close with a TCP RST, no answer) or "close" (close with a FIN, no answer)
    close_delimited: bool = False  # stream without chunked coding or Content-Length: the body
    # ends when the connection closes (RFC 9112 §6.3), so a drop looks like a clean end
    usage_json: str | None = None  # the usage object, replaced by this JSON text verbatim
    inject_after: int | None = None  # after N tokens: one extra ``data: <inject_data>`` event
    inject_data: str = ""  # that event's data, verbatim (a chunk with bad values, say)
    ignore_stop: bool = False  # ignore the request's ``stop`` strings (else content is cut)
    replay: str | None = None  # stream this replay-dir file verbatim (always streamed, paced
    # per event; the request's n, max_tokens and stop are ignored)
    keepalive_comment_s: float = 0  # ``: ping`` interval (s) during the TTFT wait and stalls

    def merged(self, overrides: Mapping[str, Any]) -> SimConfig:
        """A copy with ``overrides`` applied; ``ValueError`` names an unknown or mistyped field."""
        return dataclasses.replace(self, **{k: _check_field(k, v) for k, v in overrides.items()})


_FIELD_TYPES = typing.get_type_hints(SimConfig)


def _check_field(name: str, value: Any) -> Any:
    hint = _FIELD_TYPES.get(name)
    if hint is None:
        raise ValueError(f"unknown simulator setting {name!r}")
    allowed = typing.get_args(hint) or (hint,)
    if value is None:
        ok = type(None) in allowed
    elif isinstance(value, bool):  # bool is an int: check it first
        ok = bool in allowed
    elif isinstance(value, int):
        ok = int in allowed or float in allowed
    else:
        ok = type(value) in allowed
    if not ok:
        raise ValueError(f"bad value for simulator setting {name!r}: {value!r}")
    return value


# --- Deterministic text ---------------------------------------------------------------------

_WORD_TEXT = """stream token relay river lamp window harbor signal quiet bright garden paper morning
    winter copper violet meadow lantern orbit pixel canvas ember falcon glacier horizon island
    jasmine kernel ladder marble nebula ocean pebble quartz ribbon saddle thunder umbrella valley
    willow yarrow zephyr anchor beacon cedar delta echo fable granite hollow ivory juniper kettle
    lunar maple nectar opal prairie quiver raven summit tundra velvet walnut"""
_WORDS = tuple(_WORD_TEXT.split())
# Content tokens are these strings (first token bare, then with a leading space); their JSON
# string literals are encoded once here so that streaming a token allocates only its chunk.
_FIRST = _WORDS
_NEXT = tuple(" " + w for w in _WORDS)
_LITERALS = {w: json.dumps(w).encode() for w in _FIRST + _NEXT}
_ID_CHARS = string.ascii_letters + string.digits
_ids = random.Random()


def _literal(text: str) -> bytes:
    lit = _LITERALS.get(text)
    return lit if lit is not None else json.dumps(text, ensure_ascii=False).encode()


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _new_id(prefix: str) -> str:
    return prefix + "".join(_ids.choices(_ID_CHARS, k=24))


_HOLE = "\x00"
_HOLE_JSON = b'"\\u0000"'  # how json.dumps writes _HOLE, whatever ensure_ascii says


def _template(obj: Any) -> tuple[bytes, bytes]:
    """Split one SSE event around the ``_HOLE`` string in ``obj``: event = pre + literal + post.

    Rendering the whole object once keeps the wire shape exactly json.dumps' without
    hand-written braces, and leaves one concatenation per token.
    """
    pre, post = _dumps(obj).split(_HOLE_JSON)
    return b"data: " + pre, post + b"\n\n"


def _event(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _words(text: str) -> int:
    return len(text.split())


def _prompt_words(body: Mapping[str, Any]) -> int:
    if "messages" not in body:
        prompt = body.get("prompt", "")
        return sum(_words(p) for p in ([prompt] if isinstance(prompt, str) else prompt))
    count = 0
    for message in body["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += _words(content)
        elif isinstance(content, list):
            count += sum(_words(p.get("text", "")) for p in content if isinstance(p, dict))
    return count


def _cut_at_stop(tokens: list[str], stops: Sequence[str]) -> list[str] | None:
    """Tokens up to (not including) the earliest stop string, or None when none occurs."""
    text = "".join(tokens)
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    if not hits:
        return None
    cut, kept, pos = min(hits), [], 0
    for tok in tokens:
        if pos + len(tok) > cut:
            if cut > pos:
                kept.append(tok[: cut - pos])
            break
        kept.append(tok)
        pos += len(tok)
    return kept


def _tool_arguments(tool: Mapping[str, Any], rng: random.Random) -> str:
    """A JSON arguments string that fits the tool's parameter schema (top-level properties)."""
    props = tool.get("parameters", {}).get("properties") or {"query": {"type": "string"}}
    args: dict[str, Any] = {}
    for key, schema in props.items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        if isinstance(schema, dict) and schema.get("enum"):
            args[key] = schema["enum"][0]
        elif kind in ("integer", "number"):
            args[key] = rng.randint(1, 100)
        elif kind == "boolean":
            args[key] = True
        elif kind == "array":
            args[key] = [rng.choice(_WORDS)]
        elif kind == "object":
            args[key] = {}
        else:
            args[key] = " ".join(rng.choices(_WORDS, k=2))
    return json.dumps(args, separators=(",", ":"))


@dataclass
class _Choice:
    reasoning: list[str]
    content: list[str]
    finish_reason: str
    tool: tuple[str, str, list[str]] | None = None  # (call id, name, argument fragments)

    @property
    def tokens(self) -> int:
        # Steps as streamed: the tool call's opening delta rides on its first argument fragment.
        extra = len(self.tool[2]) if self.tool else 0
        return len(self.reasoning) + len(self.content) + extra


@dataclass
class _Plan:
    chat: bool  # chat.completion(.chunk), else legacy text_completion
    model: str
    choices: list[_Choice]
    prompt_tokens: int
    include_usage: bool
    id: str
    created: int
    usage_json: str | None = None

    def usage(self) -> dict[str, Any]:
        completion = sum(c.tokens for c in self.choices)
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        if reasoning := sum(len(c.reasoning) for c in self.choices):
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage


class _RequestError(Exception):
    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, *, status: int = 400
    ) -> None:
        super().__init__(message)
        self.status = status
        self.envelope = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        }


def _plan(body: Mapping[str, Any], cfg: SimConfig, *, chat: bool, model: str) -> _Plan:
    """Decide the whole answer up front (it is cheap), so streaming only renders and paces."""
    n = body.get("n") or 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise _RequestError("n must be an integer from 1 to 128", "n")
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if cap is not None and (not isinstance(cap, int) or cap < 0):
        raise _RequestError("max_tokens must be a non-negative integer", "max_tokens")
    length = cfg.length if cfg.length is not None else cfg.max_tokens_default
    finish = "stop"
    if cap is not None and cap <= length:
        length, finish = cap, "length"
    stop = body.get("stop")
    stops: list[str] = (
        [] if cfg.ignore_stop or stop is None else [stop] if isinstance(stop, str) else list(stop)
    )
    tools = [t.get("function", {}) for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        wanted = choice.get("function", {}).get("name")
        tools = [t for t in tools if t.get("name") == wanted] or tools
    use_tool = chat and (cfg.tool_call or bool(tools)) and choice != "none"

    source = body.get("messages") if chat else body.get("prompt")
    digest = hashlib.blake2b(
        json.dumps([source, body.get("seed")], sort_keys=True, default=str).encode(), digest_size=8
    ).digest()
    base_seed = int.from_bytes(digest, "big")
    choices = []
    for index in range(n):
        rng = random.Random(base_seed + index)
        reasoning = _pick(rng, cfg.reasoning_tokens) if chat else []
        if use_tool:
            tool = tools[0] if tools else {"name": "sim_tool"}
            fragments = re.findall(r"\w+|\W+", _tool_arguments(tool, rng))
            call = (_new_id("call_"), str(tool.get("name", "sim_tool")), fragments)
            choices.append(_Choice(reasoning, [], "tool_calls", call))
            continue
        content = _pick(rng, length)
        cut = _cut_at_stop(content, stops) if stops else None
        choices.append(
            _Choice(
                reasoning, content if cut is None else cut, "stop" if cut is not None else finish
            )
        )
    return _Plan(
        chat=chat,
        model=model,
        choices=choices,
        prompt_tokens=_prompt_words(body),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        id=_new_id("chatcmpl-" if chat else "cmpl-"),
        created=int(time.time()),
        usage_json=cfg.usage_json,
    )


def _pick(rng: random.Random, count: int) -> list[str]:
    picks = rng.choices(range(len(_WORDS)), k=count)
    return [_FIRST[p] if i == 0 else _NEXT[p] for i, p in enumerate(picks)]


# --- Rendering ------------------------------------------------------------------------------


def _chat_chunk(plan: _Plan, index: int, delta: dict[str, Any], finish: str | None = None) -> Any:
    return {
        "id": plan.id,
        "object": "chat.completion.chunk",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": "fp_sim",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _text_chunk(plan: _Plan, index: int, text: str, finish: str | None = None) -> Any:
    # Field order as recorded from api.openai.com (openai-completions-include-usage.sse):
    # choices before model, and "usage": null on every chunk when usage was asked for.
    chunk: dict[str, Any] = {
        "id": plan.id,
        "object": "text_completion",
        "created": plan.created,
        "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
        "model": plan.model,
    }
    if plan.include_usage:
        chunk["usage"] = None
    return chunk


Segment = tuple[bytes, tuple[bytes, bytes], list[str]]  # (head, (pre, post), tokens)


def _steps(
    segments: list[Segment], finish: bytes, last: tuple[bytes, bytes] | None
) -> Iterator[bytes]:
    """One bytes per token: a segment's head rides on its first token and ``finish`` on the very
    last one (the finish chunk follows the last token at once, as OpenAI sends it); ``last``
    replaces the template of the last token (legacy completions put finish_reason there)."""
    total = sum(len(tokens) for _, _, tokens in segments)
    carry, k = b"", 0
    for head, (pre, post), tokens in segments:
        carry += head
        for tok in tokens:
            k += 1
            if k < total:
                yield b"".join((carry, pre, _literal(tok), post))
            else:
                pre, post = last or (pre, post)
                yield b"".join((carry, pre, _literal(tok), post, finish))
            carry = b""
    if total == 0:
        yield carry + (last[0] + b'""' + last[1] if last else b"") + finish


def _choice_steps(plan: _Plan, i: int) -> Iterator[bytes]:
    c = plan.choices[i]
    if not plan.chat:
        text = _template(_text_chunk(plan, i, _HOLE))
        return _steps(
            [(b"", text, c.content)], b"", _template(_text_chunk(plan, i, _HOLE, c.finish_reason))
        )
    role = _event(_chat_chunk(plan, i, {"role": "assistant", "content": ""}))
    reasoning = _template(_chat_chunk(plan, i, {"reasoning_content": _HOLE}))
    finish = _event(_chat_chunk(plan, i, {}, c.finish_reason))
    if c.tool is None:
        content = _template(_chat_chunk(plan, i, {"content": _HOLE}))
        return _steps([(role, reasoning, c.reasoning), (b"", content, c.content)], finish, None)
    # A tool call streams as OpenAI's: the first delta carries index, id, type, name and
    # arguments "", later deltas only argument fragments (openai-chat-tool-calls.sse).
    call_id, name, fragments = c.tool
    call = {
        "index": 0,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    start: dict[str, Any] = {"tool_calls": [call]}
    if not c.reasoning:
        start = {"role": "assistant", "content": None, **start}
    args = _template(
        _chat_chunk(plan, i, {"tool_calls": [{"index": 0, "function": {"arguments": _HOLE}}]})
    )
    segments = [
        (role if c.reasoning else b"", reasoning, c.reasoning),
        (_event(_chat_chunk(plan, i, start)), args, fragments),
    ]
    return _steps(segments, finish, None)


def _interleave(streams: list[Iterator[bytes]]) -> Iterator[bytes]:
    """n > 1: one step carries the next chunk of every unfinished choice, index order."""
    while streams:
        parts = [part for s in streams if (part := next(s, None)) is not None]
        if not parts:
            return
        yield b"".join(parts)


def _with_usage(plan: _Plan, obj: Any) -> bytes:
    """One SSE event of ``obj`` with its ``_HOLE`` usage filled: the plan's usage, or the
    configured ``usage_json`` text verbatim."""
    pre, post = _template(obj)
    return pre + (plan.usage_json.encode() if plan.usage_json else _dumps(plan.usage())) + post


def _stream_body(plan: _Plan) -> tuple[Iterator[bytes], bytes]:
    streams = [_choice_steps(plan, i) for i in range(len(plan.choices))]
    tail = b""
    if plan.include_usage:
        head: dict[str, Any] = {
            "id": plan.id,
            "object": "chat.completion.chunk" if plan.chat else "text_completion",
            "created": plan.created,
            "model": plan.model,
        }
        if plan.chat:
            tail = _with_usage(
                plan, {**head, "system_fingerprint": "fp_sim", "choices": [], "usage": _HOLE}
            )
        else:
            tail = _with_usage(plan, {**head, "usage": _HOLE, "choices": []})
    return (streams[0] if len(streams) == 1 else _interleave(streams)), tail + b"data: [DONE]\n\n"


def _complete_body(plan: _Plan) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for i, c in enumerate(plan.choices):
        if not plan.chat:
            text = "".join(c.content)
            choices.append(
                {"text": text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
            )
            continue
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if c.tool else "".join(c.content),
            "refusal": None,
        }
        if c.reasoning:
            message["reasoning_content"] = "".join(c.reasoning)
        if c.tool:
            function = {"name": c.tool[1], "arguments": "".join(c.tool[2])}
            message["tool_calls"] = [{"id": c.tool[0], "type": "function", "function": function}]
        choices.append(
            {"index": i, "message": message, "logprobs": None, "finish_reason": c.finish_reason}
        )
    body = {
        "id": plan.id,
        "object": "chat.completion" if plan.chat else "text_completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": _HOLE if plan.usage_json else plan.usage(),
    }
    return body | {"system_fingerprint": "fp_sim"} if plan.chat else body


# --- HTTP/1.1 -------------------------------------------------------------------------------

_LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
_MALFORMED = b'data: {"choices":[{"delta":{"content":"unterminated\n\n'
_SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
_JSON_HEADERS = [("content-type", "application/json")]


def _envelope(message: str, type_: str = "invalid_request_error", code: Any = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Conn:
    """One client connection: a read buffer, and a watcher that notices the client leaving.

    While a generation is in flight nobody else reads the socket, so ``watch()`` parks a read on
    it: b"" (FIN) or an error (RST) means the client left, and the generating task is cancelled
    at whatever it is awaiting (pacing sleep, TTFT wait, drain) within one loop iteration.
    Bytes that arrive instead (a pipelined request) are kept for the next request.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = bytearray()
        self.chunked = True  # RFC 9112 §7.1: chunked only to HTTP/1.1 clients
        self.lost_at: float | None = None  # time.monotonic() when the client was seen leaving
        self._watcher: asyncio.Task[bytes] | None = None
        self._victim: asyncio.Task[Any] | None = None

    async def read_until(self, sep: bytes, limit: int) -> bytes:
        start = 0
        while (i := self.buf.find(sep, start)) < 0:
            if len(self.buf) > limit:
                raise _RequestError("Request head too large.", status=431)
            start = max(0, len(self.buf) - len(sep) + 1)
            await self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def _fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.buf += data

    def send(self, data: bytes) -> None:
        """Write one chunk (RFC 9112 §7.1: hex size CRLF data CRLF), or raw bytes for HTTP/1.0."""
        if self.writer.transport.is_closing():
            raise ConnectionResetError("client went away")
        if not data:
            return  # an empty chunk would be the last-chunk and end the body early
        self.writer.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def end(self) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")  # last-chunk, empty trailer section

    def watch(self) -> None:
        self._victim = asyncio.current_task()
        self._arm()

    async def unwatch(self) -> None:
        task, self._watcher, self._victim = self._watcher, None, None
        if task is None:
            return
        # A cancelled StreamReader.read() loses no data, but it must have finished before the
        # next read (one reader at a time); wait() also lets an outer cancellation through.
        task.cancel()
        await asyncio.wait([task])
        self._take(task)  # bytes it got before the cancel, in order, ahead of any later read

    def _arm(self) -> None:
        self._watcher = asyncio.ensure_future(self.reader.read(65536))
        self._watcher.add_done_callback(self._on_read)

    def _on_read(self, task: asyncio.Task[bytes]) -> None:
        if task is not self._watcher:
            return  # unwatch() already handled it
        self._watcher = None
        self._take(task)
        if self._victim is not None and self.lost_at is None:
            self._arm()

    def _take(self, task: asyncio.Task[bytes]) -> None:
        if task.cancelled():
            return
        if task.exception() is None and (data := task.result()):
            self.buf += data
            return
        self.lost_at = time.monotonic()
        if self._victim is not None:
            self._victim.cancel()


def _hang_up(conn: _Conn, *, reset: bool) -> None:
    """Close a connection without answering: with a RST (SO_LINGER 0, as a crashing or
    overloaded server's kernel does) or a FIN."""
    sock = conn.writer.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.writer.close()


def _head(
    status: int,
    headers: list[tuple[str, str]],
    *,
    keep_alive: bool,
    length: int | None,
    chunked: bool,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "server: slipstream-simulator"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is not None:
        lines.append(f"content-length: {length}")
    elif chunked:
        lines.append("transfer-encoding: chunked")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- The server -----------------------------------------------------------------------------


class Simulator:
    """An OpenAI-compatible model server double on ``host:port`` (0 = any free port).

    Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (stream or not),
    ``GET /v1/models``, ``GET /health``; and for tests ``GET /sim/stats``, ``GET|POST
    /sim/config`` (fields merged into the defaults), ``POST /sim/reset``. Errors use OpenAI's
    envelope ``{"error": {"message", "type", "param", "code"}}``.

    Counters (``stats``): ``requests`` counts generation requests (the two POST endpoints, even
    when refused); ``completed`` answers fully written; ``cancelled`` answers whose client left
    first; ``active`` answers in flight. Times are ``time.monotonic()`` seconds.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SimConfig | None = None,
        models: list[str] | None = None,
        replay_dir: Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._defaults = dataclasses.replace(config) if config else SimConfig()
        self.config = dataclasses.replace(self._defaults)
        self.models = list(models) if models else ["sim"]
        if replay_dir is None and DEFAULT_REPLAY_DIR.is_dir():
            replay_dir = DEFAULT_REPLAY_DIR
        self.replay_dir = replay_dir
        self.base_url = ""
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._created = int(time.time())
        self._cold_from = time.monotonic()
        self._fail_left = self.config.fail_requests
        self._active = 0
        self._zero()
        self._routes: dict[
            tuple[str, str], Callable[[_Conn, _Request], Coroutine[Any, Any, None]]
        ] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/sim/stats"): self._stats,
            ("GET", "/sim/config"): self._get_config,
            ("POST", "/sim/config"): self._set_config,
            ("POST", "/sim/reset"): self._reset,
        }

    def _zero(self) -> None:
        self._counts = {
            "requests": 0,
            "streams_started": 0,
            "completed": 0,
            "cancelled": 0,
            "health_checks": 0,
        }
        self._cancel_times: deque[float] = deque(maxlen=HISTORY_SIZE)
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self._last_request: Any = None

    async def start(self) -> str:
        """Listen; return the base URL (``http://127.0.0.1:PORT``; OpenAI's base_url adds /v1)."""
        # A deep backlog: benchmarks open 1,000 connections at once.
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=4096)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{port}"
        self._cold_from = time.monotonic()
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and cancel every connection, streams in flight included."""
        if self._server is None:
            return
        self._server.close()
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        # writer.close() closes a socket on the loop's next turns (connection_lost is called
        # soon, not now): let that happen before a caller closes the loop, or the sockets leak.
        for _ in range(3):
            await asyncio.sleep(0)
        self._server, self._stopping = None, False

    @property
    def stats(self) -> Stats:
        """A snapshot: ``requests``, ``streams_started``, ``completed``, ``cancelled``, ``active``,
        ``health_checks`` (``GET /health`` and ``GET /v1/models``),
        ``cancel_times`` (monotonic s), ``last_request`` (last JSON body or None) and
        ``history``: per request ``{"id", "path", "stream", "started_at", "ended_at",
        "cancelled_at", "outcome"}`` with outcome active|completed|cancelled|error|dropped
        (the last ``HISTORY_SIZE`` requests)."""
        return {
            **self._counts,
            "active": self._active,
            "cancel_times": list(self._cancel_times),
            "last_request": self._last_request,
            "history": [dict(record) for record in self._history],
        }

    def configure(self, **fields: Any) -> SimConfig:
        """Merge ``fields`` into the defaults (``ValueError`` on a bad field). Setting
        ``cold_boot_s`` starts a new cold-boot period now."""
        self.config = self.config.merged(fields)
        if "cold_boot_s" in fields:
            self._cold_from = time.monotonic()
        if "fail_requests" in fields:
            self._fail_left = self.config.fail_requests
        return self.config

    def reset(self) -> None:
        """Back to the constructor's config and zero counters, as if just started."""
        self.config = dataclasses.replace(self._defaults)
        self._cold_from = time.monotonic()
        self._fail_left = self.config.fail_requests
        self._zero()

    async def wait_for(self, predicate: Callable[[Stats], bool], timeout_s: float = 1.0) -> Stats:
        """Poll ``stats`` every 10 ms until ``predicate`` holds, else ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while not predicate(stats := self.stats):
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator stats never matched: {self._counts}")
            await asyncio.sleep(0.01)
        return stats

    def _is_cold(self, cfg: SimConfig) -> bool:
        return time.monotonic() < self._cold_from + cfg.cold_boot_s

    # -- connections --

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(reader, writer)
        try:
            while conn.lost_at is None and not writer.is_closing():
                try:
                    req = await self._read_request(conn)
                except _RequestError as e:
                    await self._send_json(conn, e.status, e.envelope, keep_alive=False)
                    break
                handler = self._routes.get((req.method, req.path))
                if handler is not None:
                    await handler(conn, req)
                elif any(path == req.path for _, path in self._routes):
                    await self._send_json(
                        conn, 405, _envelope(f"Method {req.method} not allowed."), req.keep_alive
                    )
                else:
                    await self._send_json(
                        conn,
                        404,
                        _envelope(f"Invalid URL ({req.method} {req.path})"),
                        req.keep_alive,
                    )
                if not req.keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client left between requests
        except asyncio.CancelledError:
            # stop() cancels us. End normally: Python 3.11's start_server callback calls
            # task.exception() on its task and would log a cancelled one as an error.
            if not self._stopping:
                raise
        except Exception:
            logger.exception("simulator: connection handler failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read_request(self, conn: _Conn) -> _Request:
        head = (await conn.read_until(b"\r\n\r\n", _MAX_HEAD)).lstrip(b"\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _RequestError("Malformed HTTP request line.")
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _RequestError("Malformed HTTP header line.")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":  # curl, for bodies > 1 KiB
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(conn)
        else:
            size = headers.get("content-length", "0")
            if not size.isdigit():
                raise _RequestError("Bad Content-Length.")
            if int(size) > _MAX_BODY:
                raise _RequestError("Request body too large.", status=413)
            body = await conn.read_exactly(int(size))
        conn.chunked = version == "HTTP/1.1"
        keep_alive = conn.chunked and "close" not in headers.get("connection", "").lower()
        return _Request(method, target.split("?", 1)[0], headers, body, keep_alive)

    async def _read_chunked(self, conn: _Conn) -> bytes:
        body = bytearray()
        while True:
            size_line = await conn.read_until(b"\r\n", 1024)
            try:
                size = int(size_line.split(b";", 1)[0], 16)  # chunk extensions are ignored
            except ValueError:
                raise _RequestError("Bad chunk size.") from None
            if size == 0:
                while await conn.read_until(b"\r\n", _MAX_HEAD):
                    pass  # trailer fields, up to the empty line
                return bytes(body)
            body += await conn.read_exactly(size + 2)
            del body[-2:]
            if len(body) > _MAX_BODY:
                raise _RequestError("Request body too large.", status=413)

    async def _send_json(
        self,
        conn: _Conn,
        status: int,
        obj: Any,
        keep_alive: bool = True,
        *,
        body: bytes | None = None,
    ) -> None:
        data = _dumps(obj) if body is None else body
        head = _head(
            status, _JSON_HEADERS, keep_alive=keep_alive, length=len(data), chunked=conn.chunked
        )
        conn.writer.write(head + data)
        await conn.writer.drain()

    # -- endpoints --

    async def _health(self, conn: _Conn, req: _Request) -> None:
        self._counts["health_checks"] += 1
        cold = self._is_cold(self.config)
        await self._send_json(
            conn, 503 if cold else 200, _LOADING if cold else {"status": "ok"}, req.keep_alive
        )

    async def _models(self, conn: _Conn, req: _Request) -> None:
        self._counts["health_checks"] += 1
        if self._is_cold(self.config):
            await self._send_json(conn, 503, _LOADING, req.keep_alive)
            return
        data = [
            {
                "id": m,
                "object": "model",
                "created": self._created,
                "owned_by": "slipstream-simulator",
            }
            for m in self.models
        ]
        await self._send_json(conn, 200, {"object": "list", "data": data}, req.keep_alive)

    async def _stats(self, conn: _Conn, req: _Request) -> None:
        await self._send_json(conn, 200, self.stats, req.keep_alive)

    async def _get_config(self, conn: _Conn, req: _Request) -> None:
        await self._send_json(conn, 200, dataclasses.asdict(self.config), req.keep_alive)

    async def _set_config(self, conn: _Conn, req: _Request) -> None:
        try:
            fields = json.loads(req.body or b"{}")
            if not isinstance(fields, dict):
                raise ValueError("expected a JSON object of simulator settings")
            self.configure(**fields)
        except ValueError as e:
            await self._send_json(conn, 400, _envelope(str(e)), req.keep_alive)
            return
        await self._send_json(conn, 200, dataclasses.asdict(self.config), req.keep_alive)

    async def _reset(self, conn: _Conn, req: _Request) -> None:
        self.reset()
        await self._send_json(conn, 200, dataclasses.asdict(self.config), req.keep_alive)

    async def _chat(self, conn: _Conn, req: _Request) -> None:
        await self._generate(conn, req, chat=True)

    async def _completions(self, conn: _Conn, req: _Request) -> None:
        await self._generate(conn, req, chat=False)

    # -- generation --

    def _parse(self, req: _Request, *, chat: bool) -> tuple[dict[str, Any], SimConfig]:
        try:
            body = json.loads(req.body)
        except ValueError:
            raise _RequestError("We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise _RequestError("The request body must be a JSON object.")
        self._last_request = body
        overrides: dict[str, Any] = {}
        for source, value in (
            ("x-sim-config", req.headers.get("x-sim-config")),
            ("sim", body.get("sim")),
        ):
            try:
                parsed = json.loads(value) if source == "x-sim-config" and value else value
            except ValueError:
                raise _RequestError("x-sim-config is not JSON.", source) from None
            if parsed is not None and not isinstance(parsed, dict):
                raise _RequestError(f"{source} must be a JSON object.", source)
            overrides |= parsed or {}
        try:
            cfg = self.config.merged(overrides)
        except ValueError as e:
            raise _RequestError(str(e), "sim") from None
        if chat and not isinstance(body.get("messages"), list):
            raise _RequestError(
                "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
            )
        return body, cfg

    def _replay_events(self, name: str) -> list[bytes]:
        if (
            self.replay_dir is None
            or Path(name).name != name
            or not (self.replay_dir / name).is_file()
        ):
            raise _RequestError(
                f"No replay file {name!r} in the simulator's replay dir.", "sim.replay"
            )
        # Split after each blank line so every event is paced on its own; joined, the pieces
        # are the file byte for byte.
        return re.findall(rb".*?\n\n|.+", (self.replay_dir / name).read_bytes(), re.S)

    async def _generate(self, conn: _Conn, req: _Request, *, chat: bool) -> None:
        t0 = asyncio.get_running_loop().time()
        self._counts["requests"] += 1
        try:
            body, cfg = self._parse(req, chat=chat)
            if self._is_cold(cfg):
                await self._send_json(conn, 503, _LOADING, req.keep_alive)
                return
            if self._fail_left > 0:
                self._fail_left -= 1
                if self.config.fail_with in ("reset", "close"):
                    _hang_up(conn, reset=self.config.fail_with == "reset")
                    return
                status = self.config.fail_status
                message = f"Simulated failure: HTTP {status}"
                await self._send_json(
                    conn,
                    status,
                    {"error": {"message": message, "type": "api_error", "code": status}},
                    req.keep_alive,
                )
                return
            model = body.get("model")
            model = model if isinstance(model, str) else self.models[0]
            if cfg.replay is not None:
                plan, steps, tail = None, iter(self._replay_events(cfg.replay)), b""
            else:
                plan = _plan(body, cfg, chat=chat, model=model)
                steps, tail = _stream_body(plan)
        except _RequestError as e:
            await self._send_json(conn, e.status, e.envelope, req.keep_alive)
            return
        stream = plan is None or bool(body.get("stream"))
        record: dict[str, Any] = {
            "id": plan.id if plan else f"replay-{cfg.replay}",
            "path": req.path,
            "stream": stream,
            "started_at": time.monotonic(),
            "ended_at": None,
            "cancelled_at": None,
            "outcome": "active",
        }
        self._history.append(record)
        self._active += 1
        task = asyncio.current_task()
        assert task is not None
        conn.watch()
        try:
            if plan is None or stream:
                outcome = await self._stream(conn, req, cfg, steps, tail, t0)
            else:
                outcome = await self._respond(conn, req, cfg, plan, t0)
        except asyncio.CancelledError:
            if conn.lost_at is None:
                raise  # the server is stopping
            task.uncancel()
            outcome = "cancelled"
        except ConnectionError:  # a write found the transport closed before the watcher did
            conn.lost_at = conn.lost_at or time.monotonic()
            outcome = "cancelled"
        finally:
            await conn.unwatch()
            self._active -= 1
            record["ended_at"] = time.monotonic()
        record["outcome"] = outcome
        if outcome == "cancelled":
            self._counts["cancelled"] += 1
            record["cancelled_at"] = conn.lost_at
            self._cancel_times.append(record["cancelled_at"])
        elif outcome == "completed":
            self._counts["completed"] += 1
        logger.debug("simulator %s %s: %s", req.path, record["id"], outcome)

    async def _wait_until(self, conn: _Conn, due: float, ping_s: float) -> None:
        loop = asyncio.get_running_loop()
        while (left := due - loop.time()) > 0:
            if 0 < ping_s < left:
                await asyncio.sleep(ping_s)
                conn.send(b": ping\n\n")
                await conn.writer.drain()
            else:
                await asyncio.sleep(left)

    async def _stream(
        self,
        conn: _Conn,
        req: _Request,
        cfg: SimConfig,
        steps: Iterator[bytes],
        tail: bytes,
        t0: float,
    ) -> str:
        """Headers at once, then the first step at t0 + ttft and one step per 1/tokens_per_s,
        on an absolute schedule so a slow wakeup does not push every later token back."""
        loop = asyncio.get_running_loop()
        if cfg.close_delimited:
            conn.chunked = False
        keep_alive = req.keep_alive and not cfg.close_delimited
        conn.writer.write(
            _head(200, _SSE_HEADERS, keep_alive=keep_alive, length=None, chunked=conn.chunked)
        )
        self._counts["streams_started"] += 1
        due = t0 + cfg.ttft_ms / 1000
        await self._wait_until(conn, due, cfg.keepalive_comment_s)
        interval = 1 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
        sent = 0
        while True:
            data = next(steps, None)
            if sent == cfg.drop_after:
                await conn.unwatch()  # our own close is not the client leaving
                conn.writer.close()  # FIN after what was written; no last-chunk
                return "dropped"
            if sent == cfg.error_after:
                error = _envelope(
                    f"Simulated upstream error after {sent} tokens.", "server_error", "sim_error"
                )
                conn.send(_event(error))
                conn.end()
                await conn.writer.drain()
                return "error"
            if sent == cfg.inject_after:
                conn.send(b"data: " + cfg.inject_data.encode() + b"\n\n")
            if sent == cfg.malformed_after:
                if data is None:
                    tail = _MALFORMED + tail
                else:
                    data = _MALFORMED + data
            if data is None:
                break
            if sent == cfg.stall_after:
                await self._wait_until(conn, loop.time() + cfg.stall_s, cfg.keepalive_comment_s)
                due += cfg.stall_s
            if sent:
                due += interval
                if (delay := due - loop.time()) > 0:
                    await asyncio.sleep(delay)
                elif not interval:
                    await asyncio.sleep(0)  # as fast as possible, but let other streams run
            conn.send(data)
            await conn.writer.drain()
            sent += 1
        conn.send(tail)
        conn.end()
        await conn.writer.drain()
        if cfg.close_delimited:
            await conn.unwatch()
            conn.writer.close()  # the end of a close-delimited body
        return "completed"

    async def _respond(
        self, conn: _Conn, req: _Request, cfg: SimConfig, plan: _Plan, t0: float
    ) -> str:
        """Non-streaming: wait as long as the stream would have taken, then one JSON body."""
        steps = max(1, *(c.tokens for c in plan.choices))
        faults = [
            (after, kind)
            for after, kind in ((cfg.drop_after, "dropped"), (cfg.error_after, "error"))
            if after is not None and after <= steps
        ]
        written, fault = min(faults) if faults else (steps, None)
        interval = 1 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
        stall = cfg.stall_s if cfg.stall_after is not None and cfg.stall_after < written else 0.0
        await self._wait_until(
            conn, t0 + cfg.ttft_ms / 1000 + max(written - 1, 0) * interval + stall, 0
        )
        if fault == "dropped":
            await conn.unwatch()
            conn.writer.close()
            return "dropped"
        if fault == "error":
            await self._send_json(
                conn,
                500,
                _envelope("Simulated upstream error.", "server_error", "sim_error"),
                req.keep_alive,
            )
            return "error"
        body = _dumps(_complete_body(plan))
        if plan.usage_json:
            body = body.replace(_HOLE_JSON, plan.usage_json.encode())
        if cfg.malformed_after is not None:
            body = body[: len(body) // 2]
        await self._send_json(conn, 200, None, req.keep_alive, body=body)
        return "completed"


class SimulatorThread:
    """A ``Simulator`` on its own event loop in a daemon thread, for synchronous tests.

    ``with SimulatorThread(config=SimConfig(ttft_ms=0)) as sim:`` then ``sim.base_url``,
    ``sim.stats()``, ``sim.configure(**fields)``, ``sim.reset()``, ``sim.wait_for(pred)``.
    Every method is safe to call from any thread: it runs on the simulator's loop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SimConfig | None = None,
        models: list[str] | None = None,
        replay_dir: Path | None = None,
    ) -> None:
        self.simulator = Simulator(
            host=host, port=port, config=config, models=models, replay_dir=replay_dir
        )
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> str:
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name="slipstream-simulator", daemon=True
        )
        self._loop = loop
        self._thread.start()
        self.base_url = self._call(self.simulator.start())
        return self.base_url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self.simulator.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None

    def stats(self) -> Stats:
        return self._run(lambda: self.simulator.stats)

    def configure(self, **fields: Any) -> SimConfig:
        return self._run(lambda: self.simulator.configure(**fields))

    def reset(self) -> None:
        self._run(self.simulator.reset)

    def wait_for(self, predicate: Callable[[Stats], bool], timeout_s: float = 1.0) -> Stats:
        """Poll ``stats()`` every 10 ms until ``predicate`` holds, else ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while not predicate(stats := self.stats()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator stats never matched: {stats}")
            time.sleep(0.01)
        return stats

    def _run(self, fn: Callable[[], _T]) -> _T:
        async def call() -> _T:
            return fn()

        return self._call(call())

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("SimulatorThread is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)
