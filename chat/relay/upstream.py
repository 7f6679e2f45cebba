"""The upstream client: one pooled ``httpx.AsyncClient`` per backend, SSE decoding, error mapping.

A stream is opened in two steps so callers can answer with a real HTTP status when the upstream
fails before its first byte (``UpstreamStream.open`` raises ``RelayError``), and with one final
SSE error event when it fails later (``UpstreamStream.chunks`` raises ``MidStreamError``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import ssl
import time
import weakref
from collections.abc import AsyncGenerator
from typing import Any

import httpcore
import httpx

from chat.relay import chunkcheck, http1
from chat.relay.errors import MidStreamError, RelayError
from chat.relay.sse import DONE_DATA, SSEDecoder
from chat.relay.transport import AsyncioBackend
from chat.relay.types import RESPONSES_PATH, TERMINAL_EVENTS, BackendConfig, Chunk

logger = logging.getLogger(__name__)


# httpx clients hold connections bound to the event loop that opened them, so the pool is per
# loop (one loop under daphne; one per test under pytest-asyncio).
_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[BackendConfig, httpx.AsyncClient]
] = weakref.WeakKeyDictionary()


def client_for(backend: BackendConfig) -> httpx.AsyncClient:
    """The pooled client for ``backend`` on the running event loop, created on first use."""
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(backend)
    if client is None:
        limits = httpx.Limits(
            max_connections=backend.max_connections,
            max_keepalive_connections=backend.max_connections,
        )
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=backend.connect_timeout_s,
                read=backend.read_timeout_s,
                write=backend.connect_timeout_s,
                pool=backend.connect_timeout_s,
            ),
            transport=asyncio_transport(limits),
            headers={"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {},
        )
        per_loop[backend] = client
    return client


def asyncio_transport(
    limits: httpx.Limits, *, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncHTTPTransport:
    """httpx's transport with httpcore reading through the relay's own asyncio protocol
    (``transport``) instead of AnyIO: the same pool, TLS (``verify`` as httpx takes it) and
    HTTP/1.1, at a fraction of the cost per read.

    httpx 0.28 takes no network backend, so the pool it built is replaced by one like it.
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, verify=verify)
    built = transport._pool
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=built._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return transport


async def aclose_clients() -> None:
    """Close every pooled client and connection of the running loop (tests, shutdown)."""
    http1.close_pools()
    per_loop = _clients.pop(asyncio.get_running_loop(), {})
    for client in per_loop.values():
        await client.aclose()


def error_from_response(status: int, body: bytes) -> RelayError:
    """Map an upstream HTTP error to the envelope a client should see.

    4xx are the client's fault and pass on with their status and the upstream's message; 5xx
    become 502 (bad gateway), except 503, which means "not ready yet" and stays 503.
    """
    message = f"upstream answered HTTP {status}"
    type_, code, param = ("invalid_request_error" if status < 500 else "api_error"), None, None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        type_ = str(error.get("type") or type_)
        code = None if error.get("code") is None else str(error["code"])
        param = error.get("param") if isinstance(error.get("param"), str) else None
    elif isinstance(error, str):
        message = error
    elif isinstance(parsed, dict) and isinstance(parsed.get("detail"), str):
        message = parsed["detail"]  # FastAPI-style servers (llama-cpp-python)
    elif body and status < 500:
        message = body[:500].decode("utf-8", "replace")
    out_status = status if status < 500 or status == 503 else 502
    return RelayError(
        message, status=out_status, type=type_, code=code, param=param, upstream_status=status
    )


# Codes for an upstream that did not answer, told apart because each means something different
# to the dispatcher (README, "Slots"): a refusal from a server seen up before is a restart in
# progress (held as warming); a reset or a timeout is a transient fault (retried with backoff,
# a bounded number of times); an unreachable host (DNS, no route) is a network or
# configuration failure.
REFUSED = "upstream_refused"
RESET = "upstream_reset"
CONNECT_TIMEOUT = "upstream_connect_timeout"
TIMEOUT = "upstream_timeout"
UNREACHABLE = "upstream_unreachable"
BAD_RESPONSE = "upstream_bad_response"
# A stream that ended with no [DONE] and a choice without its finish_reason: cut off.
INCOMPLETE = "upstream_incomplete"


