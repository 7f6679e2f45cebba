"""Screenshots of the chat for the docs: ``python docs/take_screenshots.py``.

Starts the simulator and Slipstream (daphne) on a throwaway SQLite database, asks one question
whose answer (replayed by the simulator) has reasoning, markdown and code, then saves the chat
in light and dark themes, desktop and phone widths, as docs/screenshots/*.png. Uses Debian's
Chromium like the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import django  # noqa: E402

django.setup()  # the test helpers imported below import models

from chat.simulator.thread import SimulatorThread  # noqa: E402
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.e2e.test_render import MARKDOWN, chat_stream, pieces  # noqa: E402
from tests.support.daphne_server import DaphneServer  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
THINKING = "The user wants the changes summarised. List them, then show the new function."
SETUP = """
from django.contrib.auth.models import User
from chat.models import Backend, Slot
User.objects.create_user("ada", password="correct horse 42")
backend = Backend.objects.create(name="simulator", base_url="{sim}/v1")
Slot.objects.create(name="primary", display_name="Primary", backend=backend,
                    upstream_model="sim", is_default=True)
"""


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    work = Path(tempfile.mkdtemp(prefix="slipstream-shots-"))
    replays = work / "replays"
    replays.mkdir()
    answer = [{"reasoning_content": p} for p in pieces(THINKING, 12)]
    answer += [{"content": p} for p in pieces(MARKDOWN, 12)]
    (replays / "answer.sse").write_bytes(chat_stream(answer))
    env = {
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "DJANGO_SECRET_KEY": "screenshots",
        "DJANGO_DEBUG": "false",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    run_env = {**os.environ, **env}
    subprocess.run([*manage, "migrate", "-v0"], check=True, env=run_env, cwd=ROOT)
    OUT.mkdir(parents=True, exist_ok=True)
    with SimulatorThread(replay_dir=replays) as sim, DaphneServer(env=env) as server:
        sim.configure(replay="answer.sse", tokens_per_s=0, ttft_ms=0)
        setup = SETUP.format(sim=sim.base_url)
        subprocess.run([*manage, "shell", "-c", setup], check=True, env=run_env, cwd=ROOT)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            page.goto(server.base_url + "/")
            page.get_by_label("Username").fill("ada")
            page.get_by_label("Password").fill("correct horse 42")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#chat")).to_have_attribute("data-ready", "true")
            page.get_by_role("textbox", name="Message").fill("What changed in the release?")
            page.get_by_role("button", name="Send").click()
            expect(page.locator("article.message.assistant").last).to_have_attribute(
                "data-status", "complete"
            )
            url, signed_in = page.url, context.storage_state()
            for scheme in ("light", "dark"):
                for name, viewport in (
                    ("desktop", {"width": 1280, "height": 860}),
                    ("phone", {"width": 390, "height": 844}),
                ):
                    shot = browser.new_context(
                        viewport=viewport, color_scheme=scheme, storage_state=signed_in
                    ).new_page()
                    shot.goto(url)
                    expect(shot.locator("article.message.assistant.rendered")).to_have_count(1)
                    shot.locator("#slot-state").wait_for()
                    path = OUT / f"chat-{scheme}-{name}.png"
                    shot.screenshot(path=str(path))
                    print(path.relative_to(ROOT))
            browser.close()


if __name__ == "__main__":
    main()
