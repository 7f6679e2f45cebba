"""``/v1/responses`` on the native path: the backend's own ``/responses`` (the simulator serves
one, and replays recorded ones), relayed event by event with Slipstream's id and model; and
``auto``'s detection of backends with and without it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from chat import readcache
from chat.models import ApiCall, Backend, Slot
from chat.relay.sse import SSEDecoder
from tests.conftest import make_slot
from tests.integration.test_responses_api import close_mid_stream, raw_events, wait_for_row
from tests.support.llama_server import free_port
from tests.support.openapi import assert_valid

pytestmark = pytest.mark.django_db(transaction=True)

RECORDED = Path(__file__).parents[1] / "fixtures" / "sse" / "openai-responses-event-lines.sse"


def backend_mode(slot: Slot, mode: str) -> None:
    Backend.objects.filter(pk=slot.backend_id).update(responses_api=mode)
    readcache.invalidate()  # .update() sends no signal


@pytest.fixture
def native_slot(transactional_db, sim) -> Slot:
    made = make_slot(sim.base_url)
    backend_mode(made, "native")
    return made


def test_native_stream_is_the_backends_events_with_our_id(openai_client, native_slot, sim):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5, reasoning_tokens=2)
    events = list(openai_client.responses.create(model="primary", input="Hello", stream=True))
    sent = sim.stats()["last_request"]
    assert sent["input"] == "Hello"  # the Responses request went as it was, not as chat
    assert "messages" not in sent
    assert sent["store"] is False  # Slipstream stores it; the backend need not
    assert sent["model"] == "sim"
    ids = {e.response.id for e in events if hasattr(e, "response")}
    assert len(ids) == 1
    (response_id,) = ids
    assert response_id.startswith("resp_")
    assert {e.response.model for e in events if hasattr(e, "response")} == {"primary"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for event in events:
        assert_valid(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
    final = events[-1].response
    assert final.status == "completed"
    assert final.store is True  # ours, not the backend's store=false
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert len(final.output_text.split()) == 5
    stored = wait_for_row(response_id, "completed")
    assert stored.native
    assert stored.response["output"] == final.model_dump(mode="json", exclude_unset=True)["output"]
    call = ApiCall.objects.get()
    assert (call.endpoint, call.outcome, call.completion_tokens) == ("responses", "complete", 7)
    assert call.ttft_ms is not None


def test_recorded_openai_stream_passes_byte_for_byte(server, api_key, native_slot, sim):
    """OpenAI's own recorded Responses stream, replayed by the backend, reaches the client
    byte-identical apart from the response's id and model."""
    sim.configure(ttft_ms=0, tokens_per_s=0, replay=RECORDED.name)
    with httpx.stream(
        "POST",
        server.base_url + "/v1/responses",
        json={"model": "primary", "input": "ping", "stream": True, "store": False},
        headers={"Authorization": f"Bearer {api_key}"},
    ) as response:
        assert response.status_code == 200
        received = response.read().decode()
    recorded = RECORDED.read_text()
    upstream_id = re.search(r'"id":"(resp_[0-9a-f]+)"', recorded)
    ours = re.search(r'"id":"(resp_[0-9a-f]+)"', received)
    assert upstream_id is not None
    assert ours is not None
    expected = recorded.replace(upstream_id[1], ours[1]).replace(
        '"model":"gpt-5.5-2026-04-23"', '"model":"primary"'
    )
    assert received == expected


def test_native_resume_and_stored_replay_give_the_exact_tail(server, api_key, native_slot, sim):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=6)
    events = raw_events(server, api_key, {"model": "primary", "input": "Hi"})
    response_id = events[0]["response"]["id"]
    wait_for_row(response_id, "completed")
    for after in (-1, 3, len(events) - 2):
        with httpx.stream(
            "GET",
            f"{server.base_url}/v1/responses/{response_id}",
            params={"stream": "true", "starting_after": after},
            headers={"Authorization": f"Bearer {api_key}"},
        ) as resumed:
            decoder = SSEDecoder()
            tail = [json.loads(e.data) for e in decoder.feed(resumed.read()) + decoder.flush()]
        assert tail == events[after + 1 :]


def test_native_mid_stream_failure_ends_in_our_response_failed(server, api_key, native_slot, sim):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=30, error_after=4)
    events = raw_events(server, api_key, {"model": "primary", "input": "Hi"})
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["sequence_number"] == events[-2]["sequence_number"] + 1
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["code"] == "server_error"
    assert_valid(last, "ResponseStreamEvent")
    assert wait_for_row(last["response"]["id"], "failed").response == last["response"]


