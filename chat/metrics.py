"""Prometheus metrics of the relay, with prometheus-client (``/metrics``: ``chat.ops``).

The relay reports a few events per answer (``chat.relay.observe``), never per chunk; this
module turns them into metrics. With several daphne processes, ``PROMETHEUS_MULTIPROC_DIR``
(one directory shared by them, emptied before they start) makes prometheus-client keep each
process's values in files there, and ``/metrics`` of any process sums them all
(prometheus-client's multiprocess mode; gauges count live processes only).

Metrics (label ``slot``: the slot's name):

- ``slipstream_streams_in_flight`` (gauge): generations streaming now.
- ``slipstream_streams_total{slot, status}`` (counter): ended generations by status
  (complete, stopped, error).
- ``slipstream_stream_ttft_seconds{slot}`` (histogram): time to first token, s.
- ``slipstream_stream_itl_seconds{slot}`` (histogram): an answer's mean inter-token latency
  (its duration after the first token over its tokens after the first), s, once per answer.
- ``slipstream_upstream_errors_total{slot, code}`` (counter): failed upstream calls (before
  the first chunk, each attempt) and answers that failed after it, by the relay's error code.
- ``slipstream_upstream_retries_total{slot}`` (counter): attempts retried.
- ``slipstream_single_flight_joins_total{slot}`` (counter): requests that joined an identical
  one's generation.
- ``slipstream_queue_length{slot}`` (gauge): requests waiting for a place on the slot.
- ``slipstream_slot_ready{slot}`` (gauge): 1 while the slot is ready, else 0.
- ``slipstream_db_writes_total{table, statement}`` (counter): INSERT, UPDATE and DELETE
  statements run, by table (every connection's, through Django's execute wrappers). Writes
  per answer: ``sum(rate(slipstream_db_writes_total[5m])) /
  sum(rate(slipstream_streams_total[5m]))`` (the design allows a handful, never one per
  token: about 6 for a chat answer, plus one checkpoint a second while it streams).

Gauges count live processes only: each scrape drops the gauges of processes that are gone
(``forget_dead_processes``), counters and histograms keep their counts.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Callable
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from chat.relay import observe, slots
from chat.relay.slots import SlotState, StateChange

logger = logging.getLogger(__name__)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # prometheus-client writes its files there from the first labelled value on.
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# TTFT of local and remote models: tens of ms (warm, small) to minutes (a model loading).
TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Mean gap between tokens: 1 ms (a fast server on a small model) to 0.5 s (a slow CPU).
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)

STREAMS_IN_FLIGHT = Gauge(
    "slipstream_streams_in_flight",
    "Generations streaming now.",
    ["slot"],
    multiprocess_mode="livesum",
)
STREAMS = Counter("slipstream_streams", "Ended generations, by status.", ["slot", "status"])
TTFT = Histogram(
    "slipstream_stream_ttft_seconds", "Time to first token.", ["slot"], buckets=TTFT_BUCKETS_S
)
ITL = Histogram(
    "slipstream_stream_itl_seconds",
    "Mean inter-token latency of an answer.",
    ["slot"],
    buckets=ITL_BUCKETS_S,
)
UPSTREAM_ERRORS = Counter(
    "slipstream_upstream_errors", "Failed upstream calls, by error code.", ["slot", "code"]
)
RETRIES = Counter("slipstream_upstream_retries", "Upstream attempts retried.", ["slot"])
JOINS = Counter(
    "slipstream_single_flight_joins", "Requests that joined an identical one.", ["slot"]
)
QUEUE_LENGTH = Gauge(
    "slipstream_queue_length",
    "Requests waiting for a place on the slot.",
    ["slot"],
    multiprocess_mode="livesum",
)
SLOT_READY = Gauge(
    "slipstream_slot_ready",
    "1 while the slot is ready, else 0 (as this process last saw it).",
    ["slot"],
    multiprocess_mode="livemax",
)

DB_WRITES = Counter(
    "slipstream_db_writes", "INSERT, UPDATE and DELETE statements run.", ["table", "statement"]
)
# A write statement's first word → the index of the table's name among its words.
_TABLE_AT = {"INSERT": 2, "UPDATE": 1, "DELETE": 2}


def count_writes(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """A database connection's execute wrapper (Django's "database instrumentation"): runs
    the statement, then counts it in ``DB_WRITES`` when it is a write that succeeded. About
    1 µs per statement; reads are only looked at."""
    result = execute(sql, params, many, context)
    words = sql.split(None, 3)
    at = _TABLE_AT.get(words[0].upper()) if words else None
    if at is not None and len(words) > at:
        DB_WRITES.labels(words[at].strip('"`'), words[0].upper()).inc()
    return result


def watch_connection(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """``connection_created`` receiver: count the new connection's writes."""
    if count_writes not in connection.execute_wrappers:
        connection.execute_wrappers.append(count_writes)


class PrometheusObserver(observe.Observer):
    """The relay's events as the metrics above."""

    def started(self, slot: str) -> None:
        STREAMS_IN_FLIGHT.labels(slot).inc()

    def ended(
        self,
        slot: str,
        *,
        status: str,
        ttft_s: float | None,
        tokens: int,
        duration_s: float,
        error_code: str,
    ) -> None:
        STREAMS_IN_FLIGHT.labels(slot).dec()
        STREAMS.labels(slot, status).inc()
        if ttft_s is not None:
            TTFT.labels(slot).observe(ttft_s)
            if tokens > 1:
                ITL.labels(slot).observe(max(0.0, duration_s - ttft_s) / (tokens - 1))
        if error_code:
            UPSTREAM_ERRORS.labels(slot, error_code).inc()

    def attempt_failed(self, slot: str, *, code: str, retrying: bool) -> None:
        UPSTREAM_ERRORS.labels(slot, code).inc()
        if retrying:
            RETRIES.labels(slot).inc()

    def joined(self, slot: str) -> None:
        JOINS.labels(slot).inc()

    def queue_length(self, slot: str, length: int) -> None:
        QUEUE_LENGTH.labels(slot).set(length)


def slot_state_changed(change: StateChange) -> None:
    """A slot state listener (``chat.relay.slots.state_listeners``)."""
    SLOT_READY.labels(change.name).set(1 if change.state == SlotState.READY else 0)


def install() -> None:
    """Watch the relay (once per process; ``ChatConfig.ready``)."""
    if not isinstance(observe.observer, PrometheusObserver):
        observe.watch(PrometheusObserver())
    if slot_state_changed not in slots.state_listeners:
        slots.state_listeners.append(slot_state_changed)
    connection_created.connect(watch_connection, dispatch_uid="slipstream-db-writes")


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges (streams in flight, queue length, readiness) of processes that are
    gone: prometheus-client keeps them until ``mark_process_dead`` is called, which nothing
    does for a process that was killed, so a killed process's streams stayed "in flight" for
    ever. Counters and histograms of dead processes are kept, as prometheus-client intends."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = path.rsplit("_", 1)[-1].removesuffix(".db")
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):  # another process's scrape got there first
                prometheus_multiprocess.mark_process_dead(int(pid), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (the directory is local to it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def exposition() -> tuple[bytes, str]:
    """The metrics as Prometheus' text format and its content type: this process's, or every
    live process's under ``PROMETHEUS_MULTIPROC_DIR``."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        forget_dead_processes(directory)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
