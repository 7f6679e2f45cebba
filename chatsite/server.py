"""``python -m chatsite.server [daphne's arguments]``: daphne, on uvloop, as ``manage.py serve``
runs it (``command`` gives that command line; the tests and benchmarks start it the same way).

daphne runs Twisted's reactor on an asyncio event loop that it creates when ``daphne.server`` is
first imported; the event loop policy in force then decides which loop that is. This module sets
uvloop's policy first (``SLIPSTREAM_UVLOOP``, on by default; ``0`` keeps asyncio's own loop),
then hands the command line to daphne. uvloop's loop runs the same callbacks with less CPU per
socket event and timer (bench/profile_relay.py, "CPU per relayed chunk").

SIGTERM (and SIGINT) drain the process instead of stopping it at once (``Drain``, issue 29):
new answers are refused, those in flight end (up to ``SLIPSTREAM_DRAIN_S``), then it exits;
deploy/ROLLING-RESTART.md restarts several processes one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any, cast

# Named, not __name__: run as ``python -m chatsite.server`` this module is ``__main__``.
logger = logging.getLogger("chatsite.server")

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


# ------------------------------------------------------------------------------------------------
# Graceful drain (issue 29)
# ------------------------------------------------------------------------------------------------
# After the answers, requests still in flight (an answer's last bytes and its call's record, a
# page) get this long (s) before daphne cancels them and the process exits.
TAIL_S = 2.0
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class InFlight:
    """The ASGI application, counting its HTTP requests in flight (``count``), so that a drain
    stops the process only once their last bytes left. Everything else passes unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self._idle: asyncio.Event | None = None  # made on the loop, by the first wait

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if not self.count and self._idle is not None:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Whether no request is in flight, once none is or after ``timeout_s`` (s)."""
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()
        if self.count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self.count


class Drain:
    """What SIGTERM and SIGINT do to this daphne process: drain, then exit
    (deploy/ROLLING-RESTART.md).

    The first signal starts ``chat.relay.drain`` (``/readyz`` 503, new answers refused with
    503 + ``Retry-After``, resumes still served) for ``SLIPSTREAM_DRAIN_S`` seconds; once no
    answer runs (or the deadline ended those left as ``interrupted``) and the requests in
    flight ended (at most ``TAIL_S`` more), the reactor stops: daphne cancels whatever request
    is left (readers of another process's answer: their clients resume elsewhere), closes its
    sockets, and the process exits with status 0. A second signal ends the drain at once.

    Relies on Twisted installing its own SIGINT/SIGTERM handlers (``reactor.stop`` at once)
    before the reactor's "after startup" triggers run (``ReactorBase._reallyStartRunning``
    says so); ``install`` replaces them then and logs an error when what it replaced was not
    the reactor's, as a Twisted that installs them elsewhere would show. The drain itself uses
    public APIs only: ``reactor.stop`` and daphne's ``CommandLineInterface.load_asgi_app``.
    """

    def __init__(self, requests: InFlight | None = None) -> None:
        self.requests = requests
        self.task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Take SIGTERM and SIGINT over from the reactor (call once it runs). A SIGINT that
        Twisted left alone (ignored, as in a background job, or a debugger's) stays so."""
        from twisted.internet import reactor

        for number in DRAIN_SIGNALS:
            replaced = signal.getsignal(number)
            if getattr(replaced, "__self__", None) is not reactor:
                if number != signal.SIGTERM:
                    continue
                logger.error(
                    "SIGTERM's handler was %r, not the Twisted reactor's: Twisted's signal "
                    "handling changed (chatsite.server.Drain relies on it); draining anyway",
                    replaced,
                )
            signal.signal(number, self.on_signal)

    def on_signal(self, number: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of whatever the main thread was doing:
        # hand the work to the reactor, as Twisted's own handlers do.
        from twisted.internet import reactor

        reactor.callFromThread(self.begin, signal.Signals(number).name)

    def begin(self, name: str) -> None:
        """Start draining (the first signal) or end the drain now (any later one)."""
        from django.conf import settings

        from chat.relay import drain
        from chat.relay.background import spawn

        if drain.draining():
            logger.warning("%s again: interrupting the answers still running", name)
            drain.begin(0)
            return
        timeout_s = settings.SLIPSTREAM_DRAIN_S
        drain.begin(timeout_s)
        logger.warning(
            "%s: draining for up to %g s (%s); new answers are refused; signal again to stop now",
            name,
            timeout_s,
            ", ".join(f"{k} {v}" for k, v in drain.busy().items()),
        )
        self.task = spawn(self.drain_then_stop())

    async def drain_then_stop(self) -> None:
        """Wait for the answers (``drain.settle``), then the requests in flight, then stop."""
        from twisted.internet import reactor

        from chat.relay import drain

        interrupted = 0
        try:
            tail_until = None
            while True:
                interrupted += len(await drain.settle())
                if tail_until is None:
                    tail_until = time.monotonic() + TAIL_S
                if self.requests is not None:
                    await self.requests.wait_idle(max(0.0, tail_until - time.monotonic()))
                # An answer admitted just before the drain began may have started meanwhile.
                if not any(drain.busy().values()) or time.monotonic() >= tail_until:
                    break
            await _records_stored(max(drain.time_left_s(), TAIL_S))
        except Exception:
            logger.exception("drain failed; stopping now")
        logger.warning(
            "drained in %.1f s (%d answers interrupted, %d requests cut); exiting",
            drain.draining_for_s(),
            interrupted,
            self.requests.count if self.requests is not None else 0,
        )
        with contextlib.suppress(Exception):  # already stopping: nothing left to do
            # Any: Twisted's type for the reactor reads ``stop`` as an unbound function.
            cast(Any, reactor).stop()


async def _records_stored(timeout_s: float, *, poll_s: float = 0.1) -> None:
    """Wait up to ``timeout_s`` (s) for what answers and calls left to be written
    (``chat.records``: while the database is down they wait in memory); log what is lost."""
    from chat import records

    writer = records.writer()
    until = time.monotonic() + timeout_s
    # The writer has no event for its queue running dry; it retries every few seconds at most.
    while (writer.pending or writer.pending_message_ids()) and time.monotonic() < until:  # noqa: ASYNC110
        await asyncio.sleep(poll_s)
    if writer.pending:
        logger.error(
            "exiting with %d records not stored (the database is unavailable); answers lost: %s",
            writer.pending,
            sorted(writer.pending_message_ids()) or "none",
        )


def drain_on_signals() -> type[Any]:
    """Make SIGTERM and SIGINT drain this process (``Drain``) once daphne's reactor runs.
    Returns daphne's command line class, its application wrapped to count requests in flight.
    Call after ``daphne.server`` is imported. Raises ``RuntimeError`` on a daphne without
    ``CommandLineInterface.load_asgi_app`` (a drain could not see requests end)."""
    from daphne.cli import CommandLineInterface
    from twisted.internet import reactor

    if not hasattr(CommandLineInterface, "load_asgi_app"):
        raise RuntimeError(
            "daphne's CommandLineInterface has no load_asgi_app: chatsite.server's drain "
            "needs updating for this daphne (requirements.txt pins the one it was written for)"
        )
    drainer = Drain()

    class SlipstreamCommandLine(CommandLineInterface):  # type: ignore[misc]
        def load_asgi_app(self, asgi_app_path: str) -> Any:
            drainer.requests = InFlight(super().load_asgi_app(asgi_app_path))
            return drainer.requests

    reactor.callWhenRunning(drainer.install)
    return SlipstreamCommandLine


def main(argv: list[str]) -> None:
    """Run daphne's command line with ``argv`` (its arguments, without the program name).
    Exits first (``chat.internals.verify``) when Twisted, daphne or another package this
    process patches is not at the version the patches were written for."""
    from chat import internals

    internals.verify()
    use_uvloop()
    write_at_once()
    plain_twisted_http()
    no_form_parsing()
    no_twisted_access_log()
    import daphne.server  # noqa: F401  (installs the asyncio reactor, before anything uses one)

    freeze_startup_objects()
    command_line = drain_on_signals()
    command_line().run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
