"""The embeddable widget in Chromium: a host page on a second loopback origin embeds it with the
script tag; framing is refused elsewhere; visitors are kept apart; limits and switching off are
said plainly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from playwright.sync_api import Browser, FrameLocator, Page, expect

from chat.models import Attachment, Conversation, Widget
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class HostSite:
    """A static site on its own origin (``http://localhost:PORT``) whose page embeds a widget."""

    def __init__(self, root: Path) -> None:
        handler = partial(_QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://localhost:{self.server.server_address[1]}"
        self.root = root
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self, name: str, body: str) -> str:
        (self.root / name).write_text(f"<!doctype html><title>Host</title><h1>Docs</h1>{body}")
        return f"{self.origin}/{name}"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostSite]:
    site = HostSite(tmp_path)
    yield site
    site.server.shutdown()
    site.server.server_close()


@pytest.fixture
def other_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostSite]:
    site = HostSite(tmp_path_factory.mktemp("other"))
    yield site
    site.server.shutdown()
    site.server.server_close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A Chromium with room for several visitors (one context each)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()


def make_widget(slot, host: HostSite, **fields: Any) -> Widget:
    return Widget.objects.create(
        name="Docs", slot=slot, allowed_origins=host.origin, greeting="Hi! Ask me.", **fields
    )


def embed(host: HostSite, server, widget: Widget) -> str:
    src = f"{server.base_url}/widget/{widget.public_key}/embed.js"
    return host.page("index.html", f'<script src="{src}" async></script>')


def open_panel(page: Page) -> FrameLocator:
    page.get_by_role("button", name=Widget._meta.get_field("title").default).click()
    frame = page.frame_locator("iframe[data-slipstream-panel]")
    expect(frame.locator("#widget")).to_have_attribute("data-ready", "true")
    return frame


def ask(frame: FrameLocator, text: str) -> None:
    frame.get_by_role("textbox", name="Message").fill(text)
    frame.get_by_role("button", name="Send").click()


def test_embed_chat_and_come_back(browser: Browser, server, slot, sim, host) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=50, length=12)
    widget = make_widget(slot, host)
    url = embed(host, server, widget)
    page = browser.new_context().new_page()
    page.goto(url)
    frame = open_panel(page)
    greeting = frame.locator("article.greeting .content")
    expect(greeting).to_have_text("Hi! Ask me.")
    expect(greeting).to_be_visible()  # the text was in the page, hidden by the chat's CSS
    ask(frame, "How do I install it?")
    answer = frame.locator("article.message.assistant:not(.greeting)").last
    expect(answer).to_have_attribute("data-status", "complete")
    text = answer.locator(".content").inner_text()
    assert len(text.split()) == 12

    page.reload()
    frame = open_panel(page)
    expect(frame.locator("article.message.user .content")).to_have_text("How do I install it?")
    expect(frame.locator("article.message.assistant:not(.greeting) .content")).to_have_text(text)
    conversation = Conversation.objects.get()
    assert conversation.widget == widget
    assert conversation.user is None
    # It continues the same conversation.
    ask(frame, "And then?")
    expect(frame.locator("article.message.assistant:not(.greeting)").last).to_have_attribute(
        "data-status", "complete"
    )
    assert Conversation.objects.count() == 1
    assert conversation.messages.count() == 4


def test_closing_the_panel_cancels_the_answer(browser: Browser, server, slot, sim, host) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    widget = make_widget(slot, host)
    page = browser.new_context().new_page()
    page.goto(embed(host, server, widget))
    frame = open_panel(page)
    ask(frame, "Tell me everything")
    expect(frame.locator("article.message.assistant:not(.greeting) .content")).to_contain_text(" ")
    sim.wait_for(lambda s: s["streams_started"] == 1, timeout_s=5)
    page.get_by_role("button", name="Ask us").click()  # close
    expect(page.locator("iframe[data-slipstream-panel]")).to_have_count(0)
    sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=2)


