"""The chat's answer lifecycle in Chromium: reload mid-stream resumes, Stop stops the upstream,
edit makes a branch you can page through, regenerate, search and the sidebar."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from chat.models import Message
from tests.e2e.test_chat import shown_words, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def send(page: Page, text: str) -> None:
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("button", name="Send").click()


def what_the_simulator_says(sim, body: dict) -> str:
    """The simulator's answer is a function of the request: ask it again, without streaming."""
    again = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    response = httpx.post(sim.base_url + "/v1/chat/completions", json=again, timeout=30)
    return response.json()["choices"][0]["message"]["content"]


def test_reload_mid_stream_resumes_the_same_answer(
    browser_context: BrowserContext, server, slot, sim, user
):
    sim.configure(ttft_ms=0, tokens_per_s=25, length=80)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    send(page, "Tell me a long story")
    answer = page.locator("article.message.assistant").last
    expect(answer.locator(".content")).to_contain_text(re.compile(r"\w+ \w+"))
    assert shown_words(page, 20)["status"] == "streaming"  # 20 of 80 words in
    page.reload()
    resumed = page.locator("article.message.assistant").last
    expect(resumed).to_have_attribute("data-status", "streaming")
    expect(resumed).to_have_attribute("data-status", "complete", timeout=15_000)
    shown = " ".join(resumed.locator(".content").inner_text().split())
    stored = Message.objects.get(role="assistant")
    sent = what_the_simulator_says(sim, sim.stats()["last_request"])
    assert stored.status == "complete"
    assert stored.content == sent
    assert shown == " ".join(sent.split())
    assert len(sent.split()) == 80
    assert sim.stats()["streams_started"] == 1
    assert sim.stats()["cancelled"] == 0


def test_stop_cancels_the_upstream_within_a_second(
    browser_context: BrowserContext, server, slot, sim, user
):
    sim.configure(ttft_ms=0, tokens_per_s=20, length=500)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    send(page, "Go on and on")
    answer = page.locator("article.message.assistant").last
    expect(answer.locator(".content")).to_contain_text(re.compile(r"\w+ \w+"))
    page.keyboard.press("Escape")
    pressed = time.monotonic()
    expect(answer).to_have_attribute("data-status", "stopped")
    stats = sim.wait_for(lambda s: s["cancelled"] == 1, timeout_s=2)
    assert stats["cancel_times"][0] - pressed < 1.0
    page.reload()
    stored = page.locator("article.message.assistant").last
    expect(stored).to_have_attribute("data-status", "stopped")
    assert 0 < len(stored.locator(".content").inner_text().split()) < 500


def test_edit_and_regenerate_make_versions(
    browser_context: BrowserContext, server, slot, sim, user
):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=6)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    send(page, "First version")
    first_answer = page.locator("article.message.assistant").last
    expect(first_answer).to_have_attribute("data-status", "complete")
    original = first_answer.locator(".content").inner_text()

    page.locator("article.message.user").first.get_by_role("button", name="Edit").click()
    page.get_by_role("textbox", name="Edit message").fill("Second version")
    page.get_by_role("button", name="Send edit").click()
    expect(page.locator("article.message.user .branch-count")).to_have_text("2/2")
    expect(page.locator("article.message.user .content")).to_have_text("Second version")

    page.get_by_role("button", name="Previous version").click()
    expect(page.locator("article.message.user .branch-count")).to_have_text("1/2")
    expect(page.locator("article.message.user .content")).to_have_text("First version")
    expect(page.locator("article.message.assistant .content")).to_have_text(original)

    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator("article.message.assistant .branch-count")).to_have_text("2/2")
    page.reload()
    expect(page.locator("article.message.assistant .branch-count")).to_have_text("2/2")
    expect(page.locator("article.message.user .content")).to_have_text("First version")


def test_sidebar_search_rename_and_delete(browser_context: BrowserContext, server, slot, sim, user):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    for text in ("Apples and pears", "Boats on rivers"):
        page.goto(server.base_url + "/")
        expect(page.locator("#chat")).to_have_attribute("data-ready", "true")
        send(page, text)
        expect(page.locator("article.message.assistant").last).to_have_attribute(
            "data-status", "complete"
        )
    nav = page.get_by_role("navigation", name="Conversations")
    expect(nav.get_by_text("Today")).to_be_visible()
    page.get_by_role("searchbox", name="Search conversations").fill("rivers")
    expect(nav.get_by_role("link", name="Boats on rivers")).to_be_visible()
    expect(nav.get_by_role("link", name="Apples and pears")).to_have_count(0)

    page.get_by_role("searchbox", name="Search conversations").fill("")
    expect(nav.get_by_role("link", name="Apples and pears")).to_be_visible()
    nav.get_by_label("Actions for Apples and pears").click()
    nav.get_by_role("textbox", name="Rename").fill("Fruit")
    nav.get_by_role("button", name="Save").click()
    expect(nav.get_by_role("link", name="Fruit")).to_be_visible()

    page.once("dialog", lambda dialog: dialog.accept())
    nav.get_by_label("Actions for Fruit").click()
    nav.get_by_role("button", name="Delete").click()
    page.wait_for_url(server.base_url + "/")
    expect(nav.get_by_role("link", name="Fruit")).to_have_count(0)
    expect(nav.get_by_role("link", name="Boats on rivers")).to_be_visible()
