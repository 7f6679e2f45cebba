// node --test tests/js/ — the browser SSE parser (static/chat/sse.js) against the shared
// fixtures in tests/fixtures/sse/ and the same edge cases as tests/unit/test_sse.py.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";

import { DONE, ParseError, SSEDecoder, readEvents } from "../../static/chat/sse.js";

const FIXTURE_DIR = new URL("../fixtures/sse/", import.meta.url);
const FIXTURES = readdirSync(FIXTURE_DIR)
  .filter((name) => name.endsWith(".sse"))
  .sort();
const enc = new TextEncoder();

function decode(...chunks) {
  const decoder = new SSEDecoder();
  const events = chunks.flatMap((chunk) => decoder.feed(chunk));
  return events.concat(decoder.flush());
}

const bytes = (text) => (typeof text === "string" ? enc.encode(text) : Uint8Array.from(text));
const datas = (...chunks) => decode(...chunks.map(bytes)).map((e) => e.data);
const ev = (data, { event = "message", id = null, retry = null } = {}) => ({ data, event, id, retry });
const onePiece = (raw) => Array.from({ length: raw.length }, (_, i) => raw.subarray(i, i + 1));

// Each event's bytes with one neighbouring event either side, and the offsets (relative to
// the window) that fall within the middle event, its ends included.
function eventWindows(raw) {
  const bounds = [0];
  for (let i = 0; i + 1 < raw.length; i++) {
    if (raw[i] === 10 && raw[i + 1] === 10) bounds.push(++i + 1);
  }
  if (bounds.at(-1) !== raw.length) bounds.push(raw.length);
  const windows = [];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const lo = bounds[Math.max(i - 1, 0)];
    const hi = bounds[Math.min(i + 2, bounds.length - 1)];
    const offsets = [];
    for (let k = bounds[i]; k <= bounds[i + 1]; k++) offsets.push(k - lo);
    windows.push([raw.subarray(lo, hi), offsets]);
  }
  return windows;
}

test("fixtures are present", () => {
  assert.ok(FIXTURES.length >= 20, FIXTURES.join(","));
});

for (const name of FIXTURES) {
  const raw = new Uint8Array(readFileSync(new URL(name, FIXTURE_DIR)));

  test(`${name}: split at every byte offset equals unsplit`, () => {
    // As in test_sse.py: every offset of the file, decoded within a window of three events.
    let covered = 0;
    for (const [window, offsets] of eventWindows(raw)) {
      const whole = JSON.stringify(decode(window));
      for (const offset of offsets) {
        const split = decode(window.subarray(0, offset), window.subarray(offset));
        assert.equal(JSON.stringify(split), whole, `offset ${covered + offset}`);
      }
      covered += offsets.length - 1;
    }
    assert.equal(covered, raw.length);
  });

  test(`${name}: one-byte pieces equal unsplit`, () => {
    assert.deepEqual(decode(...onePiece(raw)), decode(raw));
  });

  test(`${name}: one event per data line, JSON until [DONE]`, () => {
    const dataLines = new TextDecoder()
      .decode(raw)
      .split("\n")
      .filter((line) => line.startsWith("data:"));
    const events = decode(raw);
    assert.deepEqual(
      events.map((e) => e.data),
      dataLines.map((line) => line.slice("data: ".length)),
    );
    events.forEach((e, i) => {
      if (e.data === DONE) assert.equal(i, events.length - 1);
      else assert.equal(typeof JSON.parse(e.data), "object");
    });
  });
}

test("CR only ends lines", () => {
  assert.deepEqual(datas("data: a\rdata: b\r\rdata: c\r\r"), ["a\nb", "c"]);
});

test("CRLF ends lines", () => {
  assert.deepEqual(datas("data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n"), ["a\nb", "c"]);
});

test("CRLF split across chunks is one line end", () => {
  assert.deepEqual(datas("data: a\r", "\ndata: b\r", "\n\r", "\n"), ["a\nb"]);
});

test("CRLF complete in a chunk does not dispatch early", () => {
  const decoder = new SSEDecoder();
  assert.deepEqual(decoder.feed(bytes("data: a\r\n")), []);
  assert.deepEqual(decoder.feed(bytes("data: b\r\n")), []);
  assert.deepEqual(decoder.feed(bytes("\r\n")), [ev("a\nb")]);
});

test("CR then CR across chunks is a blank line", () => {
  const decoder = new SSEDecoder();
  assert.deepEqual(decoder.feed(bytes("data: a\r")), []);
  assert.deepEqual(decoder.feed(bytes("\r")), [ev("a")]);
});

