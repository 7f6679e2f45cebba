"""MCP servers in the admin (issue 31): the secret encrypted at rest and write-only, as a
backend's API key; the URL policy applied when staff save a server and again when it is
reached; "Refresh tool list" against a real stdio server (mcp-server-time), keeping staff's
policies; tool descriptions shown as text, never HTML."""

from __future__ import annotations

import io
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings

from chat.models import McpServer, McpTool
from chat.tools import catalog
from tests.support.mcp_servers import EverythingServer, stdio_servers_setting

pytestmark = pytest.mark.django_db

SECRET = "mcp-admin-secret-91b2c7"
ADD = "/admin/chat/mcpserver/add/"
LIST = "/admin/chat/mcpserver/"


@pytest.fixture
def staff_client() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", password="r" * 20))
    return client


def server_form(**fields: Any) -> dict[str, Any]:
    """The server admin's add form as a browser posts it, with its (empty) tools inline."""
    return {
        "label": "everything",
        "transport": "http",
        "url": "https://93.184.215.14/mcp",
        "headers": "{}",
        "secret": "",
        "enabled": "on",
        "timeout_s": "30",
        "tools-TOTAL_FORMS": "0",
        "tools-INITIAL_FORMS": "0",
        "tools-MIN_NUM_FORMS": "0",
        "tools-MAX_NUM_FORMS": "1000",
        **fields,
    }


def refresh(client: Client, server: McpServer) -> str:
    page = client.post(
        LIST, {"action": "refresh_tools", "_selected_action": [server.pk]}, follow=True
    )
    assert page.status_code == 200
    return page.content.decode()


def test_secret_is_encrypted_and_write_only(staff_client: Client) -> None:
    added = staff_client.post(ADD, server_form(secret=SECRET))
    assert added.status_code == 302, added.content.decode()
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret_encrypted FROM chat_mcpserver")
        (stored,) = cursor.fetchone()
    assert stored
    assert SECRET not in stored
    server = McpServer.objects.get()
    assert server.spec().secret == SECRET

    page = staff_client.get(f"{LIST}{server.pk}/change/").content.decode()
    assert SECRET not in page
    assert "Currently set" in page
    assert SECRET not in staff_client.get(LIST).content.decode()

    kept = staff_client.post(f"{LIST}{server.pk}/change/", server_form())
    assert kept.status_code == 302
    server.refresh_from_db()
    assert server.spec().secret == SECRET
    cleared = staff_client.post(f"{LIST}{server.pk}/change/", server_form(clear_secret="on"))
    assert cleared.status_code == 302
    server.refresh_from_db()
    assert not server.has_secret


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:8310/mcp",
        "http://2130706433/mcp",
        "http://localhost:8310/mcp",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
    ],
)
def test_ssrf_urls_are_refused_at_save(staff_client: Client, url: str) -> None:
    page = staff_client.post(ADD, server_form(url=url))
    assert page.status_code == 200
    assert "Refused:" in page.content.decode()
    assert not McpServer.objects.exists()


def test_a_listed_host_may_be_saved(staff_client: Client, settings: Any) -> None:
    settings.SLIPSTREAM_MCP_ALLOW_HOSTS = ["localhost"]
    added = staff_client.post(ADD, server_form(url="http://localhost:8310/mcp"))
    assert added.status_code == 302, added.content.decode()


def test_credentials_go_in_the_secret_not_the_headers(staff_client: Client) -> None:
    page = staff_client.post(ADD, server_form(headers='{"Authorization": "Bearer x"}'))
    assert "Credentials go in the secret" in page.content.decode()
    page = staff_client.post(ADD, server_form(transport="stdio"))
    assert "A stdio server has no URL" in page.content.decode()
    assert not McpServer.objects.exists()


def test_refresh_lists_a_stdio_servers_tools_and_keeps_policies(
    staff_client: Client, settings: Any
) -> None:
    settings.SLIPSTREAM_MCP_STDIO_SERVERS = stdio_servers_setting()
    server = McpServer.objects.create(label="time", transport="stdio")
    page = refresh(staff_client, server)
    assert "Tool list of time: 2 new, 0 listed again, 0 gone." in page
    tools = {t.name: t for t in McpTool.objects.filter(server=server)}
    assert set(tools) == {"get_current_time", "convert_time"}
    assert all(t.policy == McpTool.Policy.ASK for t in tools.values())
    assert tools["convert_time"].input_schema["type"] == "object"

    # Staff allow one tool (through the inline); a tool the server no longer lists is kept.
    current = tools["get_current_time"]
    other = tools["convert_time"]
    change = staff_client.post(
        f"{LIST}{server.pk}/change/",
        server_form(
            label="time",
            transport="stdio",
            url="",
            **{
                "tools-TOTAL_FORMS": "2",
                "tools-INITIAL_FORMS": "2",
                "tools-0-id": current.pk,
                "tools-0-server": server.pk,
                "tools-0-policy": "allowed",
                "tools-1-id": other.pk,
                "tools-1-server": server.pk,
                "tools-1-policy": "off",
            },
        ),
    )
    assert change.status_code == 302, change.content.decode()
    McpTool.objects.create(server=server, name="retired", policy=McpTool.Policy.ALLOWED)

    page = refresh(staff_client, server)
    assert "Tool list of time: 0 new, 2 listed again, 1 gone." in page
    policies = {t.name: (t.policy, t.gone) for t in McpTool.objects.filter(server=server)}
    assert policies == {
        "get_current_time": ("allowed", False),
        "convert_time": ("off", False),
        "retired": ("allowed", True),
    }
    server.refresh_from_db()
    assert server.tools_fetched_at is not None
    assert server.last_error == ""


