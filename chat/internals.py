"""Where Slipstream leans on other projects' internals, and the versions that code was written
and measured against (docs/architecture.md, "Where we lean on other projects' internals").

Each ``Lean`` is one patch, private import or reliance on undocumented behaviour that a release
of that package may break without notice (no deprecation covers private names). ``changed``
compares the installed versions (``importlib.metadata.version``) with ``PINNED``; any other
version, newer or older, is an error that names the package and each ``Lean`` to re-verify:
read the package's changes for the names listed, run the tests named in the architecture
section, re-measure if the code's reason was a figure, then bump the version here.

Checked at start-up: as a Django system check (``check``, registered in ``ChatConfig.ready``:
``manage.py check``, ``runserver``, ``migrate`` and so the Procfile's release step fail) and
by ``verify`` at the top of ``chatsite.server.main`` (every daphne process: ``manage.py
serve``, the Procfile, the systemd unit, the tests' and benchmarks' servers), which daphne's
start does not otherwise run. Its cost: one metadata lookup per package, a few ms once per
process. No Django import at module level, so the server can call it before it patches.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

CHECK_ID = "slipstream.E032"
SECTION = '"Where we lean on other projects\' internals"'


@dataclass(frozen=True)
class Lean:
    """One place that leans on ``package``'s internals: ``where`` (our ``module.name``) and
    ``what`` it patches, imports or relies on there."""

    package: str  # the distribution's name, as importlib.metadata knows it
    where: str
    what: str


# The versions the leans below were written and measured against (requirements.txt pins the
# direct dependencies at the same; asgiref and httpcore come with Django and httpx).
PINNED: dict[str, str] = {
    "Twisted": "26.10.0",
    "daphne": "4.2.3",
    "Django": "5.2.19",
    "asgiref": "3.13.0",
    "httpx": "0.28.1",
    "httpcore": "1.0.9",
    "whitenoise": "6.12.0",
    "django-csp": "4.0",
}

LEANS: tuple[Lean, ...] = (
    Lean(
        "Twisted",
        "chatsite.server.write_at_once",
        "FileDescriptor.write/writeSequence replaced; reads dataBuffer, _tempDataBuffer, "
        "_writeDisconnected and calls writeSomeData",
    ),
    Lean(
        "Twisted",
        "chatsite.server.plain_twisted_http",
        "unwraps twisted.python.deprecate._ModuleProxy (its _module) around twisted.web.http",
    ),
    Lean(
        "Twisted",
        "chatsite.server.no_twisted_access_log",
        "sets HTTPFactory._logFile to None: Twisted's 'no access log'",
    ),
    Lean(
        "Twisted",
        "chatsite.server.Drain",
        "Twisted installs its SIGINT/SIGTERM handlers before the reactor's after-startup "
        "triggers (ReactorBase._reallyStartRunning)",
    ),
    Lean(
        "daphne",
        "chatsite.server.plain_twisted_http",
        "replaces the module global daphne.http_protocol.http",
    ),
    Lean(
        "daphne",
        "chatsite.server.no_form_parsing",
        "wraps daphne.http_protocol.WebRequest.__init__ (parsePOSTFormSubmission=False)",
    ),
    Lean(
        "daphne",
        "chatsite.server.no_twisted_access_log",
        "wraps daphne.http_protocol.HTTPFactory.startFactory; reads server.verbosity",
    ),
    Lean(
        "daphne",
        "chatsite.server.drain_on_signals",
        "subclasses daphne.cli.CommandLineInterface, overriding load_asgi_app",
    ),
    Lean(
        "daphne",
        "chatsite.server.use_uvloop",
        "daphne.server creates its asyncio loop (and reactor) when first imported",
    ),
    Lean(
        "Django",
        "chatsite.asgi.SlipstreamHandler",
        "ASGIHandler.__call__ re-implemented around handle(); send_response wrapped",
    ),
    Lean(
        "Django",
        "chat.middleware.OnLoop",
        "MiddlewareMixin.__acall__ overridden (also chat.csp.CSPMiddleware, "
        "chat.sso_session.SessionRecheck)",
    ),
    Lean(
        "Django",
        "chat.middleware.AuthenticationMiddleware",
        "fills request._acached_user, the cache of Django's request.auser()",
    ),
    Lean(
        "Django",
        "chat.sso_session.SessionRecheck",
        "reads SessionBase._session_cache, the session as the view loaded it",
    ),
    Lean(
        "Django",
        "chat.middleware.MessageMiddleware",
        "reads the message storage's used and added_new",
    ),
    Lean(
        "Django",
        "chat.api_asgi.LeanApi",
        "django.http.request.split_domain_port/validate_host; HttpRequest.get_host and the "
        "security middleware's headers re-implemented",
    ),
    Lean(
        "Django",
        "chat.readcache._SQLiteVersion",
        "DatabaseCreation.is_in_memory_db; the SQLite file read by sqlite3 beside Django",
    ),
    Lean(
        "Django",
        "chat.database.drop_broken_connections",
        "sets BaseDatabaseWrapper.health_check_done; reads health_check_enabled",
    ),
    Lean(
        "Django",
        "chat.records.write_batch",
        "SQL compiled by hand from Model._meta and Field.get_db_prep_value, per vendor",
    ),
    Lean(
        "asgiref",
        "chat.database.check_background_thread",
        "replaces SyncToAsync.single_thread_executor (a one-thread ThreadPoolExecutor)",
    ),
    Lean(
        "asgiref",
        "chatsite.asgi.SlipstreamHandler",
        "ThreadSensitiveContext(executor=...): a request's sync calls on a kept thread",
    ),
    Lean(
        "httpx",
        "chat.relay.upstream.asyncio_transport",
        "replaces AsyncHTTPTransport._pool; reads the built pool's _ssl_context",
    ),
    Lean(
        "httpx",
        "chat.relay.http1",
        "httpx's exception classes raised by a hand-written HTTP/1.1 client, so failures map "
        "as httpx's do (upstream.connection_error)",
    ),
    Lean(
        "httpcore",
        "chat.relay.transport",
        "imports httpcore._backends.base (SOCKET_OPTION, the backend and stream classes) and "
        "httpcore._utils.is_socket_readable",
    ),
    Lean(
        "whitenoise",
        "chat.middleware.StaticFilesMiddleware",
        "WhiteNoiseMiddleware's autorefresh, find_file, files, serve and static_prefix",
    ),
    Lean(
        "django-csp",
        "chat.csp.CSPMiddleware",
        "its process_request/process_response called on the loop from __acall__",
    ),
)


def installed(package: str) -> str | None:
    """``package``'s installed version, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def changed() -> list[str]:
    """One message per package in ``PINNED`` whose installed version differs (or that is not
    installed), naming the version found, the one pinned and each ``Lean`` to re-verify.
    Empty when every version is the pinned one."""
    messages = []
    for package, pinned in PINNED.items():
        found = installed(package)
        if found == pinned:
            continue
        leans = "; ".join(f"{x.where} ({x.what})" for x in LEANS if x.package == package)
        state = f"{found} is installed" if found else "is not installed"
        messages.append(
            f"{package} {state}, but Slipstream's code that leans on its internals was "
            f"written for {package} {pinned}: re-verify {leans}; then set "
            f"chat.internals.PINNED[{package!r}] (docs/architecture.md, {SECTION})"
        )
    return messages


def check(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Django system check: one error (``CHECK_ID``) per message of ``changed``."""
    from django.core import checks

    return [checks.Error(message, id=CHECK_ID) for message in changed()]


def verify() -> None:
    """Exit the process (status 1, the messages on standard error, no traceback) when
    ``changed`` finds any; else return. For entry points that run no system checks."""
    messages = changed()
    if messages:
        raise SystemExit("\n".join(f"{CHECK_ID}: {m}" for m in messages))
