// One answer from its stream to the screen, shared by the chat page and the embeddable widget:
// status lines while it waits (queued, warming, retrying), deltas into an AnswerView, the end.
import { streamAnswer } from "./stream.js";

/** The line shown in an answer while it waits: warming, queued or retrying. */
export function statusText(status) {
  if (status.state === "warming") return `Warming up ${status.slot}…`;
  if (status.state === "queued") {
    return status.position === 1
      ? `Queued for ${status.slot}: you are next…`
      : `Queued for ${status.slot}: position ${status.position}…`;
  }
  if (status.state === "retrying") return `Retrying ${status.slot} (attempt ${status.attempt})…`;
  return "";
}

export function showStatus(view, text) {
  let line = view.article.querySelector(".answer-status");
  if (!text) {
    line?.remove();
    return;
  }
  if (!line) {
    line = document.createElement("div");
    line.className = "answer-status";
    line.setAttribute("role", "status");
    view.article.insertBefore(line, view.article.children[1] || null);
  }
  line.textContent = text;
}

/** The pauses (ms) before each try to resume a dropped answer; then it is an error. */
export const RESUME_DELAYS_MS = [250, 500, 1000];

/** Resolves after `ms`, or at once when `signal` aborts. */
function pause(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Stream one answer into `view` and finish it.
 *
 * With `resumeUrl`, a connection that drops mid-answer (a network error while reading, or a
 * body that ends early) is resumed: after a short pause, GET `resumeUrl(generationId, after)`,
 * where `after` is the sequence number (the SSE `id`) of the last chunk rendered, so the
 * server sends only what follows and the text on screen stays as it is. Up to
 * `resumeDelaysMs.length` tries in a row, each after its pause; a try that brings a chunk
 * starts the count again. Only the chat passes `resumeUrl`: its answers run on without a
 * reader, whereas the widget's server cancels an answer whose stream closes.
 *
 * `after`: the sequence number `view` already holds the answer up to (a reloaded page seeds it
 * from the checkpoint, then GETs `url` = `resumeUrl(id, after)`). When the first
 * `slipstream.message` says the server reads from an earlier chunk (`resumed_after`: it had no
 * chunk `after`), the view is emptied and the answer drawn again from there; on later
 * connections, chunks already drawn are skipped.
 * @param {AnswerView} view
 * @param {string} url  POST target, or a resume URL when `payload` is null (GET)
 * @param {object|null} payload
 * @param {{csrfToken?: string, headers?: object, signal: AbortSignal,
 *          onMessage?: (meta: object) => void,
 *          resumeUrl?: (generationId: string, after: number) => string,
 *          resumeDelaysMs?: number[], after?: number}} options
 *   onMessage gets `slipstream.message` (each connection sends one)
 * @returns {Promise<string>} the final status: complete, stopped or error
 */
export async function playAnswer(
  view, url, payload,
  { csrfToken, headers, signal, onMessage, resumeUrl, resumeDelaysMs = RESUME_DELAYS_MS, after = 0 },
) {
  let done = {};
  let error = null;
  let dropped = null; // why the last connection failed
  let generationId = null;
  let sequence = after; // the SSE id of the last chunk rendered
  let seeded = after; // chunks the view was given before the first connection (a checkpoint)
  let tries = 0;
  const handlers = {
    csrfToken,
    headers,
    signal,
    onMeta(name, data) {
      if (name === "slipstream.message") {
        generationId = data.generation_id;
        // A checkpoint the server cannot go on from: its chunks are not the ones the view was
        // seeded with. Later connections only ever skip chunks already drawn (by sequence).
        if (seeded && Number.isInteger(data.resumed_after) && data.resumed_after < seeded) {
          view.reset();
          sequence = data.resumed_after;
        }
        seeded = 0;
        view.article.dataset.messageId = data.assistant_message_id;
        showStatus(view, "");
        onMessage?.(data);
      } else if (name === "slipstream.status") {
        showStatus(view, statusText(data));
      } else if (name === "slipstream.done") {
        done = data;
      }
    },
    onChunk(chunk, id) {
      if (id && id <= sequence) return; // rendered already (never sent twice, but cheap)
      if (id) sequence = id;
      tries = 0;
      const delta = chunk.choices?.[0]?.delta;
      if (delta) view.applyDelta(delta);
    },
    onGone(stored) {
      // Ended before we reattached: show it as stored, in place of what we had of it.
      view.reset();
      view.applyDelta({ reasoning_content: stored.reasoning || "", content: stored.content || "" });
      for (const [index, call] of (stored.tool_calls || []).entries()) {
        view.applyDelta({ tool_calls: [{ index, ...call }] });
      }
      done = stored;
      if (stored.error) error = stored.error.error?.message || "The answer failed.";
    },
    onDrop(message) {
      dropped = message;
    },
    onError(envelope) {
      error = envelope?.error?.message || "The answer failed.";
    },
  };
  let outcome = await streamAnswer(url, payload, handlers);
  while (outcome === "dropped" && resumeUrl && generationId && tries < resumeDelaysMs.length) {
    showStatus(view, "Reconnecting…");
    await pause(resumeDelaysMs[tries++], signal);
    if (signal?.aborted) {
      outcome = "aborted";
      break;
    }
    outcome = await streamAnswer(resumeUrl(generationId, sequence), null, handlers);
  }
  if (outcome === "dropped") error = dropped;
  showStatus(view, "");
  const status = outcome === "aborted" ? "stopped" : error ? "error" : done.status || "complete";
  view.finish({ ...done, status, error });
  return status;
}

/**
 * The composer both pages share: Enter sends, Shift+Enter is a new line, Send and Stop swap
 * while an answer streams, Stop and Esc stop it.
 * @param {{form: HTMLFormElement, box: HTMLTextAreaElement, send: HTMLButtonElement,
 *          stop: HTMLButtonElement, onSubmit: () => void, onStop: () => void}} parts
 * @returns {(streaming: boolean) => void} shows the composer as streaming, or not
 */
export function wireComposer({ form, box, send, stop, onSubmit, onStop }) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onSubmit();
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      onSubmit();
    }
  });
  stop.addEventListener("click", onStop);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") onStop();
  });
  return (streaming) => {
    send.hidden = streaming;
    stop.hidden = !streaming;
    box.readOnly = streaming;
  };
}
