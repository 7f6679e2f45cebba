// The chat page: the composer, Stop, resume, edit, regenerate and copy, around answer.js.
import { playAnswer, wireComposer } from "./answer.js";
import { wireAttachments } from "./attachments.js";
import { AnswerView, hydrateAnswers, userMessage } from "./render.js";

const chat = document.getElementById("chat");
const messages = document.getElementById("messages");
const form = document.getElementById("composer");
const box = document.getElementById("message");
const send = document.getElementById("send");
const stop = document.getElementById("stop");
const slotPicker = document.getElementById("slot");
const announcer = document.getElementById("announcer");
const jumpLatest = document.getElementById("jump-latest");
const csrfToken = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];

let controller = null;

function nearBottom() {
  return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
}

const setStreaming = wireComposer({
  form, box, send, stop, onSubmit: () => submit(), onStop: () => stopAnswer(),
});

const attachments = wireAttachments({
  chat, form, box, csrfToken, send, fields: () => ({ slot: slotPicker?.value || "" }),
});

let generationId = null; // the answer streaming now, for Stop
let stopPending = false; // Stop pressed before the server said which generation it is

function generationUrl(id, suffix = "") {
  return chat.dataset.generationUrl.replace("GENERATION", id) + suffix;
}

async function submit() {
  const content = box.value;
  if (!content.trim() || controller || comparing) return;
  const problem = attachments.problem();
  if (problem) {
    attachments.showError(problem);
    return;
  }
  const files = attachments.items();
  const compared = compareSlots();
  if (compared.length > 1 && files.length) {
    attachments.showError("Compare does not take attachments: remove them, or untick the models to compare.");
    return;
  }
  // Sent: the picker's choice is made, and left open it would cover the answers.
  if (comparePicker) comparePicker.open = false;
  box.value = "";
  document.getElementById("empty-state")?.remove();
  if (compared.length > 1) {
    await compare(content, compared);
    return;
  }
  messages.append(userMessage(content, files));
  const view = new AnswerView(slotPicker?.value);
  messages.append(view.article);
  await runAnswer(view, chat.dataset.streamUrl, {
    content,
    conversation: chat.dataset.conversation || null,
    slot: slotPicker?.value || null,
    attachments: files.map((file) => file.id),
  });
  await refreshThread();
}

/** Re-render the shown thread from the server (pagers, actions, stored ids). */
async function refreshThread() {
  if (!chat.dataset.conversation || typeof htmx === "undefined") return;
  const url = chat.dataset.threadUrl.replace("00000000-0000-0000-0000-000000000000", chat.dataset.conversation);
  await htmx.ajax("GET", url, { target: "#messages", swap: "innerHTML" });
}

/** A new chat's first message made its conversation (``data``: the slipstream.message event):
 * the page becomes that conversation's (URL, title, sidebar, header tools). */
function adoptConversation(data) {
  if (chat.dataset.conversation || !data.conversation_url) return;
  chat.dataset.conversation = data.conversation_id;
  history.replaceState(null, "", data.conversation_url);
  document.getElementById("chat-title").textContent = data.title;
  document.title = `${data.title} · Slipstream`;
  document.body.dispatchEvent(new CustomEvent("conversations-changed"));
  showConversationTools();
}

/** Show the header's settings and sharing for the conversation the first message just made. */
async function showConversationTools() {
  if (typeof htmx === "undefined") return;
  const url = chat.dataset.toolsUrl.replace("00000000-0000-0000-0000-000000000000", chat.dataset.conversation);
  await htmx.ajax("GET", url, { target: "#conversation-tools", swap: "innerHTML" });
}

/** Drop ``article`` and every message after it from the page (a new branch replaces them). */
function removeFrom(article) {
  while (article.nextElementSibling) article.nextElementSibling.remove();
  article.remove();
}

