"""Incremental Server-Sent Events decoder and encoder (pure: no I/O).

Rules follow the WHATWG HTML Standard, section 9.2 "Server-sent events", subsection
"Parsing an event stream" and "Interpreting an event stream":
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
The shape follows openai-python's ``_streaming.py`` (itself derived from httpx-sse).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DONE_DATA",
    "DONE_EVENT",
    "KEEPALIVE_COMMENT",
    "MAX_LINE_BYTES",
    "SSEDecodeError",
    "SSEDecoder",
    "ServerSentEvent",
    "encode_comment",
    "encode_event",
]

DONE_DATA = "[DONE]"
DONE_EVENT: bytes = b"data: [DONE]\n\n"
# A comment line: clients ignore it (WHATWG SSE, "lines starting with a colon"), proxies and
# idle timers see traffic.
KEEPALIVE_COMMENT: bytes = b": keep-alive\n\n"
MAX_LINE_BYTES = 16 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class SSEDecodeError(ValueError):
    """The stream broke a limit of the decoder (a line or an event longer than its cap)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    ``data`` is the event's ``data`` lines joined with ``"\\n"``; ``event`` is the event type
    (WHATWG default ``"message"``); ``id`` is the last ``id`` field seen on *this* event (``None``
    if it had none; the spec's stream-wide value is ``SSEDecoder.last_event_id``); ``retry`` is a
    reconnection time in milliseconds, set only when the ``retry`` field was all ASCII digits.
    A ``data`` of ``DONE_DATA`` (``"[DONE]"``) is the OpenAI end sentinel, never JSON.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turn ``text/event-stream`` bytes, split anywhere, into ``ServerSentEvent`` objects.

    ``feed(chunk)`` returns the events completed by ``chunk``; ``flush()`` ends the stream.
    Lines end at CRLF, LF or CR (only those: not VT, FF, U+2028...), a CR at the end of one chunk
    and an LF at the start of the next count as one CRLF, and one UTF-8 BOM is stripped at the
    start of the stream. Only complete lines are decoded, so a multibyte character split across
    chunks survives. ``max_line_bytes`` caps both a pending line and the data of a pending
    event (counted in characters); beyond it ``SSEDecodeError`` is raised.
    """

    __slots__ = (
        "_buf", "_buf_len", "_data", "_event", "_id", "_max", "_retry", "_size", "_skip_lf",
        "_start", "last_event_id",
    )  # fmt: skip

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        # The spec's "last event ID buffer": stream-wide, not reset between events.
        self.last_event_id = ""
        self._reset()

    def _reset(self) -> None:
        # Bytes after the last line terminator, kept as a list so a long line arriving in many
        # small chunks is joined once, not copied on every feed (quadratic).
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF completes a CRLF
        self._start = True  # a BOM may still be ahead
        self._data: list[str] = []  # the spec's "data buffer", one item per data line
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk``; return the events it completes (often none, sometimes several).

        Raises ``SSEDecodeError`` when a pending line or event grows beyond the cap.
        """
        if not chunk:
            return []
        if self._skip_lf or self._start:
            chunk = self._prologue(chunk)
            if not chunk:
                return []
        end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if end < 0:
            self._buf.append(chunk)
            self._buf_len += len(chunk)
            if self._buf_len > self._max:
                raise SSEDecodeError(f"SSE line longer than {self._max} bytes")
            return []
        # Exclude the last terminator, and the CR of a final CRLF, so no spurious blank line.
        head = chunk[: end - 1 if chunk[end] == 0x0A and end and chunk[end - 1] == 0x0D else end]
        if self._buf:
            head = b"".join((*self._buf, head))
        rest = chunk[end + 1 :]
        self._buf, self._buf_len = ([rest], len(rest)) if rest else ([], 0)
        if self._buf_len > self._max:
            raise SSEDecodeError(f"SSE line longer than {self._max} bytes")
        self._skip_lf = chunk[end] == 0x0D and not rest
        # Terminators are ASCII, so head holds whole characters; "replace" is what the spec's
        # UTF-8 decode does to invalid bytes and never fires on valid input.
        text = head.decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return self._lines(text.split("\n"))

    def _prologue(self, chunk: bytes) -> bytes:
        """A chunk after one that ended with CR, or at the stream's start: drop the LF that
        completes a CRLF, and one BOM, which may arrive split (b"": wait for more)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if not self._start:
            return chunk
        if self._buf:  # only ever a partial BOM
            chunk = self._buf.pop() + chunk
        if len(chunk) < 3 and _BOM.startswith(chunk):
            self._buf.append(chunk)  # maybe a BOM split across chunks: wait for more
            return b""
        self._start = False
        return chunk[3:] if chunk.startswith(_BOM) else chunk

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: return the last event if one is pending, then reset the decoder.

        Deliberately lenient: the spec discards an event not ended by a blank line, but many
        upstreams end with ``data: [DONE]\\n`` (or no newline at all), so EOF here ends both
        the last line and the pending event.
        """
        last = b"".join(self._buf).decode("utf-8", "replace")
        events = self._lines([last, ""] if last else [""])
        self._reset()
        return events

    def _lines(self, lines: list[str]) -> list[ServerSentEvent]:
        events = []
        data = self._data
        for line in lines:
            if not line:  # blank line: dispatch if the data buffer is not empty
                if data:
                    events.append(self._dispatch())
                    data = self._data
                self._event, self._id, self._retry = "", None, None
                continue
            field, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                self._size += len(value) + 1
                if self._size > self._max:
                    raise SSEDecodeError(f"SSE event data longer than {self._max} characters")
                data.append(value)
            elif field:  # an empty field is a comment (the line starts with ":")
                self._field(field, value)
        return events

    def _dispatch(self) -> ServerSentEvent:
        event = ServerSentEvent(
            "\n".join(self._data), self._event or "message", self._id, self._retry
        )
        self._data, self._size = [], 0
        return event

    def _field(self, field: str, value: str) -> None:
        """Any field but data; unknown ones are ignored, as the spec says."""
        if field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._id = self.last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)


