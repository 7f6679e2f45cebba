"""Slipstream's middleware: Django's own, kept on the event loop, and JSON errors.

**On the loop.** Django's ``MiddlewareMixin`` runs each ``process_request`` and
``process_response`` under ASGI through ``sync_to_async``: a hop to a worker thread and back,
about 0.1-0.3 ms of CPU each and a wait for the GIL when the loop is busy, some 15 per request for
Django's usual chain (bench/middleware_floor.py). The classes below are Django's middleware with
those hooks called on the loop, since none of them does I/O on a request that does not need it:
they read headers and cookies and set headers. Where a hook can reach the database or the cache
(a session to save, flash messages to store), that one call still goes to a thread.
WhiteNoise (sync only: Django would adapt the whole chain through threads for it) runs only for
paths under ``STATIC_URL``, in a thread; every other request passes it by on the loop.

**JSON errors.** The JSON endpoints: ``/v1`` and the browser's chat and widget APIs never
answer with Django's HTML error pages, whatever goes wrong.

An exception a view did not handle becomes OpenAI's error envelope
``{"error": {"message", "type", "param", "code"}}`` with a generic message (never the
exception's class or text: that is for the log), and its traceback is logged once, here.
``server_error`` and ``bad_request`` do the same for failures outside views (another
middleware, a bad Host header), as Django's ``handler500`` and ``handler400``, and
``csrf_failure`` for a refused CSRF check (``CSRF_FAILURE_VIEW``); to a page, that one is
``templates/403_csrf.html`` in the site's stylesheet (Django's own styles itself inline, which
the Content Security Policy blocks).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.shortcuts import render
from django.utils.deprecation import MiddlewareMixin
from django.utils.log import log_response
from django.views import defaults
from whitenoise.middleware import WhiteNoiseMiddleware

from chat import database
from chat.http import error_response, invalid
from chat.relay.cluster import UNREACHABLE, SharedUnavailable
from chat.relay.errors import EnvelopeError

logger = logging.getLogger(__name__)

# OpenAI's own wording for its 500s (API reference, "Error codes").
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
DATABASE_UNAVAILABLE = "The database is unavailable for a moment: nothing was stored. Try again."
UNAVAILABLE_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>Slipstream: back in a moment"
    "</title><h1>Back in a moment</h1><p>Slipstream cannot reach its database just now. "
    "Nothing was changed: reload this page in a few seconds.</p></html>"
)

# The browser's JSON endpoints (URL names): their clients read JSON, also from a failure.
JSON_VIEWS = frozenset(
    {
        "chat:stream",
        "chat:slot-states",
        "chat:generation",
        "chat:generation-stop",
        "widget:visitor",
        "widget:conversation",
        "widget:stream",
    }
)


def wants_json(request: HttpRequest) -> bool:
    """Whether errors for this request are JSON: the ``/v1`` API and ``JSON_VIEWS``."""
    if request.path_info == "/v1" or request.path_info.startswith("/v1/"):
        return True
    match = getattr(request, "resolver_match", None)
    return match is not None and match.view_name in JSON_VIEWS


def _error(exception: Exception) -> EnvelopeError:
    """What the client is told: Django's own refusals keep their status, anything else is a
    500 that says nothing about its cause."""
    if isinstance(exception, Http404):
        return invalid("Not found.", status=404, code="not_found")
    if isinstance(exception, PermissionDenied):
        return invalid("Forbidden.", status=403, code="forbidden")
    if isinstance(exception, RequestDataTooBig):
        return invalid("Request body is too large.", status=413, code="request_too_large")
    if isinstance(exception, SuspiciousOperation):
        return invalid("Bad request.", status=400)
    if isinstance(exception, SharedUnavailable):
        return exception  # a request that needs Redis while it is down: 503 + Retry-After
    if isinstance(exception, UNREACHABLE):
        # Redis failed where nothing served around it: the last line of defence (issue 29).
        return SharedUnavailable()
    if database.is_unavailable(exception):
        # A database outage is the service's, for now: 503 + Retry-After, never a 500
        # (issue 29); nothing was stored, so the client may send the same request again.
        return EnvelopeError(
            DATABASE_UNAVAILABLE,
            status=503,
            type="server_error",
            code="database_unavailable",
            retry_after=database.RETRY_AFTER_S,
        )
    return EnvelopeError(SERVER_ERROR, status=500, type="server_error")


# ------------------------------------------------------------------------------------------------
# Django's middleware on the loop
# ------------------------------------------------------------------------------------------------
class OnLoop(MiddlewareMixin):
    """Mixed in before a Django ``MiddlewareMixin`` middleware: under ASGI its
    ``process_request`` and ``process_response`` run on the event loop, the latter in a thread
    only when ``response_needs_thread`` says it may do I/O. Under WSGI (the test client) it is
    the middleware as Django wrote it."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        """Whether ``process_response`` may block on I/O for this request (default: never)."""
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        if response is None:
            response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request, response):
                respond = sync_to_async(self.process_response, thread_sensitive=True)
                response = await respond(request, response)
            else:
                response = self.process_response(request, response)
        return response


class SecurityMiddleware(OnLoop, security.SecurityMiddleware):
    """Django's: HTTPS redirect and security headers."""


