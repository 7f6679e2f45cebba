// Incremental Server-Sent Events parser for the browser (no DOM). Same shape and rules as
// chat/relay/sse.py; the rules are the WHATWG HTML Standard's "Parsing an event stream" and
// "Interpreting an event stream":
// https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

/** The OpenAI end-of-stream sentinel: an event whose data is "[DONE]" (never JSON). */
export const DONE = "[DONE]";

/** Default cap, in UTF-16 code units, on a pending line and on a pending event's data. */
export const MAX_LINE_LENGTH = 16 * 1024 * 1024;

/** The stream broke a limit of the parser (a line or an event longer than its cap). */
export class ParseError extends Error {
  constructor(message) {
    super(message);
    this.name = "ParseError";
  }
}

/**
 * Turns text/event-stream bytes, split anywhere, into events `{data, event, id, retry}`:
 * `data` is the data lines joined with "\n", `event` defaults to "message", `id` is the last
 * id field seen on this event or null (the spec's stream-wide value is `lastEventId`), `retry`
 * is a reconnection time in ms, set only when the field was all ASCII digits, else null.
 *
 * `feed(Uint8Array)` returns the events the chunk completes; `flush()` ends the stream and,
 * deliberately more lenient than the spec (which discards an event not ended by a blank line),
 * dispatches a pending event, because upstreams often end with "data: [DONE]\n". Lines end at
 * CRLF, LF or CR, even when CR and LF arrive in different chunks. Throws ParseError when a line
 * or an event's data grows beyond `maxLineLength`.
 */
export class SSEDecoder {
  #max;
  #text;
  #buf;
  #skipLF;
  #data;
  #size;
  #event;
  #id;
  #retry;

  constructor({ maxLineLength = MAX_LINE_LENGTH } = {}) {
    this.#max = maxLineLength;
    this.lastEventId = ""; // the spec's "last event ID buffer": not reset between events
    this.#reset();
  }

  #reset() {
    // A streaming TextDecoder keeps a split multibyte character for the next chunk and, since
    // ignoreBOM is false, strips one BOM at the start of the stream only.
    this.#text = new TextDecoder("utf-8");
    this.#buf = ""; // text after the last line terminator
    this.#skipLF = false; // the previous chunk ended with CR: a leading LF completes a CRLF
    this.#data = []; // the spec's "data buffer", one item per data line
    this.#size = 0;
    this.#event = "";
    this.#id = null;
    this.#retry = null;
  }

  feed(bytes) {
    return this.#push(this.#text.decode(bytes, { stream: true }));
  }

  flush() {
    const events = this.#push(this.#text.decode()); // an incomplete character becomes U+FFFD
    events.push(...this.#lines(this.#buf ? [this.#buf, ""] : [""]));
    this.#reset();
    return events;
  }

  #push(text) {
    if (this.#skipLF && text) {
      this.#skipLF = false;
      if (text.charCodeAt(0) === 10) text = text.slice(1);
    }
    if (!text) return [];
    const end = Math.max(text.lastIndexOf("\n"), text.lastIndexOf("\r"));
    if (end < 0) {
      this.#buf += text;
      if (this.#buf.length > this.#max) throw new ParseError(`SSE line longer than ${this.#max}`);
      return [];
    }
    // Exclude the last terminator, and the CR of a final CRLF, so no spurious blank line.
    const crlf = text.charCodeAt(end) === 10 && end > 0 && text.charCodeAt(end - 1) === 13;
    let head = this.#buf + text.slice(0, crlf ? end - 1 : end);
    this.#buf = text.slice(end + 1);
    if (this.#buf.length > this.#max) throw new ParseError(`SSE line longer than ${this.#max}`);
    this.#skipLF = text.charCodeAt(end) === 13 && !this.#buf;
    if (head.includes("\r")) head = head.replace(/\r\n?/g, "\n");
    return this.#lines(head.split("\n"));
  }

  #lines(lines) {
    const events = [];
    for (const line of lines) {
      if (line === "") {
        // Blank line: dispatch if the data buffer is not empty.
        if (this.#data.length) {
          const event = this.#event || "message";
          events.push({ data: this.#data.join("\n"), event, id: this.#id, retry: this.#retry });
          this.#data = [];
          this.#size = 0;
        }
        this.#event = "";
        this.#id = null;
        this.#retry = null;
        continue;
      }
      const colon = line.indexOf(":");
      if (colon === 0) continue; // comment
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
      if (field === "data") {
        this.#size += value.length + 1;
        if (this.#size > this.#max) throw new ParseError(`SSE event data longer than ${this.#max}`);
        this.#data.push(value);
      } else if (field === "event") {
        this.#event = value;
      } else if (field === "id") {
        if (!value.includes("\0")) this.#id = this.lastEventId = value;
      } else if (field === "retry" && /^[0-9]+$/.test(value)) {
        this.#retry = Number.parseInt(value, 10);
      }
    }
    return events;
  }
}

/**
 * Yields the events of a fetch body (ReadableStream<Uint8Array>), the "[DONE]" one included,
 * then the one flush() may add at the end. Aborting `signal` cancels the stream and rejects
 * with the signal's reason; stopping early (break / return) cancels it too. The reader's lock
 * is always released.
 */
export async function* readEvents(body, { signal } = {}) {
  const reader = body.getReader();
  const decoder = new SSEDecoder();
  // Cancelling settles a pending read(), so an abort interrupts a stream that has gone quiet.
  const onAbort = () => reader.cancel(signal.reason).catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  let done = false;
  try {
    signal?.throwIfAborted();
    for (;;) {
      const result = await reader.read();
      signal?.throwIfAborted();
      if (result.done) break;
      yield* decoder.feed(result.value);
    }
    done = true;
    yield* decoder.flush();
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!done) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
