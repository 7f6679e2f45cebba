"""The admin as staff use it (issue 17): stop strings edited as lines, not JSON (a newline
inside one written \\n), and measurements shown in readable units, not raw floats."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from chat.models import ApiCall, Backend, Slot
from chat.services import api_key_create
from tests.conftest import backend_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", password="r" * 20))
    return client


def slot_form(backend: Backend, **fields: Any) -> dict[str, Any]:
    """The slot admin's add form as a browser posts it."""
    return {
        "name": "writer",
        "display_name": "",
        "backend": backend.pk,
        "upstream_model": "m",
        "system_prompt": "",
        "temperature": "",
        "max_tokens": "",
        "stop": "",
        "max_concurrency": "8",
        "queue_timeout_s": "30",
        "cold_boot_timeout_s": "120",
        "max_retries": "2",
        "single_flight": "off",
        "fallback": "",
        "is_default": "",
        "enabled": "on",
        "image_max_side": "1568",
        "document_tokens": "8000",
        "media_urls": "public",
        "hosted_tools": "omit",
        **fields,
    }


def test_stop_strings_are_lines_with_escapes(staff_client: Client) -> None:
    backend = Backend.objects.create(name="b", base_url="http://127.0.0.1:9/v1")
    # What a browser's textarea sends: CRLF line ends, a blank line, a backslash kept as is.
    typed = "\\n\\n\r\nEND\r\n\r\nC:\\\\path\r\n"
    response = staff_client.post("/admin/chat/slot/add/", slot_form(backend, stop=typed))
    assert response.status_code == 302, response.content.decode()[:2000]
    slot = Slot.objects.get(name="writer")
    assert slot.stop == ["\n\n", "END", "C:\\path"]

    page = staff_client.get(f"/admin/chat/slot/{slot.pk}/change/").content.decode()
    assert "Queue timeout (s)" in page
    assert "\\n\\n\nEND\nC:\\\\path</textarea>" in page  # shown as typed, ready to edit again
    resaved = staff_client.post(
        f"/admin/chat/slot/{slot.pk}/change/", slot_form(backend, stop="\\n\\n\nEND\nC:\\\\path")
    )
    assert resaved.status_code == 302
    slot.refresh_from_db()
    assert slot.stop == ["\n\n", "END", "C:\\path"]


def test_calls_show_durations_in_readable_units(staff_client: Client) -> None:
    user = get_user_model().objects.create_user("ada")
    key, _ = api_key_create(user=user, name="k")
    ApiCall.objects.create(
        api_key=key,
        endpoint="chat/completions",
        slot_name="primary",
        http_status=200,
        outcome="complete",
        ttft_ms=1326.6995039999756,
        duration_ms=48.25,
    )
    page = staff_client.get("/admin/chat/apicall/").content.decode()
    assert "1.3 s" in page
    assert "48 ms" in page
    assert "1326.69" not in page


def test_a_new_base_url_forgets_the_detected_responses_api(staff_client: Client) -> None:
    """What "auto" found out belongs to the server it asked: another base URL detects again,
    any other change keeps it."""
    backend = Backend.objects.create(
        name="upstream", base_url="http://127.0.0.1:9/v1", responses_api_detected=False
    )
    url = f"/admin/chat/backend/{backend.pk}/change/"
    kept = staff_client.post(url, backend_form(read_timeout_s="60"))
    assert kept.status_code == 302, kept.content.decode()[:2000]
    backend.refresh_from_db()
    assert (backend.read_timeout_s, backend.responses_api_detected) == (60, False)

    moved = staff_client.post(url, backend_form(base_url="http://127.0.0.1:10/v1"))
    assert moved.status_code == 302, moved.content.decode()[:2000]
    backend.refresh_from_db()
    assert backend.base_url == "http://127.0.0.1:10/v1"
    assert backend.responses_api_detected is None