class CommonMiddleware(OnLoop, common.CommonMiddleware):
    """Django's: disallowed user agents, ``APPEND_SLASH`` (a URL resolution, no I/O)."""


class AuthenticationMiddleware(OnLoop, auth.AuthenticationMiddleware):
    """Django's: ``request.user`` and ``request.auser``, both lazy (no query until used).

    ``request.auser()`` loads the session and the user in one thread hop, through Django's own
    synchronous ``get_user`` (the session's user id and backend, the user, the session hash
    check), instead of Django's async ``aget_user``, which hops to a thread for the session and
    again for the user: one hop less on every signed-in request, ahead of every chat view (a
    hop was 0.6 ms of wall time and more, traced inside daphne). Both caches are filled, so
    ``request.user`` and ``request.auser()`` give the same user."""

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.auser = partial(_auser, request)


async def _auser(request: HttpRequest) -> Any:
    if not hasattr(request, "_acached_user"):
        load = sync_to_async(auth.get_user, thread_sensitive=True)
        request._acached_user = await load(request)  # type: ignore[attr-defined]
    return request._acached_user  # type: ignore[attr-defined]


class XFrameOptionsMiddleware(OnLoop, clickjacking.XFrameOptionsMiddleware):
    """Django's: the ``X-Frame-Options`` header."""


class SessionMiddleware(OnLoop, sessions.SessionMiddleware):
    """Django's: the session store is created lazily (no read until the view touches it); the
    response saves it, in a thread, only when it changed (or ``SESSION_SAVE_EVERY_REQUEST``)."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(OnLoop, messages.MessageMiddleware):
    """Django's: flash messages are stored (cookie or session, which may be read first) only
    when the request added or read some; only then in a thread."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and bool(storage.used or storage.added_new)


