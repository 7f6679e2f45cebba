"""Single sign-on through a real OpenID Connect provider on loopback (npm ``oidc-provider``),
in Chromium: the first sign-in creates the user and its groups from the claims, a later one
brings the groups in line, a disallowed e-mail domain and a name taken by a local account are
refused on the login page, and with local sign-in off no password is accepted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from playwright.sync_api import BrowserContext, Page, expect

from chat.models import AuditEntry, SignOnIdentity
from tests.conftest import server_env
from tests.support.daphne_server import DaphneServer
from tests.support.llama_server import free_port
from tests.support.oidc_provider import OidcProvider

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CLIENT_ID = "slipstream-tests"
CLIENT_SECRET = "a client secret only these tests know"
LABEL = "Sign in with Example ID"


def sso_env(issuer: str) -> dict[str, str]:
    return {
        "SLIPSTREAM_OIDC_ISSUER": issuer,
        "SLIPSTREAM_OIDC_CLIENT_ID": CLIENT_ID,
        "SLIPSTREAM_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "SLIPSTREAM_OIDC_SCOPES": "openid email profile groups",
        "SLIPSTREAM_OIDC_GROUPS_CLAIM": "groups",
        "SLIPSTREAM_OIDC_ALLOWED_DOMAINS": "example.com",
        "SLIPSTREAM_OIDC_LABEL": LABEL,
        "SLIPSTREAM_LOCAL_LOGIN": "false",
    }


@pytest.fixture(scope="module")
def sso(django_db_setup: None, django_db_blocker: Any) -> Iterator[tuple[DaphneServer, str]]:
    """Slipstream with single sign-on as the only way in, and its provider: (server, issuer)."""
    with django_db_blocker.unblock():
        env = server_env()
    daphne = DaphneServer(env=env)
    callback = f"{daphne.base_url}/oidc/callback/"
    with OidcProvider(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uri=callback
    ) as provider:
        daphne.env.update(sso_env(provider.issuer))
        with daphne:
            yield daphne, provider.issuer


def sign_in_at_provider(page: Page, base_url: str, login: str) -> None:
    """From Slipstream's login page through the provider's (development) login and consent."""
    page.goto(base_url + "/")
    page.get_by_role("link", name=LABEL).click()
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any password: the provider accepts all")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()


def test_first_sign_in_creates_the_user_and_its_groups_from_the_claims(
    browser_context: BrowserContext, sso: tuple[DaphneServer, str]
) -> None:
    server, issuer = sso
    page = browser_context.new_page()
    sign_in_at_provider(page, server.base_url, "ada")
    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()

    user = get_user_model().objects.get(username="ada")
    assert user.email == "ada@example.com"
    assert not user.has_usable_password()
    assert set(user.groups.values_list("name", flat=True)) == {"research", "staff-models"}
    identity = SignOnIdentity.objects.get(user=user)
    assert (identity.issuer, identity.subject) == (issuer, "ada")
    assert identity.last_login_at is not None
    logged = AuditEntry.objects.get(object_id=str(user.pk))
    assert logged.change_message == (
        "Groups set by single sign-on: added to research, staff-models."
    )

    # Staff put her in another group meanwhile; the provider owns membership, so the next
    # sign-in takes her out of it again, and says so in the audit log.
    user.groups.add(Group.objects.create(name="old-team"))
    browser_context.clear_cookies()
    sign_in_at_provider(page, server.base_url, "ada")
    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
    assert set(user.groups.values_list("name", flat=True)) == {"research", "staff-models"}
    assert get_user_model().objects.filter(username="ada").count() == 1
    assert AuditEntry.objects.filter(
        object_id=str(user.pk),
        change_message="Groups set by single sign-on: removed from old-team.",
    ).exists()


def test_a_disallowed_domain_is_refused_on_the_login_page(
    browser_context: BrowserContext, sso: tuple[DaphneServer, str]
) -> None:
    server, _ = sso
    page = browser_context.new_page()
    sign_in_at_provider(page, server.base_url, "eve")  # eve@elsewhere.test
    expect(page.get_by_role("alert")).to_have_text(
        "Accounts of elsewhere.test may not sign in here. Ask your administrator."
    )
    expect(page.get_by_role("link", name=LABEL)).to_be_visible()
    assert not get_user_model().objects.filter(username="eve").exists()
    assert not SignOnIdentity.objects.exists()


def test_a_name_taken_by_a_local_account_is_not_taken_over(
    browser_context: BrowserContext, sso: tuple[DaphneServer, str]
) -> None:
    server, _ = sso
    local = get_user_model().objects.create_user(username="ada", password="correct horse 42")
    page = browser_context.new_page()
    sign_in_at_provider(page, server.base_url, "ada")
    expect(page.get_by_role("alert")).to_contain_text(
        "An account named 'ada' exists already and is not linked to this sign-in."
    )
    assert not SignOnIdentity.objects.exists()
    assert not local.groups.exists()


def test_without_local_sign_in_no_password_is_accepted(sso: tuple[DaphneServer, str]) -> None:
    server, _ = sso
    get_user_model().objects.create_superuser(username="root", password="correct horse 42")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        page = client.get("/login/")
        assert LABEL in page.text
        assert 'name="password"' not in page.text
        admin_page = client.get("/admin/login/")
        assert LABEL in admin_page.text
        assert 'name="password"' not in admin_page.text
        for url in ("/login/", "/admin/login/"):
            answer = client.post(
                url,
                data={
                    "username": "root",
                    "password": "correct horse 42",
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                },
            )
            assert answer.status_code == 200  # the form again, not a redirect into the app
            assert "sessionid" not in client.cookies
        assert client.get("/").headers["location"].startswith("/login/")


def test_an_unreachable_provider_is_said_plainly(django_db_blocker: Any) -> None:
    with django_db_blocker.unblock():
        env = server_env()
    env.update(sso_env(f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    with (
        DaphneServer(env=env) as server,
        httpx.Client(base_url=server.base_url, timeout=20, follow_redirects=True) as client,
    ):
        page = client.get("/oidc/authenticate/")
        log = server.log_text()
    assert page.url.path == "/login/"
    assert "Single sign-on is not available right now" in page.text
    assert "single sign-on: http://127.0.0.1:" in log  # the reason, for the operator
    assert "Traceback" not in log


def test_an_unreachable_provider_stops_no_password_sign_in(django_db_blocker: Any) -> None:
    """Django builds every authentication backend for a password sign-in and for each request
    of a signed-in user: none of that may ask the provider."""
    with django_db_blocker.unblock():
        env = server_env()
        get_user_model().objects.create_user("local", password="correct horse 42")
    env.update(sso_env(f"http://127.0.0.1:{free_port()}"), SLIPSTREAM_LOCAL_LOGIN="true")
    with (
        DaphneServer(env=env) as server,
        httpx.Client(base_url=server.base_url, timeout=20) as client,
    ):
        client.get("/login/")
        signed_in = client.post(
            "/login/",
            data={
                "username": "local",
                "password": "correct horse 42",
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        assert signed_in.status_code == 302
        assert client.get("/").status_code == 200  # the chat, for the signed-in user
        log = server.log_text()
    assert "Traceback" not in log
