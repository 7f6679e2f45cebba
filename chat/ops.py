"""For operators and load balancers: ``/healthz``, ``/readyz`` and ``/metrics``. An HTTP
adapter: no session, no CSRF, JSON (or Prometheus' text format) only.

- ``GET /healthz``: 200 while the process serves requests (it touches nothing else).
- ``GET /readyz``: 200 when the process can write to the database (on the thread its records
  are written from, none of them waiting) and, with ``REDIS_URL``, Redis answers; else 503
  naming what failed. Each check is bounded by ``READY_TIMEOUT_S``. A process that drains
  (``chat.relay.drain``, after SIGTERM) answers 503 with a ``draining`` check.
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
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from chat import metrics, records
from chat.models import UsageDay
from chat.relay import drain
from chat.relay.background import spawn
from chat.relay.cluster import shared

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
    if drain.draining():
        # SIGTERM (chatsite.server): answers in flight run on, new ones are refused.
        checks["draining"] = (
            f"draining for {drain.draining_for_s():.1f} s: "
            "new answers are refused, answers in flight run to their end"
        )
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
    """The process can write: a write as its records make (an UPDATE of no row, in a
    transaction: a database that is down, read-only or refusing connections fails it) on the
    thread that writes them (a background task's, ``chat.records``), and no record is waiting
    for the database. A request's own thread got a fresh connection when the request began, so
    it could answer while the writer's was broken (issue 29: 200 while nothing was stored)."""
    await spawn(_write_nothing())
    writer = records.writer()
    if writer.unavailable_since is not None:
        writer.retry_now()  # it may be back: the writer need not wait out its backoff
        waited = asyncio.get_running_loop().time() - writer.unavailable_since
        raise RuntimeError(f"records wait to be stored since {waited:.1f} s")


async def _write_nothing() -> None:
    def update() -> None:
        with transaction.atomic():
            UsageDay.objects.filter(pk=-1).update(requests=F("requests"))

    await sync_to_async(update, thread_sensitive=True)()


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