def test_refresh_of_an_unconfigured_stdio_server_says_so(
    staff_client: Client, settings: Any
) -> None:
    settings.SLIPSTREAM_MCP_STDIO_SERVERS = stdio_servers_setting()
    server = McpServer.objects.create(label="fetch", transport="stdio")
    page = refresh(staff_client, server)
    assert "is not configured in SLIPSTREAM_MCP_STDIO_SERVERS" in page
    server.refresh_from_db()
    assert "not configured" in server.last_error


def test_the_url_is_checked_again_when_the_server_is_reached(
    staff_client: Client, settings: Any
) -> None:
    settings.SLIPSTREAM_MCP_ALLOW_HOSTS = ["127.0.0.1"]
    with EverythingServer() as everything:
        added = staff_client.post(ADD, server_form(url=everything.url, secret=SECRET))
        assert added.status_code == 302, added.content.decode()
        server = McpServer.objects.get()
        page = refresh(staff_client, server)
        assert "Tool list of everything: " in page
        assert " new, 0 listed again, 0 gone." in page
        listed = McpTool.objects.filter(server=server).count()
        assert listed >= 10

        # The operator takes loopback off the list: the saved server is refused at once.
        settings.SLIPSTREAM_MCP_ALLOW_HOSTS = []
        page = refresh(staff_client, server)
    assert "refused to connect: the host 127.0.0.1 is not a public address (loopback)" in page
    assert SECRET not in page
    server.refresh_from_db()
    assert "refused to connect" in server.last_error
    assert McpTool.objects.filter(server=server, gone=False).count() == listed
    assert "refused to connect" in staff_client.get(f"{LIST}{server.pk}/change/").content.decode()


def test_tool_descriptions_are_shown_as_text(staff_client: Client) -> None:
    server = McpServer.objects.create(label="hostile", url="https://93.184.215.14/mcp")
    McpTool.objects.create(
        server=server, name="steal", description='<script>alert("x")</script><b>bold</b>'
    )
    page = staff_client.get(f"{LIST}{server.pk}/change/").content.decode()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>alert" not in page
    assert "<b>bold</b>" not in page


def test_rotating_the_encryption_key_keeps_mcp_secrets_readable() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[old]):
        server = McpServer(label="s", url="https://93.184.215.14/mcp")
        server.set_secret(SECRET)
        server.save()
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[new, old]):
        out = io.StringIO()
        call_command("rotate_encryption_key", stdout=out)
    assert "Re-encrypted 1 MCP server secret(s)." in out.getvalue()
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[new]):
        server.refresh_from_db()
        assert server.spec().secret == SECRET
        assert SECRET not in repr(server.spec())


def test_servers_and_tools_are_offered_by_group_and_policy() -> None:
    team = Group.objects.create(name="infra")
    member = get_user_model().objects.create_user("ada", password="a" * 20)
    member.groups.add(team)
    outsider = get_user_model().objects.create_user("eve", password="e" * 20)
    everyone = McpServer.objects.create(label="open", url="https://93.184.215.14/mcp")
    limited = McpServer.objects.create(label="infra", url="https://93.184.215.14/mcp")
    limited.groups.add(team)
    McpServer.objects.create(label="off", url="https://93.184.215.14/mcp", enabled=False)
    for server in (everyone, limited):
        McpTool.objects.create(server=server, name="asked")
        McpTool.objects.create(server=server, name="allowed", policy=McpTool.Policy.ALLOWED)
        McpTool.objects.create(server=server, name="off", policy=McpTool.Policy.OFF)
        McpTool.objects.create(server=server, name="gone", gone=True)

    def offered(user: Any) -> list[str]:
        return [str(t) for t in catalog.tool_list_usable(user=user)]

    assert [s.label for s in catalog.server_list_usable(user=member)] == ["infra", "open"]
    assert [s.label for s in catalog.server_list_usable(user=outsider)] == ["open"]
    assert [s.label for s in catalog.server_list_usable(user=AnonymousUser())] == ["open"]
    assert offered(member) == ["infra.allowed", "infra.asked", "open.allowed", "open.asked"]
    assert offered(outsider) == ["open.allowed", "open.asked"]
