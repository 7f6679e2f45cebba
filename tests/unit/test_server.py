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


def test_daphne_leaves_post_bodies_to_the_application_unparsed() -> None:
    # A form-encoded POST, received whole: Twisted would parse it into request.args (and its
    # Content-Type through the email package) before daphne hands the raw body on.
    code = (
        "from chatsite import server; from daphne.http_protocol import WebRequest; "
        "from twisted.web.test.requesthelper import DummyChannel\n"
        "class Server:\n"
        "    def protocol_connected(self, request): pass\n"
        "def received(request):\n"
        "    request.process = lambda: None\n"
        "    request.requestHeaders.setRawHeaders(b'content-type', "
        "[b'application/x-www-form-urlencoded'])\n"
        "    request.gotLength(7); request.handleContentChunk(b'a=1&b=2')\n"
        "    request.requestReceived(b'POST', b'/chat/', b'HTTP/1.1')\n"
        "    return sorted(request.args)\n"
        "channel = DummyChannel(); channel.factory = type('Factory', (), {'server': Server()})\n"
        "before = received(WebRequest(channel)); server.no_form_parsing(); "
        "print(before, received(WebRequest(channel)))"
    )
    assert run(code) == "[b'a', b'b'] []"


def test_what_the_process_loaded_before_serving_is_left_out_of_full_collections() -> None:
    # Django, the application and its views live as long as the process; a full collection
    # that walks them stops every stream (chatsite.server.freeze_startup_objects).
    code = (
        "import gc, sys; import chatsite.asgi; from chatsite import server\n"
        "from daphne import server as daphne_server  # installs the asyncio reactor\n"
        "from twisted.internet import reactor\n"
        "server.freeze_startup_objects()\n"
        "def serving():\n"
        "    print(gc.get_freeze_count() > 50_000, 'chat.views' in sys.modules,\n"
        "          len(gc.get_objects()) < gc.get_freeze_count() // 4)\n"
        "    reactor.stop()\n"
        "print(gc.get_freeze_count() == 0, 'chat.views' in sys.modules)\n"
        "reactor.callWhenRunning(serving); reactor.run(installSignalHandlers=False)"
    )
    assert run(code).split() == ["True", "False", "True", "True", "True"]


def test_twisted_formats_no_access_log_line_that_nobody_reads() -> None:
    # At daphne's verbosity 0 and 1 Twisted's log goes nowhere: a line formatted per request
    # for it is CPU on every request's path. At 2 it is kept.
    code = (
        "from chatsite import server; from daphne.http_protocol import HTTPFactory\n"
        "from twisted.web.test.requesthelper import DummyChannel\n"
        "def formatted(verbosity):\n"
        "    lines = []\n"
        "    factory = HTTPFactory(type('Server', (), {'verbosity': verbosity})())\n"
        "    factory._logFormatter = lambda when, request: lines.append(request) or 'line'\n"
        "    factory.startFactory(); factory.log(object()); factory.stopFactory()\n"
        "    return len(lines)\n"
        "before = formatted(0); server.no_twisted_access_log()\n"
        "print(before, formatted(0), formatted(1), formatted(2))"
    )
    assert run(code) == "1 0 0 1"
