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
    Its accounts (``ada``, ``eve``) and their claims are in the script."""

    def __init__(self, *, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self.env = {
            "OIDC_PORT": "0",
            "OIDC_CLIENT_ID": client_id,
            "OIDC_CLIENT_SECRET": client_secret,
            "OIDC_REDIRECT_URI": redirect_uri,
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()
