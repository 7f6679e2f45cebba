// The composer's attachments (issue 18): pick, paste or drop files; each is uploaded at once
// (POST chat:attachments, one `file` field) with a progress bar, shown as a chip in the tray
// above the message box, and sent with the next message by its id. XMLHttpRequest, not fetch:
// fetch reports no upload progress. The widget uses it too (images only, POST widget:attachments,
// its visitor token in a header instead of the CSRF token).
import { el, humanSize, typeBadge } from "./render.js";

const NONE = { ids: () => [], items: () => [], busy: () => false, problem: () => null, release() {}, showError() {} };

/** The message an upload refused by the server shows: its envelope's, else one for the status. */
function failureText(xhr, name) {
  const message = xhr.response?.error?.message;
  if (message) return message;
  if (xhr.status === 413) return `"${name}" is too large.`;
  if (xhr.status === 415) return `"${name}" is not a type of file that can be attached.`;
  return `"${name}" could not be uploaded (HTTP ${xhr.status}).`;
}

/** Whether `file` is one the input's `accept` list names: a MIME type, `type/*`, or `.ext`. */
function accepted(file, name, accept) {
  const type = file.type.toLowerCase();
  return accept.split(",").map((token) => token.trim().toLowerCase()).filter(Boolean).some((token) => {
    if (token.startsWith(".")) return name.toLowerCase().endsWith(token);
    if (token.endsWith("/*")) return type.startsWith(token.slice(0, -1));
    return type === token;
  });
}

/**
 * Wire the composer's attachments. Reads `chat`'s (the chat page's `#chat`, the widget's
 * `#widget`) data-attachments-url, data-attachment-max-bytes, data-attachment-max-count and
 * data-attachment-accept; without the URL it does nothing.
 * @param {{chat: HTMLElement, form: HTMLFormElement, box: HTMLTextAreaElement,
 *          csrfToken?: string, send?: HTMLButtonElement,
 *          headers?: () => (object|Promise<object>), fields?: () => object,
 *          strictAccept?: boolean}} parts
 *   csrfToken: sent as X-CSRFToken when given; headers: more request headers, asked for before
 *   each upload (it may be async, e.g. to make the widget's visitor first; a rejection fails that
 *   upload with its message); fields: more form fields for each upload (the chat's picked
 *   `slot`, whose image side and document budget the server applies); strictAccept: refuse a picked, pasted or dropped file that
 *   data-attachment-accept does not name before uploading it (the widget's images; the chat
 *   page leaves that to the server, which checks the content whatever the name says).
 * @returns {{ids: () => string[], items: () => object[], busy: () => boolean,
 *            problem: () => string|null, release: (ids: string[]) => void,
 *            showError: (text: string) => void}}
 *   items: the uploads' JSON (id, name, kind, mime, size, url, …) in the tray's order, plus
 *   `preview`: an image's data: URL as the tray shows it (null for a document, or while read);
 *   busy: an upload is in flight; problem: why the message cannot be sent now, or null;
 *   release: takes the uploads with these ids out of the tray (once
 *   the server took the message that carries them: a refused message leaves them to send again).
 */
