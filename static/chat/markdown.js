// Markdown → sanitised DOM: marked (GFM), then DOMPurify, then highlight.js on finished code.
//
// Model output is untrusted. Raw HTML in it is shown as text, never parsed (marked's `html`
// renderer escapes it); DOMPurify then cleans what marked made from markdown syntax: only
// http(s), mailto and relative URLs survive (no javascript:, data: or other schemes), no style,
// id or name attributes, no class but marked's `language-*`. Links open in a new tab with
// rel="noopener noreferrer".
import { Marked } from "../vendor/marked-18.2.1/marked.esm.js";
import createDOMPurify from "../vendor/dompurify-3.4.18/purify.es.mjs";
import hljs from "../vendor/highlightjs-11.12.0/highlight.min.js";

const THEMES = [
  ["../vendor/highlightjs-11.12.0/github.min.css", "(prefers-color-scheme: light)"],
  ["../vendor/highlightjs-11.12.0/github-dark.min.css", "(prefers-color-scheme: dark)"],
];
// Past this size a code block stays plain: highlighting costs about 1 ms per KB, in one task.
const HIGHLIGHT_MAX = 20_000;
const SAFE_URL = /^(?:(?:https?|mailto):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i;
const URL_ATTRIBUTES = ["href", "src", "xlink:href", "action", "formaction", "poster", "srcset"];

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  renderer: {
    // Raw HTML from the model is text: "<b>" shows as <b>, it does not make bold text.
    html(token) {
      return token.block ? `<p>${escapeHtml(token.text)}</p>` : escapeHtml(token.text);
    },
    // An image the model names is a link, never loaded: a prompt-injected model could put
    // what it read into an image URL and have the browser send it out.
    image(token) {
      const label = escapeHtml(token.text || token.href);
      return `<a href="${escapeHtml(token.href)}">Image: ${label}</a>`;
    },
  },
});

let purify = null;

function sanitiser() {
  if (purify) return purify;
  purify = createDOMPurify(window);
  purify.setConfig({
    USE_PROFILES: { html: true }, // no SVG or MathML
    ALLOWED_URI_REGEXP: SAFE_URL,
    FORBID_TAGS: ["style", "form", "button", "textarea", "select", "iframe", "object", "embed"],
    FORBID_ATTR: ["style", "id", "name", "srcset"],
    RETURN_DOM_FRAGMENT: true,
  });
  purify.addHook("uponSanitizeAttribute", (node, data) => {
    if (data.attrName === "class") {
      data.attrValue = data.attrValue
        .split(/\s+/)
        .filter((name) => /^language-[\w+#.-]+$/.test(name))
        .join(" ");
      if (!data.attrValue) data.keepAttr = false;
    }
  });
  purify.addHook("afterSanitizeAttributes", (node) => {
    for (const name of URL_ATTRIBUTES) {
      // DOMPurify lets data: through on <img src>; we do not.
      const value = node.getAttribute(name);
      if (value !== null && /^data:/i.test(value.replace(/[\s\u0000-\u001f]/g, ""))) {
        node.removeAttribute(name);
      }
    }
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
  return purify;
}

let themesAdded = false;

function addThemes() {
  themesAdded = true;
  for (const [path, media] of THEMES) {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = new URL(path, import.meta.url).href;
    link.media = media;
    document.head.append(link);
  }
}

// The tail of a streaming answer is re-rendered every frame; its finished code blocks keep
// their highlighting in this small cache instead of being highlighted again each time.
const highlighted = new Map();
const HIGHLIGHT_CACHE = 16;

function highlight(code, language) {
  const key = `${language}\u0000${code}`;
  let html = highlighted.get(key);
  if (html === undefined) {
    // No guessing for unlabelled code: highlightAuto runs every grammar over it (200 ms the
    // first time, when the grammars compile).
    if (language && hljs.getLanguage(language) && code.length <= HIGHLIGHT_MAX) {
      html = hljs.highlight(code, { language, ignoreIllegals: true }).value;
    } else {
      html = escapeHtml(code);
    }
    if (highlighted.size >= HIGHLIGHT_CACHE) highlighted.delete(highlighted.keys().next().value);
    highlighted.set(key, html);
  }
  return html;
}

function codeBlock(pre, { finished }) {
  const code = pre.querySelector("code") || pre;
  const language = (/(?:^|\s)language-(\S+)/.exec(code.className) || [])[1] || "";
  if (finished) {
    // highlight.js escapes the text it is given; its output is spans with hljs-* classes.
    code.innerHTML = highlight(code.textContent, language.toLowerCase());
    code.classList.add("hljs");
  }
  const wrapper = document.createElement("div");
  wrapper.className = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const label = document.createElement("span");
  label.className = "code-lang";
  label.textContent = language;
  const wrap = document.createElement("button");
  wrap.type = "button";
  wrap.className = "wrap-code";
  wrap.setAttribute("aria-pressed", "false");
  wrap.innerHTML = 'Wrap<span class="visually-hidden"> long lines</span>';
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy-code";
  button.innerHTML = '<span class="copy-label">Copy</span><span class="visually-hidden"> code</span>';
  const tools = document.createElement("span");
  tools.className = "code-tools";
  tools.append(wrap, button);
  head.append(label, tools);
  // A block wider than the answer scrolls sideways: keyboard users reach it by Tab to scroll.
  pre.tabIndex = 0;
  pre.replaceWith(wrapper);
  wrapper.append(head, pre);
}

/**
 * Render one markdown block (or a whole source) to a sanitised DocumentFragment.
 * `openFence`: the source ends inside a fenced code block that is still streaming, so its
 * last code block is not highlighted yet.
 */
export function renderMarkdown(source, { openFence = false } = {}) {
  if (!themesAdded) addThemes();
  let html;
  try {
    html = marked.parse(source);
  } catch {
    html = `<p>${escapeHtml(source)}</p>`;
  }
  const fragment = sanitiser().sanitize(html);
  const pres = fragment.querySelectorAll("pre");
  pres.forEach((pre, i) => codeBlock(pre, { finished: !(openFence && i === pres.length - 1) }));
  return fragment;
}

async function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("pre");
  if (!code) return;
  const label = button.querySelector(".copy-label");
  const hidden = button.querySelector(".visually-hidden");
  try {
    // marked ends every code block with a newline; the copy should not.
    await navigator.clipboard.writeText(code.textContent.replace(/\n$/, ""));
    label.textContent = "Copied";
    hidden.textContent = "";
    button.dataset.copied = "true";
  } catch {
    label.textContent = "Copy failed";
  }
  clearTimeout(button.copyTimer);
  button.copyTimer = setTimeout(() => {
    label.textContent = "Copy";
    hidden.textContent = " code";
    delete button.dataset.copied;
  }, 2000);
}

// One listener for every Copy and Wrap button, those of answers still streaming included.
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target : null;
  const copy = target?.closest("button.copy-code");
  if (copy) copyCode(copy);
  const wrap = target?.closest("button.wrap-code");
  if (wrap) {
    const wrapped = wrap.closest(".code-block").classList.toggle("wrapped");
    wrap.setAttribute("aria-pressed", String(wrapped));
  }
});
