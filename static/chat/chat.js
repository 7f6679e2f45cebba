// The chat page: wires the composer to stream.js and render.js.
import { streamAnswer } from "./stream.js";
import { AnswerView, userMessage } from "./render.js";

const chat = document.getElementById("chat");
const messages = document.getElementById("messages");
const form = document.getElementById("composer");
const box = document.getElementById("message");
const send = document.getElementById("send");
const stop = document.getElementById("stop");
const slotPicker = document.getElementById("slot");
const announcer = document.getElementById("announcer");
const csrfToken = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];

let controller = null;

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

function showStatus(view, text) {
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

function nearBottom() {
  return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
}

function setStreaming(streaming) {
  send.hidden = streaming;
  stop.hidden = !streaming;
  box.readOnly = streaming;
}

let generationId = null; // the answer streaming now, for Stop

function generationUrl(id, suffix = "") {
  return chat.dataset.generationUrl.replace("GENERATION", id) + suffix;
}

async function submit() {
  const content = box.value;
  if (!content.trim() || controller) return;
  box.value = "";
  messages.append(userMessage(content));
  const view = new AnswerView(slotPicker?.value);
  messages.append(view.article);
  await runAnswer(view, chat.dataset.streamUrl, {
    content,
    conversation: chat.dataset.conversation || null,
    slot: slotPicker?.value || null,
  });
}

/** Reattach to an answer that was streaming when the page loaded (a reload, a second tab). */
async function resume(article) {
  const view = new AnswerView(article.querySelector(".role")?.textContent || "");
  view.article.dataset.messageId = article.dataset.messageId;
  article.replaceWith(view.article);
  await runAnswer(view, generationUrl(article.dataset.generationId, "?after=0"), null);
}

/** Stream one answer into ``view``: a POST of a new message, or a GET resuming one. */
async function runAnswer(view, url, payload) {
  messages.scrollTop = messages.scrollHeight;
  let stick = true;
  view.onFlush = () => {
    if (stick) messages.scrollTop = messages.scrollHeight;
  };
  const onScroll = () => { stick = nearBottom(); };
  messages.addEventListener("scroll", onScroll);

  controller = new AbortController();
  setStreaming(true);
  let done = {};
  let error = null;
  const outcome = await streamAnswer(url, payload, {
    csrfToken,
    signal: controller.signal,
    onMeta(name, data) {
      if (name === "slipstream.message") {
        generationId = data.generation_id;
        view.article.dataset.messageId = data.assistant_message_id;
        if (!chat.dataset.conversation && data.conversation_url) {
          chat.dataset.conversation = data.conversation_id;
          history.replaceState(null, "", data.conversation_url);
          document.getElementById("chat-title").textContent = data.title;
          document.title = `${data.title} · Slipstream`;
          document.body.dispatchEvent(new CustomEvent("conversations-changed"));
        }
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
  messages.removeEventListener("scroll", onScroll);
  showStatus(view, "");
  const status = outcome === "aborted" ? "stopped" : error ? "error" : done.status || "complete";
  view.finish({ ...done, status, error });
  announcer.textContent = status === "complete" ? "Answer complete." : `Answer ${status}.`;
  controller = null;
  generationId = null;
  setStreaming(false);
  box.focus();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});

box.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  }
});

async function stopAnswer() {
  if (!controller) return;
  if (!generationId) {
    controller.abort(); // nothing started upstream yet
    return;
  }
  // Closing the stream would not stop the answer (a reload resumes it): ask the server, whose
  // stream then ends as "stopped"; abort only if that request fails.
  try {
    const response = await fetch(generationUrl(generationId, "stop/"), {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken },
      credentials: "same-origin",
    });
    if (!response.ok) controller?.abort();
  } catch {
    controller?.abort();
  }
}

stop.addEventListener("click", stopAnswer);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") stopAnswer();
});

messages.scrollTop = messages.scrollHeight;
const streaming = messages.querySelector("article.message.assistant[data-generation-id]");
if (streaming) resume(streaming);
chat.dataset.ready = "true"; // for tests: the composer is wired