test("LF after CR is skipped only once", () => {
  const decoder = new SSEDecoder();
  assert.deepEqual(decoder.feed(bytes("data: a\r")), []);
  assert.deepEqual(decoder.feed(bytes("\n")), []);
  assert.deepEqual(decoder.feed(bytes("\n")), [ev("a")]);
});

test("other Unicode line breaks do not end lines", () => {
  const odd = "a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i";
  assert.deepEqual(datas(`data: ${odd}\n\n`), [odd]);
});

test("BOM stripped at start, split anywhere", () => {
  const raw = bytes([0xef, 0xbb, 0xbf, ...enc.encode("data: a\n\n")]);
  for (let offset = 0; offset <= raw.length; offset++) {
    assert.deepEqual(datas(raw.subarray(0, offset), raw.subarray(offset)), ["a"], `${offset}`);
  }
  assert.deepEqual(datas(...onePiece(raw)), ["a"]);
});

test("BOM only at start", () => {
  assert.deepEqual(datas([0xef, 0xbb, 0xbf, 0xef, 0xbb, 0xbf], "data: a\n\ndata: b\n\n"), ["b"]);
  assert.deepEqual(datas("data: a\n\n", [0xef, 0xbb, 0xbf], "data: b\n\n"), ["a"]);
});

test("invalid UTF-8 is replaced like the spec", () => {
  assert.deepEqual(datas([...enc.encode("data: "), 0xff], "a\n\n"), ["\ufffda"]);
});

test("multibyte characters split at every byte", () => {
  const text = "你好世界 👋😊 é — ü";
  const raw = enc.encode(`data: ${text}\n\n`);
  for (let offset = 0; offset <= raw.length; offset++) {
    assert.deepEqual(datas(raw.subarray(0, offset), raw.subarray(offset)), [text], `${offset}`);
  }
  assert.deepEqual(datas(...onePiece(raw)), [text]);
});

test("comments are ignored", () => {
  assert.deepEqual(datas(": keep-alive\n\n:\n\ndata: a\n: inside\ndata: b\n\n"), ["a\nb"]);
});

test("multi-line data joins with LF", () => {
  assert.deepEqual(datas("data: a\ndata:\ndata: c\n\n"), ["a\n\nc"]);
});

test("event, id and retry fields", () => {
  assert.deepEqual(decode(bytes("event: delta\nid: 7\nretry: 1500\ndata: x\n\n")), [
    ev("x", { event: "delta", id: "7", retry: 1500 }),
  ]);
  assert.deepEqual(decode(bytes("event: a\nid: 1\nretry: 5\ndata: x\n\ndata: y\n\n"))[1], ev("y"));
});

test("lastEventId persists like the spec", () => {
  const decoder = new SSEDecoder();
  decoder.feed(bytes("id: 1\ndata: x\n\ndata: y\n\n"));
  assert.equal(decoder.lastEventId, "1");
  decoder.feed(bytes("id\ndata: z\n\n"));
  assert.equal(decoder.lastEventId, "");
});

test("id with NUL is ignored", () => {
  assert.deepEqual(decode(bytes("id: 1\nid: a\0b\ndata: x\n\n")), [ev("x", { id: "1" })]);
});

test("retry that is not all ASCII digits is ignored", () => {
  for (const value of ["", "12a", "-1", " 5", "1.5", "١٢", "²"]) {
    assert.deepEqual(decode(bytes(`retry: ${value}\ndata: x\n\n`)), [ev("x")], value);
  }
});

test("fields: no colon, no space, two spaces, unknown, empty event type", () => {
  assert.deepEqual(datas("data\n\n"), [""]);
  assert.deepEqual(decode(bytes("event\ndata: x\n\n")), [ev("x")]);
  assert.deepEqual(datas("data:x\n\n"), ["x"]);
  assert.deepEqual(datas("data:  x\n\n"), [" x"]);
  assert.deepEqual(datas('data: {"a": "b:c"}\n\n'), ['{"a": "b:c"}']);
  assert.deepEqual(datas("foo: bar\nDATA: no\ndata: x\n\n"), ["x"]);
  assert.deepEqual(decode(bytes("event:\ndata: x\n\n")), [ev("x")]);
});

test("blank line without data does not dispatch; empty data does", () => {
  assert.deepEqual(decode(bytes("event: ping\nid: 3\n\ndata: x\n\n")), [ev("x")]);
  assert.deepEqual(datas("data:\n\n"), [""]);
  assert.deepEqual(datas("data\ndata\n\n"), ["\n"]);
});

