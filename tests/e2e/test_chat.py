"""A new user's first chat, in a real browser: sign in, send, watch it stream, reload."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from chat.models import Message
from tests.support.polling import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def sign_in(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill("correct horse 42")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
    expect(page.locator("#chat")).to_have_attribute("data-ready", "true")


_SHOWN = """n => {
  const answer = [...document.querySelectorAll("article.message.assistant")].at(-1);
  const text = answer?.querySelector(".content")?.innerText || "";
  const words = text.split(/\\s+/).filter(Boolean).length;
  const status = answer?.dataset.status;
  return (words >= n || (status && status !== "streaming")) && {words, status};
}"""


def shown_words(page: Page, n: int) -> dict[str, Any]:
    """Wait until the last answer shows at least ``n`` words or has ended, checked at every
    animation frame; returns ``{"words", "status"}`` as they were in that frame."""
    shown: dict[str, Any] = page.wait_for_function(_SHOWN, arg=n).json_value()
    return shown


def test_answer_streams_with_cursor_and_survives_reload(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=100, tokens_per_s=25, length=60)
    page = browser_context.new_page()
    sign_in(page, server.base_url)

    page.get_by_role("textbox", name="Message").fill("Tell me something")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.message.assistant").last
    expect(answer.locator(".typing-cursor")).to_be_visible()
    expect(page.get_by_role("button", name="Stop")).to_be_visible()

    # Seen three times with more words than before, each time still streaming and short of 60.
    seen = [shown_words(page, 1)]
    while len(seen) < 3:
        seen.append(shown_words(page, seen[-1]["words"] + 1))
    assert all(s["status"] == "streaming" and s["words"] < 60 for s in seen), seen

    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".typing-cursor")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    streamed = answer.locator(".content").inner_text()
    assert len(streamed.split()) == 60

    stored = Message.objects.get(role="assistant")
    assert stored.content == streamed
    assert stored.status == "complete"
    assert f"/c/{stored.conversation_id}/" in page.url

    page.reload()
    expect(
        page.get_by_role("navigation", name="Conversations").get_by_role(
            "link", name="Tell me something"
        )
    ).to_be_visible()
    expect(page.locator("article.message.user .content")).to_have_text("Tell me something")
    expect(page.locator("article.message.assistant .content")).to_have_text(streamed)


def test_stop_keeps_the_partial_answer(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=20, length=500)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.get_by_role("textbox", name="Message").fill("Go on and on")
    page.get_by_role("textbox", name="Message").press("Enter")
    answer = page.locator("article.message.assistant").last
    expect(answer.locator(".content")).to_contain_text(" ", timeout=5000)
    shown_words(page, 10)
    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-status", "stopped")
    assert sim.wait_for(lambda s: s["cancelled"] >= 1, timeout_s=2)["cancelled"] == 1
    page.reload()
    stored = page.locator("article.message.assistant").last
    expect(stored).to_have_attribute("data-status", "stopped")
    assert 0 < len(stored.locator(".content").inner_text().split()) < 500


def test_the_chat_shows_a_low_budget_and_cuts_the_answer_at_it(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    from chat.models import Quota

    Quota.objects.create(user=user, period="day", max_tokens=40)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    notice = page.locator("#budget")
    answers = page.locator("article.message.assistant")

    def ask(text: str, *, length: int, answered: int) -> None:
        counted = Message.objects.filter(role="assistant", usage__isnull=False).count()
        sim.configure(ttft_ms=0, tokens_per_s=0, length=length)
        page.get_by_role("textbox", name="Message").fill(text)
        page.get_by_role("button", name="Send").click()
        expect(answers).to_have_count(answered)
        expect(answers.last).to_have_attribute("data-status", "complete")
        # Its usage replaces its reservation in the records' batch just after its stream ends:
        # until then the next request would find the reservation's share held.
        stored = Message.objects.filter(role="assistant", usage__isnull=False)
        wait_until(lambda: stored.count() == counted + 1, what="the answer's usage stored")

    def tokens_left() -> int:
        return 40 - sum(
            (m.usage or {})["total_tokens"] for m in Message.objects.filter(role="assistant")
        )

    ask("Hello there", length=8, answered=1)  # 2 prompt + 8 completion tokens: 30 of 40 left
    expect(notice).to_be_empty()  # more than a fifth left: nothing to say
    ask("Hello there", length=15, answered=2)  # the whole thread is the prompt now
    left = tokens_left()
    assert 0 < left <= 40 // 5
    expect(notice.get_by_role("status")).to_contain_text(
        f"{left} of 40 tokens left in the daily token budget of user ada"
    )
    # The whole thread is the next prompt, and it alone no longer fits what is left: refused
    # before the call (the simulator's /tokenize counts it), saying why.
    page.get_by_role("textbox", name="Message").fill("Hello there")
    with page.expect_response(lambda r: r.request.method == "POST" and r.status == 429) as refused:
        page.get_by_role("button", name="Send").click()
    assert "This request's prompt is about" in refused.value.json()["error"]["message"]
    assert Message.objects.filter(role="assistant").count() == 2
    # A new chat's prompt (2 tokens) fits: its answer is capped at what is left after it.
    page.get_by_role("link", name="New chat").click()
    ask("Hello there", length=60, answered=1)
    assert len(answers.last.locator(".content").inner_text().split()) == left - 2
    page.reload()
    expect(notice.get_by_role("status")).to_contain_text(
        "daily token budget of user ada (40 tokens) is used up"
    )


@pytest.mark.llama
def test_chat_with_a_real_llama_cpp_server(browser_context, server, llama_server, user) -> None:
    from tests.conftest import make_slot

    make_slot(llama_server.base_url, model=llama_server.model_id, max_tokens=200)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.get_by_role("textbox", name="Message").fill("Hello llama")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.message.assistant").last
    expect(answer).to_have_attribute("data-status", "complete", timeout=20000)
    shown = answer.locator(".content").inner_text()
    stored = Message.objects.get(role="assistant")
    # The tiny model's token soup has markdown in it (~, *, _): compare what was rendered while
    # streaming with what the stored answer renders to after a reload.
    assert stored.finish_reason == "length"
    assert stored.content
    assert shown
    page.reload()
    expect(page.locator("article.message.assistant .content")).to_have_text(shown)
