"""A real OpenID Connect provider on loopback: the npm ``oidc-provider`` package, pinned in
``tests/js/package.json``, run by ``tests/js/oidc_provider.mjs``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import IO, Self

JS = Path(__file__).resolve().parent.parent / "js"


class OidcProvider:
    """``with OidcProvider(client_id=…, client_secret=…, redirect_uri=…) as op:`` starts the
    provider on a free port and gives ``op.issuer`` (``http://127.0.0.1:PORT``) once it listens.
    Its accounts (``ada``, ``eve``) and their claims are in the script; it issues refresh tokens
    unless ``refresh_tokens=False``.
    ``post_logout_redirect_uri`` registers where RP-initiated logout may send the browser back.
    ``op.disable(name)`` disables an account there; ``op.stop()`` takes the provider down."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        post_logout_redirect_uri: str = "",
        refresh_tokens: bool = True,
    ) -> None:
        self.env = {
            "OIDC_PORT": "0",
            "OIDC_CLIENT_ID": client_id,
            "OIDC_CLIENT_SECRET": client_secret,
            "OIDC_REDIRECT_URI": redirect_uri,
            "OIDC_POST_LOGOUT_REDIRECT_URI": post_logout_redirect_uri,
            "OIDC_REFRESH_TOKENS": "1" if refresh_tokens else "0",
        }
        self.issuer = ""
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        node = shutil.which("node")
        if node is None or not (JS / "node_modules" / "oidc-provider").exists():
            raise RuntimeError("node and tests/js's packages are needed: run `make node-deps`")
        self.process = subprocess.Popen(
            [node, str(JS / "oidc_provider.mjs")],
            env={**os.environ, "NODE_ENV": "development", **self.env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its start-up warnings about development defaults
            text=True,
        )
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()  # blocks until it listens (or exits: then "")
        if not line:
            self.process.wait()
            raise RuntimeError(f"oidc_provider.mjs exited with {self.process.returncode}")
        self.issuer = json.loads(line)["issuer"]
        return self

    def disable(self, account: str) -> None:
        """Disable ``account`` at the provider; returns once the provider has done it."""
        assert self.process is not None
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"disable {account}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        while line and not line.startswith("{"):  # its notices (development defaults) go here too
            line = self.process.stdout.readline()
        assert json.loads(line or "null") == {"disabled": account}, line

    def stop(self) -> None:
        """Take the provider down (its port then refuses connections); idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.stop()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
