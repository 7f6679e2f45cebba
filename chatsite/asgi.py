"""ASGI entry point: daphne serves Django's ASGI app through Channels' protocol router.

The relay endpoints are plain async Django views returning ``StreamingHttpResponse`` (not
Channels consumers): Django's middleware (sessions, CSRF) applies to them, and Django cancels the
response generator with ``CancelledError`` when the client disconnects. See STYLE.md on
channels#1249.
"""

from __future__ import annotations

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

application = ProtocolTypeRouter({"http": get_asgi_application()})
