"""Shared fixtures: the built-in simulator, Slipstream under daphne, users and sessions.

Everything runs for real on loopback: the simulator is an HTTP server, Slipstream is a daphne
process reading the same test database (a SQLite file, or PostgreSQL when DATABASE_URL says so).
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client

from chat.models import Backend, Slot
from chat.simulator import SimulatorThread
from tests.support.daphne_server import DaphneServer, database_url
from tests.support.llama_server import LlamaServer, llama_cpp_available
from tests.support.outage import Outage
from tests.support.tiny_gguf import write_tiny_gguf

FIXTURES = Path(__file__).parent / "fixtures"

# The test runner and its daphne processes must share a cache (chat.readcache invalidates
# lookups through it): with REDIS_URL they share Redis; otherwise, one directory.
CACHE_DIR = tempfile.mkdtemp(prefix="slipstream-test-cache-")
# prometheus-client's files, shared by every daphne process of this run (chat.metrics).
METRICS_DIR = tempfile.mkdtemp(prefix="slipstream-test-metrics-")
METRICS_TOKEN = "metrics-test-token"
# Attachments' files: the test runner and its daphne processes read and write the same ones.
MEDIA_DIR = tempfile.mkdtemp(prefix="slipstream-test-media-")
settings.MEDIA_ROOT = MEDIA_DIR
# Django's file cache culls a third of its entries, at random, past MAX_ENTRIES (300 by
# default): a session's worth of lookups and rate-limit counters passed it, and a widget
# limit's counter vanished mid-test (8 messages through a limit of 5, in a full run only).
CACHE_MAX_ENTRIES = 1_000_000
if not settings.REDIS_URL:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": CACHE_DIR,
            "OPTIONS": {"MAX_ENTRIES": CACHE_MAX_ENTRIES},
        }
    }
# Longer than the dispatcher's worst retry backoff (0.5 s + 1 s at 2 retries), so /v1 failures
# after retries still answer with a real status, as with the 3 s default.
KEEPALIVE_S = 2.0


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A file, not SQLite's in-memory default, so the daphne process can share the test database.
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The test database, plus: a clean Redis database when REDIS_URL is set, and at the end
    the connection of the thread that background tasks' ORM calls run on (asgiref's
    process-wide executor) closed, so PostgreSQL lets the test database be dropped."""
    if settings.REDIS_URL:
        import redis

        with redis.Redis.from_url(settings.REDIS_URL) as client:
            client.flushdb()
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    with django_db_blocker.unblock():
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
        connection = connections["default"]
        if connection.vendor == "postgresql":
            # Threads that ran async ORM calls (per-request executors of in-process clients)
            # may still hold a connection: end them, or the test database cannot be dropped.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture(autouse=True)
