from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.relay.sse import (
    DONE_DATA,
    DONE_EVENT,
    ServerSentEvent,
    SSEDecodeError,
    SSEDecoder,
    encode_comment,
    encode_data,
    encode_event,
)

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "sse"
FIXTURES = sorted(FIXTURE_DIR.glob("*.sse"))
FIXTURE_IDS = [p.stem for p in FIXTURES]

# Event counts stated in tests/fixtures/sse/SOURCES.md, written down independently of any parser.
DOCUMENTED_EVENT_COUNTS = {
    "openai-chat-n3-multichoice": 50,
    "openai-chat-gpt5-obfuscation": 51,
    "deepseek-reasoning-content": 42,
    "groq-midstream-error-event": 45,
    "llamacpp-chat-usage-timings": 38,
    "llamacpp-chat-reasoning-content": 51,
    "ollama-chat-reasoning-field": 33,
    "vllm-reasoning-field-partial": 2,
    "vllm-reasoning-and-reasoning_content-partial": 4,
}


def decode(*chunks: bytes, decoder: SSEDecoder | None = None) -> list[ServerSentEvent]:
    decoder = decoder or SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.flush()


def datas(*chunks: bytes) -> list[str]:
    return [event.data for event in decode(*chunks)]


def reference_decode(raw: bytes) -> list[ServerSentEvent]:
    """A slow, whole-stream reading of the WHATWG rules, to check the incremental decoder against.

    Like SSEDecoder.flush(), end of input ends the last line and the pending event.
    """
    text = raw.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    events = []
    data: list[str] = []
    event, id_, retry = "", None, None
    for line in [*re.split(r"\r\n|\r|\n", text), ""]:
        if line == "":
            if data:
                events.append(ServerSentEvent("\n".join(data), event or "message", id_, retry))
            data, event, id_, retry = [], "", None, None
        elif line.startswith(":"):
            pass
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id" and "\0" not in value:
                id_ = value
            elif name == "retry" and re.fullmatch(r"[0-9]+", value):
                retry = int(value)
    return events


# --- fixtures: chunking never changes the result ---------------------------------------------


def event_windows(raw: bytes) -> list[tuple[bytes, range]]:
    """Each event's bytes with one neighbouring event either side, and the split offsets
    (relative to the window) that fall within the middle event, its ends included."""
    bounds = [0, *(m.end() for m in re.finditer(rb"\n\n", raw))]
    if bounds[-1] != len(raw):
        bounds.append(len(raw))
    windows = []
    for i in range(len(bounds) - 1):
        lo, hi = bounds[max(i - 1, 0)], bounds[min(i + 2, len(bounds) - 1)]
        windows.append((raw[lo:hi], range(bounds[i] - lo, bounds[i + 1] - lo + 1)))
    return windows


@pytest.mark.parametrize("path", FIXTURES, ids=FIXTURE_IDS)
def test_fixture_split_at_every_offset(path: Path) -> None:
    # Every byte offset of the file is a split point. Decoding a window of three events around
    # it rather than the whole file keeps this fast; the first and last windows still hold the
    # file's start (BOM) and end (flush), and the whole file is chunked in the tests below.
    raw = path.read_bytes()
    windows = event_windows(raw)
    covered = 0
    for window, offsets in windows:
        whole = decode(window)
        for offset in offsets:
            assert decode(window[:offset], window[offset:]) == whole, (covered, offset)
        covered += len(offsets) - 1
    assert covered == len(raw)


@pytest.mark.parametrize("path", FIXTURES, ids=FIXTURE_IDS)
def test_fixture_one_byte_pieces(path: Path) -> None:
    raw = path.read_bytes()
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == decode(raw)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fixture_random_chunking(data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(FIXTURES)).read_bytes()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=40)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert decode(*pieces) == decode(raw)


# --- fixtures: agree with independent readings -----------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=FIXTURE_IDS)
def test_fixture_matches_reference(path: Path) -> None:
    raw = path.read_bytes()
    assert decode(raw) == reference_decode(raw)


@pytest.mark.parametrize("path", FIXTURES, ids=FIXTURE_IDS)
def test_fixture_one_event_per_data_line(path: Path) -> None:
    raw = path.read_bytes()
    # No fixture has multi-line data or CR, so each "data:" line is exactly one event.
    assert b"\r" not in raw
    data_lines = [line for line in raw.split(b"\n") if line.startswith(b"data:")]
    events = decode(raw)
    assert len(events) == len(data_lines) > 0
    assert [e.data.encode() for e in events] == [line[len(b"data: ") :] for line in data_lines]
    if path.stem in DOCUMENTED_EVENT_COUNTS:
        assert len(events) == DOCUMENTED_EVENT_COUNTS[path.stem]


