"""Accessibility (issue 17): axe-core (pinned in tests/js/package.json) finds no serious or
critical WCAG 2 A/AA violation on the pages people use, on a wide screen and on a phone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from playwright.sync_api import BrowserContext, Frame, Page, expect

from chat import services
from chat.models import Conversation
from tests.e2e.test_chat import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parents[1] / "js" / "node_modules" / "axe-core" / "axe.min.js"


def violations(page: Page | Frame) -> list[dict[str, Any]]:
    """axe-core's serious and critical WCAG 2 A/AA violations on ``page``, as
    ``{"id", "impact", "nodes": [html, …]}``. The script is evaluated through the DevTools
    protocol, which the pages' Content-Security-Policy does not govern."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make test` installs tests/js's packages")
    page.evaluate(AXE.read_text() + "\n;0")
    found: list[dict[str, Any]] = page.evaluate(
        """async () => {
          const result = await axe.run(document, {
            runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
          });
          return result.violations
            .filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => ({ id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.html) }));
        }"""
    )
    return found


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("viewport", [(1280, 800), (390, 844)], ids=["wide", "phone"])
def test_the_chat_and_its_pages_pass_axe(
    browser_context: BrowserContext,
    server,
    slot,
    sim,
    user,
    viewport: tuple[int, int],
    theme: Literal["light", "dark"],
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=12)
    page = browser_context.new_page()
    page.emulate_media(color_scheme=theme)
    page.goto(server.base_url + "/login/")
    assert violations(page) == []
    sign_in(page, server.base_url)
    page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
    assert violations(page) == []  # the empty chat, with its examples
    page.get_by_role("textbox", name="Message").fill("Hello there")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("article.message.assistant").last).to_have_attribute(
        "data-status", "complete"
    )
    assert violations(page) == []
    conversation = Conversation.objects.get()
    services.conversation_share(conversation=conversation, shared=True)
    shared = f"/s/{conversation.share_id}/"
    usage = ("/settings/usage/", "/settings/usage/?hours=48")
    for path in ("/settings/keys/", *usage, "/settings/prompts/", shared):
        page.goto(server.base_url + path)
        assert violations(page) == [], path