/** Answer a user message again, as a new version next to the earlier answers. */
async function regenerate(answerArticle) {
  if (controller) return;
  const userMessageId = Number(answerArticle.querySelector("[data-user-message]")?.dataset.userMessage);
  removeFrom(answerArticle);
  const view = new AnswerView(slotPicker?.value);
  messages.append(view.article);
  await runAnswer(view, chat.dataset.streamUrl, {
    conversation: chat.dataset.conversation,
    regenerate: userMessageId,
    slot: slotPicker?.value || null,
  });
  await refreshThread();
}

/** Edit a user message in place; sending makes a new version (a branch) and answers it. */
function edit(article) {
  if (controller || article.querySelector(".edit-box")) return;
  const content = article.querySelector(".content");
  const original = content.textContent;
  const editor = document.createElement("form");
  editor.className = "edit-box";
  const area = document.createElement("textarea");
  area.value = original;
  area.setAttribute("aria-label", "Edit message");
  area.rows = Math.min(12, original.split("\n").length + 1);
  const save = Object.assign(document.createElement("button"), { type: "submit", textContent: "Send edit" });
  const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
  editor.append(area, save, cancel);
  content.hidden = true;
  content.after(editor);
  area.focus();
  cancel.addEventListener("click", () => {
    editor.remove();
    content.hidden = false;
  });
  editor.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = area.value;
    if (!text.trim()) return;
    const parent = article.dataset.parentId ? Number(article.dataset.parentId) : null;
    // The new version keeps the original's files (the server has them: sent by id).
    const ids = article.dataset.attachmentIds ? article.dataset.attachmentIds.split(",") : [];
    const files = article.querySelector(":scope > .attachments")?.cloneNode(true);
    removeFrom(article);
    const bubble = userMessage(text);
    if (ids.length) bubble.dataset.attachmentIds = ids.join(",");
    if (files) bubble.querySelector(".content").after(files);
    messages.append(bubble);
    const view = new AnswerView(slotPicker?.value);
    messages.append(view.article);
    await runAnswer(view, chat.dataset.streamUrl, {
      content: text,
      conversation: chat.dataset.conversation,
      parent,
      slot: slotPicker?.value || null,
      attachments: ids,
    });
    await refreshThread();
  });
}

messages.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button || messages.dataset.readOnly) return;
  const article = button.closest("article.message");
  const action = button.dataset.action;
  if (action === "copy") {
    await navigator.clipboard.writeText(article.querySelector(".content").innerText);
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  } else if (action === "regenerate") {
    regenerate(article);
  } else if (action === "edit") {
    edit(article);
  }
});

// The sidebar's requests (search, refresh) say which conversation is open, to mark it, and
// what is searched. Set here: htmx's `hx-vals="js:…"` evaluates a string, which the CSP refuses.
document.body.addEventListener("htmx:configRequest", (event) => {
  const source = event.detail.elt.id;
  if (source !== "conversation-q" && source !== "conversation-list") return;
  event.detail.parameters.current = chat.dataset.conversation || "";
  event.detail.parameters.q = document.getElementById("conversation-q").value;
});

// A swapped-in thread (branch pager, refresh) is rendered like the page's first one.
document.body.addEventListener("htmx:afterSwap", (event) => {
  if (event.target === messages) hydrateAnswers(messages);
});

/** Where to read an answer from after its chunk number ``after`` (its SSE ``id``). */
function resumeUrl(id, after) {
  return generationUrl(id, `?after=${after}`);
}

