"""Login throttling (django-axes, issue 16 finding 3): after N wrong passwords for one username
from one address, even the right password is refused with a message, on the app's login and the
admin's; another username from the same address still signs in. Behind the proxy the address is
the client's, not the proxy's (issue 33 finding 1), and one address is capped across usernames
(``SLIPSTREAM_LOGIN_ADDRESS_LIMIT``, chat.lockout)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from tests.conftest import HTTPS, server_env, session_client
from tests.support.daphne_server import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse 42"  # tests/conftest.py's user


def sign_in(client: httpx.Client, path: str, username: str, password: str) -> httpx.Response:
    """One login as a browser does it: the form's page (for the CSRF cookie), then its POST."""
    client.get(path).raise_for_status()
    return client.post(
        path,
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
    )


def test_locked_out_after_n_failures_with_a_message(server: DaphneServer, user: Any) -> None:
    limit = settings.AXES_FAILURE_LIMIT
    get_user_model().objects.create_user(username="grace", password=PASSWORD)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(limit - 1):
            assert sign_in(client, "/login/", "ada", "wrong").status_code == 200
        # The Nth failure locks: it and everything after, right password included, get 429.
        assert sign_in(client, "/login/", "ada", "wrong").status_code == 429
        refused = sign_in(client, "/login/", "ada", PASSWORD)
        assert refused.status_code == 429
        assert "Too many failed sign-ins" in refused.text
        assert '<form method="post"' in refused.text  # the login page, not a bare error
        assert "sessionid" not in client.cookies
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        # Same address, another username: not locked.
        assert sign_in(client, "/login/", "grace", PASSWORD).status_code == 302


def test_admin_login_is_throttled_too(server: DaphneServer, transactional_db: None) -> None:
    get_user_model().objects.create_superuser(username="root", password=PASSWORD)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(settings.AXES_FAILURE_LIMIT):
            sign_in(client, "/admin/login/", "root", "wrong")
        refused = sign_in(client, "/admin/login/", "root", PASSWORD)
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.text
    assert 'id="login-form"' in refused.text


def test_staff_unlock_in_the_admin(server: DaphneServer, user: Any) -> None:
    from axes.models import AccessAttempt

    root = get_user_model().objects.create_superuser(username="root", password=PASSWORD)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(settings.AXES_FAILURE_LIMIT):
            sign_in(client, "/login/", "ada", "wrong")
        assert sign_in(client, "/login/", "ada", PASSWORD).status_code == 429
        attempt = AccessAttempt.objects.get(username="ada")
        staff = session_client(server, root)
        try:
            listed = staff.get("/admin/axes/accessattempt/")
            assert listed.status_code == 200
            assert "ada" in listed.text
            deleted = staff.post(
                f"/admin/axes/accessattempt/{attempt.pk}/delete/", data={"post": "yes"}
            )
        finally:
            staff.close()
        assert deleted.status_code == 302
        assert sign_in(client, "/login/", "ada", PASSWORD).status_code == 302


def sign_in_from(
    proxy: DaphneServer, address: str, username: str, password: str, *, path: str = "/login/"
) -> httpx.Response:
    """One login through the TLS proxy (deploy/nginx.conf) by a client at ``address``: nginx
    appends the address it saw to ``X-Forwarded-For`` and says the scheme was HTTPS. The cookies
    are then ``Secure``, which httpx sends only to https URLs, so the CSRF cookie goes back by
    hand, with the ``Referer`` Django checks on an HTTPS POST."""
    headers = {**HTTPS, "X-Forwarded-For": address}
    with httpx.Client(base_url=proxy.base_url, headers=headers, timeout=30) as client:
        form = client.get(path)
        form.raise_for_status()
        token = form.cookies["csrftoken"]
        client.cookies.clear()
        return client.post(
            path,
            data={"username": username, "password": password, "csrfmiddlewaretoken": token},
            headers={
                "Cookie": f"csrftoken={token}",
                "Referer": f"https://127.0.0.1:{proxy.port}{path}",
            },
        )


