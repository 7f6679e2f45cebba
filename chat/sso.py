"""Single sign-on with OpenID Connect: mozilla-django-oidc's authorization-code flow (with PKCE
and a nonce), configured from the environment (``SLIPSTREAM_OIDC_*``, see settings and README).

What this module adds to the library:

- The provider's endpoints come from its discovery document,
  ``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4), fetched at the
  first sign-in and kept for ``DISCOVERY_TTL_S``; the operator gives only the issuer.
- The ID token's ``iss`` and ``aud`` are checked (OpenID Connect Core 1.0 §3.1.3.7); the library
  checks the signature and the nonce only.
- An account is found by its ``iss`` and ``sub`` (``SignOnIdentity``), never by e-mail; the first
  sign-in creates the user, named by a configurable claim.
- Optional rules: e-mail domains allowed to sign in, and a claim whose values set the user's
  Django groups (which decide the slots they may use).
- Refusals and an unreachable provider end on the login page with a message that says why,
  never on an error page.
- The sign-in's refresh and access tokens are kept, encrypted, in a ``SignOnSession`` row for
  the browser session, whose id and next recheck time go in the session: ``chat.sso_session``
  asks the provider with them, off the request path, whether the account may still sign in.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.models import CHANGE
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
)

from chat import crypto, services
from chat.models import SignOnIdentity, SignOnSession

logger = logging.getLogger(__name__)

# How long a fetched discovery document is used before it is fetched again, s. Providers
# rotate signing keys (fetched per sign-in by the library) far more often than endpoints.
DISCOVERY_TTL_S = 3600.0

# mozilla-django-oidc's setting → the discovery document's field holding it.
ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}

# Keys in Django's session of a single sign-on session: its SignOnSession's id, and when its next
# recheck is due (time.time(), s). The ID token is the library's (OIDC_STORE_ID_TOKEN).
SESSION_ROW = "sso_session"
RECHECK_AT = "sso_recheck_at"
ID_TOKEN = "oidc_id_token"

UNREACHABLE = "Single sign-on is not available right now: the sign-in provider did not answer."


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be fetched or is not usable."""


class Refused(SuspiciousOperation):
    """Sign-in refused by a rule; ``str(exc)`` is the message shown to the person. A
    ``SuspiciousOperation`` because the library turns exactly that into a failed sign-in."""


_discovery: dict[str, Any] = {}
_discovery_lock = threading.Lock()


def discovery() -> dict[str, Any]:
    """The provider's discovery document, fetched at most once per ``DISCOVERY_TTL_S``.

    Returns the parsed JSON object. Raises ``ProviderUnavailable`` when the fetch fails (network,
    HTTP status, not JSON), when a required endpoint is missing, or when its ``issuer`` differs
    from ``SLIPSTREAM_OIDC_ISSUER`` (Discovery 1.0 §4.3: they must be identical)."""
    issuer = settings.SLIPSTREAM_OIDC_ISSUER
    with _discovery_lock:
        if _discovery.get("issuer") == issuer and time.monotonic() < _discovery["expires"]:
            return dict(_discovery["document"])
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise ProviderUnavailable(f"{url}: {exc}") from exc
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            raise ProviderUnavailable(f"{url}: its issuer is not {issuer!r}")
        missing = [field for field in ENDPOINTS.values() if not document.get(field)]
        if missing:
            raise ProviderUnavailable(f"{url}: no {', '.join(missing)}")
        _discovery.update(
            issuer=issuer, document=document, expires=time.monotonic() + DISCOVERY_TTL_S
        )
        return dict(document)


def sso_setting(attr: str, *default: Any) -> Any:
    """mozilla-django-oidc's settings lookup, with the provider's endpoints from discovery."""
    if attr in ENDPOINTS:
        return discovery()[ENDPOINTS[attr]]
    return import_from_settings(attr, *default)


def sign_in_options(request: HttpRequest) -> dict[str, Any]:
    """Template context processor: ``sso_label`` (the single sign-on button's text, or "" when
    single sign-on is off) and ``local_login`` (whether password forms are offered)."""
    return {
        "sso_label": settings.SLIPSTREAM_OIDC_LABEL if settings.SSO_ENABLED else "",
        "local_login": settings.LOCAL_LOGIN,
    }


def _login_page(request: HttpRequest, message: str) -> HttpResponse:
    messages.error(request, message)
    return HttpResponseRedirect(reverse("login"))


