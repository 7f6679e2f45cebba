"""The audit log (issue 19): who changed backends, slots, keys and group membership, and when.
Admin changes are logged by Django's admin itself; API keys made or revoked on the keys page
are logged by the app. Staff read it in the admin, which offers no way to change it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from django.contrib.admin.models import ADDITION, CHANGE
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from chat.models import ApiKey, AuditEntry, Backend
from tests.conftest import backend_form, session_client
from tests.support.daphne_server import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_session(server: DaphneServer, transactional_db: None) -> Iterator[httpx.Client]:
    root = get_user_model().objects.create_superuser(username="root", password="x" * 20)
    client = session_client(server, root)
    yield client
    client.close()


def test_keys_made_and_revoked_on_the_keys_page_are_logged(browser_session, user) -> None:
    made = browser_session.post("/settings/keys/", data={"name": "laptop"})
    assert made.status_code == 302
    key = ApiKey.objects.get(name="laptop")
    revoked = browser_session.post(f"/settings/keys/{key.pk}/revoke/")
    assert revoked.status_code == 302
    entries = list(AuditEntry.objects.filter(object_id=str(key.pk)).order_by("pk"))
    assert [(e.user, e.action_flag, e.change_message) for e in entries] == [
        (user, ADDITION, "Created on the API keys page"),
        (user, CHANGE, "Revoked"),
    ]
    content_type = entries[0].content_type
    assert content_type is not None
    assert content_type.model_class() is ApiKey
    assert "laptop" in entries[0].object_repr
    # Revoking again changes nothing, and logs nothing.
    assert browser_session.post(f"/settings/keys/{key.pk}/revoke/").status_code == 404
    assert AuditEntry.objects.filter(object_id=str(key.pk)).count() == 2


def test_admin_changes_show_in_the_audit_log(admin_session) -> None:
    page = admin_session.get("/admin/chat/backend/add/")
    assert page.status_code == 200
    added = admin_session.post(
        "/admin/chat/backend/add/", data=backend_form(name="audited", api_key="")
    )
    assert added.status_code == 302, added.text[:500]
    backend = Backend.objects.get(name="audited")
    staff = get_user_model().objects.create_user("member", password="y" * 20)
    team = Group.objects.create(name="team")
    moved = admin_session.post(
        f"/admin/auth/user/{staff.pk}/change/",
        data={
            "username": "member",
            "is_active": "on",
            "groups": [str(team.pk)],
            "date_joined_0": "2026-11-26",
            "date_joined_1": "12:00:00",
            "initial-date_joined_0": "2026-11-26",
            "initial-date_joined_1": "12:00:00",
        },
    )
    assert moved.status_code == 302, moved.text[:500]
    log = admin_session.get("/admin/chat/auditentry/")
    assert log.status_code == 200
    assert "audited" in log.text
    assert "member" in log.text
    assert AuditEntry.objects.filter(object_id=str(backend.pk), action_flag=ADDITION).exists()
    groups_change = AuditEntry.objects.get(object_id=str(staff.pk), action_flag=CHANGE)
    assert "Groups" in groups_change.get_change_message()


def test_the_audit_log_cannot_be_changed_or_read_without_permission(
    admin_session, server, transactional_db
) -> None:
    assert admin_session.get("/admin/chat/auditentry/add/").status_code == 403
    staff = get_user_model().objects.create_user("helper", password="z" * 20, is_staff=True)
    helper = session_client(server, staff)
    try:
        assert helper.get("/admin/chat/auditentry/").status_code == 403
    finally:
        helper.close()
