"""Slipstream served by a real daphne process on loopback, sharing the test database."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

from chatsite import server
from tests.support.llama_server import free_port

REPO = Path(__file__).resolve().parents[2]


def database_url(db: dict[str, Any]) -> str:
    """A ``DATABASE_URL`` for the child process naming the database the tests use."""
    engine = db["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if "postgresql" in engine:
        user, password = db.get("USER") or "", db.get("PASSWORD") or ""
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{db['NAME']}"
    raise ValueError(f"no DATABASE_URL for engine {engine}")


class DaphneServer:
    """Slipstream's daphne process (``chatsite.server.command``) on a free port, as users run
    it.

    ``port``: a given one (a process restarted in its predecessor's place), else a free one.
    ``base_url`` is ``http://127.0.0.1:PORT``. The process gets ``env`` on top of ours; its
    output goes to a log file whose tail is shown when it fails to start. ``probe_headers`` go
    with the requests that wait for it to answer (behind a proxy, plain HTTP is redirected).
    """

    def __init__(
        self,
        *,
        env: dict[str, str],
        probe_headers: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.probe_headers = probe_headers or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self.log = tempfile.NamedTemporaryFile(prefix="daphne-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            server.command("127.0.0.1", self.port),
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                probe = httpx.get(self.base_url + "/login/", headers=self.probe_headers, timeout=1)
                if probe.status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"daphne did not start:\n{self.log_tail()}")

    def log_text(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        if self.log is None:
            return ""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGTERM drains (chatsite.server.Drain): answers a test left running would hold
            # the process for SLIPSTREAM_DRAIN_S. A second SIGTERM ends the drain at once; sent
            # after a moment, as signals sent together count once.
            self.process.terminate()
            try:
                self.process.wait(0.5)
            except subprocess.TimeoutExpired:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
