"""Content Security Policy: django-csp's middleware on the async path, and the endpoint that
logs the violations browsers report.

The policy itself is ``settings.CONTENT_SECURITY_POLICY``; the widget's page replaces its
``frame-ancestors`` (``chat.widget.page``). Reports arrive in either format browsers send:
``report-uri``'s ``application/csp-report`` (``{"csp-report": {...}}``, CSP Level 2 §7.1) or the
Reporting API's ``application/reports+json`` (a list of ``{"type": "csp-violation", "body":
{...}}``, CSP Level 3 §5.3). Anyone can post one, so each client address
(``chat.http.client_ip``) is held to ``SLIPSTREAM_CSP_REPORT_RATE`` (django-ratelimit over
Django's cache, shared by processes with ``REDIS_URL``); past it, or while the cache cannot count
(Redis down), reports are dropped unread with a 429: browsers neither read the answer nor retry.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, cast

from csp.middleware import CSPMiddleware as BaseCSPMiddleware
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from chat import jsonbody, ratelimit
from chat.http import Refusal, client_ip, error_response, invalid
from chat.relay.errors import EnvelopeError

logger = logging.getLogger(__name__)

# Reports logged per request at most: a report body holds one, the Reporting API may batch a
# few; more is someone filling the log.
MAX_REPORTS = 10
# Characters kept of each logged field (a blocked URL can be long).
MAX_FIELD = 300


class CSPMiddleware(BaseCSPMiddleware):
    """django-csp's middleware without the two thread hops per request that Django's
    ``MiddlewareMixin`` makes under ASGI (``sync_to_async`` around each hook: about 0.3 ms each
    on a busy 2-core machine, all requests queued on one thread). Its hooks only read settings
    and build a string, so they run on the loop."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        self.process_request(request)
        response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
        return self.process_response(request, response)


def _field(value: Any) -> str:
    """A report's field for one log line: text, cut short, control characters escaped."""
    text = str(value)[:MAX_FIELD] if value is not None else "-"
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


def _violations(payload: Any) -> list[dict[str, Any]]:
    """The violations in a report body, as ``report-uri``'s field names."""
    if isinstance(payload, dict) and isinstance(payload.get("csp-report"), dict):
        return [payload["csp-report"]]
    if not isinstance(payload, list):
        return []
    violations = []
    for report in payload[:MAX_REPORTS]:
        if not isinstance(report, dict) or report.get("type") != "csp-violation":
            continue
        body = report.get("body")
        if isinstance(body, dict):
            violations.append(
                {
                    "effective-directive": body.get("effectiveDirective"),
                    "blocked-uri": body.get("blockedURL"),
                    "document-uri": body.get("documentURL"),
                    "source-file": body.get("sourceFile"),
                    "line-number": body.get("lineNumber"),
                }
            )
    return violations


async def _over_rate(request: HttpRequest) -> bool:
    """Count the report against its address's ``SLIPSTREAM_CSP_REPORT_RATE``: whether it is past
    it, or cannot be counted (the cache unreachable, or Redis known down)."""
    limited = await ratelimit.over_rate(
        request,
        group="csp-report",
        key=client_ip(request),
        rate=settings.SLIPSTREAM_CSP_REPORT_RATE,
    )
    return limited is not False


@csrf_exempt  # browsers send reports without a token (nor cookies, for report-uri)
@require_POST
async def report(request: HttpRequest) -> HttpResponse:
    """``POST /csp-report/``: one WARNING line per violation (directive, blocked URL, page,
    source), then 204. Past the address's rate (see the module) 429, the body unread; a body
    over ``SLIPSTREAM_CSP_REPORT_MAX_BYTES`` is 413, one that is not JSON 400
    (``chat.jsonbody``'s envelopes)."""
    if await _over_rate(request):
        return error_response(
            Refusal(
                "Too many reports from this address.",
                status=429,
                type="rate_limit_error",
                code="rate_limited",
            )
        )
    limit: int = settings.SLIPSTREAM_CSP_REPORT_MAX_BYTES
    length = request.headers.get("Content-Length") or "0"
    if not length.isdigit():
        return error_response(invalid("Invalid Content-Length header."))
    # Judged by Content-Length before the body is touched, and by the body itself when chunked.
    if int(length) > limit or len(request.body) > limit:
        too_big = f"Report is over the limit of {limit} bytes."
        return error_response(invalid(too_big, status=413, code="request_too_large"))
    try:
        violations = _violations(jsonbody.loads(request.body))
    except EnvelopeError as exc:
        return error_response(exc)
    for violation in violations[:MAX_REPORTS]:
        directive = violation.get("effective-directive") or violation.get("violated-directive")
        source = violation.get("source-file")
        if source and violation.get("line-number"):
            source = f"{source}:{violation['line-number']}"
        logger.warning(
            "CSP violation: %s blocked %s on %s (source %s)",
            _field(directive),
            _field(violation.get("blocked-uri")),
            _field(violation.get("document-uri")),
            _field(source),
        )
    return HttpResponse(status=204)
