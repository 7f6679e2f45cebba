"""Login throttling, on the app's and the admin's login pages alike.

- Per username and client address: django-axes (``AXES_LOCKOUT_PARAMETERS``), which sees the
  address through ``chat.http.client_ip`` (``AXES_CLIENT_IP_CALLABLE``), the widget's rule.
  Behind the proxy every request comes from the proxy's address: counted there, a stranger's
  wrong passwords would lock the username out for everyone (issue 33, finding 1).
- Per client address: ``address_throttle`` refuses a password sign-in from an address with
  ``SLIPSTREAM_LOGIN_ADDRESS_LIMIT`` failures, any usernames, within the cool-off. The
  failures are axes' own records (``AccessAttempt``, in the database), so the cap holds while
  Redis is down and staff lift it as they lift a lock, by deleting the address's rows.

Both refuse with the login page the request came from, with a message saying why and for how
long, as HTTP 429.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.decorators import sync_and_async_middleware

from chat.http import client_ip

logger = logging.getLogger(__name__)


def lockout_message() -> str:
    minutes = round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    return (
        "Too many failed sign-ins for this username from your address. "
        f"Try again in {minutes} minutes, or ask an administrator to unlock it."
    )


def address_message() -> str:
    minutes = round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    return (
        "Too many failed sign-ins from your address. "
        f"Try again in {minutes} minutes, or ask an administrator to unlock it."
    )


def lockout_response(request: HttpRequest, *_: object) -> HttpResponse:
    """The login page with the lock-out message, status 429.

    Axes calls this with ``(request, original_response, credentials)`` from its synchronous
    middleware but ``(request, credentials)`` from its asynchronous one (daphne's path, axes
    8.3.1), so the other arguments are ignored: nothing here needs them.
    """
    return login_page(request, lockout_message())


def login_page(request: HttpRequest, message: str) -> HttpResponse:
    """The login page ``request`` came from, the admin's or the app's, showing ``message``
    (a refusal), status 429."""
    redirect_to = request.POST.get(REDIRECT_FIELD_NAME, request.GET.get(REDIRECT_FIELD_NAME, ""))
    if request.path == reverse("admin:login"):
        context = {
            **admin.site.each_context(request),
            "title": "Log in",
            "app_path": request.get_full_path(),
            "form": AdminAuthenticationForm(request),
            REDIRECT_FIELD_NAME: redirect_to or reverse("admin:index"),
            "lockout": message,
        }
        return render(request, "admin/login.html", context, status=429)
    context = {
        "form": AuthenticationForm(request),
        "next": redirect_to,
        "lockout": message,
    }
    return render(request, "registration/login.html", context, status=429)


def password_sign_in(request: HttpRequest) -> bool:
    """Whether ``request`` submits a login form, the app's or the admin's."""
    if request.method != "POST":
        return False
    try:
        return request.path in (reverse("login"), reverse("admin:login"))
    except NoReverseMatch:  # a URLconf without the sign-in pages has nothing to throttle
        return False


def address_failures(address: str) -> int:
    """Failed logins from ``address``, all usernames, whose latest failure is within the
    cool-off (``AXES_COOLOFF_TIME``): axes' counts, the lock's own rule for expiry."""
    since = timezone.now() - settings.AXES_COOLOFF_TIME
    rows = AccessAttempt.objects.filter(ip_address=address, attempt_time__gte=since)
    failures: int | None = rows.aggregate(n=Sum("failures_since_start"))["n"]
    return failures or 0


def address_refusal(request: HttpRequest) -> HttpResponse | None:
    """The 429 for a sign-in from an address at ``SLIPSTREAM_LOGIN_ADDRESS_LIMIT``
    failures, else None (the login goes on to axes and the form)."""
    address = client_ip(request)
    failures = address_failures(address)
    if failures < settings.SLIPSTREAM_LOGIN_ADDRESS_LIMIT:
        return None
    logger.warning("sign-in refused: %d failed sign-ins from %s", failures, address)
    return login_page(request, address_message())


@sync_and_async_middleware
def address_throttle(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """Middleware: ``address_refusal`` before each password sign-in (see the module)."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            if password_sign_in(request):
                refusal = await sync_to_async(address_refusal)(request)
                if refusal is not None:
                    return refusal
            response: HttpResponse = await get_response(request)
            return response

        return middleware

    def sync_middleware(request: HttpRequest) -> HttpResponse:
        if password_sign_in(request):
            refusal = address_refusal(request)
            if refusal is not None:
                return refusal
        response: HttpResponse = get_response(request)
        return response

    return sync_middleware
