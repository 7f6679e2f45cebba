"""``/healthz``, ``/readyz`` and ``/metrics`` against real daphne processes: readiness that
tells a dead database apart, metrics that parse with prometheus-client's own parser, move with
a stream and add up across two processes sharing ``PROMETHEUS_MULTIPROC_DIR``, and the token
and address rules that guard them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat.models import Slot
from tests.conftest import METRICS_TOKEN, make_slot, server_env
from tests.support.daphne_server import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)

BEARER = {"Authorization": f"Bearer {METRICS_TOKEN}"}
# A slot of these tests' own: the test processes live for the whole run, and another test's
# answer that ends meanwhile must not move the figures read here.
SLOT = "metered"
HELLO: Any = [{"role": "user", "content": "Hello"}]


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) → value."""
    response = httpx.get(base_url + "/metrics", headers=BEARER)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def streams_ended(base_url: str, status: str = "complete") -> float:
    return value(scrape(base_url), "slipstream_streams_total", slot=SLOT, status=status)


def wait_for(predicate: Any, what: str) -> None:
    """Poll until ``predicate()``: the relay reports a stream's end just after its last byte."""
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def stream_one(base_url: str, api_key: str) -> None:
    with openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0) as client:
        chunks = list(client.chat.completions.create(model=SLOT, messages=HELLO, stream=True))
    assert chunks


@pytest.fixture
def metered(transactional_db, sim) -> Slot:
    return make_slot(sim.base_url, name=SLOT)


def test_healthz(server) -> None:
    response = httpx.get(server.base_url + "/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    refused = httpx.post(server.base_url + "/healthz")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"


def test_readyz_checks_database_and_redis(server, transactional_db, settings) -> None:
    response = httpx.get(server.base_url + "/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["redis"] == ("ok" if settings.REDIS_URL else "not configured")


@pytest.fixture(scope="module")
def dead_database(django_db_setup: None, django_db_blocker) -> Iterator[DaphneServer]:
    """A process whose database cannot be reached (a closed port)."""
    with django_db_blocker.unblock():
        env = server_env()
    env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:9/unreachable"
    with DaphneServer(env=env) as daphne:
        yield daphne


def test_readyz_is_503_naming_a_dead_database(dead_database) -> None:
    response = httpx.get(dead_database.base_url + "/readyz", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("OperationalError")
    # Alive all the same: a load balancer restarts on /healthz, routes on /readyz.
    assert httpx.get(dead_database.base_url + "/healthz").status_code == 200


def test_metrics_need_the_token(server) -> None:
    assert httpx.get(server.base_url + "/metrics").status_code == 403
    wrong = httpx.get(server.base_url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403


def test_metrics_without_a_token_are_for_allowed_addresses(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        env = server_env()
    env["SLIPSTREAM_METRICS_TOKEN"] = ""
    env["SLIPSTREAM_METRICS_ALLOW"] = "10.0.0.0/8"
    with DaphneServer(env=env) as elsewhere:
        assert httpx.get(elsewhere.base_url + "/metrics").status_code == 403
    env["SLIPSTREAM_METRICS_ALLOW"] = "127.0.0.1"
    with DaphneServer(env=env) as here:
        assert httpx.get(here.base_url + "/metrics").status_code == 200


def test_metrics_move_with_a_stream(server, metered, sim, api_key) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    before = scrape(server.base_url)
    stream_one(server.base_url, api_key)
    wait_for(
        lambda: (
            streams_ended(server.base_url)
            == value(before, "slipstream_streams_total", slot=SLOT, status="complete") + 1
        ),
        "the stream's end never reached the metrics",
    )
    after = scrape(server.base_url)
    ttft_count = "slipstream_stream_ttft_seconds_count"
    assert value(after, ttft_count, slot=SLOT) == value(before, ttft_count, slot=SLOT) + 1
    in_flight = "slipstream_streams_in_flight"
    assert value(after, in_flight, slot=SLOT) == value(before, in_flight, slot=SLOT)


def test_database_writes_are_counted_by_table(server, metered, sim, api_key) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    before = scrape(server.base_url)
    stream_one(server.base_url, api_key)
    after = scrape(server.base_url)
    writes = "slipstream_db_writes_total"

    def more(table: str, statement: str) -> float:
        labels = {"table": table, "statement": statement}
        return value(after, writes, **labels) - value(before, writes, **labels)

    assert more("chat_apicall", "INSERT") == 1  # the call's record, before its [DONE]
    # One UPDATE of the day's usage row; the day's first finds none, and INSERTs it.
    assert more("chat_usageday", "UPDATE") == 1
    assert more("chat_usageday", "INSERT") in (0, 1)
    assert more("chat_apicall", "SELECT") == 0  # reads are not writes


def test_upstream_errors_and_retries_are_counted(server, metered, sim, api_key) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3, fail_requests=1, fail_status=502)
    before = scrape(server.base_url)
    stream_one(server.base_url, api_key)  # the 502 is retried, then the answer streams
    after = scrape(server.base_url)
    errors = "slipstream_upstream_errors_total"
    retries = "slipstream_upstream_retries_total"
    assert value(after, errors, slot=SLOT, code="502") == (
        value(before, errors, slot=SLOT, code="502") + 1
    )
    assert value(after, retries, slot=SLOT) == value(before, retries, slot=SLOT) + 1


@pytest.fixture(scope="module")
def second(django_db_setup: None, django_db_blocker) -> Iterator[DaphneServer]:
    """A second process beside the session's ``server``, sharing its metrics directory."""
    with django_db_blocker.unblock():
        env = server_env()
    with DaphneServer(env=env) as daphne:
        yield daphne


def test_two_processes_report_one_view(server, second, metered, sim, api_key) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    before = streams_ended(server.base_url)
    stream_one(server.base_url, api_key)
    stream_one(second.base_url, api_key)
    wait_for(
        lambda: streams_ended(server.base_url) == before + 2,
        "both processes' streams never added up",
    )
    assert streams_ended(second.base_url) == before + 2


def in_flight(base_url: str) -> float:
    return value(scrape(base_url), "slipstream_streams_in_flight", slot=SLOT)


def test_a_killed_process_streams_leave_the_in_flight_count(
    server, metered, sim, api_key, django_db_blocker
) -> None:
    """A process killed mid-stream never says its streams ended: the next scrape of any other
    process drops its gauges, so its streams are not "in flight" for ever."""
    sim.configure(ttft_ms=0, tokens_per_s=20, length=400)
    with django_db_blocker.unblock():
        env = server_env()
    before = in_flight(server.base_url)
    with (
        DaphneServer(env=env) as doomed,
        httpx.stream(
            "POST",
            doomed.base_url + "/v1/chat/completions",
            json={"model": SLOT, "messages": HELLO, "stream": True},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        ) as response,
    ):
        lines = response.iter_lines()  # kept: a dropped iterator closes the stream
        next(lines)  # streaming now
        wait_for(
            lambda: in_flight(server.base_url) == before + 1,
            "the other process's stream never showed",
        )
        assert doomed.process is not None
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait()
    assert in_flight(server.base_url) == before
