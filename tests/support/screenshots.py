"""Screenshots of every page at phone and desktop widths, in the light and the dark theme:
``make screenshots`` (``python -m tests.support.screenshots docs/screenshots``).

It runs Slipstream as a user would, on a fresh SQLite file with the built-in simulator as the
model, seeds a few conversations, a prompt, a widget and a day's usage, and drives Debian's
Chromium headless through the pages. The files are named ``<page>-<phone|desktop>-<theme>.png``
and replaced on each run; nothing else in the directory is touched.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

WIDTHS = {"phone": (390, 844), "desktop": (1280, 800)}
THEMES: tuple[Literal["light", "dark"], ...] = ("light", "dark")
PASSWORD = "a screenshot password"

ANSWER = """Here is a function that removes duplicates and **keeps the order**:

```python
def unique(items):
    seen = set()
    return [x for x in items if not (x in seen or seen.add(x))]
```

- It runs in *O(n)*.
- It needs hashable items.
"""


def main(out: Path) -> None:
    """Write the screenshots into ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            DATABASE_URL=f"sqlite:///{tmp}/db.sqlite3",
            DJANGO_SECRET_KEY="screenshots only: " + "x" * 40,
            SLIPSTREAM_MEDIA_ROOT=f"{tmp}/media",
            DJANGO_SETTINGS_MODULE="chatsite.settings",
        )
        import django

        django.setup()
        from django.core.management import call_command

        from chat.simulator import SimulatorThread
        from tests.support.daphne_server import DaphneServer

        call_command("migrate", interactive=False, verbosity=0)
        with SimulatorThread() as sim:
            sim.configure(ttft_ms=0, tokens_per_s=0, length=30)
            host = _host_site(Path(tmp) / "host")
            widget_key, share_id = _seed(sim.base_url, host)
            env = {
                k: os.environ[k]
                for k in ("DATABASE_URL", "DJANGO_SECRET_KEY", "SLIPSTREAM_MEDIA_ROOT")
            }
            with DaphneServer(env=env) as server:
                _shoot(out, server.base_url, host, widget_key, share_id)


def _seed(simulator_url: str, host: str) -> tuple[str, str]:
    """A user who is staff, two slots, conversations (one with a code answer, an image and a
    document attached, one shared), a prompt, a widget on ``host`` and today's usage. Returns
    the widget's key and the share."""
    from asgiref.sync import async_to_sync
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile

    from chat import services
    from chat.attachments import attachment_create
    from chat.models import Attachment, Backend, Conversation, Message, Prompt, Slot, Widget
    from tests.support.files import jpeg_with_exif, pdf_with_text

    user = get_user_model().objects.create_superuser("ada", password=PASSWORD)
    backend = Backend.objects.create(name="simulator", base_url=simulator_url + "/v1")
    primary = Slot.objects.create(
        name="primary", backend=backend, upstream_model="sim", is_default=True, accepts_images=True
    )
    Slot.objects.create(name="fast", backend=backend, upstream_model="sim")
    for title in ("Trip to Lisbon", "Quarterly report outline", "Regex for dates"):
        Conversation.objects.create(user=user, title=title)
    chat = Conversation.objects.create(user=user, title="Remove duplicates in Python")
    files = [
        attachment_create(upload=SimpleUploadedFile(name, data), slot=primary, user=user)
        for name, data in (
            ("screenshot.jpg", jpeg_with_exif(640, 360)),
            ("style-guide.pdf", pdf_with_text(["Keep the order of items."])),
        )
    ]
    Attachment.objects.filter(pk__in=[f.pk for f in files]).update(conversation=chat)
    question = Message.objects.create(
        conversation=chat,
        role="user",
        content="How do I remove duplicates from a list?",
        attachment_ids=[str(f.pk) for f in files],
    )
    answer = Message.objects.create(
        conversation=chat,
        role="assistant",
        parent=question,
        content=ANSWER,
        slot_name="primary",
        ttft_ms=182.0,
        tokens_per_s=48.5,
    )
    services.conversation_set_leaf(conversation=chat, leaf=answer)
    services.conversation_share(conversation=chat, shared=True)
    Prompt.objects.create(owner=user, title="Summarise", text="Summarise this text:\n\n")
    widget = Widget.objects.create(
        name="Docs", slot=Slot.objects.get(name="primary"), allowed_origins=host, greeting="Hi!"
    )
    for ttft, speed in ((120, 60), (240, 45), (900, 20)):
        usage = services.usage_today(
            slot_name="primary",
            ok=True,
            user_id=user.pk,
            prompt_tokens=40,
            completion_tokens=300,
            ttft_ms=ttft,
            tokens_per_s=speed,
        )
        async_to_sync(services.usage_arecord)(usage)
    chat.refresh_from_db()
    return widget.public_key, str(chat.share_id)


def _host_site(root: Path) -> str:
    """A static site on its own origin for the widget, serving ``root``."""
    root.mkdir()
    handler = partial(_Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["SCREENSHOT_HOST_ROOT"] = str(root)
    return f"http://localhost:{server.server_address[1]}"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _shoot(out: Path, base: str, host: str, widget_key: str, share_id: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    from chat.models import Conversation, Widget
    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

    root = Path(os.environ["SCREENSHOT_HOST_ROOT"])
    (root / "index.html").write_text(
        "<!doctype html><title>Docs</title><h1>Docs</h1>"
        f'<script src="{base}/widget/{widget_key}/embed.js" async></script>'
    )
    chat = Conversation.objects.get(title="Remove duplicates in Python")
    pages = {
        "chat": "/",
        "conversation": f"/c/{chat.pk}/",
        "shared": f"/s/{share_id}/",
        "prompts": "/settings/prompts/",
        "api-keys": "/settings/keys/",
        "usage": "/settings/usage/",
        "admin": "/admin/",
        "admin-usage": "/admin/chat/usageday/dashboard/",
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        for size, (width, height) in WIDTHS.items():
            for theme in THEMES:
                context = browser.new_context(
                    viewport={"width": width, "height": height}, color_scheme=theme
                )
                page = context.new_page()
                page.goto(base + "/login/")
                page.screenshot(path=out / f"login-{size}-{theme}.png")
                page.get_by_label("Username").fill("ada")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                expect(page.locator("#chat")).to_have_attribute("data-ready", "true")
                for name, path in pages.items():
                    page.goto(base + path)
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=out / f"{name}-{size}-{theme}.png")
                page.goto(host + "/index.html")
                page.get_by_role("button", name=Widget._meta.get_field("title").default).click()
                frame = page.frame_locator("iframe[data-slipstream-panel]")
                expect(frame.locator("#widget")).to_have_attribute("data-ready", "true")
                page.screenshot(path=out / f"widget-{size}-{theme}.png")
                context.close()
        browser.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