/** Reattach to an answer that was streaming when the page loaded (a reload, a second tab). */
async function resume(article) {
  // The page shows the answer's last checkpoint, which says the sequence number (SSE id) of
  // the last chunk its text includes (data-resume-after) and the delta that stands for the
  // chunks up to it (data-resume-delta: content before <think> splitting, reasoning fields,
  // tool-call fragments with their index, as the accumulator had them; services.resume_point).
  // The view is seeded with that delta and reads on after it, so a reload costs the chunks
  // since the checkpoint (about a second's), not the whole answer again. Without one (no
  // checkpoint yet, or one written before they said where they stand), or a delta that does
  // not parse, it reads from the first chunk into an empty view; a server that no longer has
  // that chunk says so (resumed_after: 0, answer.js starts over); an answer gone meanwhile is
  // shown as stored (410).
  const view = new AnswerView(article.querySelector(".role")?.textContent || "");
  view.article.dataset.messageId = article.dataset.messageId;
  let after = Number.parseInt(article.dataset.resumeAfter || "0", 10) || 0;
  if (after > 0) {
    try {
      view.applyDelta(JSON.parse(article.dataset.resumeDelta));
    } catch {
      view.reset();
      after = 0;
    }
  }
  article.replaceWith(view.article);
  await runAnswer(view, resumeUrl(article.dataset.generationId, after), null, after);
}

/** Stream one answer into ``view``: a POST of a new message, or a GET resuming one after
 * chunk ``after`` (what ``view`` holds already). */
async function runAnswer(view, url, payload, after = 0) {
  messages.scrollTop = messages.scrollHeight;
  let stick = true;
  view.onFlush = () => {
    if (stick) messages.scrollTop = messages.scrollHeight;
  };
  const onScroll = () => {
    stick = nearBottom();
    jumpLatest.hidden = stick;
  };
  messages.addEventListener("scroll", onScroll);

  controller = new AbortController();
  setStreaming(true);
  const status = await playAnswer(view, url, payload, {
    csrfToken,
    signal: controller.signal,
    resumeUrl,
    after,
    onMessage(data) {
      // The server took the message: its files leave the tray (refused, they stay to resend).
      attachments.release(payload?.attachments || []); // a resume has no payload
      generationId = data.generation_id;
      if (stopPending) {
        stopPending = false;
        stopAnswer();
      }
      adoptConversation(data);
    },
  });
  messages.removeEventListener("scroll", onScroll);
  jumpLatest.hidden = true;
  announcer.textContent = status === "complete" ? "Answer complete." : `Answer ${status}.`;
  controller = null;
  generationId = null;
  stopPending = false;
  setStreaming(false);
  // The budget notice (#budget) refreshes: this answer counted against the user's quotas.
  document.body.dispatchEvent(new CustomEvent("answer-ended"));
  box.focus();
}


