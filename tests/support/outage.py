"""A PostgreSQL outage for tests: the test database refusing new connections and its open
ones cut (issue 29)."""

from __future__ import annotations

from django.db import connection


class Outage:
    """The test database refusing new connections and its open ones cut, until ``end``: the
    commands run from the ``postgres`` database (PostgreSQL refuses to disallow connections
    to the current one), and the test's own connection is spared."""

    def __init__(self) -> None:
        import psycopg

        settings = connection.settings_dict
        self.name = settings["NAME"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.spared = cursor.fetchone()[0]
        self.admin = psycopg.connect(
            dbname="postgres",
            host=settings["HOST"] or "127.0.0.1",
            port=settings["PORT"] or 5432,
            user=settings["USER"] or "postgres",
            password=settings["PASSWORD"] or None,
            autocommit=True,
        )

    def start(self) -> None:
        quoted = connection.ops.quote_name(self.name)
        self.admin.execute(f"ALTER DATABASE {quoted} ALLOW_CONNECTIONS false")
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> %s",
            (self.name, self.spared),
        )

    def end(self) -> None:
        quoted = connection.ops.quote_name(self.name)
        self.admin.execute(f"ALTER DATABASE {quoted} ALLOW_CONNECTIONS true")