ATTACKER = "203.0.113.5"
OWNER = "198.51.100.7"
# The address cap of ``proxy``: small, since each failed login costs the server a password hash
# (PBKDF2, some 0.5 s here); above AXES_FAILURE_LIMIT, as by default, so a lock comes first.
ADDRESS_LIMIT = 8


@pytest.fixture(scope="module")
def proxy(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """Slipstream behind deploy/nginx.conf (``proxied`` in tests/conftest.py), with
    ``SLIPSTREAM_LOGIN_ADDRESS_LIMIT`` at ``ADDRESS_LIMIT``."""
    with django_db_blocker.unblock():
        env = server_env()
    env |= {"DJANGO_BEHIND_PROXY": "true", "SLIPSTREAM_LOGIN_ADDRESS_LIMIT": str(ADDRESS_LIMIT)}
    with DaphneServer(env=env, probe_headers=HTTPS) as daphne:
        yield daphne


def test_behind_the_proxy_a_lock_is_per_username_and_client_address(
    proxy: DaphneServer, transactional_db: None
) -> None:
    """Issue 33 finding 1: wrong passwords for ``victim`` from one client must not lock
    ``victim`` out from another client behind the same proxy (REMOTE_ADDR is the proxy's)."""
    limit = settings.AXES_FAILURE_LIMIT
    get_user_model().objects.create_user(username="victim", password=PASSWORD)
    tries = [sign_in_from(proxy, ATTACKER, "victim", "wrong").status_code for _ in range(limit)]
    assert tries == [200] * (limit - 1) + [429]
    owner = sign_in_from(proxy, OWNER, "victim", PASSWORD)
    assert owner.status_code == 302, owner.text[:300]
    assert owner.headers["location"] == "/"


def test_behind_the_proxy_the_guessing_address_stays_locked(
    proxy: DaphneServer, transactional_db: None
) -> None:
    """The address that guessed is locked for that username on both login pages, also when the
    client writes hops of its own before the one the proxy appends."""
    get_user_model().objects.create_superuser(username="victim", password=PASSWORD)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in_from(proxy, ATTACKER, "victim", "wrong")
    for address, path in [
        (ATTACKER, "/login/"),
        (ATTACKER, "/admin/login/"),
        (f"{OWNER}, {ATTACKER}", "/login/"),
    ]:
        refused = sign_in_from(proxy, address, "victim", PASSWORD, path=path)
        assert refused.status_code == 429, (address, path)
        assert "Too many failed sign-ins for this username" in refused.text


def test_behind_the_proxy_one_address_cannot_try_many_usernames(
    proxy: DaphneServer, transactional_db: None
) -> None:
    """Failed logins from one client address, whatever the usernames and on either login page,
    are capped too: past the cap that address is refused for every username, while other
    addresses sign in. No username reaches its own limit here."""
    get_user_model().objects.create_superuser(username="root", password=PASSWORD)
    paths = ("/login/", "/admin/login/")
    tries = [
        sign_in_from(proxy, ATTACKER, f"user{i}", "wrong", path=paths[i % 2]).status_code
        for i in range(ADDRESS_LIMIT)
    ]
    assert tries == [200] * ADDRESS_LIMIT
    for path, form in [("/login/", '<form method="post"'), ("/admin/login/", 'id="login-form"')]:
        refused = sign_in_from(proxy, ATTACKER, "root", PASSWORD, path=path)
        assert refused.status_code == 429, path
        assert "Too many failed sign-ins from your address" in refused.text
        assert form in refused.text  # the login page it came from
    assert sign_in_from(proxy, OWNER, "root", PASSWORD, path="/admin/login/").status_code == 302


def test_without_the_proxy_x_forwarded_for_is_not_trusted(server: DaphneServer, user: Any) -> None:
    """Anyone can write ``X-Forwarded-For``: without the proxy a lock stays on REMOTE_ADDR."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        client.headers["X-Forwarded-For"] = ATTACKER
        for _ in range(settings.AXES_FAILURE_LIMIT):
            sign_in(client, "/login/", "ada", "wrong")
        client.headers["X-Forwarded-For"] = OWNER
        assert sign_in(client, "/login/", "ada", PASSWORD).status_code == 429
