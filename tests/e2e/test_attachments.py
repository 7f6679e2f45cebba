"""Attachments in a real browser: paste an image, drop a PDF, send, and check what reached the
upstream (the simulator's ``last_request``); reload; a text-only model refuses an image; a file
over the limit never starts uploading."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from playwright.sync_api import BrowserContext, Page, expect

from chat.models import Attachment
from tests.conftest import make_slot
from tests.e2e.test_chat import sign_in
from tests.support.files import pdf_with_text, png

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# A File built in the page from base64, handed over as a user's paste or drop would.
_GIVE_FILE = """([kind, b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  if (kind === "paste") {
    const init = { clipboardData: data, bubbles: true, cancelable: true };
    document.getElementById("message").dispatchEvent(new ClipboardEvent("paste", init));
  } else {
    const composer = document.getElementById("composer");
    const init = { dataTransfer: data, bubbles: true, cancelable: true };
    for (const type of ["dragenter", "dragover", "drop"]) {
      composer.dispatchEvent(new DragEvent(type, init));
    }
  }
}"""


def give(page: Page, how: str, data: bytes, name: str, mime: str) -> None:
    page.evaluate(_GIVE_FILE, [how, base64.b64encode(data).decode(), name, mime])


def test_paste_an_image_and_drop_a_pdf(browser_context: BrowserContext, server, sim, user) -> None:
    make_slot(sim.base_url, accepts_images=True, image_max_side=256)
    sim.configure(ttft_ms=0, tokens_per_s=200, length=8)
    page = browser_context.new_page()
    sign_in(page, server.base_url)

    give(page, "paste", png(1024, 512), "", "image/png")
    give(page, "drop", pdf_with_text(["Invoice 4711", "Total due 99 EUR"]), "invoice.pdf", "")
    chips = page.locator("#attachment-tray .attachment-chip")
    expect(chips).to_have_count(2)
    expect(page.locator('#attachment-tray .attachment-chip[data-state="done"]')).to_have_count(2)
    expect(chips.first.locator("img.attachment-thumb")).to_be_visible()

    page.get_by_role("textbox", name="Message").fill("What do these say?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("article.message.assistant").last).to_have_attribute(
        "data-status", "complete"
    )
    expect(page.locator("#attachment-tray .attachment-chip")).to_have_count(0)

    content = sim.stats()["last_request"]["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text", "image_url"]
    assert content[0]["text"].startswith('Attached document "invoice.pdf":\n\nInvoice 4711')
    assert content[0]["text"].endswith("What do these say?")
    header, _, data = content[1]["image_url"]["url"].partition(",")
    assert header == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.size == (256, 128)
    with Attachment.objects.get(kind="image").file.open("rb") as stored:
        assert stored.read() == base64.b64decode(data)

    page.reload()
    user_message = page.locator("article.message.user").last
    expect(user_message.locator("a.attachment.image img")).to_be_visible()
    expect(user_message.locator("a.attachment.document")).to_contain_text("invoice.pdf")
    loaded = user_message.locator("a.attachment.image img").evaluate("img => img.naturalWidth")
    assert loaded == 256


def test_a_text_only_model_refuses_an_image_visibly(
    browser_context: BrowserContext, server, slot, sim, user
) -> None:
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    requests_before = sim.stats()["requests"]
    page.locator("#attach-input").set_input_files(
        {"name": "chart.png", "mimeType": "image/png", "buffer": png(64, 64)}
    )
    expect(page.locator('#attachment-tray .attachment-chip[data-state="done"]')).to_have_count(1)
    page.get_by_role("textbox", name="Message").fill("Explain the chart")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_text("does not read images")).to_be_visible()
    # Refused, the image stays in the tray, to send again with a model that reads images.
    expect(page.locator('#attachment-tray .attachment-chip[data-state="done"]')).to_have_count(1)
    assert sim.stats()["requests"] == requests_before


def test_a_file_over_the_limit_never_starts_uploading(
    browser_context: BrowserContext, server, slot, user
) -> None:
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if "/chat/attachments/" in r.url else None)
    page.locator("#attach-input").set_input_files(
        {"name": "video.txt", "mimeType": "text/plain", "buffer": b"x" * (30 * 2**20)}
    )
    expect(page.locator("#attachment-error")).to_contain_text(
        '"video.txt" is 30.0 MB; the limit is 20.0 MB.'
    )
    expect(page.locator("#attachment-tray .attachment-chip")).to_have_count(0)
    assert uploads == []
    assert not Attachment.objects.exists()