def connection_error(exc: httpx.HTTPError) -> RelayError:
    """The ``RelayError`` for an upstream that failed before answering (no response head):
    502 ``upstream_refused`` / ``upstream_unreachable`` / ``upstream_reset`` /
    ``upstream_bad_response``, or 504 ``upstream_connect_timeout`` / ``upstream_timeout``."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return RelayError(
            f"upstream did not accept a connection in time: {detail}",
            status=504,
            code=CONNECT_TIMEOUT,
        )
    if isinstance(exc, httpx.TimeoutException):
        return RelayError(f"upstream timed out: {detail}", status=504, code=TIMEOUT)
    if isinstance(exc, httpx.ConnectError):
        if _refused(exc):
            return RelayError(f"upstream refused the connection: {detail}", code=REFUSED)
        return RelayError(f"upstream unreachable: {detail}", code=UNREACHABLE)
    if isinstance(exc, httpx.TransportError):  # ReadError, WriteError, RemoteProtocolError
        return RelayError(f"upstream closed the connection before answering: {detail}", code=RESET)
    return RelayError(f"upstream answered with a broken response: {detail}", code=BAD_RESPONSE)


def _refused(exc: BaseException) -> bool:
    """Whether a connect failure was a refusal (RST to our SYN: nothing listens on the port).
    asyncio reports a host with several addresses as one OSError "Multiple exceptions: …"
    listing each failure, hence the errno text check."""
    refused_text = f"[Errno {errno.ECONNREFUSED}]"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return True
        text = str(cause)
        if isinstance(cause, OSError) and text.startswith("Multiple exceptions"):
            return text.count("[Errno ") == text.count(refused_text) > 0
        cause = cause.__cause__ or cause.__context__
    return False


class UpstreamStream:
    """One streaming call to an upstream, from ``open`` to ``aclose``.

    Usage::

        stream = await UpstreamStream.open(backend, "chat/completions", body)  # RelayError
        try:
            async for chunk in stream.chunks():  # MidStreamError
                ...
        finally:
            await stream.aclose()  # closes the TCP stream: the upstream stops generating
    """

    def __init__(
        self,
        backend: BackendConfig,
        response: http1.Response,
        deadline: float,
        *,
        responses_api: bool = False,
    ) -> None:
        self.backend = backend
        self.response = response
        self.deadline = deadline
        self.done = False  # saw [DONE] or the end of a complete stream
        self.chunk_count = 0
        # The backend's own Responses API: typed events, ended by a terminal one, no [DONE].
        self.responses_api = responses_api
        self._choices_seen: set[int] = set()
        self._choices_finished: set[int] = set()

    @classmethod
    async def open(cls, backend: BackendConfig, path: str, body: dict[str, Any]) -> UpstreamStream:
        """POST ``body`` as JSON to ``backend.url(path)`` and wait for the response head.

        Raises ``RelayError``: 502 (unreachable), 504 (timeout), the upstream's 4xx, 502 for its
        5xx (503 stays 503) — all before any byte reached our client.
        """
        deadline = time.monotonic() + backend.total_timeout_s
        try:
            response = await http1.post_stream(backend, path, body)
        except httpx.HTTPError as exc:
            raise connection_error(exc) from exc
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            except httpx.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            raise error_from_response(response.status_code, raw)
        return cls(backend, response, deadline, responses_api=path == RESPONSES_PATH)

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        """Yield each JSON chunk in order until ``[DONE]`` or the end of the body.

        Comments and empty keep-alive events are skipped. Raises ``MidStreamError`` on a reset
        connection (``upstream_reset``), a read gap over ``read_timeout_s`` or the total
        deadline (``upstream_timeout``), a chunk that is not a well-formed chunk object
        (``upstream_malformed_chunk``, ``chunkcheck.chunk_problem``), an error the upstream sends
        inside the stream (a top-level ``error`` key as OpenRouter does, or ``event: error`` as
        Groq does), and a body that ends without ``[DONE]`` while a choice has no
        ``finish_reason`` (``upstream_incomplete``: a close-delimited body cut short looks like
        a clean end to HTTP).
        """
        decoder = SSEDecoder()
        try:
            async for raw in self.response.aiter_bytes():
                for event in decoder.feed(raw):
                    chunk = self._chunk(event.data, event.event)
                    if chunk is None:
                        return
                    yield chunk
                if time.monotonic() > self.deadline:
                    raise MidStreamError(
                        "upstream exceeded its total time limit", status=504, code=TIMEOUT
                    )
            for event in decoder.flush():
                chunk = self._chunk(event.data, event.event)
                if chunk is None:
                    return
                yield chunk
        except httpx.TimeoutException as exc:
            raise MidStreamError(
                "upstream stopped sending (read timeout)", status=504, code=TIMEOUT
            ) from exc
        except httpx.HTTPError as exc:
            raise MidStreamError(
                f"upstream connection lost: {exc or type(exc).__name__}", code=RESET
            ) from exc
        self._ended_without_done()

    def _ended_without_done(self) -> None:
        """The body ended before ``[DONE]``: complete when every choice said how it finished
        (some servers end so), else raise ``MidStreamError`` (empty, or cut off)."""
        if not self.chunk_count:
            # llama-cpp-python answers a streaming context overflow with 200 and an empty body.
            raise MidStreamError(
                "upstream ended the stream without sending anything", code="upstream_empty_stream"
            )
        if self.responses_api:
            if not self.done:
                raise MidStreamError(
                    "upstream ended the Responses stream before its terminal event "
                    "(response.completed, .incomplete or .failed): the answer is cut off",
                    code=INCOMPLETE,
                )
            return
        unfinished = self._choices_seen - self._choices_finished
        if unfinished or not self._choices_seen:
            raise MidStreamError(
                "upstream ended the stream without [DONE] before the answer finished (no "
                "finish_reason): the answer is cut off",
                code=INCOMPLETE,
            )
        self.done = True

    def _chunk(self, data: str, event: str) -> Chunk | None:
        if data == DONE_DATA:
            self.done = True
            return None
        try:
            obj = chunkcheck.loads(data)
        except ValueError as exc:
            raise MidStreamError(
                f"upstream sent a malformed chunk: {data[:200]!r}", code="upstream_malformed_chunk"
            ) from exc
        if not isinstance(obj, dict):
            raise MidStreamError(
                f"upstream sent a chunk that is not an object: {data[:200]!r}",
                code="upstream_malformed_chunk",
            )
        failure = self._stream_error(obj, event)
        if failure is not None:
            raise failure
        if self.responses_api:
            return self._event(data, obj)
        problem = chunkcheck.chunk_problem(obj)
        if problem is not None:
            raise MidStreamError(
                f"upstream sent a malformed chunk ({problem}): {data[:200]!r}",
                code="upstream_malformed_chunk",
            )
        if chunkcheck.has_nul(data):
            obj = chunkcheck.without_nul(obj)
            data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        for choice in obj.get("choices") or ():
            index = choice.get("index", 0)
            self._choices_seen.add(index)
            if choice.get("finish_reason"):
                self._choices_finished.add(index)
        self.chunk_count += 1
        return Chunk(data, obj)

    def _stream_error(self, obj: dict[str, Any], event: str) -> MidStreamError | None:
        """The error an upstream sends inside its stream, if this chunk is one: a top-level
        ``error`` (OpenRouter), ``event: error`` (Groq), or the Responses API's
        ``{"type": "error", "code", "message"}``."""
        responses_error = self.responses_api and obj.get("type") == "error"
        if not (event == "error" or obj.get("error") or responses_error):
            return None
        error = obj.get("error")
        if responses_error:
            error = {"message": obj.get("message"), "code": obj.get("code")}
        elif not isinstance(error, dict):
            error = {"message": str(error or obj)}
        return MidStreamError(
            str(error.get("message") or "upstream error")[:2000],
            type=str(error.get("type") or "api_error")[:100],
            code=None if error.get("code") is None else str(error.get("code"))[:100],
        )

    def _event(self, data: str, obj: dict[str, Any]) -> Chunk | None:
        """One event of a backend's own Responses stream: an object with a ``type`` that can
        be an SSE event name (a non-empty string without CR or LF); after its terminal event
        the stream is complete."""
        kind = obj.get("type")
        if not isinstance(kind, str) or not kind or "\n" in kind or "\r" in kind:
            raise MidStreamError(
                f"upstream sent a Responses event without a usable type: {data[:200]!r}",
                code="upstream_malformed_chunk",
            )
        if self.done:
            return None  # events after the terminal one: the answer is whole already
        if chunkcheck.has_nul(data):
            obj = chunkcheck.without_nul(obj)
            data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        if obj["type"] in TERMINAL_EVENTS:
            self.done = True
        self.chunk_count += 1
        return Chunk(data, obj)

    async def aclose(self) -> None:
        """Close the response; before the end this drops the connection, which is how an
        upstream learns the client went away (llama-server and vLLM stop generating)."""
        await self.response.aclose()


async def request_json(
    backend: BackendConfig, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """A plain (non-streaming) call. Returns the parsed JSON body of a 2xx answer.

    Raises ``RelayError``: 502 (unreachable, or a 2xx body that is not JSON), 504 (timeout),
    and the mapped upstream error for a 4xx/5xx answer (``error_from_response``).
    """
    client = client_for(backend)
    try:
        response = await client.request(method, backend.url(path), json=body)
    except httpx.HTTPError as exc:
        raise connection_error(exc) from exc
    if response.status_code >= 400:
        raise error_from_response(response.status_code, response.content)
    try:
        return chunkcheck.loads(response.content)
    except ValueError as exc:
        raise RelayError(
            "upstream answered with a body that is not JSON", code="upstream_malformed_body"
        ) from exc
