from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from chat.relay.stops import StopEnforcer, StopHoldback, stop_strings
from chat.relay.types import Chunk

ALPHABET = "ab\n."  # small, so stop strings actually occur in random texts


def cut_before_first_stop(text: str, stops: list[str]) -> str:
    positions = [i for s in stops if s and (i := text.find(s)) >= 0]
    return text[: min(positions)] if positions else text


def chunkings(text: str) -> st.SearchStrategy[list[str]]:
    def split(cuts: list[int]) -> list[str]:
        return [text[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(text)])]

    return st.lists(st.integers(0, len(text)), max_size=12).map(split)


@st.composite
def texts_stops_chunks(draw: st.DrawFn) -> tuple[str, list[str], list[str]]:
    text = draw(st.text(ALPHABET, max_size=60))
    stops = draw(st.lists(st.text(ALPHABET, min_size=1, max_size=4), min_size=1, max_size=4))
    return text, stops, draw(chunkings(text))


@settings(max_examples=3000, deadline=None)
@given(texts_stops_chunks())
def test_output_is_the_text_cut_before_the_first_stop(case: tuple[str, list[str], list[str]]):
    text, stops, pieces = case
    holdback = StopHoldback(stops)
    out = "".join(holdback.feed(p) for p in pieces)
    if not holdback.stopped:
        out += holdback.flush()
    assert out == cut_before_first_stop(text, stops)
    assert holdback.stopped == (
        cut_before_first_stop(text, stops) != text or any(s in text for s in stops)
    )


@settings(max_examples=3000, deadline=None)
@given(texts_stops_chunks())
def test_only_a_possible_stop_prefix_is_held(case: tuple[str, list[str], list[str]]):
    _, stops, pieces = case
    holdback = StopHoldback(stops)
    seen = ""
    for piece in pieces:
        holdback.feed(piece)
        seen += piece
        if holdback.stopped:
            return
        # What is held is exactly the longest tail of the text so far that could still begin
        # a stop string: nothing that cannot start one is delayed.
        longest = max(
            (n for n in range(1, len(seen) + 1) if any(s.startswith(seen[-n:]) for s in stops)),
            default=0,
        )
        assert holdback.held == seen[len(seen) - longest :]


def test_stop_strings_accepts_the_request_shapes():
    assert stop_strings("\n") == ["\n"]
    assert stop_strings(["a", "", 3, "b"]) == ["a", "b"]
    assert stop_strings(None) == []
    assert stop_strings("") == []


def chat_chunk(index: int, content: str | None, finish: str | None = None, **delta: object):
    if content is not None:
        delta["content"] = content
    obj = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    return Chunk(json.dumps(obj), obj)


def contents(chunks: list[Chunk]) -> str:
    return "".join(c.obj["choices"][0]["delta"].get("content") or "" for c in chunks)


def test_a_longer_stop_that_began_first_wins():
    # Found by hypothesis: "\n" completes first, but "a\na" started earlier and completes too.
    holdback = StopHoldback(["\n", "a\na"])
    assert holdback.feed("a\n") == ""
    assert holdback.feed("a") == ""
    assert holdback.stopped
    ended = StopHoldback(["\n", "a\na"])
    assert ended.feed("a\n") == ""
    assert ended.flush() == "a"
    assert ended.stopped


def test_enforcer_cuts_the_stream_and_adds_a_stop_finish():
    enforcer = StopEnforcer(["END"], chat=True)
    out = []
    for piece in ["Hello", " wor", "ld E", "N", "D and more", " text"]:
        out += enforcer.apply(chat_chunk(0, piece))
    assert contents(out) == "Hello world "
    assert out[-1].obj["choices"][0]["finish_reason"] == "stop"
    assert out[-1].obj["id"] == "c1"
    assert enforcer.done
    # A chunk nothing touched keeps its exact bytes.
    assert out[0].data == chat_chunk(0, "Hello").data


def test_enforcer_releases_held_text_with_the_upstream_finish():
    enforcer = StopEnforcer(["\n\n"], chat=True)
    out = enforcer.apply(chat_chunk(0, "line\n"))
    assert contents(out) == "line"
    out = enforcer.apply(chat_chunk(0, "", finish="length"))
    assert contents(out) == "\n"
    assert out[0].obj["choices"][0]["finish_reason"] == "length"
    assert not enforcer.done  # the upstream finished by itself: its usage chunk is still due


def test_enforcer_keeps_role_and_reasoning_of_a_cut_delta():
    enforcer = StopEnforcer(["x"], chat=True)
    out = enforcer.apply(chat_chunk(0, "x", role="assistant"))
    assert out[0].obj["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert out[1].obj["choices"][0]["finish_reason"] == "stop"


def test_enforcer_flushes_held_text_when_the_stream_just_ends():
    enforcer = StopEnforcer(["STOP"], chat=True)
    assert contents(enforcer.apply(chat_chunk(0, "almost ST"))) == "almost "
    assert contents(enforcer.flush()) == "ST"


def test_enforcer_handles_legacy_completions_per_choice():
    enforcer = StopEnforcer(["."], chat=False)

    def text_chunk(index: int, text: str) -> Chunk:
        obj = {"object": "text_completion", "choices": [{"index": index, "text": text}]}
        return Chunk(json.dumps(obj), obj)

    out = enforcer.apply(text_chunk(0, "one. two"))
    out += enforcer.apply(text_chunk(1, "three"))
    out += enforcer.apply(text_chunk(0, "four"))
    texts = [(c.obj["choices"][0]["index"], c.obj["choices"][0].get("text")) for c in out]
    assert texts == [(0, "one"), (0, ""), (1, "three")]
    assert out[1].obj["choices"][0]["finish_reason"] == "stop"
    assert not enforcer.done  # choice 1 is still open