def test_native_previous_response_id_is_spelled_out_as_input(openai_client, native_slot, sim):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    first = openai_client.responses.create(model="primary", input="One")
    assert first.status == "completed"
    second = openai_client.responses.create(
        model="primary", input="Two", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    sent = sim.stats()["last_request"]
    assert "previous_response_id" not in sent
    (message,) = first.output
    # Message items go without the ids and statuses they were stored with.
    answer = {
        k: v
        for k, v in message.model_dump(mode="json", exclude_unset=True).items()
        if k not in ("id", "status")
    }
    assert sent["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "One"}]},
        answer,
        {"role": "user", "content": "Two"},
    ]


def test_auto_detects_a_backend_with_the_responses_api(openai_client, slot, sim):
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    response = openai_client.responses.create(model="primary", input="Hi")
    assert len(response.output_text.split()) == 3
    assert "input" in sim.stats()["last_request"]
    assert Backend.objects.get(pk=slot.backend_id).responses_api_detected is True


@pytest.mark.parametrize("stream", [False, True])
def test_auto_translates_for_a_backend_without_it(openai_client, slot, sim, stream):
    """A backend that answers 404 on /responses gets the request again as chat completions,
    and every later request goes so at once."""
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4, responses_api=False)
    for _ in range(2):
        if stream:
            events = list(openai_client.responses.create(model="primary", input="Hi", stream=True))
            text = events[-1].response.output_text
        else:
            text = openai_client.responses.create(model="primary", input="Hi").output_text
        assert len(text.split()) == 4
        assert sim.stats()["last_request"]["messages"] == [{"role": "user", "content": "Hi"}]
        assert Backend.objects.get(pk=slot.backend_id).responses_api_detected is False
    assert ApiCall.objects.filter(outcome="complete").count() == 2


def output_text(openai_client, *, stream: bool) -> str:
    """One response's text, asked of ``primary`` for the input "Hi"."""
    if stream:
        events = list(openai_client.responses.create(model="primary", input="Hi", stream=True))
        text: str = events[-1].response.output_text
        return text
    return openai_client.responses.create(model="primary", input="Hi").output_text


def dead_primary_with_backup(sim, primary_mode: str) -> tuple[Slot, Slot]:
    """``primary`` on a port nobody listens on (refused, no retry), falling back to ``backup``
    on the simulator; the primary's backend in ``primary_mode``."""
    backup = make_slot(sim.base_url, name="backup", model="sim-backup")
    primary = make_slot(
        f"http://127.0.0.1:{free_port()}", name="primary", max_retries=0, fallback=backup
    )
    backend_mode(primary, primary_mode)
    return primary, backup


def detected(slot: Slot) -> bool | None:
    return Backend.objects.get(pk=slot.backend_id).responses_api_detected


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("primary_mode", ["native", "auto"])
def test_a_fallbacks_404_translates_for_the_fallbacks_backend(
    openai_client, transactional_db, sim, primary_mode, stream
):
    """The primary is down and its fallback answers, on a backend without /responses: that
    404 is the fallback backend's, which translates from then on. Before, a native primary
    made it the client's 404 on every call, and an ``auto`` one was marked translate itself."""
    primary, backup = dead_primary_with_backup(sim, primary_mode)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4, responses_api=False)
    for _ in range(2):
        assert len(output_text(openai_client, stream=stream).split()) == 4
        sent = sim.stats()["last_request"]
        assert (sent["model"], sent["messages"]) == (
            "sim-backup",
            [{"role": "user", "content": "Hi"}],
        )
        assert detected(backup) is False
        assert detected(primary) is None
    # Each call answered once, on chat completions (the simulator's 404 is not in its history).
    assert [r["path"] for r in sim.stats()["history"]] == ["/v1/chat/completions"] * 2


@pytest.mark.parametrize("stream", [False, True])
def test_a_fallback_that_answers_natively_is_the_one_detected(
    openai_client, transactional_db, sim, stream
):
    primary, backup = dead_primary_with_backup(sim, "auto")
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4)
    assert len(output_text(openai_client, stream=stream).split()) == 4
    assert sim.stats()["last_request"]["input"] == "Hi"
    assert detected(backup) is True
    assert detected(primary) is None


