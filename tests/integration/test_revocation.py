"""A key revoked in one process is refused by another on its next call (issue 16, finding 8),
also with the default cache, private to each process (locmem): two daphne processes here, the
key revoked through one's "API keys" page, then used on the other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chat.models import ApiKey
from tests.conftest import server_env, session_client
from tests.support.daphne_server import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def private_cache_pair(django_db_setup: None, django_db_blocker: Any) -> Iterator[tuple[Any, Any]]:
    """Two processes on the test database, each with its own in-memory cache, as a deployment
    without REDIS_URL has."""
    with django_db_blocker.unblock():
        env = {**server_env(), "CACHE_URL": "locmemcache://"}
    with DaphneServer(env=env) as first, DaphneServer(env=env) as second:
        yield first, second


def test_revoked_elsewhere_refused_on_the_next_call(
    private_cache_pair: tuple[DaphneServer, DaphneServer], user: Any, api_key: str
) -> None:
    api, admin = private_cache_pair
    bearer = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=api.base_url, headers=bearer, timeout=30) as client:
        # Twice: the second call is answered from the process's cached lookup.
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/models").status_code == 200
        key = ApiKey.objects.get(user=user)
        browser = session_client(admin, user)
        try:
            revoked = browser.post(f"/settings/keys/{key.pk}/revoke/")
        finally:
            browser.close()
        assert revoked.status_code == 302, revoked.text
        key.refresh_from_db()
        assert key.revoked_at is not None
        refused = client.get("/v1/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
