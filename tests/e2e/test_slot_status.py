"""What the dispatcher shows people, in a real browser: warming and queue status lines in the
chat, and slot state kept live in the chat header and the admin's slot list."""

from __future__ import annotations

import threading

import httpx
import pytest
from playwright.sync_api import BrowserContext, expect

from chat.models import Slot
from tests.e2e.test_chat import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_warming_then_the_answer(browser_context: BrowserContext, server, slot, sim, user):
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    # Loading until the page has shown it, however slow this run is.
    sim.configure(cold_boot_s=3600, ttft_ms=0, tokens_per_s=50, length=10)
    page.get_by_role("textbox", name="Message").fill("Wake up")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.message.assistant").last
    expect(answer.get_by_role("status")).to_have_text("Warming up primary…", timeout=10_000)
    sim.configure(cold_boot_s=0)
    expect(answer).to_have_attribute("data-status", "complete", timeout=15_000)
    expect(answer.get_by_role("status")).to_have_count(0)
    assert len(answer.locator(".content").inner_text().split()) == 10
    # The header badge follows the slot to ready without a reload.
    expect(page.locator("#slot-state")).to_have_text("ready", timeout=10_000)


def test_queue_position_is_shown(browser_context: BrowserContext, server, slot, sim, user, api_key):
    Slot.objects.update(max_concurrency=1, single_flight="off")
    # The first call holds the slot's place while the model loads, until the page has shown
    # the second one's place in the queue.
    sim.configure(ttft_ms=0, tokens_per_s=50, length=25, cold_boot_s=3600)
    page = browser_context.new_page()
    sign_in(page, server.base_url)

    def hog() -> None:
        httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": "primary", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )

    busy = threading.Thread(target=hog)
    busy.start()
    try:
        sim.wait_for(lambda s: s["requests"] >= 1, timeout_s=30)
        page.get_by_role("textbox", name="Message").fill("Me next")
        page.get_by_role("button", name="Send").click()
        answer = page.locator("article.message.assistant").last
        expect(answer.get_by_role("status")).to_have_text(
            "Queued for primary: you are next…", timeout=10_000
        )
        sim.configure(cold_boot_s=0)
        expect(answer).to_have_attribute("data-status", "complete", timeout=20_000)
    finally:
        busy.join()


def test_admin_slot_list_shows_state_live(browser_context: BrowserContext, server, slot, sim, user):
    user.is_staff = user.is_superuser = True
    user.save()
    # Loading until the test says it is done, so "warming" lasts however slow this run is.
    sim.configure(cold_boot_s=3600)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.goto(server.base_url + "/admin/chat/slot/")
    badge = page.locator('.slot-state[data-slot="primary"]')
    # The page asks for states every few seconds; asking probes the backend: the badge goes
    # warming while the simulator loads, then ready, with no reload.
    expect(badge).to_have_text("warming", timeout=10_000)
    expect(badge).to_have_attribute("data-state", "warming")
    sim.configure(cold_boot_s=0)
    expect(badge).to_have_text("ready", timeout=15_000)
    expect(badge).to_have_attribute("data-state", "ready")
