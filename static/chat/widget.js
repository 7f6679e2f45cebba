// The embeddable widget's page (inside the host site's iframe): the chat's own streaming and
// rendering (answer.js, render.js) for one anonymous visitor. The visitor is a token signed by
// the server. A cross-site iframe often may not keep storage (Chromium blocks third-party
// storage in many profiles), so embed.js keeps the token in the host page's own storage and
// hands it back in the iframe URL's fragment (#v=…, never sent to a server); the iframe's own
// localStorage is used too where it works (the plain <iframe> snippet). Stop and closing the
// panel cancel the answer. Where the widget takes images (#widget has data-attachments-url),
// visitors attach them as on the chat page (attachments.js).
import { playAnswer, wireComposer } from "./answer.js";
import { wireAttachments } from "./attachments.js";
import { AnswerView, userMessage } from "./render.js";

const root = document.getElementById("widget");
const messages = document.getElementById("messages");
const box = document.getElementById("message");
const send = document.getElementById("send");
const stop = document.getElementById("stop");
const notice = document.getElementById("notice");
const announcer = document.getElementById("announcer");
const form = document.getElementById("composer");
const storageKey = `slipstream.widget.${root.dataset.key}`;

// Through the CSSOM, which the page's CSP allows (an inline style attribute it would refuse).
root.style.setProperty("--widget-accent", root.dataset.accent);

let state = load();
let controller = null;
let visitorPending = null; // the visitor being made: several images picked at once make one

function load() {
  const handed = new URLSearchParams(location.hash.slice(1)).get("v");
  if (handed) return { token: handed };
  try {
    return JSON.parse(localStorage.getItem(storageKey)) || {};
  } catch {
    return {}; // storage blocked, and no token handed over: a new visitor
  }
}

/** The embedding page's origin, to hand the token to embed.js and no one else. */
function hostOrigin() {
  if (window.parent === window) return null;
  const ancestor = location.ancestorOrigins?.[0];
  if (ancestor) return ancestor;
  try {
    return document.referrer ? new URL(document.referrer).origin : null;
  } catch {
    return null;
  }
}

function save() {
  try {
    localStorage.setItem(storageKey, JSON.stringify(state));
  } catch {
    // storage blocked here: embed.js keeps it on the host page instead
  }
  const origin = hostOrigin();
  if (origin && state.token) {
    window.parent.postMessage({ type: "slipstream-widget", token: state.token }, origin);
  }
}

function say(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `The chat is unavailable (HTTP ${response.status}).`;
  }
}

function ensureVisitor() {
  if (state.token) return Promise.resolve(true);
  visitorPending ??= newVisitor().finally(() => { visitorPending = null; });
  return visitorPending;
}

async function newVisitor() {
  const response = await fetch(root.dataset.visitorUrl, { method: "POST" });
  if (!response.ok) {
    say(await errorMessage(response));
    return false;
  }
  state = { token: (await response.json()).token };
  save();
  return true;
}

function visitorHeaders() {
  return state.token ? { "X-Widget-Visitor": state.token } : {};
}

async function showHistory() {
  if (!state.token) return;
  const response = await fetch(root.dataset.conversationUrl, { headers: visitorHeaders() });
  if (response.status === 401) {
    state = {}; // a token from elsewhere (another widget, a changed secret key): start afresh
    return;
  }
  if (!response.ok) return;
  const data = await response.json();
  state.conversation = data.conversation;
  save();
  for (const message of data.messages) {
    if (message.role === "user") {
      // Its images by short-lived signed links: a visitor has no session to fetch them with.
      messages.append(userMessage(message.content, message.attachments || []));
    } else if (message.role === "assistant") {
      const view = new AnswerView(document.title);
      view.applyDelta({ reasoning_content: message.reasoning || "", content: message.content || "" });
      for (const [index, call] of (message.tool_calls || []).entries()) {
        view.applyDelta({ tool_calls: [{ index, ...call }] });
      }
      messages.append(view.article);
      view.finish({ status: message.status });
    }
  }
  messages.scrollTop = messages.scrollHeight;
}

// In the widget, closing the stream is stopping: the server cancels an answer nobody reads.
const setStreaming = wireComposer({
  form,
  box,
  send,
  stop,
  onSubmit: () => submit(),
  onStop: () => controller?.abort(),
});

// A switched-off widget takes no files (nor messages): a drop on it is left alone.
const takesImages = Boolean(root.dataset.attachmentsUrl) && root.dataset.enabled !== "false";
const attachments = takesImages
  ? wireAttachments({
    chat: root,
    form,
    box,
    send,
    strictAccept: true,
    // An image picked before the first message needs the visitor the message would have made.
    // Refused, the notice says why and the image's chip only that it was not uploaded.
    async headers() {
      if (!(await ensureVisitor())) throw new Error();
      return visitorHeaders();
    },
  })
  : null;

async function submit() {
  const content = box.value;
  if (!content.trim() || controller) return;
  say("");
  if (!(await ensureVisitor())) return;
  // After the wait above, in which another image may have been pasted.
  const problem = attachments?.problem();
  if (problem) {
    attachments.showError(problem);
    return;
  }
  const files = attachments?.items() || [];
  box.value = "";
  // Its images from the tray's previews: the uploads' `url` is for a signed-in owner.
  messages.append(userMessage(content, files, { local: true }));
  const view = new AnswerView(document.title);
  messages.append(view.article);
  view.onFlush = () => { messages.scrollTop = messages.scrollHeight; };
  messages.scrollTop = messages.scrollHeight;
  controller = new AbortController();
  setStreaming(true);
  const status = await playAnswer(view, root.dataset.streamUrl, {
    content,
    conversation: state.conversation || null,
    ...(attachments ? { attachments: files.map((file) => file.id) } : {}),
  }, {
    headers: visitorHeaders(),
    signal: controller.signal,
    onMessage(meta) {
      // The server took the message: its images leave the tray (refused, they stay).
      attachments?.release(files.map((file) => file.id));
      state.conversation = meta.conversation_id;
      save();
    },
  });
  if (status === "error") {
    // Refusals (limits, a switched-off chat) are said plainly, not only in the bubble.
    say(view.article.querySelector(".badge.error")?.textContent || "The answer failed.");
    if (!view.article.querySelector(".content")?.textContent.trim()) view.article.remove();
  }
  announcer.textContent = status === "complete" ? "Answer complete." : `Answer ${status}.`;
  controller = null;
  setStreaming(false);
  box.focus();
}


await showHistory();
root.dataset.ready = "true"; // for tests: the composer is wired
