"""``chat.relay.errors``: an error crossing processes keeps every field."""

from __future__ import annotations

import json

from chat.relay.errors import RelayError


def test_every_field_survives_a_trip_through_json() -> None:
    # Before, another process's mirror rebuilt the error from message, status, type and code:
    # a 429's Retry-After and the param an SDK reports were lost.
    error = RelayError(
        "Slot primary is busy",
        status=429,
        type="rate_limit_error",
        code="slot_queue_timeout",
        param="model",
        retry_after=5.0,
        upstream_status=503,
        slot="backup",
    )
    again = RelayError.from_dict(json.loads(json.dumps(error.to_dict())))
    assert again.to_dict() == error.to_dict()
    assert again.envelope() == error.envelope()


def test_a_partial_record_still_makes_an_error() -> None:
    error = RelayError.from_dict({"code": "generation_lost", "unknown": 1})
    assert (error.message, error.status, error.code) == ("upstream error", 502, "generation_lost")
