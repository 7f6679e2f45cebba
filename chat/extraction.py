"""The text of uploaded PDFs, read in a process of its own under CPU and memory limits (issue 33,
finding 4).

A PDF of a few KB can inflate to megabytes of text operators, and pypdf spends seconds of CPU on
each megabyte: an 8 KB file holding 5 MB of ``(x) Tj`` took 16.4 s, during which the server
process's other requests waited on the GIL (a ``/v1`` call beside it took 0.23 s, not 0.08 s).
Here each PDF is read by a child of a fork server (``multiprocessing``'s "forkserver" context,
which has imported this module and pypdf once, so a child starts in milliseconds), with

- ``RLIMIT_CPU`` of ``ReadLimits.cpu_s``: past it the kernel sends SIGXCPU, whose handler stops
  the reading after the pages read so far (``PdfText.stopped == "time"``; with none read,
  ``ExtractionFailed("slow")``); the hard limit, ``CPU_GRACE_S`` later, kills a child that
  Python could not interrupt (``"slow"`` too, as is a child still running after
  ``WALL_S_PER_CPU_S`` times its CPU limit in wall-clock time);
- ``RLIMIT_AS`` of ``ReadLimits.memory_bytes``: an allocation past it raises MemoryError, which
  stops the reading the same way (``"memory"``);
- a lower scheduling priority (``NICE``), so the server's own processes get the cores first;
- pypdf's own limits tightened (``PYPDF_LIMITS``), and at most ``max_pages`` pages and
  ``max_chars`` characters read.

A process per document, not a ``ProcessPoolExecutor``: one worker killed by its limit breaks the
whole executor and fails every other document in it (``BrokenProcessPool``); ``RLIMIT_CPU``
counts a process's whole life, so a reused worker would need it moved for each document; and
``max_tasks_per_child`` can deadlock on Python 3.11 (cpython#115634). At most ``workers``
children run at once: each is watched by a thread of a ``ThreadPoolExecutor`` (waiting, without
the GIL, on a pipe whose end also tells of the child's death), and further documents queue
there. The event loop awaits that thread's future (``asyncio.wrap_future``) and never runs
pypdf.

No Django here: the fork server imports this module, and a child must not set Django up.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import resource
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import Literal

from pypdf import Configuration, PdfReader, apply_configuration
from pypdf.errors import LimitReachedError

# pypdf's defaults allow 75 MB per inflated stream and 2,000,000 tokens per content stream: a
# 5 MB stream of text operators (1.4 million tokens) passed them. A page of text needs a few
# thousand tokens and well under a megabyte; a page past these limits is left out (noted in
# ``PdfText.skipped``), not the whole document. Field names: pypdf 7.1's ``Configuration``
# (a name a later version drops is a TypeError on import, and mypy's error before that).
STREAM_MAX_BYTES = 8 * 2**20
PYPDF_LIMITS = Configuration(
    maximum_declared_stream_length=STREAM_MAX_BYTES,
    array_based_stream_maximum_output_length=STREAM_MAX_BYTES,
    zlib_maximum_output_length=STREAM_MAX_BYTES,
    lzw_maximum_output_length=STREAM_MAX_BYTES,
    run_length_maximum_output_length=STREAM_MAX_BYTES,
    brotli_maximum_output_length=STREAM_MAX_BYTES,
    stream_decoding_work_maximum_length=4 * STREAM_MAX_BYTES,
    stream_parsing_work_maximum_count=250_000,
    xform_maximum_invocations_per_extraction=1_000,
)
NICE = 10
# A child that has not finished after this many times its CPU limit in wall-clock seconds is
# killed: it is waiting on something, or the machine is too busy to give it its CPU.
WALL_S_PER_CPU_S = 12
# Seconds between the soft CPU limit (SIGXCPU: the pages read so far are kept) and the hard one
# (SIGKILL), for the child to send what it read.
CPU_GRACE_S = 2

Reason = Literal["slow", "memory", "complex", "encrypted", "unreadable"]
Stop = Literal["", "pages", "chars", "time", "memory"]


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """What one PDF's reading may use: CPU seconds, bytes of address space, pages, characters."""

    cpu_s: int
    memory_bytes: int
    max_pages: int
    max_chars: int


@dataclass(frozen=True, slots=True)
class PdfText:
    """A PDF's text: ``pages`` extracted texts (in order, from the first page), ``total`` pages in
    the document, the 1-based ``skipped`` pages (past pypdf's limits, or broken), and why
    reading stopped before the end (``stopped``: ``"pages"`` or ``"chars"`` at the caps,
    ``"time"`` or ``"memory"`` at the process's limits; empty when every page was read)."""

    pages: list[str]
    total: int
    skipped: list[int]
    stopped: Stop


