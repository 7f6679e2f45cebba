"""The page a locked-out login gets (django-axes' ``AXES_LOCKOUT_CALLABLE``): the login page it
came from, app or admin, with a message saying why and for how long, as HTTP 429."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse


def lockout_message() -> str:
    minutes = round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    return (
        "Too many failed sign-ins for this username from your address. "
        f"Try again in {minutes} minutes, or ask an administrator to unlock it."
    )


def lockout_response(request: HttpRequest, *_: object) -> HttpResponse:
    """The login page with the lock-out message, status 429.

    Axes calls this with ``(request, original_response, credentials)`` from its synchronous
    middleware but ``(request, credentials)`` from its asynchronous one (daphne's path, axes
    8.3.1), so the other arguments are ignored: nothing here needs them.
    """
    redirect_to = request.POST.get(REDIRECT_FIELD_NAME, request.GET.get(REDIRECT_FIELD_NAME, ""))
    if request.path == reverse("admin:login"):
        context = {
            **admin.site.each_context(request),
            "title": "Log in",
            "app_path": request.get_full_path(),
            "form": AdminAuthenticationForm(request),
            REDIRECT_FIELD_NAME: redirect_to or reverse("admin:index"),
            "lockout": lockout_message(),
        }
        return render(request, "admin/login.html", context, status=429)
    context = {
        "form": AuthenticationForm(request),
        "next": redirect_to,
        "lockout": lockout_message(),
    }
    return render(request, "registration/login.html", context, status=429)
