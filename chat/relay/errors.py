"""Relay failures, each carrying the OpenAI error envelope a client should see.

Shape, from the OpenAI API reference ("Error codes"):
``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}``.
"""

from __future__ import annotations

from typing import Any


class RelayError(Exception):
    """A failure the relay reports to its client as an OpenAI error envelope.

    ``status`` is the HTTP status to answer with when no byte has been sent yet; once a stream has
    begun, the same envelope travels as one final SSE ``data:`` event instead. ``retry_after``
    (s) becomes a ``Retry-After`` header on 429 and 503 answers; ``upstream_status`` is the HTTP
    status the upstream itself answered (a 500 is reported as 502 but is not a 502), which the
    dispatcher's retry rule reads.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        type: str = "api_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        self.type = type
        self.code = code
        self.param = param

    def envelope(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class MidStreamError(RelayError):
    """The upstream failed after its first chunk: a drop, a malformed chunk, a read timeout, or an
    error the upstream itself sent inside the stream."""