async function stopAnswer() {
  if (comparing) {
    comparing.forEach((column) => column.stop());
    return;
  }
  if (!controller) return;
  if (!generationId) {
    // Aborting now would leave the answer generating on the server: stop it once we know it.
    stopPending = true;
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


jumpLatest.addEventListener("click", () => {
  messages.scrollTop = messages.scrollHeight;
  jumpLatest.hidden = true;
});

messages.scrollTop = messages.scrollHeight;
const streaming = messages.querySelector("article.message.assistant[data-generation-id]");
if (streaming) resume(streaming);
chat.dataset.ready = "true"; // for tests: the composer is wired

// A new chat's example prompts fill the composer, ready to edit or send.
messages.addEventListener("click", (event) => {
  const example = event.target instanceof Element && event.target.closest("button[data-prompt]");
  if (!example) return;
  box.value = example.dataset.prompt;
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
});

// --- Compare: one message answered by 2 or 3 slots side by side --------------------------
// The first slot answers the message; the others answer it again at once (regenerate, with
// their slot), so the answers are sibling versions of one turn. Each column streams with its
// own cursor, TTFT and tok/s, and its own Stop; "Use this answer" shows that version and the
// conversation goes on from it (the others stay in the version pager).

const comparePicker = document.getElementById("compare-picker");
let comparing = null; // the columns while a comparison streams

function compareSlots() {
  if (!comparePicker) return [];
  return [...comparePicker.querySelectorAll("input[name=compare]:checked")].map((input) => input.value);
}

// At most three: the others are disabled once three are ticked.
comparePicker?.addEventListener("change", () => {
  const boxes = [...comparePicker.querySelectorAll("input[name=compare]")];
  const full = boxes.filter((input) => input.checked).length >= 3;
  boxes.forEach((input) => { input.disabled = full && !input.checked; });
  const count = compareSlots().length;
  comparePicker.querySelector("summary").textContent = count > 1 ? `Compare (${count})` : "Compare";
});

function compareColumn(slot) {
  const column = document.createElement("section");
  column.className = "compare-column";
  column.setAttribute("aria-label", `Answer from ${slot}`);
  const head = document.createElement("div");
  head.className = "compare-head";
  const stopButton = Object.assign(document.createElement("button"), { type: "button", textContent: "Stop" });
  stopButton.setAttribute("aria-label", `Stop ${slot}`);
  const use = Object.assign(document.createElement("button"), { type: "button", textContent: "Use this answer", hidden: true });
  use.setAttribute("aria-label", `Use this answer from ${slot}`);
  head.append(Object.assign(document.createElement("strong"), { textContent: slot }), stopButton, use);
  const view = new AnswerView(slot);
  // The column's head names the slot, beside its Stop: the answer's own name line would say
  // it a second time.
  view.article.querySelector(":scope > .role")?.remove();
  column.append(head, view.article);
  const state = { slot, view, column, use, generationId: null, controller: new AbortController() };
  state.stop = async () => {
    if (!state.generationId) return state.controller.abort();
    try {
      const response = await fetch(generationUrl(state.generationId, "stop/"), {
        method: "POST", headers: { "X-CSRFToken": csrfToken }, credentials: "same-origin",
      });
      if (!response.ok) state.controller.abort();
    } catch {
      state.controller.abort();
    }
  };
  stopButton.addEventListener("click", state.stop);
  state.stopButton = stopButton;
  return state;
}

function playColumn(column, payload, onMessage) {
  return playAnswer(column.view, chat.dataset.streamUrl, payload, {
    csrfToken,
    signal: column.controller.signal,
    resumeUrl,
    onMessage(data) {
      column.generationId = data.generation_id;
      column.messageId = data.assistant_message_id;
      onMessage?.(data);
    },
  }).then((status) => {
    column.stopButton.hidden = true;
    column.use.hidden = !column.messageId;
    return status;
  });
}

async function compare(content, slots) {
  const grid = document.createElement("div");
  grid.className = "compare-grid";
  grid.setAttribute("role", "group");
  grid.setAttribute("aria-label", "Answers to compare");
  messages.append(userMessage(content), grid);
  const columns = slots.map(compareColumn);
  grid.append(...columns.map((column) => column.column));
  comparing = columns;
  setStreaming(true);
  let userMessageId = null;
  let started;
  const begun = new Promise((resolve) => { started = resolve; });
  const first = playColumn(columns[0], {
    content, conversation: chat.dataset.conversation || null, slot: slots[0],
  }, (data) => {
    userMessageId = data.user_message_id;
    adoptConversation(data);
    started();
  });
  first.then(started); // refused or failed before it began: the others cannot follow
  await begun;
  const runs = columns.slice(1).map((column) => {
    if (!userMessageId) {
      column.stopButton.hidden = true;
      column.view.finish({ status: "error", error: "The first answer did not start." });
      return Promise.resolve("error");
    }
    return playColumn(column, {
      conversation: chat.dataset.conversation, regenerate: userMessageId, slot: column.slot,
    });
  });
  await Promise.all([first, ...runs]);
  comparing = null;
  setStreaming(false);
  announcer.textContent = "Answers ready to compare: choose one to go on with.";
  document.body.dispatchEvent(new CustomEvent("answer-ended"));
  grid.addEventListener("click", async (event) => {
    const chosen = columns.find((column) => column.use === event.target);
    if (!chosen) return;
    const body = new URLSearchParams({ message: chosen.messageId });
    await fetch(chat.dataset.branchUrl.replace("00000000-0000-0000-0000-000000000000", chat.dataset.conversation), {
      method: "POST", body, headers: { "X-CSRFToken": csrfToken }, credentials: "same-origin",
    });
    await refreshThread();
    box.focus();
  });
}
