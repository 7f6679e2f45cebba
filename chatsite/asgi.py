"""ASGI entry point: daphne serves Django's ASGI app through Channels' protocol router.

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

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from channels.routing import ProtocolTypeRouter
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


class SlipstreamHandler(ASGIHandler):
    """Django's ASGI handler, with the thread that runs a request's synchronous code (its
    ``sync_to_async(thread_sensitive=True)`` calls: the ORM, sync middleware and views) taken
    from a fixed pool of ``threads`` single-thread executors, round robin, instead of a thread
    started and joined per request.

    What asgiref's ``ThreadSensitiveContext(executor=...)`` promises still holds: one request's
    synchronous calls run one at a time on one thread (so on one database connection). Calls of
    different requests that share a thread queue behind each other; tasks that outlive their
    request run in a fresh context (``chat.relay.background.spawn``), on asgiref's process-wide
    thread.
    """

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-sync-{i}")
            for i in range(threads)
        ]
        self._turns = itertools.cycle(self.executors)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext(executor=next(self._turns)):
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
            from chat.answers import sweep_forever
            from chat.relay.background import spawn

            spawn(sweep_forever())
        await self.app(scope, receive, send)


application = ProtocolTypeRouter({"http": StartsBackgroundWork(django_app)})
