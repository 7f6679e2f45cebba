"""The relay's value types: what the upstream client, the dispatcher, the generations and the
app hand one another. Pure: no I/O and no Django here, so a module that needs a type imports
it without the HTTP client (``upstream``) or the dispatcher (``dispatch``) that use it.

- ``BackendConfig``: how to reach one upstream server.
- ``SlotConfig``: a slot as the relay sees it (built from the stored one by ``Slot.config()``).
- ``Chunk``: one decoded upstream SSE event carrying JSON.
- ``RESPONSES_PATH``, ``TERMINAL_EVENTS``: the Responses API's path and its last events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chat.relay import chunkcheck

# The Responses API's path and its terminal events (OpenAI API reference, "Streaming events").
RESPONSES_PATH = "responses"
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """How to reach one upstream server. Hashable: it keys the client pool.

    ``base_url`` is the OpenAI base URL including its version prefix
    (``http://127.0.0.1:8000/v1``); timeouts are in seconds.
    """

    base_url: str
    # Never in a repr: a config in a log line or a traceback must not carry the key.
    api_key: str = field(default="", repr=False)
    connect_timeout_s: float = 5.0
    # httpx's read timeout bounds the gap between two reads, which includes a model's wait
    # before its first token: it must be generous, unlike httpx's 5 s default.
    read_timeout_s: float = 120.0
    total_timeout_s: float = 900.0
    max_connections: int = 64

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


@dataclass(frozen=True, slots=True)
class SlotConfig:
    """A slot as the relay sees it: ORM-free, built from the stored slot (per request, or once
    per ``chat.readcache`` version: ``chat.api.common.cached_slot_config``), never changed after.

    ``defaults`` are request fields (temperature, max_tokens, …) applied when the request is
    silent about them; ``stop`` are the slot's stop strings, always enforced along with the
    request's (on chat and text completions); ``responses_native`` says how ``/v1/responses``
    reaches the backend (``backend_id``). Policy: ``single_flight`` (one of
    ``dispatch.SINGLE_FLIGHT_MODES``), ``max_concurrency`` (requests in flight),
    ``queue_timeout_s``, ``cold_boot_timeout_s`` (s), ``max_retries`` (extra attempts before
    the first chunk), ``fallback`` (the slot that takes over). Its live state in a process:
    ``slots.slot_runtime``.
    """

    name: str
    upstream_model: str
    backend: BackendConfig
    id: int = 0
    system_prompt: str = ""
    defaults: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    stop: tuple[str, ...] = ()
    health_path: str = "/models"
    single_flight: str = "not_ready"
    max_concurrency: int = 32
    queue_timeout_s: float = 30.0
    cold_boot_timeout_s: float = 120.0
    max_retries: int = 2
    fallback: SlotConfig | None = None
    # Whether /v1/responses goes to the backend's own /responses: True, False (translated to
    # chat completions), None (not known yet: the first call tries it).
    responses_native: bool | None = None
    backend_id: int = 0

    def chain(self) -> list[SlotConfig]:
        """This slot, then its fallbacks in order, each once."""
        chain: list[SlotConfig] = []
        slot: SlotConfig | None = self
        while slot is not None and all(slot.name != s.name for s in chain):
            chain.append(slot)
            slot = slot.fallback
        return chain

    def in_chain(self, name: str | None) -> SlotConfig:
        """The slot of this chain called ``name`` (the one that answered, or failed: a
        generation's ``slot``, a ``RelayError``'s ``slot``); this slot when none is."""
        return next((cfg for cfg in self.chain() if cfg.name == name), self)


class Chunk:
    """One decoded upstream SSE event carrying JSON: the raw ``data`` text (relayed unchanged
    where the wire format allows) and its parsed object ``obj``.

    A generation keeps the text of every chunk of its answer (late joiners and resumes read
    from chunk 1) and whole chunks only near its end (``generation.ChunkLog``): an older chunk
    read again is a new ``Chunk`` of its text, whose ``obj`` parses it when first read. ``data``
    and ``obj`` always say the same (a chunk whose object changes is a new chunk with its text
    re-encoded), so the text was checked and parses the same."""

    __slots__ = ("_obj", "data")

    def __init__(self, data: str, obj: dict[str, Any] | None) -> None:
        """``obj``: ``data`` parsed, or None to parse it when first read."""
        self.data = data
        self._obj: dict[str, Any] | None = obj

    @property
    def obj(self) -> dict[str, Any]:
        obj = self._obj
        if obj is None:
            obj = self._obj = chunkcheck.loads(self.data)
        return obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chunk) and other.data == self.data

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"Chunk({self.data!r})"