test("[DONE] is an ordinary event", () => {
  assert.deepEqual(datas('data: {"a":1}\n\ndata: [DONE]\n\n'), ['{"a":1}', DONE]);
});

test("flush dispatches a pending event (deliberate leniency) and resets", () => {
  const decoder = new SSEDecoder();
  assert.deepEqual(decoder.feed(bytes("data: [DONE]\n")), []);
  assert.deepEqual(decoder.flush(), [ev(DONE)]);
  assert.deepEqual(decoder.flush(), []);
  decoder.feed(bytes("\ufeffevent: x\ndata: a\nid: 1\nretry: 9\ndata"));
  assert.deepEqual(decoder.flush(), [ev("a\n", { event: "x", id: "1", retry: 9 })]);
  assert.deepEqual(decoder.feed(bytes("\ufeffdata: b\n\n")), [ev("b")]);
  decoder.feed(bytes("data: c\r"));
  assert.deepEqual(decoder.flush(), [ev("c")]);
  decoder.feed(bytes("event: y\n"));
  assert.deepEqual(decoder.flush(), []);
});

test("flush turns an incomplete character into U+FFFD", () => {
  assert.deepEqual(datas([...enc.encode("data: a"), 0xf0, 0x9f]), ["a\ufffd"]);
});

test("buffer cap throws ParseError", () => {
  assert.throws(() => new SSEDecoder({ maxLineLength: 10 }).feed(bytes("data: 12345")), ParseError);
  const pieces = new SSEDecoder({ maxLineLength: 10 });
  pieces.feed(bytes("data: "));
  assert.throws(() => pieces.feed(bytes("12345")), ParseError);
  const events = new SSEDecoder({ maxLineLength: 10 });
  assert.throws(() => events.feed(bytes("data: 1234\ndata: 1234\ndata: 1234\n")), ParseError);
  const atCap = new SSEDecoder({ maxLineLength: 10 });
  assert.deepEqual(atCap.feed(bytes("data: 1234")), []);
  assert.deepEqual(atCap.feed(bytes("\n\n")), [ev("1234")]);
  assert.ok(new ParseError("x") instanceof Error);
});

function streamOf(chunks, onCancel = () => {}) {
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(bytes(chunk));
      controller.close();
    },
    cancel: onCancel,
  });
}

test("readEvents yields every event, [DONE] and the flushed tail included", async () => {
  const raw = readFileSync(new URL("azureopenai-completions-logprobs.sse", FIXTURE_DIR));
  const body = streamOf(onePiece(new Uint8Array(raw)));
  const events = [];
  for await (const event of readEvents(body)) events.push(event);
  assert.deepEqual(events, decode(new Uint8Array(raw)));
  assert.equal(events.at(-1).data, DONE);
  assert.equal(body.locked, false);
});

test("readEvents cancels the stream and releases the lock when the consumer stops", async () => {
  let cancelled = false;
  const body = new ReadableStream({
    pull(controller) {
      controller.enqueue(bytes("data: tick\n\n")); // endless
    },
    cancel() {
      cancelled = true;
    },
  });
  let seen = 0;
  for await (const event of readEvents(body)) {
    assert.equal(event.data, "tick");
    if (++seen === 3) break;
  }
  assert.equal(cancelled, true);
  assert.equal(body.locked, false);
});

test("readEvents stops a quiet stream when the signal aborts", async () => {
  let cancelReason;
  const body = new ReadableStream({
    start(controller) {
      controller.enqueue(bytes("data: first\n\n")); // then nothing, never closed
    },
    cancel(reason) {
      cancelReason = reason;
    },
  });
  const controller = new AbortController();
  const seen = [];
  await assert.rejects(async () => {
    for await (const event of readEvents(body, { signal: controller.signal })) {
      seen.push(event.data);
      setTimeout(() => controller.abort(new Error("stop")), 10);
    }
  }, /stop/);
  assert.deepEqual(seen, ["first"]);
  assert.equal(cancelReason.message, "stop");
  assert.equal(body.locked, false);
});

test("readEvents rejects at once for an already aborted signal", async () => {
  const body = streamOf(["data: x\n\n"]);
  const signal = AbortSignal.abort(new Error("gone"));
  await assert.rejects(async () => {
    for await (const _ of readEvents(body, { signal })) assert.fail("no events expected");
  }, /gone/);
  assert.equal(body.locked, false);
});
