"""What users would still miss (issue 33), in Chromium: a saved prompt is edited, a sidebar
folder renamed (a refusal said in the form), and Compare closes its picker on send and names
each column's slot once; axe-core finds nothing serious on the way."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import BrowserContext, expect

from chat.models import Conversation, Folder, Prompt
from tests.e2e.test_accessibility import violations
from tests.e2e.test_chat import sign_in
from tests.e2e.test_pages import compare_two

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_saved_prompt_is_edited_and_a_refusal_says_why(
    browser_context: BrowserContext, server, slot, user: Any
) -> None:
    review = Prompt.objects.create(owner=user, title="Review", text="Review this.")
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.goto(server.base_url + "/settings/prompts/")
    page.get_by_role("link", name="Edit Review").click()
    expect(page.get_by_role("heading", name="Edit prompt")).to_be_visible()
    title, text = page.get_by_label("Title"), page.get_by_label("Text")
    expect(title).to_have_value("Review")
    expect(text).to_have_value("Review this.")

    title.fill("   ")  # passes the browser's `required`; the server refuses it
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("alert")).to_have_text("A prompt needs a title and a text.")
    assert violations(page) == []  # the form with its error
    title.fill("Code review")
    text.fill("Review this diff:")
    page.get_by_role("button", name="Save changes").click()

    expect(page).to_have_url(server.base_url + "/settings/prompts/")
    row = page.get_by_role("row").filter(has_text="Code review")
    expect(row).to_contain_text("Review this diff:")
    expect(page.get_by_role("cell", name="Review", exact=True)).to_have_count(0)
    review.refresh_from_db()
    assert (review.title, review.text) == ("Code review", "Review this diff:")
    assert violations(page) == []

    page.goto(server.base_url + "/")  # "/" in the message box finds it by its new title
    page.get_by_role("textbox", name="Message").press_sequentially("/code")
    options = page.get_by_role("listbox", name="Saved prompts").get_by_role("option")
    expect(options).to_have_text(["Code review"])


def test_a_folder_is_renamed_from_its_heading(
    browser_context: BrowserContext, server, slot, user: Any
) -> None:
    work = Folder.objects.create(user=user, name="Work")
    Folder.objects.create(user=user, name="Home")
    Conversation.objects.create(user=user, title="Quarterly plan", folder=work)
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    sidebar = page.get_by_role("navigation", name="Conversations")
    expect(sidebar.get_by_role("heading", name="Work")).to_be_visible()

    sidebar.get_by_label("Rename the folder Work").click()
    name = sidebar.get_by_role("textbox", name="Folder name").and_(
        sidebar.locator("input[value=Work]")
    )
    expect(name).to_be_visible()
    assert violations(page) == []  # the rename form open over the list
    name.fill("Home")
    sidebar.get_by_role("button", name="Save", exact=True).click()
    alert = sidebar.get_by_role("alert").filter(has_text="Home")
    expect(alert).to_have_text("You already have a folder named “Home”.")
    expect(name).to_be_focused()
    expect(name).to_have_attribute("aria-invalid", "true")

    name.fill("Clients")
    sidebar.get_by_role("button", name="Save", exact=True).click()
    expect(sidebar.get_by_role("heading", name="Clients")).to_be_visible()
    expect(sidebar.get_by_role("heading", name="Work")).to_have_count(0)
    group = sidebar.locator(".conversation-group-head", has_text="Clients")
    listed = group.locator("xpath=following-sibling::ul[1]")
    expect(listed).to_contain_text("Quarterly plan")  # it keeps its conversations
    expect(page.locator("#announcer")).to_have_text("Folder renamed to “Clients”.")
    work.refresh_from_db()
    assert work.name == "Clients"
    page.reload()
    expect(sidebar.get_by_role("heading", name="Clients")).to_be_visible()


def test_compare_closes_its_picker_on_send_and_names_each_slot_once(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=6)
    page = browser_context.new_page()
    grid = compare_two(page, server, sim, "Which is better?")
    picker = page.locator("#compare-picker")
    expect(grid.locator(".compare-column")).to_have_count(2)
    expect(picker).not_to_have_attribute("open", "")
    expect(picker.get_by_role("checkbox", name="primary")).to_be_hidden()
    expect(picker.locator("summary")).to_have_text("Compare (2)")  # the choice is kept
    for name in ("primary", "second"):
        column = grid.get_by_role("region", name=f"Answer from {name}")
        expect(column.locator("article")).to_have_attribute("data-status", "complete")
        expect(column.get_by_text(name, exact=True)).to_have_count(1)
    assert violations(page) == []

    # A plain message (one model ticked) closes it too.
    picker.locator("summary").click()
    picker.get_by_role("checkbox", name="second").uncheck()
    expect(picker.get_by_role("checkbox", name="primary")).to_be_visible()
    page.get_by_role("textbox", name="Message").fill("And now just one")
    page.get_by_role("button", name="Send").click()
    expect(picker.get_by_role("checkbox", name="primary")).to_be_hidden()
    expect(page.locator("article.message.assistant").last).to_have_attribute(
        "data-status", "complete"
    )
