"""The pages around the chat, as a new user meets them in Chromium: a new API key is shown
once with a Copy button and a reload makes no second key; no page asks for anything that is
not there, and the admin says Slipstream. (Headless Chromium asks for no favicon: that every
page names one, and that /favicon.ico answers, is tests/integration/test_serve.py's.)"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Response, expect

from chat.models import ApiKey
from tests.e2e.test_chat import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_new_key_is_shown_once_with_copy_and_a_reload_makes_no_other(
    browser_context: BrowserContext, server, slot, user
) -> None:
    browser_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.goto(server.base_url + "/settings/keys/")
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("textbox", name="New API key")
    expect(shown).to_be_visible()
    raw = shown.input_value()
    assert raw.startswith("sk-slip-")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == raw

    page.reload()
    expect(page.get_by_role("cell", name="laptop")).to_be_visible()
    expect(page.get_by_role("textbox", name="New API key")).to_have_count(0)
    assert ApiKey.objects.count() == 1


def test_no_page_asks_for_what_is_not_there(
    browser_context: BrowserContext, server, slot, user: Any
) -> None:
    user.is_staff = user.is_superuser = True
    user.save()
    missing: list[str] = []

    def on_response(response: Response) -> None:
        if response.status == 404:
            missing.append(response.url)

    page = browser_context.new_page()
    page.on("response", on_response)
    sign_in(page, server.base_url)
    for path in ("/settings/keys/", "/settings/usage/", "/admin/", "/admin/chat/slot/"):
        page.goto(server.base_url + path)
        expect(page.locator("body")).not_to_be_empty()
    expect(page).to_have_title("Select slot to change | Slipstream admin")
    expect(page.locator("#site-name")).to_have_text("Slipstream")
    assert missing == []
