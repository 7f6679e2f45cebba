"""ASGI entry point: daphne serves Django's ASGI app through Channels' protocol router, with
``/v1``'s two completion endpoints served in front of it by ``chat.api_asgi`` (the relay's
hottest requests, without Django's per-request cost).

The relay endpoints are plain async Django views returning ``StreamingHttpResponse`` (not
Channels consumers): Django's middleware (sessions, CSRF) applies to them, and Django cancels the
response generator with ``CancelledError`` when the client disconnects. See STYLE.md on
channels#1249.

daphne does not speak the ASGI lifespan protocol, so the process's background work (the sweeper
that marks answers of dead processes ``interrupted``) starts with the first request.

Django's own handler runs each request in a new asgiref ``ThreadSensitiveContext``, whose
executor starts a thread on the request's first ``sync_to_async`` call and joins it at the end.
Every request makes such calls (Django sends ``request_started`` and closes the response through
one), so every request started and joined a thread, and opened its own database connection in
it: the largest item of an empty view's cost (bench/middleware_floor.py). ``SlipstreamHandler``
gives each request one of a few long-lived threads instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import Future
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from channels.routing import ProtocolTypeRouter
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from chat.database import CheckedThread

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

logger = logging.getLogger(__name__)


class SyncThread(CheckedThread):
    """One thread for requests' synchronous calls, counting the calls it has not finished; a
    connection broken since its last call is replaced before the next (``chat.database``), as
    Django's ``close_old_connections`` would at the next request's start.
    ``submitted`` is written only by the event loop's thread (asgiref submits from there) and
    ``finished`` only by this thread, so ``pending`` needs no lock."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.submitted = 0
        self.finished = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.submitted += 1
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future[Any]) -> None:
        self.finished += 1

    @property
    def pending(self) -> int:
        return self.submitted - self.finished


class SlipstreamHandler(ASGIHandler):
    """Django's ASGI handler, with the thread that runs a request's synchronous code (its
    ``sync_to_async(thread_sensitive=True)`` calls: the ORM, sync middleware and views) taken
    from a fixed pool of ``threads`` single-thread executors, instead of a thread started and
    joined per request. A request gets the thread with the fewest calls waiting (the first of
    them, turn by turn, when several are idle), so a slow one (a login's password hash) holds
    up only requests that arrive while every thread is busy.

    What asgiref's ``ThreadSensitiveContext(executor=...)`` promises still holds: one request's
    synchronous calls run one at a time on one thread (so on one database connection). Calls of
    different requests that share a thread queue behind each other; tasks that outlive their
    request run in a fresh context (``chat.relay.background.spawn``), on asgiref's process-wide
    thread.
    """

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.threads = [SyncThread(f"django-sync-{i}") for i in range(max(1, threads))]
        self._turn = 0

    def pick_thread(self) -> SyncThread:
        """The thread with the fewest calls pending, starting from the one after the last pick
        (so idle threads take turns and each keeps its connection warm)."""
        count = len(self.threads)
        start = self._turn = (self._turn + 1) % count
        best = self.threads[start]
        for step in range(1, count):
            if not best.pending:
                break
            candidate = self.threads[(start + step) % count]
            if candidate.pending < best.pending:
                best = candidate
        return best

    async def send_response(self, response: Any, send: Any) -> None:
        """Django's, except that a streaming body whose iterator raises still ends: the
        failure is logged and the closing message sent, so the client sees the stream end
        (cut short) at once instead of waiting on an open connection until its read timeout
        (Django lets the exception out with the response unfinished, and daphne leaves the
        connection open). A client that left (``CancelledError``) is not caught."""
        try:
            await super().send_response(response, send)
        except Exception:
            if not response.streaming:
                raise
            logger.exception("a streaming response failed mid-body: ending it there")
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext(executor=self.pick_thread()):
            await self.handle(scope, receive, send)


django.setup(set_prefix=False)  # as get_asgi_application does

django_app = SlipstreamHandler(threads=settings.SLIPSTREAM_SYNC_THREADS)


class StartsBackgroundWork:
    """Wraps an ASGI app; on the first request, starts the process's background tasks."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.started = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.started:
            self.started = True
            from chat.relay.background import spawn
            from chat.sweep import sweep_forever

            spawn(sweep_forever())
        await self.app(scope, receive, send)


# The two completion endpoints in front of Django (chat.api_asgi), every other request to it.
from chat.api_asgi import LeanApi  # noqa: E402  (after django.setup)

application = ProtocolTypeRouter({"http": StartsBackgroundWork(LeanApi(django_app))})
