"""A single sign-on session's lifetime: rechecked with the provider while it lasts, and ended
there too at sign-out.

**Recheck.** A person disabled or deleted at the provider must not keep using Slipstream until
the session cookie expires. Every ``SLIPSTREAM_SSO_RECHECK_S`` a session signed in through
``chat.sso`` asks the provider whether its account may still sign in, off the request path:
``SessionRecheck`` only compares timestamps (the first one in the loaded session, then the
process's own) and, when one is due, moves it on and spawns ``recheck``
(``chat.relay.background.spawn``); the request goes through, and the session is not written.
``recheck`` holds the session's ``SignOnSession`` row (one recheck at a time, in any process),
then asks the provider:

- with a refresh token: a refresh token grant (RFC 6749 §6) through the library's token
  request. ``invalid_grant`` (RFC 6749 §5.2: the grant is revoked, expired, or its account
  gone or disabled; oidc-provider, Keycloak and Entra ID answer so) is a refusal: the session is
  deleted from Django's session store, so the next request is signed out (a page redirects to
  sign in, a JSON endpoint answers 401). A rotated refresh token is stored.
- without one (the provider issues none: no ``offline_access``), the UserInfo endpoint (OpenID
  Connect Core 1.0 §5.3) with the sign-in's access token while it lasts: 401 is a refusal (the
  token was revoked, which disabling an account does at most providers). Once it has expired
  nothing can be asked: the session lasts its own lifetime (``SESSION_COOKIE_AGE``), as before.
- anything else (the provider unreachable, a 5xx, a timeout, an answer that is not JSON, our
  client refused with ``invalid_client``) keeps the session: one log line, and the next
  recheck comes one interval later. A provider that is down signs nobody out.

**Sign-out.** ``SignOut`` (``POST /logout/``, CSRF-checked as Django's ``LogoutView``) signs
out locally first, then, for a single sign-on session whose provider's discovery document has
an ``end_session_endpoint``, redirects there (OpenID Connect RP-Initiated Logout 1.0 §2:
``id_token_hint``, ``client_id``, ``post_logout_redirect_uri`` = the sign-in page, ``state``).
``SignIn`` (the sign-in page) says so when the provider comes back with that ``state``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import threading
import time
from datetime import timedelta
from importlib import import_module
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.auth.views import LoginView, LogoutView
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.shortcuts import resolve_url
from django.urls import reverse
from django.utils import timezone

from chat import crypto, sso
from chat.http import error_response, invalid
from chat.middleware import OnLoop, wants_json
from chat.models import SignOnSession
from chat.relay import background

logger = logging.getLogger(__name__)

# The state of a sign-out at the provider, kept in the (new, anonymous) session until it returns.
LOGOUT_STATE = "sso_logout_state"
SSO_BACKEND = "chat.sso.SignOnBackend"
NOT_SIGNED_IN = "You are not signed in, or your session has ended: sign in again."


class Outcome(enum.StrEnum):
    """What a recheck found."""

    ALLOWED = "allowed"  # the provider answered for the account: the session goes on
    REFUSED = "refused"  # invalid_grant, or a revoked access token: the session is ended
    UNREACHABLE = "unreachable"  # no usable answer: the session is kept, rechecked later
    UNCHECKED = "unchecked"  # nothing left to ask with (no refresh token, access token expired)
    BUSY = "busy"  # another recheck of this session is under way
    GONE = "gone"  # no such SignOnSession (signed out meanwhile)


# ------------------------------------------------------------------------------------------------
# Recheck
# ------------------------------------------------------------------------------------------------
class SessionRecheck(OnLoop):
    """Middleware, after ``AuthenticationMiddleware``. On the way out, and only when the view
    loaded the session (so it reads no store): a single sign-on session whose recheck time has
    passed gets its next one set (in this process's memory) and ``recheck`` spawned; the
    response is not held for it. Also
    turns a JSON endpoint's redirect to the sign-in page (``login_required``) into 401 in
    OpenAI's envelope, since its client reads JSON."""

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        session = getattr(request, "session", None)
        # Only a session the view loaded (Django's private ``_session_cache``): reading it costs
        # no query. ``accessed`` is not enough: it is set before the load, so a load that failed
        # (the database down) leaves it true with nothing loaded, and ``get`` would query here,
        # on the event loop (SynchronousOnlyOperation, a 500 instead of the outage's 503).
        loaded = getattr(session, "_session_cache", None) if session is not None else None
        if isinstance(loaded, dict) and session is not None and session.session_key:
            row_id = loaded.get(sso.SESSION_ROW)
            key = session.session_key
            now = time.time()
            due = max(loaded.get(sso.RECHECK_AT, 0.0), _next_recheck.get(key, 0.0))
            if row_id is not None and now >= due:
                _remember(key, now + settings.SLIPSTREAM_SSO_RECHECK_S)
                _schedule(row_id=row_id, session_key=key)
        if response.status_code == 302 and wants_json(request):
            login = resolve_url(settings.LOGIN_URL)
            if urlsplit(response.get("Location", "")).path == login:
                return error_response(invalid(NOT_SIGNED_IN, status=401, code="not_signed_in"))
        return response


# When each session's next recheck is due in this process (time.time(), s), by session key. Not
# in the session: writing it there would save the session (a thread hop and a write) and race
# the recheck that deletes it (Django answers a save of a deleted session with a 400 and a
# traceback). The session holds the first due time, set at sign-in; each process then rechecks
# a session at most once per interval, and the row's hold keeps processes from overlapping.
_next_recheck: dict[str, float] = {}
_REMEMBERED_MAX = 50_000


def _remember(session_key: str, due: float) -> None:
    if len(_next_recheck) >= _REMEMBERED_MAX:
        now = time.time()
        for key in [k for k, t in _next_recheck.items() if t <= now]:
            del _next_recheck[key]
        if len(_next_recheck) >= _REMEMBERED_MAX:
            _next_recheck.clear()  # all still pending: the worst case is one early recheck each
    _next_recheck[session_key] = due


def _schedule(*, row_id: int, session_key: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # A WSGI server (or Django's test client): no event loop here, so a thread of its own.
        thread = threading.Thread(
            target=asyncio.run,
            args=(recheck(row_id=row_id, session_key=session_key),),
            name="sso-recheck",
            daemon=True,
        )
        thread.start()
        return
    background.spawn(recheck(row_id=row_id, session_key=session_key))


async def recheck(*, row_id: int, session_key: str) -> Outcome:
    """Ask the provider whether the ``SignOnSession`` ``row_id`` (of Django session
    ``session_key``) may go on, and act on the answer (see the module's docstring). The
    database work runs on asgiref's thread, the provider's calls (``OIDC_TIMEOUT`` each) on a
    thread of their own, never the event loop. Returns what was found; never raises (a failure
    is logged and keeps the session)."""
    try:
        row = await sync_to_async(_hold, thread_sensitive=True)(row_id, session_key)
        if row is None:
            return Outcome.BUSY if await _exists(row_id) else Outcome.GONE
        outcome, detail, tokens = await asyncio.to_thread(_ask_provider, row)
        await sync_to_async(_settle, thread_sensitive=True)(row, outcome, detail, tokens)
        return outcome
    except Exception:
        logger.exception("single sign-on: the recheck of session %s failed", row_id)
        return Outcome.UNREACHABLE


async def _exists(row_id: int) -> bool:
    return await SignOnSession.objects.filter(pk=row_id).aexists()


def _hold(row_id: int, session_key: str) -> SignOnSession | None:
    """The row, held until the provider's calls are over (one UPDATE: whoever changes it holds
    it); ``None`` when it is held already or gone."""
    now = timezone.now()
    until = now + timedelta(seconds=2 * settings.OIDC_TIMEOUT + 5)  # discovery + one call
    free = Q(busy_until__isnull=True) | Q(busy_until__lt=now)
    held = SignOnSession.objects.filter(free, pk=row_id).update(
        busy_until=until, session_key=session_key
    )
    if not held:
        return None
    return SignOnSession.objects.select_related("identity__user").filter(pk=row_id).first()


def _ask_provider(row: SignOnSession) -> tuple[Outcome, str, dict[str, Any]]:
    """(outcome, why, the token response) for ``row``; network calls, no database."""
    backend = sso.SignOnBackend()
    try:
        refresh = crypto.decrypt(row.refresh_token_encrypted, what="a refresh token")
        if refresh:
            tokens = backend.get_token(
                {
                    "client_id": settings.OIDC_RP_CLIENT_ID,
                    "client_secret": settings.OIDC_RP_CLIENT_SECRET,
                    "grant_type": "refresh_token",
                    "refresh_token": refresh,
                }
            )
            return Outcome.ALLOWED, "refresh token grant", tokens
        access = crypto.decrypt(row.access_token_encrypted, what="an access token")
        if not access or (row.access_expires_at and row.access_expires_at <= timezone.now()):
            return Outcome.UNCHECKED, "no refresh token, and the access token has expired", {}
        answer = requests.get(
            backend.OIDC_OP_USER_ENDPOINT,
            headers={"Authorization": f"Bearer {access}"},
            timeout=settings.OIDC_TIMEOUT,
        )
        if answer.status_code == 401:
            return Outcome.REFUSED, "the UserInfo endpoint refused the access token", {}
        answer.raise_for_status()
        return Outcome.ALLOWED, "UserInfo endpoint", {}
    except requests.HTTPError as exc:
        return _http_error(exc.response)
    except (
        sso.ProviderUnavailable,
        crypto.SecretUnreadable,  # the encryption keys changed without a rotation
        requests.RequestException,
        ValueError,
    ) as exc:
        return Outcome.UNREACHABLE, str(exc)[:300], {}


def _http_error(response: requests.Response | None) -> tuple[Outcome, str, dict[str, Any]]:
    """A token endpoint's error (RFC 6749 §5.2): only ``invalid_grant`` is a refusal."""
    if response is None:
        return Outcome.UNREACHABLE, "no response", {}
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code == 400 and error == "invalid_grant":
        description = body.get("error_description") if isinstance(body, dict) else None
        return Outcome.REFUSED, f"invalid_grant ({description or 'no description'})", {}
    return Outcome.UNREACHABLE, f"HTTP {response.status_code} {error or ''}".strip(), {}


def _settle(row: SignOnSession, outcome: Outcome, detail: str, tokens: dict[str, Any]) -> None:
    user = row.identity.user
    if outcome is Outcome.REFUSED:
        session_store = import_module(settings.SESSION_ENGINE).SessionStore
        session_store().delete(row.session_key)
        row.delete()
        logger.info("single sign-on: %s's session ended: the provider refused it: %s", user, detail)
        return
    fields: dict[str, Any] = {"busy_until": None}
    if outcome is Outcome.ALLOWED:
        fields["checked_at"] = timezone.now()
        if tokens.get("refresh_token"):  # rotated (RFC 6749 §6: "MAY issue a new one")
            fields["refresh_token_encrypted"] = crypto.encrypt(str(tokens["refresh_token"]))
        if tokens.get("access_token"):
            fields["access_token_encrypted"] = crypto.encrypt(str(tokens["access_token"]))
            expires_in = tokens.get("expires_in")
            fields["access_expires_at"] = (
                timezone.now() + timedelta(seconds=expires_in)
                if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
                else None
            )
        logger.debug("single sign-on: %s's session rechecked (%s)", user, detail)
    elif outcome is Outcome.UNREACHABLE:
        logger.warning(
            "single sign-on: %s's session kept: the provider could not be asked (%s); "
            "asking again in %g s",
            user,
            detail,
            settings.SLIPSTREAM_SSO_RECHECK_S,
        )
    SignOnSession.objects.filter(pk=row.pk).update(**fields)


# ------------------------------------------------------------------------------------------------
# Sign-in page and sign-out
# ------------------------------------------------------------------------------------------------
class SignIn(LoginView):
    """Django's sign-in page; back from a sign-out at the provider with the ``state`` it was
    sent, it says that the provider's session has ended too."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        state = request.GET.get("state")
        expected = request.session.pop(LOGOUT_STATE, None) if state else None
        if state and expected and secrets.compare_digest(state, expected):
            messages.info(request, "You are signed out, at the sign-in provider too.")
        response: HttpResponse = super().get(request, *args, **kwargs)
        return response


class SignOut(LogoutView):
    """``POST /logout/``: Django's sign-out (CSRF-checked, POST only), then, for a single
    sign-on session, RP-initiated logout at the provider when it offers it (see the module's
    docstring). The session's ``SignOnSession`` (its tokens) is deleted."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        session = request.session
        row_id = session.get(sso.SESSION_ROW)
        id_token = str(session.get(sso.ID_TOKEN) or "")
        by_sso = row_id is not None or session.get(BACKEND_SESSION_KEY) == SSO_BACKEND
        response: HttpResponse = super().post(request, *args, **kwargs)  # local sign-out first
        if row_id is not None:
            SignOnSession.objects.filter(pk=row_id).delete()
        if not (by_sso and settings.SSO_ENABLED):
            return response
        endpoint = _end_session_endpoint()
        if not endpoint:
            return response
        state = secrets.token_urlsafe(24)
        request.session[LOGOUT_STATE] = state
        params = {
            **({"id_token_hint": id_token} if id_token else {}),
            "client_id": settings.OIDC_RP_CLIENT_ID,
            "post_logout_redirect_uri": request.build_absolute_uri(reverse("login")),
            "state": state,
        }
        return HttpResponseRedirect(_with_query(endpoint, params))


def _end_session_endpoint() -> str:
    """The provider's ``end_session_endpoint`` (RP-Initiated Logout 1.0 §2.1), or "" when it
    has none, cannot be asked, or has it at another origin than the issuer's (then the sign-out
    is local only, and logged)."""
    try:
        endpoint = str(sso.discovery().get("end_session_endpoint") or "")
    except sso.ProviderUnavailable as exc:
        logger.warning("single sign-on: signed out here only: %s", exc)
        return ""
    parts = urlsplit(endpoint)
    if endpoint and f"{parts.scheme}://{parts.netloc}" != settings.OIDC_ISSUER_ORIGIN:
        # The Content Security Policy's form-action lets the sign-out form go to the issuer's
        # origin only; the browser would stop there, on the signed-out page.
        logger.warning(
            "single sign-on: signed out here only: end_session_endpoint %s is not at the "
            "issuer's origin",
            endpoint,
        )
        return ""
    return endpoint


def _with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its query (an endpoint may carry one already)."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
    return urlunsplit(parts._replace(query=query))
