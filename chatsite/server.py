"""``python -m chatsite.server [daphne's arguments]``: daphne, on uvloop, as ``manage.py serve``
runs it (``command`` gives that command line; the tests and benchmarks start it the same way).

daphne runs Twisted's reactor on an asyncio event loop that it creates when ``daphne.server`` is
first imported; the event loop policy in force then decides which loop that is. This module sets
uvloop's policy first (``SLIPSTREAM_UVLOOP``, on by default; ``0`` keeps asyncio's own loop),
then hands the command line to daphne. uvloop's loop runs the same callbacks with less CPU per
socket event and timer (bench/profile_relay.py, "CPU per relayed chunk").
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

APPLICATION = "chatsite.asgi:application"


def command(host: str, port: int) -> list[str]:
    """The command line that serves Slipstream on ``host``:``port`` with one daphne process.

    daphne writes an access-log line per request at its default verbosity: CPU on every
    request's path, so it is off unless ``SLIPSTREAM_ACCESS_LOG`` is ``1`` (then daphne's own
    format, on standard output). Warnings and Slipstream's own log lines are kept either way.
    """
    access_log = os.environ.get("SLIPSTREAM_ACCESS_LOG", "").lower() in {"1", "true", "yes", "on"}
    verbosity = "1" if access_log else "0"
    return [
        sys.executable,
        "-m",
        "chatsite.server",
        "-v",
        verbosity,
        "-b",
        host,
        "-p",
        str(port),
        APPLICATION,
    ]


def use_uvloop() -> bool:
    """Install uvloop's event loop policy unless ``SLIPSTREAM_UVLOOP`` is ``0``/``false``.
    Returns whether it did. Call before anything imports ``daphne.server``."""
    if os.environ.get("SLIPSTREAM_UVLOOP", "1").lower() in {"0", "false", "no", "off"}:
        return False
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def write_at_once() -> None:
    """Make Twisted's socket transports send a write at once when nothing is queued.

    Twisted's ``FileDescriptor.write`` always queues and asks the reactor to say when the
    socket is writable, then sends and stops asking: two event-loop registrations, an extra
    loop iteration and three Python calls per write. daphne writes once per relayed chunk, so
    at hundreds of streams that round trip was a fifth of the process's CPU (bench/
    profile_relay.py: ``AsyncioSelectorReactor.addWriter`` the largest single function).
    asyncio's own transports try the send first; so does this: when the transport's buffers
    are empty it calls the descriptor's own ``writeSomeData`` (for TCP: one ``send``, 0 when
    the socket is full), and queues only what was not sent, through Twisted's code. Errors
    are left to that code too: a failed send queues the data, and the reactor's next write
    attempt reports the lost connection as before. Order is kept: the fast path runs only when
    nothing is queued ahead.

    Relies on Twisted's ``FileDescriptor`` buffers (``dataBuffer``, ``_tempDataBuffer``),
    present since Twisted 12 and checked here; the version is pinned in requirements.txt.
    """
    from twisted.internet.abstract import FileDescriptor

    if getattr(FileDescriptor, "_slipstream_write_at_once", False):
        return
    if not hasattr(FileDescriptor, "dataBuffer") or not hasattr(FileDescriptor, "writeSomeData"):
        return  # not the Twisted this was written for: keep its own behaviour
    queue_write, queue_sequence = FileDescriptor.write, FileDescriptor.writeSequence

    def send_now(transport: Any, data: bytes) -> bytes:
        """What is left of ``data`` after trying to send it now (all of it when the transport
        has something queued, is closing, or the send failed)."""
        if (
            not data
            or transport.dataBuffer
            or transport._tempDataBuffer
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
        ):
            return data
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int) or sent <= 0:
            return data
        return data[sent:]

    def write(self: Any, data: bytes) -> None:
        rest = send_now(self, data)
        if rest:
            queue_write(self, rest)

    def write_sequence(self: Any, iovec: Any) -> None:
        rest = send_now(self, b"".join(iovec))
        if rest:
            queue_sequence(self, [rest])

    FileDescriptor.write = write  # type: ignore[method-assign]
    FileDescriptor.writeSequence = write_sequence  # type: ignore[method-assign]
    FileDescriptor._slipstream_write_at_once = True  # type: ignore[attr-defined]


def plain_twisted_http() -> None:
    """Give daphne's HTTP protocol module Twisted's ``twisted.web.http`` module itself.

    Twisted wraps that module in a ``_ModuleProxy`` (to warn on its deprecated names), whose
    ``__getattribute__`` is Python code: daphne looks up ``http.Request`` through it on every
    body message it writes, about 2 % of daphne's CPU at 200 streams (bench/profile_relay.py).
    daphne uses none of the deprecated names, so the module itself answers the same."""
    from daphne import http_protocol
    from twisted.python.deprecate import _ModuleProxy

    proxy = http_protocol.http
    if isinstance(proxy, _ModuleProxy):
        http_protocol.http = object.__getattribute__(proxy, "_module")


def no_form_parsing() -> None:
    """Stop Twisted parsing POST bodies into ``request.args`` under daphne.

    Twisted's ``Request.requestReceived`` parses every POST with a body and a Content-Type: the
    Content-Type through the standard library's ``email`` package (a ``Message`` and its header
    registry) on every request, then a form-encoded or multipart body into ``args``. daphne
    never reads ``args``: it passes the raw body to the application, which parses it again
    (Django for forms and uploads, ``chat.jsonbody`` for JSON). The Content-Type parse alone
    was a third of ``HTTPChannel.dataReceived`` under cProfile, and daphne's CPU for a ``/v1``
    401 went from 1.33 to 0.92 ms without it (bench/profile_relay.py --requests-only); a
    multipart upload was decoded in full twice. Twisted has a switch for this,
    ``Request(parsePOSTFormSubmission=False)``; daphne does not pass it, so its request class
    passes it here. Nothing changes under a Twisted without the switch."""
    import inspect

    from daphne.http_protocol import WebRequest
    from twisted.web import http

    if getattr(WebRequest, "_slipstream_no_form_parsing", False):
        return
    if "parsePOSTFormSubmission" not in inspect.signature(http.Request.__init__).parameters:
        return
    init = WebRequest.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        init(self, *args, **kwargs)

    WebRequest.__init__ = __init__
    WebRequest._slipstream_no_form_parsing = True


def no_twisted_access_log() -> None:
    """Stop Twisted formatting an access-log line for every request that nobody reads.

    daphne's HTTP factory is Twisted's ``HTTPFactory``, which formats a combined-log line when
    each request finishes and writes it to Twisted's log (about 15 µs a request, hot). At
    daphne's verbosity 0 and 1 that log goes nowhere (daphne's ``Server.run`` discards it);
    daphne's own access log, ``SLIPSTREAM_ACCESS_LOG=1`` (``command``), is written apart and
    is kept. So at those verbosities the factory gets no log file, which Twisted's
    ``HTTPFactory.log`` takes as "no access log"; at verbosity 2 and up the line still goes to
    Twisted's log as before."""
    from daphne.http_protocol import HTTPFactory

    if getattr(HTTPFactory, "_slipstream_no_twisted_access_log", False):
        return
    start = HTTPFactory.startFactory

    def startFactory(self: Any) -> None:
        start(self)
        if getattr(self.server, "verbosity", 2) <= 1:
            self._logFile = None

    HTTPFactory.startFactory = startFactory
    HTTPFactory._slipstream_no_twisted_access_log = True


