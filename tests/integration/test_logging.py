"""What the server logs, read from a real daphne process's output: one line per answer
(STYLE.md: a generation's id, slot, TTFT and outcome once per answer, never per token)."""

from __future__ import annotations

import re

import pytest

from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_finished_generation_is_logged_once(server, slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    answer = post_message(browser_session, "Hello")
    assert answer.events[-1].data == "[DONE]"
    generation = answer.meta("slipstream.message")["generation_id"]
    # The line is written as the generation finishes, before its subscribers see the end, so
    # it is in the log by now. Handlers on both "chat" and the root logger (daphne's command
    # line adds one) printed it twice.
    lines = re.findall(rf"^.*generation {generation} .*status=.*$", server.log_text(), re.M)
    assert len(lines) == 1, lines
    assert "status=complete" in lines[0]
    assert "slot=primary" in lines[0]