@pytest.mark.parametrize("path", FIXTURES, ids=FIXTURE_IDS)
def test_fixture_data_is_json_until_done(path: Path) -> None:
    events = decode(path.read_bytes())
    done = [i for i, e in enumerate(events) if e.data == DONE_DATA]
    assert done in ([], [len(events) - 1])  # [DONE] only ever comes last
    for event in events[: done[0] if done else None]:
        chunk = json.loads(event.data)
        assert isinstance(chunk, dict)
        if "-chat-" in path.stem or "-completions" in path.stem:
            assert chunk.get("object") in ("chat.completion.chunk", "text_completion") or (
                "error" in chunk
            )


def test_fixture_event_types() -> None:
    groq = decode((FIXTURE_DIR / "groq-midstream-error-event.sse").read_bytes())
    assert [e.event for e in groq[-2:]] == ["message", "error"]
    assert json.loads(groq[-1].data)["error"]["code"] == "tool_use_failed"
    responses = decode((FIXTURE_DIR / "openai-responses-event-lines.sse").read_bytes())
    assert all(e.event == json.loads(e.data)["type"] for e in responses)
    assert responses[0].event == "response.created"


def test_fixture_unterminated_done_needs_flush() -> None:
    raw = (FIXTURE_DIR / "azureopenai-completions-logprobs.sse").read_bytes()
    assert raw.endswith(b"\n\ndata: [DONE]\n")
    decoder = SSEDecoder()
    fed = decoder.feed(raw)
    assert fed[-1].data != DONE_DATA
    assert decoder.flush() == [ServerSentEvent(DONE_DATA)]


def test_fixture_comments_are_not_events() -> None:
    raw = (FIXTURE_DIR / "openrouter-midstream-error-comments.sse").read_bytes()
    assert raw.count(b": OPENROUTER PROCESSING\n") == 17
    events = decode(raw)
    assert len(events) == 5
    assert "OPENROUTER" not in "".join(e.data for e in events)


# --- line endings, BOM, multibyte ------------------------------------------------------------


def test_cr_only_line_endings() -> None:
    assert datas(b"data: a\rdata: b\r\rdata: c\r\r") == ["a\nb", "c"]


