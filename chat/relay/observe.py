"""What the relay tells whoever watches it (``chat.metrics``): a few events per answer, never
per chunk, so watching costs the hot path nothing it would notice. No-ops until ``watch`` sets
an observer; the relay itself imports nothing for metrics.

Events, each with the slot's name: an answer started (``started``), ended (``ended``: its
status, TTFT in s or None, completion tokens, duration in s, its error code or ""), an
upstream call failed before its first chunk (``attempt_failed``, with the error code; a retry
follows when ``retrying``), a request joined another's generation (``joined``: single-flight),
and the slot's admission queue changed length (``queue_length``).
"""

from __future__ import annotations


class Observer:
    """The relay's events, as no-ops: subclass and pass to ``watch``. Methods must not raise
    and must not block: they run on the event loop, inside the relay."""

    def started(self, slot: str) -> None:
        """An answer's generation started on ``slot``."""

    def ended(
        self,
        slot: str,
        *,
        status: str,
        ttft_s: float | None,
        tokens: int,
        duration_s: float,
        error_code: str,
    ) -> None:
        """A generation ended: ``status`` (complete, stopped, error), TTFT (s, None when no
        token came), completion tokens, duration (s), the error's code ("" when none)."""

    def attempt_failed(self, slot: str, *, code: str, retrying: bool) -> None:
        """An upstream call failed before its first chunk (``code``: the relay's error code)."""

    def joined(self, slot: str) -> None:
        """A request joined an identical one's generation (single-flight)."""

    def queue_length(self, slot: str, length: int) -> None:
        """The slot's admission queue in this process is now ``length`` requests long."""


observer = Observer()


def watch(new: Observer) -> None:
    """Send the relay's events to ``new`` from now on (one observer per process)."""
    global observer
    observer = new