class CsrfViewMiddleware(OnLoop, csrf.CsrfViewMiddleware):
    """Django's: the token check reads a cookie and a header, and for a form post the posted
    fields (``request.POST``: the body, already in memory). A multipart body may spill to disk as
    it is parsed, so its check runs in a thread.

    ``process_view`` is a coroutine, so Django's handler awaits it on the loop under ASGI (and
    runs it through ``async_to_sync`` under WSGI)."""

    async def process_view(  # type: ignore[override]
        self,
        request: HttpRequest,
        callback: Callable[..., Any],
        callback_args: tuple[Any, ...],
        callback_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        if request.content_type == "multipart/form-data":
            check = sync_to_async(super().process_view, thread_sensitive=True)
            return await check(request, callback, callback_args, callback_kwargs)
        return super().process_view(request, callback, callback_args, callback_kwargs)


class StaticFilesMiddleware:
    """WhiteNoise's middleware (static files, with their caching headers), consulted only for
    paths under ``STATIC_URL``: in a thread under ASGI, since it reads the file system. Any
    other request goes straight on, on the loop. (WhiteNoise 6.12 is sync only; listed as it
    is, Django would run every request's chain below it through ``async_to_sync``.)"""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.whitenoise = WhiteNoiseMiddleware(get_response)
        # WHITENOISE_ROOT serves files at the site's root: then every path is a candidate.
        self.prefix = (
            "" if getattr(settings, "WHITENOISE_ROOT", None) else self.whitenoise.static_prefix
        )
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        return self.whitenoise(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(self.prefix):
            served = await sync_to_async(self._serve, thread_sensitive=True)(request)
            if served is not None:
                return served
        return await cast(Awaitable[HttpResponseBase], self.get_response(request))

    def _serve(self, request: HttpRequest) -> HttpResponseBase | None:
        whitenoise = self.whitenoise
        if whitenoise.autorefresh:
            static_file = whitenoise.find_file(request.path_info)
        else:
            static_file = whitenoise.files.get(request.path_info)
        if static_file is None:
            return None
        return cast(HttpResponseBase, whitenoise.serve(static_file, request))


# ------------------------------------------------------------------------------------------------
# JSON errors
# ------------------------------------------------------------------------------------------------
class JsonErrorMiddleware(MiddlewareMixin):
    """Turns an exception raised by a JSON endpoint's view into a JSON error response.

    Only ``process_exception``: ``MiddlewareMixin`` is sync- and async-capable and, without
    ``process_request``/``process_response``, adds no thread hop to the async request path.
    Django calls ``process_exception`` in a worker thread, only when a view raised. Listed last
    in ``MIDDLEWARE``, so it is the first to see the exception.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        unavailable = database.is_unavailable(exception)
        if not wants_json(request):
            if unavailable:
                response = HttpResponse(UNAVAILABLE_PAGE, status=503)
                response["Retry-After"] = str(database.RETRY_AFTER_S)
            else:
                return None  # Django's own handling: its HTML pages, its logging
        else:
            response = error_response(_error(exception))
        if unavailable:
            # One line, not a traceback per request while an outage lasts.
            log_response(
                "Service Unavailable: %s (the database: %s)",
                request.path,
                str(exception).strip()[:200],
                response=response,
                request=request,
                logger=logger,
                level="warning",
            )
        elif response.status_code == 503:
            # Redis away (``_error``): one line per request, the outage itself logged once by
            # chat.relay.cluster.
            log_response(
                "Service Unavailable: %s (%s)",
                request.path,
                type(exception).__name__,
                response=response,
                request=request,
                logger=logger,
                level="warning",
            )
        elif response.status_code >= 500:
            # Marks the response logged, so Django's request logger does not log it again.
            log_response(
                "Internal Server Error: %s",
                request.path,
                response=response,
                request=request,
                logger=logger,
                exception=exception,
            )
        return response


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: a failure outside a view (Django has logged it with its traceback)."""
    if wants_json(request):
        return error_response(EnvelopeError(SERVER_ERROR, status=500, type="server_error"))
    return defaults.server_error(request)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """``CSRF_FAILURE_VIEW``: 403, in OpenAI's envelope for a JSON endpoint, else the page
    ``403_csrf.html`` (Django's template name for it). ``reason`` is Django's, for its log
    (``django.security.csrf``, written before this runs), not the visitor."""
    if wants_json(request):
        return error_response(
            invalid(
                "CSRF verification failed: reload the page and try again.",
                status=403,
                code="csrf_failed",
            )
        )
    return render(request, "403_csrf.html", status=403)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """``handler400``: a request refused before any view (a disallowed Host, say)."""
    if wants_json(request):
        return error_response(invalid("Bad request."))
    return defaults.bad_request(request, exception)
