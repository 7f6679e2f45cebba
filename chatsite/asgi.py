"""ASGI entry point: daphne serves Django's ASGI app through Channels' protocol router.

The relay endpoints are plain async Django views returning ``StreamingHttpResponse`` (not
Channels consumers): Django's middleware (sessions, CSRF) applies to them, and Django cancels the
response generator with ``CancelledError`` when the client disconnects. See STYLE.md on
channels#1249.

daphne does not speak the ASGI lifespan protocol, so the process's background work (the sweeper
that marks answers of dead processes ``interrupted``) starts with the first request.
"""

from __future__ import annotations

import os
from typing import Any

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

django_app = get_asgi_application()


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
