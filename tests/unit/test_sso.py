"""chat.sso's own rules on top of mozilla-django-oidc: the ID token's issuer and audience, the
sign-in rules on claims, and the groups claim with and without a map. The whole flow, against a
real provider in Chromium, is in tests/e2e/test_sso.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from django.core.exceptions import SuspiciousOperation
from django.test import override_settings

from chat import sso

ISSUER = "https://id.example.com"
SECRET = "the client secret, which signs HS256 ID tokens"
SETTINGS = {
    "SLIPSTREAM_OIDC_ISSUER": ISSUER,
    "OIDC_RP_CLIENT_ID": "slipstream",
    "OIDC_RP_CLIENT_SECRET": SECRET,
    "OIDC_RP_SIGN_ALGO": "HS256",
    "SLIPSTREAM_OIDC_USERNAME_CLAIM": "preferred_username",
    "SLIPSTREAM_OIDC_ALLOWED_DOMAINS": ["example.com"],
    "SLIPSTREAM_OIDC_GROUPS_CLAIM": "groups",
    "SLIPSTREAM_OIDC_GROUPS_MAP": {},
}


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[sso.SignOnBackend]:
    """A backend whose discovery document is already known (no provider is asked)."""
    document = {
        "issuer": ISSUER,
        **{field: f"{ISSUER}/{field}" for field in sso.ENDPOINTS.values()},
    }
    monkeypatch.setattr(
        sso,
        "_discovery",
        {"issuer": ISSUER, "document": document, "expires": time.monotonic() + 60},
    )
    with override_settings(**SETTINGS):
        yield sso.SignOnBackend()


def id_token(**claims: Any) -> str:
    payload = {"iss": ISSUER, "aud": "slipstream", "sub": "u1", "nonce": "n", **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def test_the_endpoints_come_from_discovery(backend: sso.SignOnBackend) -> None:
    assert f"{ISSUER}/token_endpoint" == backend.OIDC_OP_TOKEN_ENDPOINT
    assert f"{ISSUER}/jwks_uri" == backend.OIDC_OP_JWKS_ENDPOINT


def test_an_id_token_must_come_from_the_issuer_for_this_client(backend: sso.SignOnBackend) -> None:
    assert backend.verify_token(id_token(), nonce="n")["sub"] == "u1"
    assert backend.verify_token(id_token(aud=["other", "slipstream"]), nonce="n")["sub"] == "u1"
    with pytest.raises(SuspiciousOperation, match="another provider"):
        backend.verify_token(id_token(iss="https://evil.example"), nonce="n")
    with pytest.raises(SuspiciousOperation, match="another client"):
        backend.verify_token(id_token(aud="someone-else"), nonce="n")
    with pytest.raises(SuspiciousOperation, match="Nonce"):
        backend.verify_token(id_token(), nonce="another")


@pytest.mark.parametrize(
    ("claims", "refusal"),
    [
        ({"preferred_username": "ada", "email": "ada@example.com"}, "did not say who you are"),
        ({"sub": "u1", "email": "ada@example.com"}, "sent no 'preferred_username'"),
        ({"sub": "u1", "preferred_username": "ada"}, "Accounts of no e-mail domain"),
        ({"sub": "u1", "preferred_username": "ada", "email": "ada@evil.test"}, "evil.test"),
        (
            {
                "sub": "u1",
                "preferred_username": "ada",
                "email": "ada@example.com",
                "email_verified": False,
            },
            "example.com may not",
        ),
    ],
)
def test_claims_that_do_not_meet_the_rules_are_refused(
    backend: sso.SignOnBackend, claims: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(sso.Refused, match=refusal):
        backend.verify_claims(claims)


def test_claims_that_meet_the_rules_pass(backend: sso.SignOnBackend) -> None:
    claims = {"sub": "u1", "preferred_username": "ada", "email": "Ada@EXAMPLE.com"}
    assert backend.verify_claims(claims) is True


def test_the_groups_claim_names_groups_or_goes_through_the_map(backend: sso.SignOnBackend) -> None:
    assert sso._groups_of({"groups": ["a", "b"]}) == {"a", "b"}
    assert sso._groups_of({"groups": "solo"}) == {"solo"}
    assert sso._groups_of({}) is None  # not sent: membership stays as it is
    with override_settings(SLIPSTREAM_OIDC_GROUPS_MAP={"0f3a": "research"}):
        assert sso._groups_of({"groups": ["0f3a", "ffff"]}) == {"research"}
    with override_settings(SLIPSTREAM_OIDC_GROUPS_CLAIM=""):
        assert sso._groups_of({"groups": ["a"]}) is None