class ExtractionFailed(Exception):
    """No text could be had: ``reason`` ``"slow"`` (the CPU or wall-clock limit before a page was
    read, or a child killed), ``"memory"``, ``"complex"`` (every page read was past pypdf's
    limits: the caller's judgement), ``"encrypted"`` (with a password), ``"unreadable"``
    (``detail`` says what pypdf found wrong)."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(reason, detail)  # as pickled between the processes
        self.reason: Reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


_runner: ThreadPoolExecutor | None = None
_runner_lock = threading.Lock()


def pdf_text(data: bytes, limits: ReadLimits, *, workers: int) -> Future[PdfText]:
    """Read ``data``'s text in a child process: a future of its ``PdfText``, or of
    ``ExtractionFailed``. At most ``workers`` children run at once (the first call's number);
    later documents wait their turn."""
    global _runner
    with _runner_lock:
        if _runner is None:
            _runner = ThreadPoolExecutor(max(1, workers), thread_name_prefix="pdf-text")
    return _runner.submit(_watch, data, limits)


def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    # Read when the fork server starts (the first child): later calls change nothing.
    context.set_forkserver_preload([__name__])
    return context


def _watch(data: bytes, limits: ReadLimits) -> PdfText:
    """Start a child to read ``data`` and wait for its answer (in a runner thread)."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_read_in_child, args=(sender, data, limits), name="pdf-text", daemon=True
    )
    try:
        child.start()
    except BaseException:
        receiver.close()
        raise
    finally:
        sender.close()  # the child has its own copy: its end, or its death, ends the pipe
    outcome: PdfText | ExtractionFailed | None = None
    try:
        if receiver.poll(limits.cpu_s * WALL_S_PER_CPU_S):
            outcome = receiver.recv()
    except (EOFError, OSError):
        pass  # the child died before it sent it all: killed at its hard CPU limit
    finally:
        receiver.close()
        child.join(0 if outcome is None else 5)
        if child.exitcode is None:
            child.kill()
            child.join()
        child.close()
    if outcome is None:
        raise ExtractionFailed("slow")
    if isinstance(outcome, ExtractionFailed):
        raise outcome
    return outcome


# ------------------------------------------------------------------------------------------------
# In the child
# ------------------------------------------------------------------------------------------------
class _OutOfTime(BaseException):
    """Raised by SIGXCPU's handler. Not an ``Exception``, so that pypdf's ``except Exception``
    (around fonts and operators) cannot swallow it."""


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    # The soft limit sends SIGXCPU again each second of CPU after it: once is enough.
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    raise _OutOfTime


def _limit(which: int, soft: int, hard: int) -> None:
    """Lower a resource limit to ``soft`` and ``hard``, never above the hard limit inherited
    (which a process cannot raise: a service manager's own would refuse it)."""
    _, inherited = resource.getrlimit(which)
    if inherited != resource.RLIM_INFINITY:
        soft, hard = min(soft, inherited), min(hard, inherited)
    resource.setrlimit(which, (soft, hard))


def _read_in_child(sender: Connection, data: bytes, limits: ReadLimits) -> None:
    os.nice(NICE)
    # pypdf warns of each oddity it reads past; a hostile file's would fill the server's log.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    _limit(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)
    signal.signal(signal.SIGXCPU, _out_of_time)
    cpu = max(1, limits.cpu_s)
    _limit(resource.RLIMIT_CPU, cpu, cpu + CPU_GRACE_S)
    outcome: PdfText | ExtractionFailed
    try:
        outcome = read(data, limits)
    except _OutOfTime:
        outcome = ExtractionFailed("slow")
    except MemoryError:
        outcome = ExtractionFailed("memory")
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    sender.send(outcome)
    sender.close()


def read(data: bytes, limits: ReadLimits) -> PdfText:
    """``data``'s text by pypdf within ``PYPDF_LIMITS`` and ``limits``' pages and characters.
    ``_OutOfTime`` or MemoryError before the first page escape; after it, reading stops there.
    Raises ``ExtractionFailed`` (encrypted, unreadable)."""
    with apply_configuration(PYPDF_LIMITS):
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise ExtractionFailed("encrypted")
            total = len(reader.pages)
        except ExtractionFailed:
            raise
        except Exception as exc:  # a hostile file's parser errors are all "unreadable"
            raise ExtractionFailed("unreadable", str(exc) or type(exc).__name__) from exc
        return _pages(reader, total, limits)


def _pages(reader: PdfReader, total: int, limits: ReadLimits) -> PdfText:
    pages: list[str] = []
    skipped: list[int] = []
    stopped: Stop = "pages" if total > limits.max_pages else ""
    length = 0
    for number in range(min(total, limits.max_pages)):
        try:
            text = reader.pages[number].extract_text() or ""
        except LimitReachedError:
            skipped.append(number + 1)
            continue
        except (_OutOfTime, MemoryError) as exc:
            if not pages:
                raise
            stopped = "time" if isinstance(exc, _OutOfTime) else "memory"
            break
        except Exception:  # one broken page does not lose the others
            skipped.append(number + 1)
            continue
        pages.append(text)
        length += len(text)
        if length >= limits.max_chars:
            stopped = "chars" if number + 1 < total else stopped
            break
    return PdfText(pages=pages, total=total, skipped=skipped, stopped=stopped)
