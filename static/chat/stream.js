// Network stage: POST a message or GET a resume, read the SSE answer with fetch +
// ReadableStream, hand events to callbacks. One connection per call: whether and where to
// reconnect is answer.js's decision. Parsing lives in sse.js; the DOM in render.js.
import { readEvents, DONE } from "./sse.js";

/**
 * Stream one answer: POST a new message, or (payload null) GET a running answer to resume it.
 *
 * A connection that fails is a "dropped" outcome, told to `onDrop(message)`, not an error: fetch
 * rejected, a read rejected (both reject with TypeError for a network error: Fetch Standard,
 * "network error"), or the body ended before the answer's end. What the server said is an
 * error (`onError`): an HTTP status, an error event, a stream that does not parse.
 * @param {string} url  the stream endpoint, or a generation's resume URL
 * @param {object|null} payload  JSON body ({content, conversation, slot, parent, regenerate})
 * @param {{csrfToken?: string, headers?: object, signal: AbortSignal,
 *          onMeta: (name: string, data: object) => void,
 *          onChunk: (chunk: object, sequence: number) => void,
 *          onGone?: (stored: object) => void,
 *          onDrop: (message: string) => void,
 *          onError: (envelope: {error: {message: string}}) => void}} handlers
 *   `sequence` is the chunk's SSE `id` (its sequence number in the generation), 0 if none.
 * @returns {Promise<"done"|"error"|"aborted"|"dropped">}
 */
export async function streamAnswer(
  url, payload, { csrfToken, headers = {}, signal, onMeta, onChunk, onError, onGone, onDrop },
) {
  let response;
  try {
    response = await fetch(url, payload === null
      ? { headers: { Accept: "text/event-stream", ...headers }, signal, credentials: "same-origin" }
      : {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Accept: "text/event-stream",
          ...(csrfToken ? { "X-CSRFToken": csrfToken } : {}),
          ...headers,
        },
        body: JSON.stringify(payload),
        signal,
        credentials: "same-origin",
      });
  } catch (err) {
    if (signal?.aborted) return "aborted";
    onDrop(`Network error: ${err.message}`);
    return "dropped";
  }
  if (response.status === 410 && onGone) {
    // The answer ended (and is stored) before we could reattach.
    onGone(await response.json());
    return "done";
  }
  if (!response.ok) {
    let envelope;
    try {
      envelope = await response.json();
    } catch {
      envelope = { error: { message: `HTTP ${response.status}` } };
    }
    onError(envelope);
    return "error";
  }
  const events = readEvents(response.body, { signal });
  try {
    for (;;) {
      let next;
      try {
        next = await events.next();
      } catch (err) {
        if (signal?.aborted) return "aborted";
        if (!(err instanceof TypeError)) throw err; // a ParseError: the stream itself is bad
        onDrop(`The connection broke off: ${err.message}`);
        return "dropped";
      }
      if (next.done) break;
      const event = next.value;
      if (event.event !== "message") {
        onMeta(event.event, JSON.parse(event.data));
        continue;
      }
      if (event.data === DONE) return "done";
      const obj = JSON.parse(event.data);
      if (obj.error) {
        onError(obj);
        return "error";
      }
      onChunk(obj, Number(event.id) || 0);
    }
  } catch (err) {
    if (signal?.aborted) return "aborted";
    onError({ error: { message: `The stream broke off: ${err.message}` } });
    return "error";
  } finally {
    await events.return(); // stopping early cancels the body and releases its reader
  }
  if (signal?.aborted) return "aborted";
  onDrop("The stream ended before the answer was complete.");
  return "dropped";
}
