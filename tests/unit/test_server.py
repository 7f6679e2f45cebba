"""chatsite.server's changes to daphne and Twisted, each checked in a fresh interpreter (they
patch modules for the whole process)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.daphne_server import REPO


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_daphne_writes_through_twisted_http_itself_not_its_deprecation_proxy() -> None:
    code = (
        "from daphne import http_protocol; from twisted.python.deprecate import _ModuleProxy; "
        "from twisted.web import http; from chatsite import server; "
        "before = isinstance(http_protocol.http, _ModuleProxy); server.plain_twisted_http(); "
        "print(before, http_protocol.http.Request is http.Request, "
        "isinstance(http_protocol.http, _ModuleProxy))"
    )
    assert run(code) == "True True False"
