"""Secrets in the admin (issue 16): a backend's API key encrypted at rest and write-only in its
form, yet sent upstream as ``Authorization: Bearer <key>``; a new /v1 key shown once on the page
that created it, never in a cookie."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from chat.models import ApiKey, Backend, Slot
from tests.conftest import backend_form, session_client
from tests.support.daphne_server import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "sk-upstream-7c1d0f2e9ab34c55"


@pytest.fixture
def admin_session(server: DaphneServer, transactional_db: None) -> Iterator[httpx.Client]:
    root = get_user_model().objects.create_superuser(username="root", password="x" * 20)
    client = session_client(server, root)
    yield client
    client.close()


def stored_key_column() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key_encrypted FROM chat_backend")
        rows = cursor.fetchall()
    assert len(rows) == 1
    return str(rows[0][0])


def test_backend_key_is_encrypted_and_write_only(admin_session: httpx.Client) -> None:
    added = admin_session.post("/admin/chat/backend/add/", data=backend_form(api_key=SECRET))
    assert added.status_code == 302, added.text
    stored = stored_key_column()
    assert stored
    assert SECRET not in stored
    backend = Backend.objects.get()
    assert backend.config().api_key == SECRET

    page = admin_session.get(f"/admin/chat/backend/{backend.pk}/change/")
    assert page.status_code == 200
    assert SECRET not in page.text
    assert "Currently set" in page.text
    assert SECRET not in admin_session.get("/admin/chat/backend/").text

    # Saved with the key field empty: the key is kept.
    kept = admin_session.post(f"/admin/chat/backend/{backend.pk}/change/", data=backend_form())
    assert kept.status_code == 302, kept.text
    assert Backend.objects.get().config().api_key == SECRET
    # A new value replaces it.
    admin_session.post(
        f"/admin/chat/backend/{backend.pk}/change/", data=backend_form(api_key="sk-new")
    )
    assert Backend.objects.get().config().api_key == "sk-new"


class RecordingUpstream(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible upstream that records each request's headers."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.answer({"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(dict(self.headers))
        message = {"role": "assistant", "content": "ok"}
        self.answer(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    def answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recording_upstream() -> Iterator[str]:
    RecordingUpstream.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RecordingUpstream)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def recorded_backend(upstream: str) -> Backend:
    """A backend at ``upstream`` with the key ``SECRET``, and a slot ``recorded`` on it."""
    backend = Backend(name="recorded", base_url=upstream)
    backend.set_api_key(SECRET)
    backend.save()
    Slot.objects.create(name="recorded", backend=backend, upstream_model="m", is_default=True)
    return backend


def authorization_sent_upstream(server: DaphneServer, api_key: str) -> str:
    """The ``Authorization`` the recording upstream got for one /v1 call on ``recorded``."""
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": "recorded", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(RecordingUpstream.seen[-1]["Authorization"])


def test_relay_sends_the_decrypted_key(
    server: DaphneServer, recording_upstream: str, api_key: str
) -> None:
    recorded_backend(recording_upstream)
    assert authorization_sent_upstream(server, api_key) == f"Bearer {SECRET}"


def test_a_changed_backend_key_is_sent_on_the_next_call(
    server: DaphneServer, recording_upstream: str, api_key: str
) -> None:
    """The slot's config (with its backend's key decrypted) is kept between /v1 calls
    (chat.api.common.cached_slot_config), and made anew once the backend changes."""
    backend = recorded_backend(recording_upstream)
    first = authorization_sent_upstream(server, api_key)
    assert first == authorization_sent_upstream(server, api_key) == f"Bearer {SECRET}"
    backend.set_api_key("sk-rotated-upstream-key")
    backend.save()
    assert authorization_sent_upstream(server, api_key) == "Bearer sk-rotated-upstream-key"


def test_new_api_key_is_shown_once_never_in_a_cookie(
    admin_session: httpx.Client, user: Any
) -> None:
    created = admin_session.post(
        "/admin/chat/apikey/add/", data={"user": str(user.pk), "name": "ci", "revoked_at": ""}
    )
    assert created.status_code == 200, created.text
    key = ApiKey.objects.get(name="ci")
    start = created.text.index('<pre id="new-api-key">') + len('<pre id="new-api-key">')
    raw = created.text[start : created.text.index("</pre>", start)]
    assert raw.startswith(key.prefix)
    assert created.text.count(raw) == 1
    assert "no-store" in created.headers["Cache-Control"]
    # Django's messages cookie (where the key went before) is signed and zlib-compressed, so
    # the key would not show in it as text: no such cookie may be set at all.
    assert "messages" not in created.cookies
    for header in created.headers.get_list("set-cookie"):
        assert raw not in header
    assert all(raw not in value for value in admin_session.cookies.values())
    # The key works, and no later page shows it again.
    models = httpx.get(
        admin_session.base_url.join("/v1/models"), headers={"Authorization": f"Bearer {raw}"}
    )
    assert models.status_code == 200
    assert raw not in admin_session.get("/admin/chat/apikey/").text
    assert raw not in admin_session.get(f"/admin/chat/apikey/{key.pk}/change/").text
