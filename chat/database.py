"""The database's faults, seen from every thread that runs ORM work (issue 29).

Django replaces a broken connection only around a request (``close_old_connections`` on
``request_started`` and ``request_finished``). ORM work outside a request (``chat.records``'
writer, finish callbacks, the sweeper, the widget watch: every ``sync_to_async`` call of a task
started by ``chat.relay.background.spawn``) runs on asgiref's one process-wide thread, which
never passes there: after a PostgreSQL restart that thread kept its dead connection, and every
later write failed with "connection is closed" until the process restarted, so answers were
stored ``streaming`` and empty and no usage was counted. ``CheckedThread`` runs each call with
the thread's broken connections closed first, so the call reconnects.

``is_unavailable`` tells a database that cannot be reached (retry later: ``chat.records``) from
a value it refused (``DataError``, ``IntegrityError``: retrying changes nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError, connections

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Retry-After (s) for a request refused while the database is unavailable: about how long a
# failover or a restart of PostgreSQL takes.
RETRY_AFTER_S = 5


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached or cannot serve now: a refused,
    cut or closed connection, a server shutting down or refusing connections, a lock or
    statement timeout (PEP 249's ``OperationalError`` and ``InterfaceError``, as Django wraps
    them), as opposed to a value or constraint it refused (``DataError``,
    ``IntegrityError``, ``ProgrammingError``)."""
    return isinstance(exc, OperationalError | InterfaceError)


class FailureLog:
    """The log of a task that runs again and again (the sweeper, the widget watch): while the
    database is unavailable, one line when that starts and one when it answers again, not a
    traceback every round (every 0.25 s for the widget watch); any other failure with its
    traceback. ``what`` names the task in each line."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, exc: BaseException) -> None:
        """Log ``exc``, the task's failure this round."""
        if not is_unavailable(exc):
            logger.error("%s failed", self.what, exc_info=exc)
        elif not self.down:
            self.down = True
            reason = str(exc).strip()[:200] or type(exc).__name__
            logger.warning("%s: the database is unavailable (%s); trying again", self.what, reason)

    def succeeded(self) -> None:
        """The task's round went through: say so once after an outage."""
        if self.down:
            self.down = False
            logger.warning("%s: the database answers again", self.what)


# A connection unused this long (s) is checked before its next query (CONN_HEALTH_CHECKS):
# long enough that a busy thread never pays for it, short enough that a connection cut while
# idle (a database restarted, a proxy's idle timeout) fails no write.
IDLE_CHECK_S = 5.0


def drop_broken_connections(*, idle_s: float = 0.0) -> None:
    """Close this thread's connections that failed since they were last checked and do not
    answer any more (Django's ``close_if_unusable_or_obsolete``, for those alone: a healthy
    connection costs no query), so the next query opens a new one; and when the thread was
    idle ``idle_s`` (s) or more, have Django check the others before their next query
    (``CONN_HEALTH_CHECKS``, one ``SELECT 1``), as it does at a request's start. A connection
    inside a transaction is left to it (``transaction.atomic`` drops a connection it cannot
    roll back). Never raises."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue
        if not conn.errors_occurred:
            wrapper: Any = conn  # django-stubs lacks the health-check attributes (Django 4.1+)
            if idle_s >= IDLE_CHECK_S and wrapper.health_check_enabled:
                wrapper.health_check_done = False
            continue
        try:
            conn.close_if_unusable_or_obsolete()
        except DatabaseError:
            logger.debug("closing a broken connection failed", exc_info=True)
            conn.connection = None


class CheckedThread(ThreadPoolExecutor):
    """One thread for ORM work (an executor of one worker, as asgiref's) whose every call
    first closes the thread's broken connections, and after ``IDLE_CHECK_S`` of idleness
    checks the others (``drop_broken_connections``)."""

    def __init__(self, name: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=name)
        self._last_call = time.monotonic()  # written by this thread only

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        return super().submit(self._checked, fn, *args, **kwargs)

    def _checked(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        now = time.monotonic()
        drop_broken_connections(idle_s=now - self._last_call)
        try:
            return fn(*args, **kwargs)
        finally:
            self._last_call = time.monotonic()


# What drop_broken_connections sets on Django's BaseDatabaseWrapper (Django >= 4.1, where
# CONN_HEALTH_CHECKS came in); checked at start-up.
_HEALTH_CHECK_ATTRIBUTES = ("health_check_enabled", "health_check_done")


def check_background_thread() -> None:
    """Make asgiref's process-wide thread, where ``sync_to_async(thread_sensitive=True)``
    calls run outside any request (background tasks' ORM work), a ``CheckedThread``. Called
    once at start-up (``ChatConfig.ready``), before any such call.

    Relies on asgiref's class attribute ``SyncToAsync.single_thread_executor`` (asgiref 3.x:
    a ``ThreadPoolExecutor`` of one worker) and on Django's connection attributes
    ``health_check_enabled`` and ``health_check_done``; raises ``ImproperlyConfigured`` at
    start-up when an upgrade changed them, rather than let background writes fail for good
    after the first database outage."""
    current = getattr(SyncToAsync, "single_thread_executor", None)
    if isinstance(current, CheckedThread):
        return
    if not all(hasattr(connections["default"], name) for name in _HEALTH_CHECK_ATTRIBUTES):
        raise ImproperlyConfigured(
            "Django's database wrapper has no health_check_enabled/health_check_done any more "
            "(Django upgraded?): chat.database cannot have idle connections checked."
        )
    if not isinstance(current, ThreadPoolExecutor) or current._max_workers != 1:
        raise ImproperlyConfigured(
            "asgiref's SyncToAsync.single_thread_executor is not a one-thread "
            "ThreadPoolExecutor any more (asgiref upgraded?): chat.database cannot give "
            "background ORM work a connection that survives a database outage."
        )
    SyncToAsync.single_thread_executor = CheckedThread("orm-background")
    current.shutdown(wait=False)
