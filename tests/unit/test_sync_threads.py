"""Requests' synchronous calls run on a few long-lived threads (chatsite.asgi.SlipstreamHandler):
a thread busy with a slow call is passed over while another is free."""

from __future__ import annotations

import threading

from chatsite.asgi import SlipstreamHandler


def test_a_busy_thread_is_passed_over_and_idle_ones_take_turns() -> None:
    handler = SlipstreamHandler(threads=3)
    release = threading.Event()
    try:
        slow = handler.threads[1].submit(release.wait, 30)  # a login's password hash, say
        picks = [handler.pick_thread() for _ in range(6)]
        assert handler.threads[1] not in picks
        assert set(picks) == {handler.threads[0], handler.threads[2]}
        release.set()
        assert slow.result(timeout=30) is True
        handler.threads[1].shutdown(wait=True)  # its done callbacks have run
        assert handler.threads[1].pending == 0
        assert handler.threads[1] in [handler.pick_thread() for _ in range(3)]
    finally:
        release.set()
        for thread in handler.threads:
            thread.shutdown(wait=True)


def test_every_thread_busy_picks_the_least_loaded() -> None:
    handler = SlipstreamHandler(threads=2)
    release = threading.Event()
    try:
        for _ in range(2):
            handler.threads[0].submit(release.wait, 30)
        handler.threads[1].submit(release.wait, 30)
        assert {handler.pick_thread() for _ in range(4)} == {handler.threads[1]}
    finally:
        release.set()
        for thread in handler.threads:
            thread.shutdown(wait=True)


async def test_a_stream_whose_iterator_raises_still_ends() -> None:
    """A streaming body that fails mid-way is ended with the closing message (the client sees
    the stream end), not left open until the client's read timeout."""
    from django.http import StreamingHttpResponse

    async def body():
        yield b"data: one\n\n"
        raise ValueError("a bug while rendering the next event")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    handler = SlipstreamHandler(threads=1)
    try:
        await handler.send_response(StreamingHttpResponse(body()), send)
    finally:
        handler.threads[0].shutdown(wait=True)
    assert [m["type"] for m in sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]
    assert sent[1]["body"] == b"data: one\n\n"
    assert sent[-1].get("more_body", False) is False
