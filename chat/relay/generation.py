"""A generation: one upstream streaming call in flight, with its accumulated answer and timing.

Times are ``time.monotonic()`` seconds; derived figures are in ms (TTFT) and tokens/s.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing

from chat.relay.accumulate import MessageAccumulator
from chat.relay.errors import RelayError
from chat.relay.upstream import Chunk, UpstreamStream

logger = logging.getLogger(__name__)


class Generation:
    """Relays one upstream stream while folding it into a ``MessageAccumulator``.

    ``status`` ends as ``complete``, ``stopped`` (the consumer went away) or ``error``
    (``error`` then holds the ``RelayError``), matching ``Message.Status``.
    """

    def __init__(self, *, slot: str, started_at: float | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.slot = slot
        self.accumulator = MessageAccumulator()
        self.started_at = started_at if started_at is not None else time.monotonic()
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.status = "streaming"
        self.error: RelayError | None = None
        self.chunk_count = 0

    async def relay(self, stream: UpstreamStream) -> AsyncGenerator[Chunk, None]:
        """Yield the upstream's chunks unchanged, accumulating each once.

        The upstream response is closed when this generator closes, however it closes — the
        end of the stream, an error, or the consumer's cancellation — so an abandoned answer
        stops costing upstream compute. Raises ``MidStreamError`` after recording it.
        """
        try:
            async with aclosing(stream.chunks()) as chunks:
                async for chunk in chunks:
                    self.chunk_count += 1
                    if self.accumulator.add(chunk.obj) and self.first_token_at is None:
                        self.first_token_at = time.monotonic()
                    yield chunk
            self.status = "complete"
        except RelayError as exc:
            self.status, self.error = "error", exc
            raise
        finally:
            if self.status == "streaming":
                self.status = "stopped"
            self.ended_at = time.monotonic()
            await stream.aclose()
            logger.info(
                "generation %s slot=%s status=%s ttft_ms=%s chunks=%d",
                self.id,
                self.slot,
                self.status,
                None if self.ttft_ms is None else round(self.ttft_ms, 1),
                self.chunk_count,
            )

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token in ms: from the request's start to the first chunk with text."""
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.started_at) * 1000

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second after the first token, or None below two tokens."""
        tokens = self.accumulator.completion_tokens()
        end = self.ended_at or time.monotonic()
        if self.first_token_at is None or tokens < 2 or end <= self.first_token_at:
            return None
        return (tokens - 1) / (end - self.first_token_at)
