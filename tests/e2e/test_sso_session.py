"""A single sign-on session's lifetime against a real OpenID Connect provider on loopback (npm
``oidc-provider``, issuing refresh tokens), in Chromium: an account disabled at the provider is
signed out at the next recheck, a provider that is down signs nobody out, and sign-out ends the
provider's session too (RP-initiated logout) and comes back to the sign-in page.

The recheck is due at every request (``SLIPSTREAM_SSO_RECHECK_S=0``), so each test drives it by
making requests and waits for its effect (a 401, a log line), never for a time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from chat import crypto
from chat.models import SignOnSession
from tests.conftest import server_env
from tests.e2e.test_sso import CLIENT_ID, CLIENT_SECRET, LABEL, sign_in_at_provider, sso_env
from tests.support.daphne_server import DaphneServer
from tests.support.oidc_provider import OidcProvider
from tests.support.polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SLOTS = "/chat/slots/"  # a JSON endpoint behind login_required


@contextmanager
def slipstream_and_provider(
    *, refresh_tokens: bool = True
) -> Iterator[tuple[DaphneServer, OidcProvider]]:
    """Slipstream whose single sign-on sessions are rechecked at every request, and its
    provider, which may send the browser back to the sign-in page after a sign-out there."""
    daphne = DaphneServer(env=server_env())
    with OidcProvider(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=f"{daphne.base_url}/oidc/callback/",
        post_logout_redirect_uri=f"{daphne.base_url}/login/",
        refresh_tokens=refresh_tokens,
    ) as provider:
        daphne.env.update(sso_env(provider.issuer), SLIPSTREAM_SSO_RECHECK_S="0")
        with daphne:
            yield daphne, provider


@pytest.fixture
def sso(django_db_blocker: Any) -> Iterator[tuple[DaphneServer, OidcProvider]]:
    """``slipstream_and_provider()``, with refresh tokens."""
    with django_db_blocker.unblock(), slipstream_and_provider() as pair:
        yield pair


def signed_in(context: BrowserContext, server: DaphneServer) -> httpx.Client:
    """An HTTP client with the browser's session cookie (it keeps no cookie the server sets)."""
    cookies = {c["name"]: c["value"] for c in context.cookies() if c["name"] == "sessionid"}
    assert cookies, "the browser has no session"
    return httpx.Client(
        base_url=server.base_url,
        headers={"Cookie": f"sessionid={cookies['sessionid']}"},
        timeout=20,
    )


def sign_in(page: Page, server: DaphneServer) -> None:
    sign_in_at_provider(page, server.base_url, "ada")
    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()


def test_the_sign_in_keeps_its_refresh_token_encrypted(
    browser_context: BrowserContext, sso: tuple[DaphneServer, OidcProvider]
) -> None:
    server, _ = sso
    sign_in(browser_context.new_page(), server)
    row = SignOnSession.objects.get()
    assert row.identity.user.username == "ada"
    refresh = crypto.decrypt(row.refresh_token_encrypted)
    assert refresh  # the provider issued one, and it is kept
    assert refresh not in row.refresh_token_encrypted  # not in the clear


def test_an_account_disabled_at_the_provider_is_signed_out(
    browser_context: BrowserContext, sso: tuple[DaphneServer, OidcProvider]
) -> None:
    server, provider = sso
    page = browser_context.new_page()
    sign_in(page, server)
    with signed_in(browser_context, server) as client:
        assert client.get(SLOTS).status_code == 200
        provider.disable("ada")
        # Each request lets the next recheck go (the request itself is not held for it); the
        # first one to ask the provider after the disabling ends the session.
        wait_until(lambda: client.get(SLOTS).status_code == 401, what="the session to end")
        answer = client.get(SLOTS)
    assert answer.json()["error"]["code"] == "not_signed_in"
    page.reload()
    expect(page.get_by_role("link", name=LABEL)).to_be_visible()  # the sign-in page
    assert "/login/" in page.url
    assert not SignOnSession.objects.exists()
    log = server.log_text()
    assert "ada's session ended: the provider refused it: invalid_grant" in log
    assert "Traceback" not in log


def test_without_refresh_tokens_the_access_token_is_rechecked_while_it_lasts(
    browser_context: BrowserContext,
) -> None:
    """A provider that issues no refresh token (no offline_access): the UserInfo endpoint with
    the sign-in's access token, which the provider refuses (401) once the account is disabled."""
    with slipstream_and_provider(refresh_tokens=False) as (server, provider):
        page = browser_context.new_page()
        sign_in(page, server)
        row = SignOnSession.objects.get()
        assert crypto.decrypt(row.refresh_token_encrypted) == ""
        assert crypto.decrypt(row.access_token_encrypted)
        assert row.access_expires_at is not None
        with signed_in(browser_context, server) as client:
            assert client.get(SLOTS).status_code == 200
            provider.disable("ada")
            wait_until(lambda: client.get(SLOTS).status_code == 401, what="the session to end")
        assert "the UserInfo endpoint refused the access token" in server.log_text()


def test_a_provider_that_is_down_keeps_the_session(
    browser_context: BrowserContext, sso: tuple[DaphneServer, OidcProvider]
) -> None:
    server, provider = sso
    page = browser_context.new_page()
    sign_in(page, server)
    provider.stop()
    kept = "ada's session kept: the provider could not be asked"
    with signed_in(browser_context, server) as client:

        def asked_and_kept() -> bool:
            assert client.get(SLOTS).status_code == 200
            return kept in server.log_text()

        wait_until(asked_and_kept, what="a recheck that finds the provider down")
        assert client.get(SLOTS).status_code == 200
    page.reload()
    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
    assert SignOnSession.objects.filter(identity__user__username="ada").exists()
    assert "Traceback" not in server.log_text()


def test_sign_out_ends_the_providers_session_and_comes_back(
    browser_context: BrowserContext, sso: tuple[DaphneServer, OidcProvider]
) -> None:
    server, provider = sso
    page = browser_context.new_page()
    sign_in(page, server)
    with signed_in(browser_context, server) as client:
        page.get_by_role("button", name="Sign out").click()
        # At the provider's end_session endpoint, which asks to confirm; here already signed
        # out of Slipstream (local sign-out first).
        expect(page.get_by_role("button", name="Yes, sign me out")).to_be_visible()
        assert page.url.startswith(f"{provider.issuer}/session/end")
        assert "id_token_hint=" in page.url
        assert client.get(SLOTS).status_code == 401
    assert not SignOnSession.objects.exists()
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page.get_by_role("status")).to_have_text(
        "You are signed out, at the sign-in provider too."
    )
    assert re.match(rf"{re.escape(server.base_url)}/login/\?state=", page.url)
    # The provider's own session is over: signing in asks for the account again.
    page.get_by_role("link", name=LABEL).click()
    expect(page.locator("input[name=login]")).to_be_visible()
