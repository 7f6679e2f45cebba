"""daphne, counting database writes and GC pauses: ``python bench/daphne_counted.py ARGS``.

Takes daphne's own arguments, and runs it as ``python -m chatsite.server`` does. Before Django
opens any connection it hooks every new database connection (``connection_created``) with an
execute wrapper that counts INSERT, UPDATE and DELETE statements by verb and table (``"INSERT
chat_message"``; an UPDATE with the columns it sets: ``"UPDATE chat_conversation
(updated_at)"``); reads are not counted. A ``gc.callbacks`` hook adds up the garbage collector's
pauses per generation. On SIGUSR1 it writes, as JSON to ``$BENCH_DB_COUNTS``: ``writes`` (the
counts so far), ``gc_seconds`` and ``gc_collections`` (per generation, 0-2), ``gc_full_pauses``
(s, each full collection's, in order) and ``at`` (``time.monotonic()``). The hooks cost one
Python call per statement and per collection; the application code is unchanged.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from django.db.backends.signals import connection_created  # noqa: E402

from chatsite import server  # noqa: E402

WRITE = re.compile(r'^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)"?', re.IGNORECASE)
SET_COLUMN = re.compile(r'"(\w+)"\s*=')
counts: Counter[str] = Counter()
lock = threading.Lock()
gc_seconds = [0.0, 0.0, 0.0]
gc_collections = [0, 0, 0]
gc_started = [0.0]
gc_full_pauses: list[float] = []  # s, each full (generation 2) collection's, in order


def on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        gc_started[0] = time.perf_counter()
    else:
        generation = info["generation"]
        pause = time.perf_counter() - gc_started[0]
        gc_seconds[generation] += pause
        gc_collections[generation] += 1
        if generation == 2:
            gc_full_pauses.append(pause)


def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    match = WRITE.match(sql)
    if match:
        verb = match.group(1).split()[0].upper()
        key = f"{verb} {match.group(2)}"
        if verb == "UPDATE":  # which columns tell a checkpoint from a final update
            columns = SET_COLUMN.findall(sql.split(" WHERE ", 1)[0].split(" SET ", 1)[-1])
            key += f" ({', '.join(columns)})"
        with lock:
            counts[key] += len(params) if many and params else 1
    return execute(sql, params, many, context)


def hook(sender: Any, connection: Any, **kwargs: Any) -> None:
    if count not in connection.execute_wrappers:
        connection.execute_wrappers.append(count)


def dump(signum: int, frame: FrameType | None) -> None:
    with lock:
        snapshot = {
            "writes": dict(counts),
            "gc_seconds": list(gc_seconds),
            "gc_collections": list(gc_collections),
            "gc_full_pauses": list(gc_full_pauses),
            "at": time.monotonic(),
        }
    target = Path(os.environ["BENCH_DB_COUNTS"])
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot))
    tmp.replace(target)


if __name__ == "__main__":
    connection_created.connect(hook)
    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR1, dump)
    server.main(sys.argv[1:])  # as python -m chatsite.server: uvloop, then daphne
