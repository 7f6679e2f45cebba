"""Settings of the daphne processes the tests start: the app's own, plus one test-only fix.

pytest-django's ``transactional_db`` flushes every table after each test, and the flush's
``post_migrate`` recreates the content types under new ids. A test server lives for the whole
session, and Django caches content types per process (``ContentType.objects``): an admin write
after a flush then logs its ``LogEntry`` under a content type id that no longer exists, and the
commit fails its foreign key (seen as a 500 from ``/admin/chat/backend/add/`` after an e2e test
had opened the admin). Forgetting the cache on each request keeps the server's view equal to
the database's; a deployed server never has its tables flushed under it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.utils.decorators import sync_and_async_middleware

from chatsite.settings import *  # noqa: F403
from chatsite.settings import MIDDLEWARE


@sync_and_async_middleware
def fresh_content_types(get_response: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Clear the content type cache before each request (see the module)."""
    from django.contrib.contenttypes.models import ContentType  # apps are ready by now

    if iscoroutinefunction(get_response):

        async def middleware(request: Any) -> Any:
            ContentType.objects.clear_cache()
            response: Awaitable[Any] = get_response(request)
            return await response

        return middleware

    def sync_middleware(request: Any) -> Any:
        ContentType.objects.clear_cache()
        return get_response(request)

    return sync_middleware


MIDDLEWARE = ["tests.support.server_settings.fresh_content_types", *MIDDLEWARE]
