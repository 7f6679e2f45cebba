"""Relay failures, each carrying the OpenAI error envelope a client should see.

Shape, from the OpenAI API reference ("Error codes"):
``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}``.
"""

from __future__ import annotations

from typing import Any


class EnvelopeError(Exception):
    """A failure a client sees as OpenAI's error envelope.

    ``status`` is the HTTP status to answer with when no byte has been sent yet; once a stream
    has begun, the same envelope travels as one final SSE ``data:`` event instead.
    ``retry_after`` (s) becomes a ``Retry-After`` header on 429 and 503 answers.
    ``to_dict``/``from_dict`` carry every field across processes (``chat.relay.cluster``).
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
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
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


class RelayError(EnvelopeError):
    """A failure of the relay: an upstream that failed or refused, a slot that could not take
    the request (queue, cold boot), a generation that ended badly.

    ``upstream_status`` is the HTTP status the upstream itself answered (a 500 is reported as
    502 but is not a 502), which the dispatcher's retry rule reads. ``slot`` names the slot of
    the fallback chain whose call failed (set by the dispatcher; None before any slot was
    tried), so a caller can tell the primary's failure from a fallback's.
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
        slot: str | None = None,
    ) -> None:
        super().__init__(
            message, status=status, type=type, code=code, param=param, retry_after=retry_after
        )
        self.upstream_status = upstream_status
        self.slot = slot

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-ready values (``from_dict`` reads it back)."""
        return {
            "message": self.message,
            "status": self.status,
            "type": self.type,
            "code": self.code,
            "param": self.param,
            "retry_after": self.retry_after,
            "upstream_status": self.upstream_status,
            "slot": self.slot,
        }

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> RelayError:
        """The error ``to_dict`` described (unknown keys ignored; a missing message is one)."""
        known = ("status", "type", "code", "param", "retry_after", "upstream_status", "slot")
        return cls(
            str(fields.get("message") or "upstream error"),
            **{k: fields[k] for k in known if fields.get(k) is not None},
        )


class MidStreamError(RelayError):
    """The upstream failed after its first chunk: a drop, a malformed chunk, a read timeout, or an
    error the upstream itself sent inside the stream."""