export function wireAttachments({ chat, form, box, csrfToken = null, send = null, headers = null, fields = null, strictAccept = false }) {
  const url = chat?.dataset.attachmentsUrl;
  const tray = document.getElementById("attachment-tray");
  const errors = document.getElementById("attachment-error");
  const input = document.getElementById("attach-input");
  const button = document.getElementById("attach");
  if (!url || !tray || !errors || !input) return NONE;
  const maxBytes = Number(chat.dataset.attachmentMaxBytes) || Infinity;
  const maxCount = Number(chat.dataset.attachmentMaxCount) || Infinity;
  const accept = chat.dataset.attachmentAccept || "";
  // "image/png,image/jpeg" → "PNG, JPEG", for the refusal of another type.
  const acceptedKinds = accept.split(",").map((token) => token.trim().replace(/^\w+\//, "").toUpperCase()).join(", ");

  const entries = []; // {file, name, image, preview, xhr, data, chip, state: uploading|done|error}

  function showError(text) {
    errors.textContent = text;
  }

  function update() {
    tray.hidden = !entries.length;
    const uploading = entries.some((entry) => entry.state === "uploading");
    tray.setAttribute("aria-busy", String(uploading));
    if (send) send.disabled = uploading; // Enter is refused too: see problem()
  }

  function remove(entry) {
    if (entry.state === "uploading") entry.xhr?.abort();
    entry.reader?.abort();
    const index = entries.indexOf(entry);
    entries.splice(index, 1);
    entry.chip.remove();
    if (entry.state === "error" && !entries.some((other) => other.state === "error")) showError("");
    update();
    // Keyboard users stay in the tray: the next chip's remove button, else the message box.
    const next = entries[index] || entries[index - 1];
    (next ? next.chip.querySelector(".remove-attachment") : box).focus();
  }

  function chipFor(entry) {
    const chip = el("div", "attachment-chip");
    chip.setAttribute("role", "listitem");
    chip.dataset.state = "uploading";
    if (entry.image) {
      // A data: URL, not URL.createObjectURL: the site's CSP allows img-src 'self' data: only.
      const thumb = el("img", "attachment-thumb");
      thumb.alt = entry.name;
      entry.reader = new FileReader();
      entry.reader.addEventListener("load", () => {
        entry.preview = entry.reader.result;
        thumb.src = entry.preview;
      });
      entry.reader.readAsDataURL(entry.file);
      chip.append(thumb);
    } else {
      chip.append(typeBadge(entry.name), el("span", "attachment-name", entry.name));
    }
    chip.append(el("span", "attachment-size", humanSize(entry.file.size)));
    entry.progress = el("progress");
    entry.progress.max = 100;
    entry.progress.value = 0;
    entry.progress.setAttribute("aria-label", `Uploading ${entry.name}`);
    entry.failure = el("span", "attachment-chip-error");
    const removeButton = el("button", "remove-attachment", "×");
    removeButton.type = "button";
    removeButton.setAttribute("aria-label", `Remove ${entry.name}`);
    removeButton.addEventListener("click", () => remove(entry));
    chip.append(entry.progress, entry.failure, removeButton);
    return chip;
  }

  function settle(entry, state, data = null) {
    entry.state = state;
    entry.data = data;
    entry.chip.dataset.state = state;
    entry.progress.remove();
    update();
  }

  function fail(entry, message) {
    settle(entry, "error");
    // The reason goes to the alert area; the chip only says which file it was.
    entry.failure.textContent = "Not uploaded";
    showError(message);
  }

  async function upload(entry) {
    let extra = {};
    try {
      extra = (await headers?.()) || {};
    } catch (error) {
      if (entries.includes(entry)) fail(entry, error?.message || `"${entry.name}" could not be uploaded.`);
      return;
    }
    if (!entries.includes(entry)) return; // removed meanwhile
    const xhr = new XMLHttpRequest();
    entry.xhr = xhr;
    xhr.open("POST", url);
    if (csrfToken) xhr.setRequestHeader("X-CSRFToken", csrfToken);
    for (const [header, value] of Object.entries(extra)) xhr.setRequestHeader(header, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) entry.progress.value = Math.round((event.loaded / event.total) * 100);
    });
    // Every byte sent: the server is still reading it (images are checked, documents extracted).
    xhr.upload.addEventListener("load", () => entry.progress.removeAttribute("value"));
    xhr.addEventListener("load", () => {
      if (xhr.status === 201 && xhr.response?.id) settle(entry, "done", xhr.response);
      else fail(entry, failureText(xhr, entry.name));
    });
    xhr.addEventListener("error", () => fail(entry, `"${entry.name}" could not be uploaded: the connection failed.`));
    const body = new FormData();
    // A file with no name (some pasted images) would reach Django as no file at all.
    body.append("file", entry.file, entry.name);
    for (const [field, value] of Object.entries(fields?.() || {})) body.append(field, value);
    xhr.send(body);
  }

  function add(files) {
    const refusals = [];
    for (const file of files) {
      const name = file.name || `pasted.${(file.type.split("/")[1] || "bin").split("+")[0]}`;
      if (strictAccept && accept && !accepted(file, name, accept)) {
        refusals.push(`"${name}" was not added: only ${acceptedKinds} files can be attached.`);
        continue;
      }
      if (file.size > maxBytes) {
        refusals.push(`"${name}" is ${humanSize(file.size)}; the limit is ${humanSize(maxBytes)}.`);
        continue;
      }
      if (entries.filter((entry) => entry.state !== "error").length >= maxCount) {
        refusals.push(`"${name}" was not added: at most ${maxCount} files per message.`);
        continue;
      }
      const image = file.type.startsWith("image/");
      const entry = { file, name, image, preview: null, reader: null, xhr: null, data: null, state: "uploading" };
      entry.chip = chipFor(entry);
      entries.push(entry);
      tray.append(entry.chip);
      upload(entry);
    }
    showError(refusals.join(" "));
    update();
  }

  button?.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    add([...input.files]);
    input.value = ""; // the same file can be picked again after its removal
  });

  // A pasted screenshot or copied file; pasted text is left to the textarea.
  box.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length) return;
    event.preventDefault();
    add(files);
  });

  const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  form.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    form.classList.add("dragging");
  });
  form.addEventListener("dragleave", (event) => {
    if (!form.contains(event.relatedTarget)) form.classList.remove("dragging");
  });
  form.addEventListener("drop", (event) => {
    form.classList.remove("dragging");
    if (!carriesFiles(event)) return;
    event.preventDefault();
    add([...event.dataTransfer.files]);
  });
  // A file dropped just beside the composer must not open in the tab, leaving the chat.
  document.addEventListener("dragover", (event) => { if (carriesFiles(event)) event.preventDefault(); });
  document.addEventListener("drop", (event) => { if (carriesFiles(event)) event.preventDefault(); });

  update();
  const done = () => entries.filter((entry) => entry.state === "done");
  const busy = () => entries.some((entry) => entry.state === "uploading");
  return {
    ids: () => done().map((entry) => entry.data.id),
    items: () => done().map((entry) => ({ ...entry.data, preview: entry.preview })),
    busy,
    problem() {
      if (busy()) return "Wait for the files to finish uploading.";
      if (entries.some((entry) => entry.state === "error")) return "Remove the files that could not be uploaded.";
      return null;
    },
    release(ids) {
      for (const entry of entries.filter((e) => e.state === "done" && ids.includes(e.data.id))) {
        entries.splice(entries.indexOf(entry), 1);
        entry.chip.remove();
      }
      if (!entries.some((entry) => entry.state === "error")) showError("");
      update();
    },
    showError,
  };
}
