"""Who did what and who signs in how: the admin's audit log (``AuditEntry``), single sign-on
identities and sessions (``SignOnIdentity``, ``SignOnSession``)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.db import models


class AuditEntry(LogEntry):
    """Django admin's own log, under the name staff look for: who changed what and when (every
    admin change, and API keys made or revoked on the keys page: ``services.audit_log``)."""

    class Meta:
        proxy = True
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"


class SignOnIdentity(models.Model):
    """The account at an OpenID Connect provider that signs in as one user (``chat.sso``): the
    provider's ``iss`` and the account's ``sub`` claim, which OpenID Connect Core 1.0 §2 says
    together identify it for good (an e-mail address or a username may change or be reused)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sign_on_identities"
    )
    issuer = models.URLField(max_length=400)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="sign_on_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class SignOnSession(models.Model):
    """One browser session signed in through single sign-on (``chat.sso``): the tokens that let
    Slipstream ask the provider, every ``SLIPSTREAM_SSO_RECHECK_S``, whether the account may
    still sign in (a refresh token grant, RFC 6749 §6; or, without one, the UserInfo endpoint
    while the access token lasts). Tokens are Fernet-encrypted (``chat.crypto``), as backends'
    API keys are. Deleted with the session it belongs to (sign-out, or the provider's refusal)."""

    identity = models.ForeignKey(SignOnIdentity, on_delete=models.CASCADE, related_name="sessions")
    # Django's session key; kept up to date by each recheck (a key can be cycled).
    session_key = models.CharField(max_length=40, db_index=True)
    refresh_token_encrypted = models.TextField(blank=True, default="", editable=False)
    access_token_encrypted = models.TextField(blank=True, default="", editable=False)
    access_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    # A recheck in progress (in any process) holds the row until then: one refresh at a time,
    # since a provider that rotates refresh tokens may revoke the grant when one is reused.
    busy_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "single sign-on session"

    def __str__(self) -> str:
        return f"{self.identity} since {self.created_at:%Y-%m-%d %H:%M}"
