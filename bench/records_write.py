"""What one answer's records cost to write: ``python bench/records_write.py [--database URL]``.

Times ``chat.records.write_batch`` (the group-committing writer's batch, in this thread: no
event loop, no thread hop) on a throwaway database (SQLite in a temporary folder unless
``--database`` names another, e.g. ``postgres://postgres@127.0.0.1:5432/bench_records``, which
is dropped and made anew), for batches of 1, 10 and 100 records of two kinds:

- ``v1``: a ``/v1`` call's record (its usage and its ``ApiCall`` row), each of its own key;
- ``chat``: a chat answer's (its usage and its finished message row), each of its own user.

Every record has a scope of its own, so a batch's usage is as many statements as records: the
worst case for the per-scope UPDATEs (answers of one scope in a batch are summed into one).
Reported per record: CPU of this process (``time.process_time``, µs; the database server's
own CPU is not in it for PostgreSQL) and wall time (µs), the median of ``--repeats`` batches
after a warm-up. Prints JSON; written to ``bench/results/records_write.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def setup(database: str | None) -> None:
    """Django on a fresh, migrated database (``database``: a URL, else SQLite in a temporary
    folder)."""
    if database is None:
        database = f"sqlite:///{tempfile.mkdtemp(prefix='records-bench-')}/db.sqlite3"
    os.environ["DATABASE_URL"] = database
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "x" * 50)
    if database.startswith("postgres"):
        import psycopg

        base, _, name = database.rpartition("/")
        with psycopg.connect(base + "/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            admin.execute(f'CREATE DATABASE "{name}"')
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def make_records(kind: str, count: int, round_: int) -> list[Any]:
    """``count`` records of ``kind`` (``v1`` or ``chat``), each of a scope of its own."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from chat import records, services
    from chat.models import ApiKey, Conversation, Message

    out = []
    for i in range(count):
        name = f"{kind}-{count}-{round_}-{i}"
        user = get_user_model().objects.create_user(name)
        usage = {"prompt_tokens": 20, "completion_tokens": 200, "ttft_ms": 180.0}
        if kind == "v1":
            key = ApiKey.objects.create(user=user, name=name, digest=name, prefix=name[:12])
            out.append(
                records.Record(
                    usage=services.usage_today(
                        slot_name="primary",
                        ok=True,
                        user_id=user.pk,
                        api_key_id=key.pk,
                        tokens_per_s=42.0,
                        **usage,
                    ),
                    call={
                        "api_key_id": key.pk,
                        "endpoint": "chat/completions",
                        "slot_name": "primary",
                        "stream": True,
                        "http_status": 200,
                        "outcome": "complete",
                        "prompt_tokens": 20,
                        "completion_tokens": 200,
                        "ttft_ms": 180.0,
                        "duration_ms": 5000.0,
                    },
                )
            )
        else:
            conversation = Conversation.objects.create(user=user, title=name)
            answer = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
            )
            final = records.Final(
                message_id=answer.pk,
                conversation_id=conversation.pk,
                fields={"content": "x" * 800, "status": Message.Status.COMPLETE},
                text={"content": "x" * 800},
                at=timezone.now(),
            )
            out.append(
                records.Record(
                    final=final,
                    usage=services.usage_today(
                        slot_name="primary", ok=True, user_id=user.pk, tokens_per_s=42.0, **usage
                    ),
                )
            )
    return out


def measure(kind: str, size: int, repeats: int) -> dict[str, float]:
    """Median CPU and wall time per record (µs) of ``write_batch`` over ``repeats`` batches of
    ``size`` ``kind`` records, after one warm-up batch (a scope's first row of the day is an
    INSERT: each measured batch writes scopes that already have their rows)."""
    from chat import records

    cpu, wall = [], []
    for round_ in range(repeats + 1):
        batch = make_records(kind, size, round_)
        records.write_batch(batch)  # each scope's first row: the INSERTs, not measured
        t0, c0 = time.perf_counter(), time.process_time()
        failed = records.write_batch(batch)
        c1, t1 = time.process_time(), time.perf_counter()
        assert not failed
        if round_:
            cpu.append((c1 - c0) / size * 1e6)
            wall.append((t1 - t0) / size * 1e6)
    return {
        "cpu_us_per_record": round(statistics.median(cpu), 1),
        "wall_us_per_record": round(statistics.median(wall), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", help="a database URL (default: SQLite, throwaway)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--label", default="", help="a name for this run in the output")
    args = parser.parse_args()
    setup(args.database)
    from django.db import connection

    result: dict[str, Any] = {"label": args.label, "vendor": connection.vendor, "rows": []}
    for kind in ("v1", "chat"):
        for size in (1, 10, 100):
            repeats = args.repeats if size < 100 else max(3, args.repeats // 5)
            row = {"kind": kind, "batch": size, **measure(kind, size, repeats)}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    out = ROOT / "bench" / "results" / "records_write.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
