"""A connection that breaks mid-answer, in Chromium: the page resumes after the last chunk it
rendered (``?after=N``), and the answer ends whole, with nothing shown twice.

The break is real: a TCP proxy between Chromium and daphne resets the connection carrying the
answer's ``POST /chat/stream/`` right after the event with ``id: N`` has gone through, so the
browser's read fails as it does on a network that drops."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Request, expect

from chat.models import Message, Slot
from chat.simulator.thread import SimulatorThread
from tests.e2e.test_chat import shown_words, sign_in
from tests.e2e.test_chat_flow import send, what_the_simulator_says
from tests.support.daphne_server import DaphneServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class CuttingProxy:
    """``base_url`` forwards to ``target_port``; the first response to ``POST /chat/stream/``
    is cut after the SSE event with ``id: cut_after`` and its HTTP/1.1 chunk's CRLF (daphne
    writes each event as one chunk). The cut is a reset (``SO_LINGER`` 0) towards the browser
    and a close towards daphne; ``on_cut`` runs just before it."""

    def __init__(self, target_port: int, *, cut_after: int, on_cut: Callable[[], None]) -> None:
        self.target_port = target_port
        self.marker = b"\r\nid: %d\n" % cut_after
        self.on_cut = on_cut
        self.armed = True
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        # shutdown() wakes the threads blocked in accept() or recv(); close() alone would not.
        with self.lock:
            for sock in [self.listener, *self.sockets]:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            marked = threading.Event()
            threading.Thread(
                target=self._requests, args=(client, upstream, marked), daemon=True
            ).start()
            threading.Thread(
                target=self._responses, args=(upstream, client, marked), daemon=True
            ).start()

    def _requests(
        self, client: socket.socket, upstream: socket.socket, marked: threading.Event
    ) -> None:
        try:
            while data := client.recv(65536):
                with self.lock:
                    if self.armed and b"POST /chat/stream/ " in data:
                        self.armed = False
                        marked.set()  # before the request leaves, so before its response
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()

    def _responses(
        self, upstream: socket.socket, client: socket.socket, marked: threading.Event
    ) -> None:
        seen = b""
        sent = 0
        try:
            while data := upstream.recv(65536):
                if not marked.is_set():
                    client.sendall(data)
                    continue
                seen += data
                start = seen.find(self.marker)
                end = seen.find(b"\n\n\r\n", start) if start >= 0 else -1
                if end < 0:
                    # Hold back a possible start of the marker; send what surely comes before it.
                    keep = len(seen) if start >= 0 else max(sent, len(seen) - len(self.marker))
                    client.sendall(seen[sent:keep])
                    sent = keep
                    continue
                client.sendall(seen[sent : end + 4])
                self.on_cut()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Wake the thread reading from the browser: a socket a recv() blocks on is not
                # released (nor reset) by close() until that recv() returns.
                client.shutdown(socket.SHUT_RD)
                self.cut.set()
                break
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()


@pytest.fixture
def proxy_for(server: DaphneServer) -> Iterator[Callable[..., CuttingProxy]]:
    proxies: list[CuttingProxy] = []

    def make(*, cut_after: int, on_cut: Callable[[], None]) -> CuttingProxy:
        proxies.append(CuttingProxy(server.port, cut_after=cut_after, on_cut=on_cut))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def test_a_dropped_answer_resumes_after_the_last_chunk_rendered(
    browser_context: BrowserContext,
    server: DaphneServer,
    slot: Slot,
    sim: SimulatorThread,
    user: Any,
    proxy_for: Callable[..., CuttingProxy],
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=25, length=60)
    completed_at_cut: list[int] = []
    proxy = proxy_for(
        cut_after=10, on_cut=lambda: completed_at_cut.append(sim.stats()["completed"])
    )
    page = browser_context.new_page()
    answer_requests: list[str] = []

    def on_request(request: Request) -> None:
        if "/chat/stream/" in request.url or "/chat/generations/" in request.url:
            answer_requests.append(request.url)

    page.on("request", on_request)
    sign_in(page, proxy.base_url)
    send(page, "Tell me a long story")
    answer = page.locator("article.message.assistant").last
    expect(answer).to_have_attribute("data-status", "complete", timeout=15_000)

    assert proxy.cut.is_set()
    assert completed_at_cut == [0]  # it broke while the answer ran
    resumes = [url for url in answer_requests if "/chat/generations/" in url]
    assert len(answer_requests) == 2, answer_requests
    assert len(resumes) == 1, answer_requests
    # The reset may discard events the browser had received but not yet read (the kernel drops
    # a socket's unread data on RST), so it resumes after the last one it rendered: at most 10.
    # That it asked for the right one is what the text below shows: every word once, in order.
    after = re.search(r"/chat/generations/[^/]+/\?after=(\d+)$", resumes[0])
    assert after, resumes
    assert 1 <= int(after.group(1)) <= 10, resumes
    stored = Message.objects.get(role="assistant")
    sent = what_the_simulator_says(sim, sim.stats()["last_request"])
    assert stored.status == "complete"
    assert stored.content == sent
    assert len(sent.split()) == 60
    shown = answer.locator(".content").inner_text()
    assert " ".join(shown.split()) == " ".join(sent.split())  # every word once, in order
    assert sim.stats()["streams_started"] == 1
    assert sim.stats()["cancelled"] == 0


def test_a_reload_goes_on_after_the_checkpoint_it_shows(
    browser_context: BrowserContext,
    server: DaphneServer,
    slot: Slot,
    sim: SimulatorThread,
    user: Any,
) -> None:
    # 130 steps at 25/s: reasoning, then the answer; the reload comes well after the first
    # checkpoint (about a second in) and well before the end.
    sim.configure(ttft_ms=0, tokens_per_s=25, length=120, reasoning_tokens=10)
    page = browser_context.new_page()
    resumes: list[str] = []

    def on_request(request: Request) -> None:
        if "/chat/generations/" in request.url and request.method == "GET":
            resumes.append(request.url)

    page.on("request", on_request)
    sign_in(page, server.base_url)
    send(page, "Tell me a long story")
    progress = shown_words(page, 30)  # 40 of 130 steps in: 1.6 s
    # Reloaded once a checkpoint is stored (about a second in): a word at a time until then.
    while Message.objects.get(role="assistant").checkpoint is None:
        assert progress["status"] == "streaming", progress
        progress = shown_words(page, progress["words"] + 1)
    assert progress["status"] == "streaming", progress
    reloaded = page.reload()
    assert reloaded is not None
    # The page as served: the checkpoint's text, its sequence number and its delta.
    rendered = re.search(r'data-resume-after="(\d+)"', reloaded.text())
    assert rendered, "the streaming answer was rendered without its checkpoint's number"
    resumed = page.locator("article.message.assistant").last
    expect(resumed).to_have_attribute("data-status", "complete", timeout=15_000)

    assert len(resumes) == 1, resumes
    after = re.search(r"/chat/generations/[^/]+/\?after=(\d+)$", resumes[0])
    assert after, resumes
    assert int(after.group(1)) == int(rendered.group(1)) > 10  # past the reasoning's chunks
    stored = Message.objects.get(role="assistant")
    sent = what_the_simulator_says(sim, sim.stats()["last_request"])
    assert stored.status == "complete"
    assert stored.content == sent
    assert len(sent.split()) == 120
    # Exactly the answer: the checkpoint's part once, then every chunk after it once, in order.
    shown = resumed.locator(".content").inner_text()
    assert " ".join(shown.split()) == " ".join(sent.split())
    thinking = resumed.locator(".reasoning-text").text_content() or ""  # folded away: not shown
    assert " ".join(thinking.split()) == " ".join(stored.reasoning.split())
    assert len(stored.reasoning.split()) == 10
    assert sim.stats()["streams_started"] == 1
    assert sim.stats()["cancelled"] == 0