def encode_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Encode one event as UTF-8 bytes ending with ``"\\n\\n"``.

    Each line of ``data`` (split at CRLF, LF or CR) becomes its own ``data:`` line, so the
    decoded data equals ``data`` with its line breaks normalised to ``"\\n"`` (SSE cannot carry
    a CR). Raises ``ValueError`` if ``event`` or ``id`` holds CR or LF, or ``id`` holds NUL.
    """
    out = []
    if event is not None:
        if "\r" in event or "\n" in event:
            raise ValueError("SSE event type must not contain CR or LF")
        out.append(f"event: {event}\n")
    if id is not None:
        if "\r" in id or "\n" in id or "\0" in id:
            raise ValueError("SSE id must not contain CR, LF or NUL")
        out.append(f"id: {id}\n")
    if "\r" in data:
        data = data.replace("\r\n", "\n").replace("\r", "\n")
    out.extend(f"data: {line}\n" for line in data.split("\n"))
    out.append("\n")
    return "".join(out).encode()


def encode_data(data: str, *, id: int | None = None) -> bytes:
    """``encode_event`` for the relay's hot path: an unnamed event, with an optional integer
    ``id`` (a sequence number). One-line data (every JSON chunk an upstream sends on one
    ``data:`` line) costs one bytes format; anything else goes through ``encode_event``."""
    if "\n" in data or "\r" in data:
        return encode_event(data, id=None if id is None else str(id))
    if id is None:
        return b"data: %s\n\n" % data.encode()
    return b"id: %d\ndata: %s\n\n" % (id, data.encode())


def encode_comment(text: str = "") -> bytes:
    """Encode a comment (e.g. a keep-alive) as ``b": text\\n\\n"``, one ``:`` line per line.

    Send it between events: its blank line also resets a half-built event's type.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(f": {line}\n" for line in text.split("\n")).encode() + b"\n"