def test_native_disconnect_cancels_upstream_and_stores_cancelled(openai_client, native_slot, sim):
    response_id, closed_at = close_mid_stream(openai_client, sim)
    assert sim.stats()["cancelled"] == 1
    assert sim.stats()["cancel_times"][0] - closed_at < 1.0
    assert "input" in sim.stats()["last_request"]  # the backend's own /responses was cancelled
    stored = wait_for_row(response_id, "cancelled")
    assert stored.native
    assert stored.response["status"] == "cancelled"


def test_slots_with_stop_strings_translate(openai_client, transactional_db, sim):
    """The relay cuts stop strings from chat deltas only: such a slot's responses translate."""
    made = make_slot(sim.base_url, stop=["zzz"])
    backend_mode(made, "native")
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    openai_client.responses.create(model="primary", input="Hi")
    assert "messages" in sim.stats()["last_request"]


def test_native_errors_keep_their_status(openai_client, native_slot, sim):
    sim.configure(fail_requests=1, fail_status=429)
    with pytest.raises(openai.RateLimitError):
        openai_client.responses.create(model="primary", input="Hi")


def test_native_event_with_an_unusable_type_fails_the_response(server, api_key, native_slot, sim):
    """An event type that cannot be an SSE event name (a line break in it) is bad data from
    the backend: the response fails with our closing event, and the stream stays well-formed."""
    sim.configure(
        ttft_ms=0, tokens_per_s=0, length=10, inject_after=3, inject_data='{"type":"a\\nb"}'
    )
    events = raw_events(server, api_key, {"model": "primary", "input": "Hi"})
    assert events[-1]["type"] == "response.failed"
    assert "upstream_malformed_chunk" in events[-1]["response"]["error"]["message"]
    assert_valid(events[-1], "ResponseStreamEvent")


# ------------------------------------------------------------------------------------------------
# A backend set to native that has no /responses (issue 33, "what users would still miss", 2)
# ------------------------------------------------------------------------------------------------
NATIVE_WARNING = 'is set to Responses API "native" but answered HTTP'


def warnings_for(server, backend_id: int) -> int:
    """How many times ``server`` warned that backend ``backend_id`` lacks /responses."""
    return sum(
        f"(id {backend_id}," in line and NATIVE_WARNING in line
        for line in server.log_text().splitlines()
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("missing", ["404", "405", "501"])
def test_a_native_backend_without_responses_is_translated_and_warned_of_once(
    openai_client, server, native_slot, sim, missing, stream
):
    """Before: the backend's 404 reached the client, whose SDK said its model did not exist.
    The request is translated, as for "auto"; the operator's setting stays; one warning names
    the backend; later requests go translated at once."""
    if missing == "404":
        sim.configure(ttft_ms=0, tokens_per_s=0, length=4, responses_api=False)
    else:  # the next request alone (the /responses one) gets that status
        sim.configure(
            ttft_ms=0, tokens_per_s=0, length=4, fail_requests=1, fail_status=int(missing)
        )
    for _ in range(3):
        assert len(output_text(openai_client, stream=stream).split()) == 4
        assert sim.stats()["last_request"]["messages"] == [{"role": "user", "content": "Hi"}]
    backend = Backend.objects.get(pk=native_slot.backend_id)
    assert (backend.responses_api, backend.responses_api_detected) == ("native", None)
    assert warnings_for(server, backend.pk) == 1
    # The failed /responses once, then chat completions only: it was not asked again.
    paths = [r["path"] for r in sim.stats()["history"] if r["path"] != "/v1/responses"]
    assert paths == ["/v1/chat/completions"] * 3
    assert sim.stats()["requests"] == 3 + (missing != "404")


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_fallback_without_responses_is_translated(
    openai_client, server, transactional_db, sim, stream
):
    """The chain's fallback, set to native, answers 404: the same, for the fallback's backend
    (the one that answered), whatever the primary is set to."""
    primary, backup = dead_primary_with_backup(sim, "native")
    backend_mode(backup, "native")
    sim.configure(ttft_ms=0, tokens_per_s=0, length=4, responses_api=False)
    for _ in range(2):
        assert len(output_text(openai_client, stream=stream).split()) == 4
        sent = sim.stats()["last_request"]
        assert (sent["model"], sent["messages"]) == (
            "sim-backup",
            [{"role": "user", "content": "Hi"}],
        )
    assert warnings_for(server, backup.backend_id) == 1
    assert warnings_for(server, primary.backend_id) == 0
    assert Backend.objects.get(pk=backup.backend_id).responses_api == "native"
