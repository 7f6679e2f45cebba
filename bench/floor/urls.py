"""Slipstream's URLs plus ``/bench/empty/`` (see ``settings``)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path


async def empty(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok", content_type="text/plain")


urlpatterns = [path("bench/empty/", empty), path("", include("chatsite.urls"))]
