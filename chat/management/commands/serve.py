"""``python manage.py serve``: migrate, bootstrap, then run daphne (and the simulator when the
default slot uses it) until interrupted. What the README's run command calls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from chat.bootstrap import BootstrapResult, bootstrap
from chat.models import Message
from chatsite import server


class Command(BaseCommand):
    help = "Migrate, create the first admin and slot, and serve Slipstream with daphne."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args: Any, **options: Any) -> None:
        result = self._prepare()
        children: list[subprocess.Popen[bytes]] = []
        if result.uses_simulator:
            children.append(self._start_simulator())
        children.append(subprocess.Popen(server.command(options["host"], options["port"])))
        base = f"http://{options['host']}:{options['port']}"
        self.stdout.write(f"Slipstream: {base}/")
        self.stdout.write(f"OpenAI-compatible API: {base}/v1 (keys: Settings › API keys)")
        self._supervise(children)

    def _prepare(self) -> BootstrapResult:
        """Migrate, collect static files, bootstrap; report what that created or marked."""
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        result = bootstrap()
        if not settings.REDIS_URL:
            # One process, just starting: nothing can still be streaming. (With REDIS_URL other
            # processes may be; the sweeper in each process marks only the orphans.)
            interrupted = Message.objects.filter(status=Message.Status.STREAMING).update(
                status=Message.Status.INTERRUPTED
            )
            if interrupted:
                self.stdout.write(f"Marked {interrupted} unfinished answers as interrupted.")
        if result.admin_username:
            self.stdout.write(f"Created the admin account {result.admin_username!r}.")
            if result.admin_password:
                self.stdout.write(
                    self.style.WARNING(f"Its password, shown this once: {result.admin_password}")
                )
        return result

    def _supervise(self, children: list[subprocess.Popen[bytes]]) -> None:
        """Wait until a child exits, SIGTERM or Ctrl-C; then stop every child (5 s each before
        a kill)."""

        def stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(5)
                except subprocess.TimeoutExpired:
                    child.kill()

    def _start_simulator(self) -> subprocess.Popen[bytes]:
        port = settings.SIMULATOR_PORT
        # Its own banner names its URL as an OpenAI base_url, which read as Slipstream's API:
        # this command says what the simulator is instead.
        child = subprocess.Popen(
            [sys.executable, "-m", "chat.simulator", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).is_success:
                    self.stdout.write(
                        f"Built-in simulator (a test upstream, not a model) on port {port}."
                    )
                    return child
            except httpx.HTTPError:
                time.sleep(0.1)
        child.terminate()
        raise RuntimeError(f"the simulator did not start on port {port}")
