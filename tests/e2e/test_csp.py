"""The app in Chromium under its Content Security Policy: the chat streams, the widget answers
in its host page's frame, the admin works, and the browser reports no violation. Each test ends
with a control, an inline script and an inline style put in on purpose: the browser must refuse
both and report them, so a run that saw no violation had a listener that would have seen one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import BrowserContext, ConsoleMessage, Frame, Page, expect

from chat.models import Widget
from tests.e2e.test_chat import sign_in
from tests.e2e.test_widget import HostSite, embed, open_panel

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CSP = "Content Security Policy"
# Put into a page on purpose: the policy must refuse both, and the browser report both.
CONTROL = """() => {
  const script = document.createElement("script");
  script.textContent = "window.cspControlRan = true";
  document.head.append(script);
  document.body.setAttribute("style", "outline: 1px solid red");
  return window.cspControlRan === true || getComputedStyle(document.body).outlineWidth === "1px";
}"""


class Violations:
    """CSP violations seen since it was made: in the browser's console (every frame of the
    page) and in the server's log (what the browser sent to /csp-report/)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.console: list[str] = []
        self.logged_before = len(self._logged())

    def watch(self, page: Page) -> Page:
        page.on("console", self._on_console)
        return page

    def _on_console(self, message: ConsoleMessage) -> None:
        if CSP in message.text:
            self.console.append(message.text)

    def _logged(self) -> list[str]:
        return [line for line in self.server.log_text().splitlines() if "CSP violation" in line]

    def reported(self) -> list[str]:
        return self._logged()[self.logged_before :]

    def assert_none(self) -> None:
        assert self.console == [], self.console
        assert self.reported() == [], self.reported()

    def assert_control_refused(self, target: Page | Frame) -> None:
        """The control in ``target``: refused, said in the console, reported to the server, and
        nothing else reported before it (reports are sent in order)."""
        assert target.evaluate(CONTROL) is False
        deadline = time.monotonic() + 10
        while len(self.reported()) < 2 or len(self.console) < 2:
            assert time.monotonic() < deadline, (self.console, self.reported())
            time.sleep(0.05)
        assert [text for text in self.console if "inline script" in text], self.console
        assert [text for text in self.console if "inline style" in text], self.console
        directives = sorted(line.split("CSP violation: ")[1].split()[0] for line in self.reported())
        assert directives == ["script-src-elem", "style-src-attr"], self.reported()


def test_the_chat_works_under_the_policy(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=50, tokens_per_s=100, length=30)
    violations = Violations(server)
    page = violations.watch(browser_context.new_page())
    sign_in(page, server.base_url)  # the login page, then the chat

    page.get_by_role("textbox", name="Message").fill("Tell me something")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.message.assistant").last
    expect(answer.locator(".typing-cursor")).to_be_visible()  # it streams
    expect(answer).to_have_attribute("data-status", "complete")
    assert len(answer.locator(".content").inner_text().split()) == 30
    # The new conversation joins the sidebar (an htmx refresh), marked as the open one.
    sidebar = page.get_by_role("navigation", name="Conversations")
    expect(sidebar.get_by_role("link", name="Tell me something")).to_have_attribute(
        "aria-current", "page"
    )

    # A reload hydrates the stored answer; the sidebar's search is an htmx swap.
    page.reload()
    expect(page.locator("#chat")).to_have_attribute("data-ready", "true")
    expect(page.locator("article.message.assistant .content")).to_have_text(
        answer.locator(".content").inner_text()
    )
    # Its requests carry the search and the open conversation (chat.js, not hx-vals' "js:").
    nav = page.get_by_role("navigation", name="Conversations")
    link = nav.get_by_role("link", name="Tell me something")
    nav.get_by_role("searchbox").fill("nothing like it")
    expect(link).to_have_count(0)
    nav.get_by_role("searchbox").fill("Tell")
    expect(link).to_have_attribute("aria-current", "page")
    page.goto(server.base_url + "/settings/keys/")
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()

    violations.assert_none()
    page.goto(server.base_url + "/")
    violations.assert_control_refused(page)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostSite]:
    (tmp_path / "host").mkdir()
    site = HostSite(tmp_path / "host")
    yield site
    site.server.shutdown()
    site.server.server_close()


def test_the_widget_works_under_the_policy(
    browser_context: BrowserContext, server, slot, sim, host
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=100, length=12)
    widget = Widget.objects.create(
        name="Docs", slot=slot, allowed_origins=host.origin, accent_color="#ff0000"
    )
    violations = Violations(server)
    page = violations.watch(browser_context.new_page())
    page.goto(embed(host, server, widget))
    frame = open_panel(page)
    frame.get_by_role("textbox", name="Message").fill("How do I install it?")
    frame.get_by_role("button", name="Send").click()
    answer = frame.locator("article.message.assistant:not(.greeting)").last
    expect(answer).to_have_attribute("data-status", "complete")
    # The accent colour, set through the CSSOM now that the page has no inline style.
    expect(frame.locator(".widget-head")).to_have_css("background-color", "rgb(255, 0, 0)")

    violations.assert_none()
    widget_frame = next(f for f in page.frames if f.url.startswith(server.base_url + "/widget/"))
    violations.assert_control_refused(widget_frame)


def test_the_admin_works_under_the_policy(
    browser_context: BrowserContext, server, slot, sim
) -> None:
    get_user_model().objects.create_superuser(username="root", password="correct horse 42")
    widget = Widget.objects.create(name="Docs", slot=slot, allowed_origins="https://example.com")
    violations = Violations(server)
    page = violations.watch(browser_context.new_page())
    page.goto(server.base_url + "/admin/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("correct horse 42")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Administration", exact=True)).to_be_visible()

    # The backend with its slots: the live state badges (slot_state.js) and the inline forms.
    page.goto(f"{server.base_url}/admin/chat/backend/{slot.backend_id}/change/")
    expect(page.locator(".slot-state").first).to_be_visible()
    # A widget, with its snippet; the admin's own scripts (theme toggle, the popup links).
    page.goto(f"{server.base_url}/admin/chat/widget/{widget.pk}/change/")
    expect(page.get_by_text("A launcher button (recommended):")).to_be_visible()
    theme = page.evaluate("document.documentElement.dataset.theme || 'auto'")
    page.locator("button.theme-toggle").first.click()
    assert page.evaluate("document.documentElement.dataset.theme") != theme
    page.goto(f"{server.base_url}/admin/chat/conversation/")
    expect(page.locator("#changelist")).to_be_visible()

    violations.assert_none()
    violations.assert_control_refused(page)
