"""``POST /v1/chat/completions`` and ``POST /v1/completions`` as a lean ASGI app in front of
Django (``chatsite.asgi``): the relay's hottest requests, without Django's request handling.

Why: an empty async Django view costs daphne about 1.2 ms of CPU with no middleware at all
(bench/middleware_floor.py: the request object, URL resolution, the ``request_started`` and
``request_finished`` signals with their thread hops, the streaming response's wrappers), more
than half of issue 14's 2 ms budget for a whole request outside its chunks. These two endpoints
need none of it: no session, no CSRF, no user from a cookie. Everything they do is shared with
the Django views (``chat.api.completions.create_completion``); this module is only their HTTP
adapter.

What it does that Django's stack did for them:

- **Host**: ``ALLOWED_HOSTS`` checked as ``HttpRequest.get_host`` does. A request it is not
  sure of (a bad or missing ``Host``, ``USE_X_FORWARDED_HOST``, a ``root_path``, a plain-HTTP
  request that ``SECURE_SSL_REDIRECT`` would redirect, any other method or path) goes on to
  Django unchanged, which answers it as before.
- **Headers**: the ones Django's middleware adds to these responses (``response_headers``:
  ``X-Content-Type-Options``, ``Referrer-Policy``, ``Cross-Origin-Opener-Policy``,
  ``X-Frame-Options``, the Content Security Policy, HSTS on a secure request), from the same
  settings; ``tests/integration/test_api_asgi.py`` compares them with Django's.
- **Body**: read from ``http.request`` messages up to ``SLIPSTREAM_API_MAX_BODY_BYTES`` (judged
  by ``Content-Length`` first); over it, 413 in OpenAI's envelope, after the key is checked, as
  before; a ``Content-Type`` that is not JSON (a form, an upload) is a 400 in it
  (``jsonbody.check_content_type``), as in Django's view.
- **Disconnect**: once the body is read, a task waits on ``receive()``; ``http.disconnect``
  cancels the request's task, as Django's handler does (Channels' ``AsyncHttpConsumer`` does not
  while streaming). The stream's ``finally`` detaches it from its generation and records the
  call; the dispatcher cancels the upstream when no one else reads it.
- **Threads and connections**: the request's synchronous calls (the ORM) run on one of
  ``SlipstreamHandler``'s threads, as in Django's path; after a request that ran anything on
  that thread, the thread closes database connections that are broken or past ``CONN_MAX_AGE``
  (Django's ``request_finished`` does it), queued to the thread without waiting for it. A
  request whose lookups all came from ``chat.readcache`` (a warm ``/v1`` call: its records are
  written by ``chat.records``' own hop) ran nothing there, so its thread is not woken for it.
- **Errors**: an exception the adapter did not expect is logged with its traceback and answered
  with OpenAI's 500 envelope before the response began, or ends the body after (as
  ``SlipstreamHandler.send_response``); Redis that could not be reached is a 503 with
  ``Retry-After`` and one log line instead (issue 29). Refusals are logged on
  ``django.request`` as Django logs them (``Unauthorized: /v1/chat/completions``).

Not here: ``/v1/responses``, ``/v1/embeddings``, ``/v1/models`` and every other path stay Django
views (they are not on the per-token path, or not measured by issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.db import close_old_connections
from django.http import JsonResponse
from django.http.request import split_domain_port, validate_host

from chat import jsonbody
from chat.api import common, completions
from chat.http import SSE_HEADERS, error_response, invalid
from chat.middleware import SERVER_ERROR
from chat.relay.cluster import UNREACHABLE, SharedUnavailable
from chat.relay.errors import EnvelopeError

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("django.request")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

ENDPOINTS = {"/v1/chat/completions": common.CHAT, "/v1/completions": common.TEXT}
# A stream's own headers, as ``chat.http.sse_response`` sets them.
STREAM_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    *((name.lower().encode(), value.encode()) for name, value in SSE_HEADERS.items()),
]


def response_headers(*, secure: bool) -> Headers:
    """The headers Django's middleware (``settings.MIDDLEWARE``) adds to a ``/v1`` response,
    from the same settings: Django's ``SecurityMiddleware`` and ``XFrameOptionsMiddleware``,
    django-csp's policy (a ``/v1`` response never uses a nonce). ``secure``: the request came
    over HTTPS (HSTS is sent only then, as Django does)."""
    headers: Headers = []
    if secure and settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        headers.append((b"strict-transport-security", hsts.encode()))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if policy := settings.SECURE_REFERRER_POLICY:
        value = policy if isinstance(policy, str) else ",".join(policy)
        headers.append((b"referrer-policy", value.encode()))
    if opener := settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append((b"cross-origin-opener-policy", opener.encode()))
    headers.append((b"x-frame-options", settings.X_FRAME_OPTIONS.upper().encode()))
    headers.extend(_csp_headers())
    return headers


def _csp_headers() -> Headers:
    from csp.utils import build_policy

    out: Headers = []
    if getattr(settings, "CONTENT_SECURITY_POLICY", None):
        out.append((b"content-security-policy", build_policy().encode()))
    if getattr(settings, "CONTENT_SECURITY_POLICY_REPORT_ONLY", None):
        out.append(
            (b"content-security-policy-report-only", build_policy(report_only=True).encode())
        )
    return out


class LeanApi:
    """The ASGI app: the two completion endpoints here (see the module), every other request
    passed to ``django`` (``chatsite.asgi.SlipstreamHandler``, whose thread pool it shares)."""

    def __init__(self, django: Any) -> None:
        self.django = django
        self._headers: dict[bool, Headers] = {}
        self._allowed_hosts: list[str] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        endpoint = self._endpoint(scope)
        if endpoint is None:
            await self.django(scope, receive, send)
            return
        headers = dict(scope["headers"])
        secure = self._is_secure(scope, headers)
        if not self._host_allowed(headers) or (settings.SECURE_SSL_REDIRECT and not secure):
            await self.django(scope, receive, send)
            return
        thread = self.django.pick_thread()
        submitted = thread.submitted
        try:
            async with ThreadSensitiveContext(executor=thread):
                await _Exchange(self, scope, receive, send, secure).serve(endpoint, headers)
        finally:
            # Django's request_finished: a broken connection, or one past CONN_MAX_AGE, is
            # closed on the thread that owns it, before that thread's next request. Nothing
            # ran on the thread meanwhile: its connections are as the last check left them,
            # and a thread wake-up costs more CPU than a warm /v1 call's database work (none).
            if thread.submitted != submitted:
                thread.submit(close_old_connections)

    def _endpoint(self, scope: dict[str, Any]) -> str | None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        return ENDPOINTS.get(scope["path"])

    def _host_allowed(self, headers: dict[bytes, bytes]) -> bool:
        """``HttpRequest.get_host``'s check, for the ``Host`` header (anything else: Django)."""
        if settings.USE_X_FORWARDED_HOST:
            return False
        host = headers.get(b"host")
        if not host:
            return False
        domain, _ = split_domain_port(host.decode("latin-1"))
        if self._allowed_hosts is None:
            allowed = list(settings.ALLOWED_HOSTS)
            if settings.DEBUG and not allowed:
                allowed = [".localhost", "127.0.0.1", "[::1]"]  # as Django's get_host
            self._allowed_hosts = allowed
        return bool(domain) and validate_host(domain, self._allowed_hosts)

    @staticmethod
    def _is_secure(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
        """``HttpRequest.is_secure`` with ``SECURE_PROXY_SSL_HEADER``."""
        proxy = settings.SECURE_PROXY_SSL_HEADER
        if proxy:
            name, value = proxy
            header = name.removeprefix("HTTP_").replace("_", "-").lower().encode()
            sent = headers.get(header)
            if sent is not None:
                return sent.decode("latin-1").split(",", 1)[0].strip() == value
        return bool(scope.get("scheme") == "https")

    def headers_for(self, *, secure: bool) -> Headers:
        """``response_headers``, computed once per ``secure``."""
        cached = self._headers.get(secure)
        if cached is None:
            cached = self._headers[secure] = response_headers(secure=secure)
        return cached


class _Exchange:
    """One request and its response on the ASGI connection."""

    __slots__ = ("app", "disconnected", "receive", "scope", "secure", "send", "started")

    def __init__(self, app: LeanApi, scope: dict[str, Any], receive: Any, send: Any, secure: bool):
        self.app, self.scope, self.receive, self.send = app, scope, receive, send
        self.secure = secure
        self.started = False
        self.disconnected = False

    async def serve(self, endpoint: str, headers: dict[bytes, bytes]) -> None:
        limit = settings.SLIPSTREAM_API_MAX_BODY_BYTES
        raw = await self._read_body(headers, limit)
        if raw is None:
            return  # the client left while sending its body
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(self._watch_disconnect(task))
        try:
            await self._answer(endpoint, headers, raw, limit)
        except asyncio.CancelledError:
            if not self.disconnected:
                raise
            task.uncancel()  # the client left: nothing more to send
        except Exception as exc:
            await self._failed(exc)
        finally:
            watcher.cancel()

    async def _answer(
        self, endpoint: str, headers: dict[bytes, bytes], raw: bytes | EnvelopeError, limit: int
    ) -> None:
        def read_body() -> dict[str, Any]:
            jsonbody.check_content_type(headers.get(b"content-type", b"").decode("latin-1"))
            if isinstance(raw, EnvelopeError):
                raise raw
            return jsonbody.loads_object(raw)

        answer = await completions.create_completion(
            endpoint=endpoint,
            authorization=headers.get(b"authorization", b"").decode("latin-1"),
            read_body=read_body,
        )
        if isinstance(answer, JsonResponse):
            await self._send_json(answer)
        else:
            await self._stream(answer)

    async def _read_body(
        self, headers: dict[bytes, bytes], limit: int
    ) -> bytes | EnvelopeError | None:
        """The body, or the 413 (or 400) it earns (the rest of an over-long body is read and
        dropped: daphne has it already), or None when the client disconnected."""
        error: EnvelopeError | None = None
        try:
            if int(headers.get(b"content-length") or 0) > limit:
                error = jsonbody.too_large(limit)
        except ValueError:
            error = invalid("Invalid Content-Length header.")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if error is None and size > limit:
                error = jsonbody.too_large(limit)
            if error is None and body:
                parts.append(body)
            if not message.get("more_body", False):
                break
        return error if error is not None else b"".join(parts)

    async def _watch_disconnect(self, task: asyncio.Task[Any]) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                task.cancel()
                return

    async def _start(self, status: int, headers: Headers) -> None:
        self.started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, *self.app.headers_for(secure=self.secure)],
            }
        )

    async def _send_json(self, response: JsonResponse, *, logged: bool = False) -> None:
        status = response.status_code
        if (
            status >= 400 and not logged
        ):  # as Django's handler logs a response (django.utils.log.log_response)
            request_logger.log(
                logging.ERROR if status >= 500 else logging.WARNING,
                "%s: %s",
                HTTPStatus(status).phrase,
                self.scope["path"],
                extra={"status_code": status},
            )
        body = response.content
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.items()
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._start(status, headers)
        await self.send({"type": "http.response.body", "body": body})

    async def _stream(self, events: AsyncGenerator[bytes, None]) -> None:
        send = self.send
        async with contextlib.aclosing(events):
            await self._start(200, STREAM_HEADERS)
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body"})

    async def _failed(self, exc: Exception) -> None:
        """An exception the adapter did not expect: the 500 envelope (logged with its
        traceback), or a 503 with ``Retry-After`` when it was Redis that could not be reached
        (logged as one line, the outage itself by ``chat.relay.cluster``)."""
        error: EnvelopeError
        if isinstance(exc, (SharedUnavailable, *UNREACHABLE)):
            error = exc if isinstance(exc, SharedUnavailable) else SharedUnavailable()
            request_logger.warning(
                "Service Unavailable: %s (%s)", self.scope["path"], type(exc).__name__
            )
        else:
            error = EnvelopeError(SERVER_ERROR, status=500, type="server_error")
            logger.exception("Internal Server Error: %s", self.scope["path"])
        with contextlib.suppress(Exception):
            if self.started:
                await self.send({"type": "http.response.body"})
            else:
                await self._send_json(error_response(error), logged=True)
