"""For operators and load balancers: ``/healthz``, ``/readyz`` and ``/metrics``. An HTTP
adapter: no session, no CSRF, JSON (or Prometheus' text format) only.

- ``GET /healthz``: 200 while the process serves requests (it touches nothing else).
- ``GET /readyz``: 200 when the database answers and, with ``REDIS_URL``, Redis does too;
  else 503 naming what failed. Each check is bounded by ``READY_TIMEOUT_S``.
- ``GET /metrics``: ``chat.metrics`` in Prometheus' text format, for requests bearing
  ``SLIPSTREAM_METRICS_TOKEN`` when it is set, else for clients in
  ``SLIPSTREAM_METRICS_ALLOW`` (loopback by default); 403 otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Coroutine
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from chat import metrics
from chat.relay.shared import shared

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0


def _get_only(request: HttpRequest) -> JsonResponse | None:
    if request.method in ("GET", "HEAD"):
        return None
    response = JsonResponse(
        {"error": {"message": f"Method {request.method} not allowed.", "type": "invalid_request"}},
        status=405,
    )
    response["Allow"] = "GET, HEAD"
    return response


@csrf_exempt
async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers."""
    return _get_only(request) or JsonResponse({"status": "ok"})


@csrf_exempt
async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: ``{"status": "ok"|"unavailable", "checks": {"database": …, "redis": …}}``,
    each check ``ok``, ``not configured`` or what failed; 503 unless all pass."""
    refused = _get_only(request)
    if refused is not None:
        return refused
    checks = {
        "database": await _check(_database_ok()),
        "redis": (await _check(_redis_ok())) if settings.REDIS_URL else "not configured",
    }
    ready = all(value in ("ok", "not configured") for value in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


async def _check(probe: Coroutine[Any, Any, None]) -> str:
    """``ok``, or the failure's class and message (logged), within ``READY_TIMEOUT_S``."""
    try:
        await asyncio.wait_for(probe, READY_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_S:g} s"
    except Exception as exc:
        logger.warning("readiness check failed: %r", exc)
        return f"{type(exc).__name__}: {exc}"[:200]
    return "ok"


async def _database_ok() -> None:
    def query() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    await sync_to_async(query)()


async def _redis_ok() -> None:
    store = shared()
    if store is None:
        raise RuntimeError("REDIS_URL is set but the shared store is not configured")
    await store.redis.ping()


@csrf_exempt
async def prometheus(request: HttpRequest) -> HttpResponse:
    """The metrics, for those allowed (see the module)."""
    refused = _get_only(request)
    if refused is not None:
        return refused
    if not _may_read_metrics(request):
        return JsonResponse(
            {"error": {"message": "Not allowed to read metrics.", "type": "permission_error"}},
            status=403,
        )
    body, content_type = await sync_to_async(metrics.exposition)()
    return HttpResponse(body, content_type=content_type)


def _may_read_metrics(request: HttpRequest) -> bool:
    token = settings.SLIPSTREAM_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)
    try:
        client = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(
        client in ipaddress.ip_network(allowed, strict=False)
        for allowed in settings.SLIPSTREAM_METRICS_ALLOW
    )