class SignOnBackend(OIDCAuthenticationBackend):
    """Authentication backend of the OpenID Connect callback (after ``AxesStandaloneBackend``
    and, unless local sign-in is off, ``ModelBackend``). It also answers permission checks as
    Django's ``ModelBackend`` does, which it extends."""

    get_settings = staticmethod(sso_setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Not the library's __init__, which reads the provider's endpoints: Django builds every
        # backend for each password sign-in, each permission check and each request of a user
        # signed in this way, and none of those may wait on (or fail with) the provider. The
        # endpoints are read when a sign-in needs them (the properties below).
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.UserModel = get_user_model()

    @property
    def OIDC_OP_TOKEN_ENDPOINT(self) -> str:
        return str(sso_setting("OIDC_OP_TOKEN_ENDPOINT"))

    @property
    def OIDC_OP_USER_ENDPOINT(self) -> str:
        return str(sso_setting("OIDC_OP_USER_ENDPOINT"))

    @property
    def OIDC_OP_JWKS_ENDPOINT(self) -> str:
        return str(sso_setting("OIDC_OP_JWKS_ENDPOINT"))

    def get_token(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The library's token request (client authentication, HTTP errors as ``HTTPError``
        with the response). A sign-in's token response (code grant) is kept on the request for
        ``SignOnCallback.login_success``: the library keeps only the ID token."""
        grant = payload.get("grant_type")
        token_info: dict[str, Any] = super().get_token(payload)
        if grant == "authorization_code" and getattr(self, "request", None) is not None:
            self.request.sso_tokens = token_info
        return token_info

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        """The library's signature and nonce checks, then ``iss`` and ``aud``. Raises
        ``SuspiciousOperation`` when one fails."""
        payload: dict[str, Any] = super().verify_token(token, **kwargs)
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if payload.get("iss") != settings.SLIPSTREAM_OIDC_ISSUER:
            raise SuspiciousOperation("The ID token was issued by another provider.")
        if settings.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("The ID token is meant for another client.")
        return payload

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        """Allow the sign-in, or raise ``Refused`` saying why: no ``sub``, no username claim,
        or an e-mail domain outside ``SLIPSTREAM_OIDC_ALLOWED_DOMAINS`` (an address the provider
        marks unverified counts as none)."""
        if not claims.get("sub"):
            raise Refused("The sign-in provider did not say who you are.")
        if not _username_of(claims):
            claim = settings.SLIPSTREAM_OIDC_USERNAME_CLAIM
            raise Refused(f"The sign-in provider sent no {claim!r} to name your account.")
        allowed = settings.SLIPSTREAM_OIDC_ALLOWED_DOMAINS
        if allowed:
            email = str(claims.get("email") or "")
            domain = email.rpartition("@")[2].lower() if "@" in email else ""
            if claims.get("email_verified") is False or domain not in allowed:
                raise Refused(
                    f"Accounts of {domain or 'no e-mail domain'} may not sign in here. "
                    "Ask your administrator."
                )
        return True

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        """The library's lookup; a ``Refused`` is kept on the request for the login page."""
        try:
            return super().get_or_create_user(access_token, id_token, payload)
        except Refused as exc:
            self.request.sso_refused = str(exc)
            raise

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        """Users linked to this provider's ``sub`` (zero or one)."""
        return self.UserModel.objects.filter(
            sign_on_identities__issuer=settings.SLIPSTREAM_OIDC_ISSUER,
            sign_on_identities__subject=claims["sub"],
        )

    def create_user(self, claims: dict[str, Any]) -> Any:
        """The user of a first sign-in, named by ``SLIPSTREAM_OIDC_USERNAME_CLAIM``, with no
        usable password. Raises ``Refused`` when a user of that name exists already: staff link
        it by adding its single sign-on identity in the admin, or rename one of them."""
        username = _username_of(claims)
        with transaction.atomic():
            if self.UserModel.objects.filter(username=username).exists():
                raise Refused(
                    f"An account named {username!r} exists already and is not linked to this "
                    "sign-in. Ask your administrator to link it."
                )
            user = self.UserModel.objects.create_user(username, email=claims.get("email") or "")
            SignOnIdentity.objects.create(
                user=user, issuer=settings.SLIPSTREAM_OIDC_ISSUER, subject=claims["sub"]
            )
        return self.update_user(user, claims)

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        """Bring the user in line with the claims at each sign-in: e-mail, name, and (when a
        groups claim is configured and sent) group membership, changes to which are written to
        the audit log."""
        user.email = claims.get("email") or user.email
        user.first_name = str(claims.get("given_name") or claims.get("name") or "")[:150]
        user.last_name = str(claims.get("family_name") or "")[:150]
        user.save(update_fields=["email", "first_name", "last_name"])
        SignOnIdentity.objects.filter(
            user=user, issuer=settings.SLIPSTREAM_OIDC_ISSUER, subject=claims["sub"]
        ).update(last_login_at=timezone.now())
        groups = _groups_of(claims)
        if groups is not None:
            _set_groups(user, groups)
        return user


def _username_of(claims: dict[str, Any]) -> str:
    value = claims.get(settings.SLIPSTREAM_OIDC_USERNAME_CLAIM)
    username_field = get_user_model()._meta.get_field("username")
    return str(value).strip()[: username_field.max_length] if value else ""


def _groups_of(claims: dict[str, Any]) -> set[str] | None:
    """Django group names from the groups claim (through ``SLIPSTREAM_OIDC_GROUPS_MAP`` when
    set, which then also drops unmapped values); ``None`` when no groups claim is configured or
    the provider sent none, so that membership stays as it is."""
    claim = settings.SLIPSTREAM_OIDC_GROUPS_CLAIM
    values = claims.get(claim) if claim else None
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    mapping = settings.SLIPSTREAM_OIDC_GROUPS_MAP
    names = (str(v) for v in values if isinstance(v, str | int))
    return {mapping[n] for n in names if n in mapping} if mapping else set(names)


def _set_groups(user: Any, names: set[str]) -> None:
    """Make the user's groups exactly ``names`` (created when missing: the provider owns
    membership of single sign-on users) and log what changed."""
    current = set(user.groups.values_list("name", flat=True))
    added, removed = sorted(names - current), sorted(current - names)
    if not added and not removed:
        return
    groups = [Group.objects.get_or_create(name=name[:150])[0] for name in sorted(names)]
    user.groups.set(groups)
    changes = [f"added to {', '.join(added)}" if added else ""]
    changes += [f"removed from {', '.join(removed)}" if removed else ""]
    services.audit_log(
        user=user,
        obj=user,
        action=CHANGE,
        message=f"Groups set by single sign-on: {'; '.join(c for c in changes if c)}.",
    )


class SignOnStart(OIDCAuthenticationRequestView):
    """``GET /oidc/authenticate/``: redirect to the provider's sign-in page, or back to the login
    page with a message when the provider cannot be reached."""

    get_settings = staticmethod(sso_setting)

    def __init__(self, **kwargs: Any) -> None:
        # The library reads the endpoint here, before get(); a failure is kept for get().
        try:
            super().__init__(**kwargs)
            self.unavailable: ProviderUnavailable | None = None
        except ProviderUnavailable as exc:
            self.unavailable = exc

    def get(self, request: HttpRequest) -> HttpResponse:
        if self.unavailable is not None:
            logger.warning("single sign-on: %s", self.unavailable)
            return _login_page(request, UNREACHABLE)
        response: HttpResponse = super().get(request)
        return response


class SignOnCallback(OIDCAuthenticationCallbackView):
    """``GET /oidc/callback/``: the provider's answer. A refusal or a failure ends on the login
    page with a message (a refusal says which rule; a failure says the provider failed)."""

    get_settings = staticmethod(sso_setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            response: HttpResponse = super().get(request)
        except (ProviderUnavailable, requests.RequestException) as exc:
            logger.warning("single sign-on: %s", exc)
            return _login_page(request, UNREACHABLE)
        return response

    def login_success(self) -> HttpResponse:
        """The library's sign-in (which cycles the session's key), then the session's tokens
        kept for its rechecks."""
        response: HttpResponse = super().login_success()
        keep_session_tokens(
            session=self.request.session,
            user=self.user,
            tokens=getattr(self.request, "sso_tokens", None) or {},
        )
        return response

    def login_failure(self) -> HttpResponse:
        error = self.request.GET.get("error_description") or self.request.GET.get("error")
        refused = getattr(self.request, "sso_refused", "")
        return _login_page(
            self.request, refused or f"Single sign-on failed: {error or 'sign in again'}."
        )


def keep_session_tokens(*, session: SessionBase, user: Any, tokens: dict[str, Any]) -> None:
    """Store a sign-in's ``refresh_token``, ``access_token`` and ``expires_in`` (s; RFC 6749
    §5.1) encrypted in a new ``SignOnSession`` for ``session``, and put its id and the first
    recheck time in the session. Also drops the rows of the identity's sessions that have ended
    without a sign-out (expired, cleared), so rows do not pile up."""
    identity = SignOnIdentity.objects.filter(
        user=user, issuer=settings.SLIPSTREAM_OIDC_ISSUER
    ).first()
    if identity is None:
        return
    if session.session_key is None:
        session.save()
    session_key = str(session.session_key)
    previous = session.get(SESSION_ROW)
    ended = [
        row.pk
        for row in identity.sessions.exclude(session_key=session_key)
        if not session.exists(row.session_key)
    ]
    SignOnSession.objects.filter(pk__in=[*ended, *([previous] if previous else [])]).delete()
    now = timezone.now()
    expires_in = tokens.get("expires_in")
    row = SignOnSession.objects.create(
        identity=identity,
        session_key=session_key,
        refresh_token_encrypted=crypto.encrypt(str(tokens.get("refresh_token") or "")),
        access_token_encrypted=crypto.encrypt(str(tokens.get("access_token") or "")),
        access_expires_at=(
            now + timedelta(seconds=expires_in)
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
            else None
        ),
        checked_at=now,
    )
    session[SESSION_ROW] = row.pk
    session[RECHECK_AT] = time.time() + settings.SLIPSTREAM_SSO_RECHECK_S
