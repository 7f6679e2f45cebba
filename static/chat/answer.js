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

/**
 * Stream one answer into `view` and finish it.
 * @param {AnswerView} view
 * @param {string} url  POST target, or a resume URL when `payload` is null (GET)
 * @param {object|null} payload
 * @param {{csrfToken?: string, headers?: object, signal: AbortSignal,
 *          onMessage?: (meta: object) => void}} options  onMessage gets `slipstream.message`
 * @returns {Promise<string>} the final status: complete, stopped or error
 */
export async function playAnswer(view, url, payload, { csrfToken, headers, signal, onMessage }) {
  let done = {};
  let error = null;
  const outcome = await streamAnswer(url, payload, {
    csrfToken,
    headers,
    signal,
    onMeta(name, data) {
      if (name === "slipstream.message") {
        view.article.dataset.messageId = data.assistant_message_id;
        onMessage?.(data);
      } else if (name === "slipstream.status") {
        showStatus(view, statusText(data));
      } else if (name === "slipstream.done") {
        done = data;
      }
    },
    onChunk(chunk) {
      const delta = chunk.choices?.[0]?.delta;
      if (delta) view.applyDelta(delta);
    },
    onGone(stored) {
      // Ended before we reattached: show it as stored.
      view.applyDelta({ reasoning_content: stored.reasoning || "", content: stored.content || "" });
      done = stored;
      if (stored.error) error = stored.error.error?.message || "The answer failed.";
    },
    onError(envelope) {
      error = envelope?.error?.message || "The answer failed.";
    },
  });
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