def test_crlf_line_endings() -> None:
    assert datas(b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n") == ["a\nb", "c"]


def test_crlf_split_across_chunks() -> None:
    assert datas(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == ["a\nb"]


def test_crlf_complete_in_chunk_does_not_dispatch_early() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n") == []
    assert decoder.feed(b"data: b\r\n") == []
    assert decoder.feed(b"\r\n") == [ServerSentEvent("a\nb")]


def test_cr_then_cr_across_chunks_is_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [ServerSentEvent("a")]


def test_lf_after_cr_only_skipped_once() -> None:
    # CR | LF is one terminator; a second LF is a blank line and dispatches.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent("a")]


def test_other_unicode_line_breaks_are_not_line_ends() -> None:
    odd = "a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i"
    assert datas(f"data: {odd}\n\n".encode()) == [odd]


def test_bom_stripped_at_start() -> None:
    assert datas(b"\xef\xbb\xbfdata: a\n\n") == ["a"]


@pytest.mark.parametrize("offset", range(1, 12))
def test_bom_split(offset: int) -> None:
    raw = b"\xef\xbb\xbfdata: a\n\n"
    assert datas(raw[:offset], raw[offset:]) == ["a"]
    assert datas(*(raw[i : i + 1] for i in range(len(raw)))) == ["a"]


def test_bom_only_at_start() -> None:
    # A second BOM is part of the line, so the field name is "\ufeffdata": unknown, ignored.
    assert datas(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n") == ["b"]
    assert datas(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == ["a"]


def test_short_start_that_is_not_a_bom() -> None:
    assert datas(b"d", b"a", b"ta: x\n\n") == ["x"]
    assert datas(b"\xef", b"\xbb", b"data: x\n\n") == []  # "\ufffddata" is an unknown field


def test_invalid_utf8_is_replaced_like_the_spec() -> None:
    assert datas(b"data: \xff", b"a\n\n") == ["\ufffda"]


MULTIBYTE_TEXT = "你好世界 👋😊 é — ü"
MULTIBYTE = f"data: {MULTIBYTE_TEXT}\n\n".encode()


@pytest.mark.parametrize("offset", range(len(MULTIBYTE) + 1))
def test_multibyte_split_at_every_offset(offset: int) -> None:
    assert datas(MULTIBYTE[:offset], MULTIBYTE[offset:]) == [MULTIBYTE_TEXT]


def test_multibyte_one_byte_pieces() -> None:
    pieces = [MULTIBYTE[i : i + 1] for i in range(len(MULTIBYTE))]
    assert datas(*pieces) == [MULTIBYTE_TEXT]


# --- fields ----------------------------------------------------------------------------------


def test_comments_ignored() -> None:
    assert datas(b": keep-alive\n\n:\n\ndata: a\n: inside an event\ndata: b\n\n") == ["a\nb"]


def test_multiline_data() -> None:
    assert datas(b"data: a\ndata:\ndata: c\n\n") == ["a\n\nc"]


def test_event_id_retry_fields() -> None:
    assert decode(b"event: delta\nid: 7\nretry: 1500\ndata: x\n\n") == [
        ServerSentEvent("x", event="delta", id="7", retry=1500)
    ]


def test_fields_do_not_leak_into_next_event() -> None:
    events = decode(b"event: a\nid: 1\nretry: 5\ndata: x\n\ndata: y\n\n")
    assert events[1] == ServerSentEvent("y")


def test_last_event_id_persists_like_the_spec() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 1\ndata: x\n\ndata: y\n\n")
    assert decoder.last_event_id == "1"
    decoder.feed(b"id\ndata: z\n\n")
    assert decoder.last_event_id == ""


def test_id_with_nul_ignored() -> None:
    assert decode(b"id: a\0b\ndata: x\n\n") == [ServerSentEvent("x", id=None)]
    assert decode(b"id: 1\nid: a\0b\ndata: x\n\n") == [ServerSentEvent("x", id="1")]


@pytest.mark.parametrize("value", ["", "12a", "-1", " 5", "1.5", "١٢", "²"])
def test_retry_not_all_ascii_digits_ignored(value: str) -> None:
    # "retry:  5" keeps one space after dropping one, so it is not all digits.
    assert decode(f"retry: {value}\ndata: x\n\n".encode()) == [ServerSentEvent("x")]


def test_empty_event_type_is_message() -> None:
    assert decode(b"event:\ndata: x\n\n") == [ServerSentEvent("x", event="message")]


def test_field_without_colon() -> None:
    assert datas(b"data\n\n") == [""]
    assert decode(b"event\ndata: x\n\n") == [ServerSentEvent("x")]


def test_data_without_space() -> None:
    assert datas(b"data:x\n\n") == ["x"]


def test_data_with_two_spaces_keeps_one() -> None:
    assert datas(b"data:  x\n\n") == [" x"]


def test_value_colons_kept() -> None:
    assert datas(b'data: {"a": "b:c"}\n\n') == ['{"a": "b:c"}']


def test_unknown_fields_ignored() -> None:
    assert datas(b"foo: bar\nDATA: no\nerror: {}\ndata: x\n\n") == ["x"]


def test_blank_line_without_data_does_not_dispatch() -> None:
    assert decode(b"event: ping\nid: 3\n\ndata: x\n\n") == [ServerSentEvent("x")]


def test_empty_data_is_dispatched() -> None:
    assert datas(b"data:\n\n") == [""]
    assert datas(b"data\ndata\n\n") == ["\n"]


def test_done_is_an_ordinary_event() -> None:
    assert decode(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [
        ServerSentEvent('{"a":1}'),
        ServerSentEvent(DONE_DATA),
    ]


# --- flush -----------------------------------------------------------------------------------


def test_flush_dispatches_event_ended_by_one_newline() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]\n") == []
    assert decoder.flush() == [ServerSentEvent(DONE_DATA)]


def test_flush_dispatches_unterminated_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: b") == []
    assert decoder.flush() == [ServerSentEvent("a\nb")]


def test_flush_after_trailing_cr() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.flush() == [ServerSentEvent("a")]


def test_flush_with_nothing_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.flush() == []
    assert decoder.feed(b"data: a\n\n") == [ServerSentEvent("a")]
    assert decoder.flush() == []
    assert decoder.feed(b"event: x\n") == []
    assert decoder.flush() == []  # no data: not an event


def test_flush_resets_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"\xef\xbb\xbfevent: x\ndata: a\nid: 1\nretry: 9\ndata")
    assert decoder.flush() == [ServerSentEvent("a\n", event="x", id="1", retry=9)]
    assert decoder.feed(b"\xef\xbb\xbfdata: b\n\n") == [ServerSentEvent("b")]


def test_empty_chunk_is_harmless() -> None:
    assert datas(b"data: a\r", b"", b"\n", b"", b"\n") == ["a"]


# --- buffer cap ------------------------------------------------------------------------------


def test_line_over_cap_raises() -> None:
    with pytest.raises(SSEDecodeError):
        SSEDecoder(max_line_bytes=10).feed(b"data: 12345")


def test_line_over_cap_in_pieces_raises() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    decoder.feed(b"data: ")
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"12345")


def test_line_over_cap_after_terminator_raises() -> None:
    with pytest.raises(SSEDecodeError):
        SSEDecoder(max_line_bytes=10).feed(b"data: a\n\ndata: 12345")


def test_line_at_cap_is_fine() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    assert decoder.feed(b"data: 1234") == []
    assert decoder.feed(b"\n\n") == [ServerSentEvent("1234")]


def test_event_data_over_cap_raises() -> None:
    decoder = SSEDecoder(max_line_bytes=10)
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"data: 1234\ndata: 1234\ndata: 1234\n")


def test_decode_error_is_value_error() -> None:
    assert issubclass(SSEDecodeError, ValueError)


# --- encoder ---------------------------------------------------------------------------------


def test_encode_event_shape() -> None:
    assert (
        encode_event("a\nb", event="delta", id="4") == b"event: delta\nid: 4\ndata: a\ndata: b\n\n"
    )
    assert encode_event("") == b"data: \n\n"
    assert encode_event("é") == "data: é\n\n".encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [("a\nb", "a\nb"), ("a\r\nb", "a\nb"), ("a\rb\r\n\nc", "a\nb\n\nc"), (" x ", " x "), ("", "")],
)
def test_encode_event_round_trip(data: str, expected: str) -> None:
    assert decode(encode_event(data, event="e", id="1")) == [
        ServerSentEvent(expected, event="e", id="1")
    ]