def freeze_startup_objects() -> None:
    """Exempt what the process loaded before serving from the garbage collector's full
    collections: once daphne's reactor runs (the application loaded), import the URLconf's
    views, collect, and ``gc.freeze()`` the rest (Python's ``gc`` docs: frozen objects are
    ignored by future collections).

    A full collection walks every tracked object and stops the event loop, so every stream in
    flight, while it does. Django and the application are about 120,000 such objects that live
    as long as the process: at 300 streams they were about half of the 254,000 objects each
    100-128 ms full collection walked (bench/capacity.py, ``server_gc_full_ms``). A frozen
    object is still freed when nothing refers to it, but a frozen cycle never is, so only what
    is loaded once per process is frozen, after a collection.

    Call after ``daphne.server`` is imported: it installs the asyncio reactor that this
    schedules on (``main`` does so)."""
    from twisted.internet import reactor

    def freeze() -> None:
        import contextlib
        import gc

        from django.urls import get_resolver

        # The views are loaded once too; a broken URLconf fails its first request instead.
        with contextlib.suppress(Exception):
            get_resolver().url_patterns  # noqa: B018
        gc.collect()
        gc.freeze()

    reactor.callWhenRunning(freeze)


def main(argv: list[str]) -> None:
    """Run daphne's command line with ``argv`` (its arguments, without the program name)."""
    use_uvloop()
    write_at_once()
    plain_twisted_http()
    no_form_parsing()
    no_twisted_access_log()
    from daphne.cli import CommandLineInterface

    freeze_startup_objects()
    CommandLineInterface().run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
