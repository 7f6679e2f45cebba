"""JSON errors for the JSON endpoints: ``/v1`` and the browser's chat and widget APIs never
answer with Django's HTML error pages, whatever goes wrong.

An exception a view did not handle becomes OpenAI's error envelope
``{"error": {"message", "type", "param", "code"}}`` with a generic message (never the
exception's class or text: that is for the log), and its traceback is logged once, here.
``server_error`` and ``bad_request`` do the same for failures outside views (another
middleware, a bad Host header), as Django's ``handler500`` and ``handler400``.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin
from django.utils.log import log_response
from django.views import defaults

from chat.http import error_response, invalid
from chat.relay.errors import EnvelopeError

logger = logging.getLogger(__name__)

# OpenAI's own wording for its 500s (API reference, "Error codes").
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"

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
    return EnvelopeError(SERVER_ERROR, status=500, type="server_error")


class JsonErrorMiddleware(MiddlewareMixin):
    """Turns an exception raised by a JSON endpoint's view into a JSON error response.

    Only ``process_exception``: ``MiddlewareMixin`` is sync- and async-capable and, without
    ``process_request``/``process_response``, adds no thread hop to the async request path.
    Django calls ``process_exception`` in a worker thread, only when a view raised. Listed last
    in ``MIDDLEWARE``, so it is the first to see the exception.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not wants_json(request):
            return None  # Django's own handling: its HTML pages, its logging
        error = _error(exception)
        response = error_response(error)
        if error.status >= 500:
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


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """``handler400``: a request refused before any view (a disallowed Host, say)."""
    if wants_json(request):
        return error_response(invalid("Bad request."))
    return defaults.bad_request(request, exception)