def _relay_connections_closed(request: pytest.FixtureRequest) -> None:
    """Async tests run on a loop of their own (pytest-asyncio), closed after each: whatever
    the relay opened on it must be closed first (see ``_close_relay_connections``)."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("_close_relay_connections")


@pytest.fixture
async def _close_relay_connections() -> AsyncIterator[None]:
    """After an async test, on its loop: its background tasks ended, then the shared store's
    Redis connections (``chat.relay.cluster``, per loop, with REDIS_URL) and the upstream
    clients closed. Left open, they are collected after the loop closed: a ResourceWarning
    ("unclosed Connection", "loop is closed") at the end of the run."""
    yield
    from chat.relay import cluster
    from chat.relay.background import cancel_all
    from chat.relay.upstream import aclose_clients

    await cancel_all()
    await cluster.aclose()
    await aclose_clients()


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorThread]:
    """The built-in simulator, one per session; reset before each test that uses it."""
    with SimulatorThread(replay_dir=FIXTURES / "sse") as sim:
        yield sim


@pytest.fixture
def sim(simulator: SimulatorThread) -> SimulatorThread:
    simulator.reset()
    return simulator


def server_env() -> dict[str, str]:
    """What a test daphne process needs to share this test run's database (and Redis, which it
    inherits from REDIS_URL in the environment)."""
    return {
        "DATABASE_URL": database_url(settings.DATABASES["default"]),
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_DEBUG": "false",
        "SLIPSTREAM_KEEPALIVE_S": str(KEEPALIVE_S),
        "CACHE_URL": f"filecache://{CACHE_DIR}?max_entries={CACHE_MAX_ENTRIES}",
        "DJANGO_SETTINGS_MODULE": "tests.support.server_settings",
        "PROMETHEUS_MULTIPROC_DIR": METRICS_DIR,
        "SLIPSTREAM_METRICS_TOKEN": METRICS_TOKEN,
        "SLIPSTREAM_MEDIA_ROOT": MEDIA_DIR,
        # A host that resolves nowhere, let through by the operator's list
        # (tests/integration/test_media_urls.py).
        "SLIPSTREAM_MEDIA_URL_ALLOW_HOSTS": "images.internal",
    }


@pytest.fixture(scope="session")
def server(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """Slipstream under daphne on a free port, on the test database. Tests that use it need
    ``transactional_db`` so what they write is committed and visible to it."""
    with django_db_blocker.unblock():
        env = server_env()
    with DaphneServer(env=env) as daphne:
        yield daphne


# What a TLS proxy in front of Slipstream (deploy/nginx.conf) adds to a request.
HTTPS = {"X-Forwarded-Proto": "https"}


@pytest.fixture(scope="module")
def proxied(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """Slipstream as deployed behind deploy/nginx.conf: ``DJANGO_BEHIND_PROXY=true`` (secure
    cookies, HSTS, plain HTTP redirected), a daphne process of its own."""
    with django_db_blocker.unblock():
        env = {**server_env(), "DJANGO_BEHIND_PROXY": "true"}
    with DaphneServer(env=env, probe_headers=HTTPS) as daphne:
        yield daphne


def backend_form(**fields: str) -> dict[str, str]:
    """The backend admin's add or change form as a browser posts it (no slots in its
    inline)."""
    return {
        "name": "upstream",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": "",
        "connect_timeout_s": "5",
        "read_timeout_s": "120",
        "total_timeout_s": "900",
        "health_path": "/models",
        "max_concurrency": "64",
        "responses_api": "auto",
        "slots-TOTAL_FORMS": "0",
        "slots-INITIAL_FORMS": "0",
        "slots-MIN_NUM_FORMS": "0",
        "slots-MAX_NUM_FORMS": "1000",
        **fields,
    }


def make_slot(base_url: str, *, name: str = "primary", model: str = "sim", **fields: Any) -> Slot:
    backend = Backend.objects.create(name=f"backend-{name}", base_url=base_url + "/v1")
    return Slot.objects.create(
        name=name, backend=backend, upstream_model=model, is_default=True, **fields
    )


@pytest.fixture
def slot(transactional_db: None, sim: SimulatorThread) -> Slot:
    """The default slot ``primary``, pointing at the simulator."""
    return make_slot(sim.base_url)


@pytest.fixture
def user(transactional_db: None) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username="ada", password="correct horse 42")


def session_client(server: DaphneServer, user: Any, *, session: str = "") -> httpx.Client:
    """An httpx client logged in as ``user`` (or with the given session id), carrying Django's
    CSRF token as a browser would."""
    if not session:
        django_client = Client()
        django_client.force_login(user)
        session = django_client.cookies["sessionid"].value
    client = httpx.Client(base_url=server.base_url, timeout=30)
    client.cookies.set("sessionid", session)
    client.get("/").raise_for_status()
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


@pytest.fixture
def browser_session(server: DaphneServer, user: Any) -> Iterator[httpx.Client]:
    client = session_client(server, user)
    yield client
    client.close()


@pytest.fixture
def api_key(user: Any) -> str:
    """A raw API key of ``user`` (only its digest is stored)."""
    from chat.services import api_key_create

    _, raw = api_key_create(user=user, name="tests")
    return raw


@pytest.fixture
def openai_client(server: DaphneServer, api_key: str) -> Iterator[Any]:
    """The official ``openai`` SDK pointed at Slipstream: only base_url and api_key change."""
    import openai

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI server on a tiny random-weight model written by the tests: a
    real inference server, no download. Its answers are printable token soup."""
    if not llama_cpp_available():
        pytest.skip("llama-cpp-python[server] is not installed (requirements-dev.txt has it)")
    directory: Path = tmp_path_factory.mktemp("llama")
    model = write_tiny_gguf(directory / "tiny.gguf")
    with LlamaServer(model, log_path=directory / "llama-server.log") as server:
        yield server


@pytest.fixture
def outage(transactional_db: None) -> Iterator[Outage]:
    """A PostgreSQL outage of the test database to start and end (``Outage``), ended after
    the test whatever happened."""
    cut = Outage()
    yield cut
    cut.end()
    cut.admin.close()
    # The connection of the thread that async tests' ORM calls run on (asgiref's) was cut:
    # the next test must not meet it.
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