@settings(max_examples=100, deadline=None)
@given(
    data=st.text(),
    event=st.none() | st.text(min_size=1).filter(lambda s: not {"\r", "\n"} & set(s)),
    id_=st.none() | st.text().filter(lambda s: not {"\r", "\n", "\0"} & set(s)),
)
def test_encode_event_round_trip_any_text(data: str, event: str | None, id_: str | None) -> None:
    expected = ServerSentEvent(re.sub(r"\r\n|\r", "\n", data), event or "message", id_)
    assert decode(encode_event(data, event=event, id=id_)) == [expected]


@settings(max_examples=100, deadline=None)
@given(data=st.text(), id_=st.none() | st.integers(min_value=0))
def test_encode_data_equals_encode_event(data: str, id_: int | None) -> None:
    fast = encode_data(data, id=id_)
    assert fast == encode_event(data, id=None if id_ is None else str(id_))
    expected = ServerSentEvent(
        re.sub(r"\r\n|\r", "\n", data), "message", None if id_ is None else str(id_)
    )
    assert decode(fast) == [expected]


@pytest.mark.parametrize(
    ("event", "id_"), [("a\nb", None), ("a\rb", None), (None, "1\n"), (None, "\0")]
)
def test_encode_event_rejects_unframeable_fields(event: str | None, id_: str | None) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        encode_event("x", event=event, id=id_)


def test_encode_comment() -> None:
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_comment() == b": \n\n"
    assert decode(encode_comment("a\nb") + encode_event("x")) == [ServerSentEvent("x")]


def test_done_event_decodes_to_sentinel() -> None:
    assert decode(DONE_EVENT) == [ServerSentEvent(DONE_DATA)]


# --- arbitrary input: chunking-independent and equal to the reference reading ---------------

TOKENS = [b"data", b"event", b"id", b"retry", b":", b" ", b"\r", b"\n", b"\r\n", b"x", b"7"]
TOKENS += [b"\0", b"\xef\xbb\xbf", "é".encode(), "👋".encode(), b"\xff", b"\x0c"]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_arbitrary_stream_any_chunking_matches_reference(data: st.DataObject) -> None:
    raw = b"".join(data.draw(st.lists(st.sampled_from(TOKENS), max_size=60)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert decode(*pieces) == reference_decode(raw)
