"""Run llama-cpp-python's OpenAI-compatible server as a subprocess for tests.

Usage::

    with LlamaServer(write_tiny_gguf(tmp / "tiny.gguf")) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x")
        client.chat.completions.create(model=server.model_id, ...)

The server is started as::

    python -m llama_cpp.server --model PATH --host 127.0.0.1 --port N
        --interrupt_requests False --n_ctx 512

``--interrupt_requests False`` matters: by default a second request cuts off a
stream that is still running. Requests are served one at a time (a second one
waits for the first to finish), which is fine for tests.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

#: Seconds to wait for ``GET /v1/models`` to answer 200.
STARTUP_TIMEOUT = 60.0


@functools.cache
def llama_cpp_available() -> bool:
    """Return True if llama-cpp-python with its ``[server]`` extra is importable.

    Really imports ``llama_cpp`` (which loads the native library) and the server
    app, so a broken build also counts as unavailable. Cached.
    """
    try:
        importlib.import_module("llama_cpp")
        importlib.import_module("llama_cpp.server.app")
    except Exception:
        return False
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServer:
    """Context manager around a ``python -m llama_cpp.server`` subprocess.

    Attributes available inside the ``with`` block:

    * ``base_url``: ``http://127.0.0.1:N`` (the OpenAI base URL is ``base_url + "/v1"``)
    * ``openai_base_url``: ``base_url + "/v1"``
    * ``model_id``: the id ``/v1/models`` reports (the model path as given)
    * ``port``, ``log_path``, ``process``, ``startup_seconds``
    """

    def __init__(
        self,
        model_path: Path,
        *,
        port: int | None = None,
        n_ctx: int = 512,
        log_path: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.model_path = Path(model_path)
        self.requested_port = port
        self.n_ctx = n_ctx
        self.startup_timeout = startup_timeout
        self._log_path = log_path
        self.port: int = 0
        self.base_url: str = ""
        self.model_id: str = ""
        self.startup_seconds: float = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def openai_base_url(self) -> str:
        """Base URL for the OpenAI SDK (``.../v1``)."""
        return self.base_url + "/v1"

    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr."""
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        return self._log_path

    def command(self) -> list[str]:
        """The argv used to start the server."""
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--interrupt_requests",
            "False",
            "--n_ctx",
            str(self.n_ctx),
        ]

    def log_tail(self, max_chars: int = 4000) -> str:
        """The last ``max_chars`` characters of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return text[-max_chars:]

    def start(self) -> None:
        """Start the subprocess and block until ``GET /v1/models`` answers 200."""
        if self.process is not None:
            raise RuntimeError("LlamaServer already started")
        if not self.model_path.is_file():
            raise FileNotFoundError(self.model_path)
        self.port = self.requested_port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log_file = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            self.model_id = self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, started: float) -> str:
        assert self.process is not None
        deadline = started + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise RuntimeError(
                        f"llama_cpp.server exited with code {code} during startup "
                        f"(log {self.log_path}):\n{self.log_tail()}"
                    )
                try:
                    response = client.get(self.base_url + "/v1/models")
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 200:
                    data = response.json()["data"]
                    return str(data[0]["id"])
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"llama_cpp.server did not answer GET /v1/models within "
                        f"{self.startup_timeout:.0f} s (log {self.log_path}):\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the subprocess (kill it after 10 s) and close the log."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
