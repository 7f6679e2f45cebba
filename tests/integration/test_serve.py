"""``make run`` as a new user runs it: ``manage.py serve`` on a fresh SQLite file migrates,
creates the admin and the simulator's slot, starts daphne and the simulator, and says where
Slipstream and its OpenAI-compatible API are (not the simulator's URL, which read as the
app's). Pages name an icon, and ``/favicon.ico`` answers, so browsers log no 404."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.support.daphne_server import REPO
from tests.support.llama_server import free_port


def test_serve_says_where_the_app_and_its_api_are(tmp_path: Path) -> None:
    port, simulator_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REDIS_", "CACHE_", "PROMETHEUS_", "DJANGO_", "SLIPSTREAM_"))
    }
    env |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_SECRET_KEY": "a secret only this test knows, long enough for Django's checks",
        "SLIPSTREAM_SIMULATOR_PORT": str(simulator_port),
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    printed: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("OpenAI-compatible API:") for line in printed):
            assert process.poll() is None, "".join(printed)
            printed.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        # daphne starts after the line is printed and, at verbosity 0, says nothing when it
        # listens: no event to wait on, so poll until it answers (the deadline bounds it).
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "".join(printed)
                time.sleep(0.1)
        login = httpx.get(base + "/login/")
        icon = httpx.get(base + "/favicon.ico", follow_redirects=True)
    finally:
        process.terminate()
        process.wait(timeout=15)
        reader.join(timeout=5)  # it ends at the pipe's end, once the process is gone
        stdout.close()
    output = "".join(printed)
    assert f"Slipstream: {base}/" in output
    assert f"OpenAI-compatible API: {base}/v1" in output
    assert f"simulator (a test upstream, not a model) on port {simulator_port}" in output
    assert "base_url" not in output  # the simulator's own banner, which named its URL
    assert "Created the admin account 'admin'." in output
    assert login.status_code == 200
    assert 'rel="icon"' in login.text
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/svg+xml"
