"""The pages around the chat, as a new user meets them in Chromium: a new API key is shown
once with a Copy button and a reload makes no second key; no page asks for anything that is
not there, and the admin says Slipstream. (Headless Chromium asks for no favicon: that every
page names one, and that /favicon.ico answers, is tests/integration/test_serve.py's.)"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, Response, Route, expect

from chat.models import ApiKey, Slot
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


TEXT_LEFT = """el => {
  const range = document.createRange();
  range.selectNodeContents(el);
  return range.getBoundingClientRect().left;
}"""


def test_the_first_answer_brings_settings_and_nothing_moves(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    picker = page.get_by_label("Model")
    before = picker.bounding_box()
    long_title = "A question whose title is far longer than twenty characters"
    page.get_by_role("textbox", name="Message").fill(long_title)
    page.get_by_role("button", name="Send").click()
    expect(page.locator("article.message.assistant").last).to_have_attribute(
        "data-status", "complete"
    )
    expect(page.locator("#chat-title")).to_have_text(long_title[:60])
    # Settings came with the new conversation, without a reload, and are this conversation's.
    settings = page.get_by_text("Settings", exact=True)
    expect(settings).to_be_visible()
    after = picker.bounding_box()
    settings.click()
    expect(page.get_by_role("button", name="Save settings")).to_be_visible()
    conversation = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert conversation in (page.locator("#conversation-settings").get_attribute("action") or "")
    assert before is not None
    assert after is not None
    assert (after["x"], after["y"]) == (before["x"], before["y"])  # the header did not shift

    nav = page.get_by_role("navigation", name="Conversations")
    link = nav.get_by_role("link", name=long_title[:60])
    expect(link).to_be_visible()
    heading = nav.locator(".conversation-group").first
    assert abs(heading.evaluate(TEXT_LEFT) - link.evaluate(TEXT_LEFT)) < 1  # aligned
    title = link.locator(".title")
    line = title.evaluate("el => parseFloat(getComputedStyle(el).lineHeight)")
    box = title.bounding_box()
    assert box is not None
    assert 1.5 * line < box["height"] < 2.5 * line  # two lines, then cut (not one, not three)


def test_on_a_phone_the_chat_fills_the_screen_and_the_list_is_a_drawer(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.set_viewport_size({"width": 390, "height": 844})
    nav = page.get_by_role("navigation", name="Conversations")
    menu = page.get_by_role("button", name="Menu")
    expect(nav).to_be_hidden()
    expect(menu).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") == 390  # nothing scrolls sideways

    page.get_by_role("textbox", name="Message").fill("First from the phone")
    page.get_by_role("button", name="Send").click()  # fails if anything covers it
    expect(page.locator("article.message.assistant").last).to_have_attribute(
        "data-status", "complete"
    )
    composer = page.locator("#composer").bounding_box()
    assert composer is not None
    assert composer["y"] + composer["height"] <= 844
    expect(page.locator("#chat-title")).to_be_visible()
    first = page.url

    menu.click()
    expect(nav).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Escape")
    expect(nav).to_be_hidden()
    expect(menu).to_be_focused()
    menu.click()
    nav.get_by_role("link", name="New chat").click()
    expect(page).to_have_url(server.base_url + "/")
    expect(nav).to_be_hidden()
    menu.click()
    nav.get_by_role("link", name="First from the phone").click()
    expect(page).to_have_url(first)
    expect(nav).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") == 390


def test_a_new_chat_offers_examples_and_the_keyboard_drives_it(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    empty = page.locator("#empty-state")
    expect(empty.get_by_role("heading", name="What can I help with?")).to_be_visible()
    page.get_by_role("button", name="Draft an e-mail").click()
    box = page.get_by_role("textbox", name="Message")
    expect(box).to_have_value(
        "Draft a short, friendly e-mail asking to move a meeting to next week."
    )
    expect(box).to_be_focused()
    box.press("Enter")
    answers = page.locator("article.message.assistant")
    expect(answers.last).to_have_attribute("data-status", "complete")
    expect(empty).to_have_count(0)
    conversation_url = page.url

    page.locator("#chat-title").click()  # away from the message box: ? is then a shortcut
    page.keyboard.press("?")
    sheet = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(sheet).to_be_visible()
    page.keyboard.press("Escape")
    expect(sheet).to_be_hidden()
    page.keyboard.press("Control+k")
    expect(page.get_by_role("searchbox", name="Search conversations")).to_be_focused()
    page.keyboard.press("Shift+Escape")
    expect(box).to_be_focused()
    box.press("?")  # in the message box, ? is text
    expect(box).to_have_value("?")
    expect(sheet).to_be_hidden()
    box.fill("")

    requests = sim.stats()["requests"]
    page.keyboard.press("Control+Shift+E")  # regenerate the last answer
    expect(page.locator(".branch-pager").last).to_contain_text("2/2")
    assert sim.stats()["requests"] == requests + 1
    page.keyboard.press("Control+Shift+O")
    expect(page).to_have_url(server.base_url + "/")
    assert conversation_url != page.url


def test_conversations_are_pinned_filed_and_archived_from_their_menu(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    from chat.models import Conversation

    for title in ("Alpha plans", "Beta notes"):
        Conversation.objects.create(user=user, title=title)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    nav = page.get_by_role("navigation", name="Conversations")
    groups = nav.locator(".conversation-group")

    def menu(title: str) -> Any:
        nav.get_by_label(f"Actions for {title}").click()
        return nav.locator(".conversation-item", has_text=title).locator(".conversation-menu")

    menu("Alpha plans").get_by_role("button", name="Pin").click()
    expect(groups.first).to_have_text("Pinned")
    expect(nav.locator(".conversation-list").first).to_contain_text("Alpha plans")

    beta = menu("Beta notes")
    beta.get_by_placeholder("Folder name").fill("Research")
    beta.get_by_role("button", name="Move").click()
    expect(groups).to_have_text(["Pinned", "Research"])

    menu("Beta notes").get_by_role("button", name="Archive").click()
    expect(nav.get_by_role("link", name="Beta notes")).to_have_count(0)
    nav.get_by_role("link", name="Archived").click()
    expect(groups).to_have_text(["Archived"])
    expect(nav.get_by_role("link", name="Beta notes")).to_be_visible()
    menu("Beta notes").get_by_role("button", name="Unarchive").click()  # back to the list
    expect(groups).to_have_text(["Pinned", "Research"])
    expect(nav.locator(".conversation-item", has_text="Beta notes")).to_be_visible()


def test_slash_in_the_message_box_finds_a_saved_prompt(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.get_by_role("link", name="Prompts").click()
    for title, text in (("Summarise", "Summarise this text:"), ("Translate", "Into French:")):
        page.get_by_label("Title").fill(title)
        page.get_by_label("Text").fill(text)
        page.get_by_role("button", name="Save prompt").click()
        expect(page.get_by_role("cell", name=title, exact=True)).to_be_visible()
    page.get_by_role("link", name="← Back to chat").click()

    box = page.get_by_role("textbox", name="Message")
    box.fill("")
    box.press_sequentially("/")
    options = page.get_by_role("listbox", name="Saved prompts").get_by_role("option")
    expect(options).to_have_text(["Summarise", "Translate"])
    box.press_sequentially("tr")
    expect(options).to_have_text(["Translate"])
    box.press("Backspace")
    box.press("Backspace")
    box.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    box.press("Enter")  # puts the prompt in; does not send
    expect(box).to_have_value("Into French:")
    expect(page.get_by_role("listbox", name="Saved prompts")).to_be_hidden()
    expect(page.locator("article.message")).to_have_count(0)
    box.press_sequentially(" Good morning")
    box.press("Enter")  # now it sends
    expect(page.locator("article.message.user .content")).to_have_text("Into French: Good morning")


def compare_two(page: Page, server: Any, sim: Any, text: str) -> Locator:
    """Sign in, add a second slot on the simulator, tick both under Compare and send ``text``.
    Returns the group of compared answers."""
    from tests.conftest import make_slot

    make_slot(sim.base_url, name="second")
    Slot.objects.filter(name="second").update(is_default=False)  # "primary" stays the default
    sign_in(page, server.base_url)
    page.get_by_text("Compare", exact=True).click()
    page.get_by_role("checkbox", name="primary").check()
    page.get_by_role("checkbox", name="second").check()
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("button", name="Send").click()
    return page.get_by_role("group", name="Answers to compare")


def test_compare_answers_side_by_side_and_go_on_with_one(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    from chat.models import Message

    sim.configure(ttft_ms=0, tokens_per_s=0, length=6)
    page = browser_context.new_page()
    grid = compare_two(page, server, sim, "Which is better?")
    columns = grid.locator(".compare-column")
    expect(columns).to_have_count(2)
    for name in ("primary", "second"):
        column = grid.get_by_role("region", name=f"Answer from {name}")
        expect(column.locator("article.message.assistant")).to_have_attribute(
            "data-status", "complete"
        )
        expect(column.locator(".meta")).to_contain_text("TTFT")
    answers = Message.objects.filter(role="assistant")
    assert sorted(answers.values_list("slot_name", flat=True)) == ["primary", "second"]
    assert len({m.parent_id for m in answers}) == 1  # two versions of one turn

    grid.get_by_role("button", name="Use this answer from second").click()
    expect(grid).to_have_count(0)  # the thread, as stored, in its place
    shown = page.locator("article.message.assistant")
    expect(shown).to_have_count(1)
    chosen = answers.get(slot_name="second")
    expect(shown).to_have_attribute("data-message-id", str(chosen.pk))
    expect(page.locator(".branch-pager")).to_contain_text("/2")
    page.reload()  # the chosen one is the conversation's shown branch, not only on this page
    expect(shown).to_have_count(1)
    expect(shown).to_have_attribute("data-message-id", str(chosen.pk))


def test_each_compared_answer_stops_on_its_own(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    page = browser_context.new_page()
    grid = compare_two(page, server, sim, "Go on and on")
    second = grid.get_by_role("region", name="Answer from second")
    primary = grid.get_by_role("region", name="Answer from primary")
    expect(second.locator(".content")).to_contain_text(" ")
    second.get_by_role("button", name="Stop second").click()
    expect(second.locator("article")).to_have_attribute("data-status", "stopped")
    expect(primary.locator("article")).to_have_attribute("data-status", "streaming")
    page.keyboard.press("Escape")  # Stop (and Esc) stop every answer still running
    expect(primary.locator("article")).to_have_attribute("data-status", "stopped")
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def test_the_admin_front_page_shows_the_slots_live(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    user.is_staff = user.is_superuser = True
    user.save()
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.get_by_role("textbox", name="Message").fill("Count me")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("article.message.assistant").last).to_have_attribute(
        "data-status", "complete"
    )
    page.goto(server.base_url + "/admin/")
    row = page.locator("#slots-now tbody tr[data-slot=primary]")
    expect(row.locator(".slot-state")).to_have_text(re.compile("ready|cold|warming"))
    cells = row.locator("td")
    expect(cells).to_have_count(7)
    expect(cells.nth(1)).to_have_text("0")  # streaming now
    expect(cells.nth(3)).to_have_text("1")  # requests today
    expect(cells.nth(5)).to_have_text(re.compile(r"^\d+ ms$"))  # first token p50


@pytest.mark.parametrize(
    ("width", "height"), [(320, 640), (390, 844), (768, 1024), (1280, 800)], ids=str
)
def test_every_width_sends_stops_and_scrolls_only_down(
    browser_context: BrowserContext, server, slot, sim, user, width: int, height: int
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    page = browser_context.new_page()
    sign_in(page, server.base_url)  # sign_in waits for the sidebar: before the width changes
    page.set_viewport_size({"width": width, "height": height})
    no_overflow = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    assert page.evaluate(no_overflow)
    nav = page.get_by_role("navigation", name="Conversations")
    menu = page.get_by_role("button", name="Menu")
    if width <= 700:  # a drawer behind the menu button
        expect(nav).to_be_hidden()
        menu.click()
        expect(nav).to_be_visible()
        page.locator("#backdrop").click(position={"x": width - 10, "y": height // 2})
        expect(nav).to_be_hidden()
    else:
        expect(nav).to_be_visible()
        expect(menu).to_be_hidden()

    page.get_by_role("textbox", name="Message").fill("A long answer, please")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.message.assistant").last
    expect(answer.locator(".content")).to_contain_text(" ")
    expect(page.locator("#composer")).to_be_in_viewport(ratio=1)  # while the answer streams
    assert page.evaluate(no_overflow)
    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-status", "stopped")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert page.evaluate(no_overflow)
    # The conversation's settings open on screen, whole, at every width.
    page.get_by_text("Settings", exact=True).click()
    expect(page.get_by_role("button", name="Save settings")).to_be_visible()
    expect(page.locator(".conversation-tools-panel")).to_be_in_viewport(ratio=1)


def test_a_prompts_variables_are_filled_as_it_is_picked(
    browser_context: BrowserContext, server, slot, user
) -> None:
    from chat.models import Prompt

    Prompt.objects.create(owner=user, title="Fix", text="On {{date}}, fix this: {{clipboard}}")
    browser_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.evaluate("navigator.clipboard.writeText('TypeError in line 3')")
    today = page.evaluate("new Date().toLocaleDateString()")
    box = page.get_by_role("textbox", name="Message")
    # The list's request is held until Enter has been pressed: a fast typist's "/fix" and Enter
    # must pick the prompt once it has loaded, never send "/fix" (CI once saw it sent).
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route("**/chat/prompts/", hold)
    with page.expect_request("**/chat/prompts/"):
        box.press_sequentially("/fix")
    box.press("Enter")
    expect(box).to_have_value("/fix")
    expect(page.locator("article.message")).to_have_count(0)
    assert len(held) == 1
    held[0].continue_()
    expect(box).to_have_value(f"On {today}, fix this: TypeError in line 3")
    expect(page.locator("article.message")).to_have_count(0)
