"""Real MCP servers for the tests (issue 31), none written here: ``mcp-server-time`` (PyPI,
stdio, pinned in requirements-dev.txt) and ``@modelcontextprotocol/server-everything`` (npm,
pinned in ``tests/js/package.json``) over Streamable HTTP; and two loopback sockets that are
not servers: one that refuses connections and one that accepts them and never answers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Self

JS = Path(__file__).resolve().parent.parent / "js"
EVERYTHING = JS / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist"


def stdio_servers_setting() -> str:
    """``SLIPSTREAM_MCP_STDIO_SERVERS`` naming ``time``: this interpreter's mcp-server-time,
    pinned to UTC (the child gets no TZ from us: env -i)."""
    command = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
    return json.dumps({"time": {"command": command, "env": {"PYTHONDONTWRITEBYTECODE": "1"}}})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EverythingServer:
    """``with EverythingServer() as srv:`` runs server-everything's ``streamableHttp`` mode on
    a free loopback port (its CLI takes the port from ``PORT``) and returns once it listens;
    ``srv.url`` is its endpoint, ``http://127.0.0.1:PORT/mcp``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        node = shutil.which("node")
        if node is None or not EVERYTHING.exists():
            raise RuntimeError("node and tests/js's packages are needed: run `make node-deps`")
        self.process = subprocess.Popen(
            [node, str(EVERYTHING / "index.js"), "streamableHttp"],
            env={**os.environ, "PORT": str(self.port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        stderr: IO[str] | None = self.process.stderr
        assert stderr is not None
        for line in stderr:  # blocks until it says it listens (or exits: the loop ends)
            if "listening on port" in line:
                return self
        self.process.wait()
        raise RuntimeError(f"server-everything exited with {self.process.returncode}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            if self.process.stderr is not None:
                self.process.stderr.close()


class DeadEnds:
    """Two loopback ports: ``refusing`` (bound, not listening: connections are refused) and
    ``silent`` (listening, never accepting: the kernel completes the handshake, nothing ever
    answers a request)."""

    def __enter__(self) -> Self:
        self._refusing = socket.socket()
        self._refusing.bind(("127.0.0.1", 0))
        self.refusing = int(self._refusing.getsockname()[1])
        self._silent = socket.socket()
        self._silent.bind(("127.0.0.1", 0))
        self._silent.listen(16)
        self.silent = int(self._silent.getsockname()[1])
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._refusing.close()
        self._silent.close()
