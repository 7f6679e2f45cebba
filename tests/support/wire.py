"""HTTP/1.1 bytes for hand-written upstreams in tests."""

from __future__ import annotations


def chunks(*parts: bytes) -> bytes:
    """``parts`` in chunked transfer coding (RFC 9112 §7.1), without the last, empty chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    """A whole chunked body: ``parts``, the last chunk, ``trailer`` fields, the final CRLF."""
    return chunks(*parts) + b"0\r\n" + trailer + b"\r\n"
