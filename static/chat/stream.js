// Network stage: POST a message, read the SSE answer with fetch + ReadableStream, hand events
// to callbacks. Parsing lives in sse.js; the DOM in render.js.
import { readEvents, DONE } from "./sse.js";

/**
 * Stream one answer: POST a new message, or (payload null) GET a running answer to resume it.
 * @param {string} url  the stream endpoint, or a generation's resume URL
 * @param {object|null} payload  JSON body ({content, conversation, slot, parent, regenerate})
 * @param {{csrfToken?: string, headers?: object, signal: AbortSignal,
 *          onMeta: (name: string, data: object) => void,
 *          onChunk: (chunk: object, sequence: number) => void,
 *          onGone?: (stored: object) => void,
 *          onError: (envelope: {error: {message: string}}) => void}} handlers
 * @returns {Promise<"done"|"error"|"aborted">}
 */
export async function streamAnswer(
  url, payload, { csrfToken, headers = {}, signal, onMeta, onChunk, onError, onGone },
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
    onError({ error: { message: `Network error: ${err.message}` } });
    return "error";
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
  try {
    for await (const event of readEvents(response.body, { signal })) {
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
  }
  if (signal?.aborted) return "aborted";
  onError({ error: { message: "The stream ended before the answer was complete." } });
  return "error";
}
