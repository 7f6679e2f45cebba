"""HTTP adapters shared by the chat views and the /v1 API: SSE responses and OpenAI errors, and
the client's address that the widget's limits and the login throttle count."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import AsyncGenerator

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse

from chat.relay.errors import EnvelopeError

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx buffers proxied responses unless told not to, which would hold every token back.
    "X-Accel-Buffering": "no",
}


def client_ip(request: HttpRequest) -> str:
    """The client's address as the limits count it (the widget's, and django-axes' through
    ``AXES_CLIENT_IP_CALLABLE``): ``REMOTE_ADDR``, or behind the proxy (``settings.BEHIND_PROXY``)
    the last ``X-Forwarded-For`` hop, which that proxy appended (nginx's
    ``$proxy_add_x_forwarded_for``, deploy/nginx.conf); any earlier hop came from the client and
    proves nothing. Without the proxy the header is ignored: anyone can send it."""
    remote: str = request.META.get("REMOTE_ADDR", "")
    if settings.BEHIND_PROXY:
        last = request.META.get("HTTP_X_FORWARDED_FOR", "").rsplit(",", 1)[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            pass  # no header or garbage: the proxy's own address, shared by all, is the safe side
    return remote


def sse_response(events: AsyncGenerator[bytes, None]) -> StreamingHttpResponse:
    """A ``text/event-stream`` response over an async generator of encoded SSE events. Django
    cancels the generator when the client disconnects."""
    return StreamingHttpResponse(
        events, content_type="text/event-stream; charset=utf-8", headers=SSE_HEADERS
    )


def error_response(error: EnvelopeError) -> JsonResponse:
    """OpenAI's error envelope with the error's HTTP status, and ``Retry-After`` (whole seconds,
    RFC 9110 §10.2.3) when the error says when to come back (429, 503)."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JsonResponse(error.envelope(), status=error.status, headers=headers)


def invalid(
    message: str, *, param: str | None = None, code: str | None = None, status: int = 400
) -> Refusal:
    """An ``invalid_request_error`` refusal (400 unless said otherwise)."""
    return Refusal(message, status=status, type="invalid_request_error", param=param, code=code)


def signed_in(user: User | AnonymousUser) -> User:
    """The signed-in user behind ``login_required`` (which has already turned others away)."""
    if not isinstance(user, User):
        raise PermissionDenied
    return user


class Refusal(EnvelopeError):
    """The app refusing a request (bad input, no such thing, not allowed, too many), shown as
    OpenAI's error envelope: no upstream took part, unlike a ``RelayError``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message, status=status, type=type, code=code, param=param, retry_after=retry_after
        )
