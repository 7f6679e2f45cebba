"""Login throttling (django-axes, issue 16 finding 3): after N wrong passwords for one username
from one address, even the right password is refused with a message, on the app's login and the
admin's; another username from the same address still signs in."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from tests.conftest import session_client
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