def test_an_origin_not_on_the_list_cannot_frame_or_call_it(
    browser: Browser, server, slot, sim, host, other_host
) -> None:
    widget = make_widget(slot, host)
    page_url = f"{server.base_url}/widget/{widget.public_key}/"
    policy = httpx.get(page_url).headers["content-security-policy"].split("; ")
    assert f"frame-ancestors {host.origin}" in policy, policy
    page = browser.new_context().new_page()
    page.goto(embed(other_host, server, widget))
    # The browser says so when it refuses to frame the page: Chromium logs the CSP violation.
    with page.expect_console_message(lambda message: "frame-ancestors" in message.text) as refusal:
        page.get_by_role("button", name="Ask us").click()
    assert f'"frame-ancestors {host.origin}"' in refusal.value.text, refusal.value.text
    expect(page.locator("iframe[data-slipstream-panel]")).to_have_count(1)
    frame = page.frame_locator("iframe[data-slipstream-panel]")
    expect(frame.locator("#widget")).to_have_count(0)  # the browser refused to show it

    stream = f"{server.base_url}/widget/{widget.public_key}/stream/"
    visitor = f"{server.base_url}/widget/{widget.public_key}/visitor/"
    assert httpx.post(visitor, headers={"Origin": other_host.origin}).status_code == 403
    allowed = httpx.post(visitor, headers={"Origin": host.origin})
    token = allowed.json()["token"]
    refused = httpx.post(
        stream,
        json={"content": "hi"},
        headers={"Origin": other_host.origin, "X-Widget-Visitor": token},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "origin_not_allowed"
    assert httpx.post(stream, json={"content": "hi"}).status_code == 403  # no Origin at all
    # None listed: no site may frame it.
    Widget.objects.filter(pk=widget.pk).update(allowed_origins="")
    policy = httpx.get(page_url).headers["content-security-policy"].split("; ")
    assert "frame-ancestors 'none'" in policy, policy


def test_two_visitors_never_see_each_other(browser: Browser, server, slot, sim, host) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    widget = make_widget(slot, host)
    url = embed(host, server, widget)
    first = browser.new_context().new_page()
    first.goto(url)
    frame = open_panel(first)
    ask(frame, "My secret question")
    expect(frame.locator("article.message.assistant:not(.greeting)")).to_have_attribute(
        "data-status", "complete"
    )
    second = browser.new_context().new_page()
    second.goto(url)
    other = open_panel(second)
    expect(other.locator("article.message.user")).to_have_count(0)
    ask(other, "Something else")
    expect(other.locator("article.message.assistant:not(.greeting)")).to_have_attribute(
        "data-status", "complete"
    )
    expect(other.get_by_text("My secret question")).to_have_count(0)
    visitors = set(Conversation.objects.values_list("visitor_id", flat=True))
    assert len(visitors) == 2
    assert Conversation.objects.count() == 2


def test_limits_and_switching_off_are_said_plainly(
    browser: Browser, server, slot, sim, host
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    rate = 2
    widget = make_widget(slot, host, rate_per_minute=rate)
    url = embed(host, server, widget)
    page = browser.new_context().new_page()
    page.goto(url)
    frame = open_panel(page)
    # django-ratelimit counts in fixed one-minute windows, so a window may end between two
    # messages; at most one ends during this test, so the refusal comes within 2 * rate + 1.
    answered = frame.locator('article.message.assistant:not(.greeting)[data-status="complete"]')
    alert = frame.get_by_role("alert")
    for n in range(2 * rate + 1):
        ask(frame, f"message {n}")
        expect(answered.nth(n).or_(alert).first).to_be_visible()
        if alert.count():
            break
    expect(alert).to_contain_text("too many messages this minute")
    assert rate <= answered.count() <= 2 * rate
    assert sim.stats()["requests"] == answered.count()
    requests_before = answered.count()

    Widget.objects.filter(pk=widget.pk).update(enabled=False, rate_per_minute=100)
    ask(frame, "four")
    expect(frame.get_by_role("alert")).to_have_text("This chat is switched off.")
    page.reload()
    frame = open_panel(page)
    expect(frame.get_by_role("textbox", name="Message")).to_be_disabled()
    assert sim.stats()["requests"] == requests_before


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_widget_fits_a_320_px_phone_and_passes_axe(
    browser: Browser, server, slot, sim, host, theme: Literal["light", "dark"]
) -> None:
    """In both colour schemes (issue 33, finding 6: the dark one failed ``color-contrast``):
    the iframe follows the visitor's ``prefers-color-scheme``, as the chat pages do."""
    from tests.e2e.test_accessibility import violations

    sim.configure(ttft_ms=0, tokens_per_s=0, length=30)
    url = embed(host, server, make_widget(slot, host))
    context = browser.new_context(viewport={"width": 320, "height": 640}, color_scheme=theme)
    page = context.new_page()
    page.goto(url)
    frame = open_panel(page)
    ask(frame, "A question from a small phone")
    answer = frame.locator("article.message.assistant:not(.greeting)")
    expect(answer).to_have_attribute("data-status", "complete")
    panel = page.locator("iframe[data-slipstream-panel]").bounding_box()
    assert panel is not None
    assert panel["x"] >= 0
    assert panel["x"] + panel["width"] <= 320  # the panel fits the screen
    widget = next(f for f in page.frames if "/widget/" in f.url)
    # Nothing inside scrolls sideways, and the composer is in view.
    assert widget.evaluate("document.documentElement.scrollWidth <= innerWidth")
    expect(frame.get_by_role("button", name="Send")).to_be_in_viewport()
    assert violations(widget) == []


def test_a_visitor_attaches_an_image_when_the_widget_takes_them(
    browser: Browser, server, sim, host
) -> None:
    from tests.conftest import make_slot
    from tests.support.files import png

    slot = make_slot(sim.base_url, accepts_images=True, image_max_side=128)
    sim.configure(ttft_ms=0, tokens_per_s=100, length=5)
    without = make_widget(slot, host)
    page = browser.new_context().new_page()
    page.goto(embed(host, server, without))
    expect(open_panel(page).locator("#attach")).to_have_count(0)  # off by default

    widget = make_widget(slot, host, accepts_images=True, public_key="wk_images")
    page = browser.new_context().new_page()
    page.goto(embed(host, server, widget))
    frame = open_panel(page)
    frame.locator("#attach-input").set_input_files(
        {"name": "error.png", "mimeType": "image/png", "buffer": png(512, 256)}
    )
    expect(frame.locator('#attachment-tray .attachment-chip[data-state="done"]')).to_have_count(1)
    ask(frame, "What does this error mean?")
    expect(frame.locator("article.message.assistant:not(.greeting)").last).to_have_attribute(
        "data-status", "complete"
    )
    expect(frame.locator("article.message.user .attachments img")).to_be_visible()
    page.reload()  # the history shows the image again, by a short-lived signed link
    frame = open_panel(page)
    shown = frame.locator("article.message.user .attachments img")
    expect(shown).to_have_attribute("alt", "error.png")
    expect(shown).to_have_js_property("naturalWidth", 128)
    parts = sim.stats()["last_parts"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    stored = Attachment.objects.get()
    assert (stored.widget_id, stored.width, stored.height) == (widget.pk, 128, 64)
    assert parts[1]["sha256"] == stored.sha256
